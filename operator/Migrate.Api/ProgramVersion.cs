using System.Reflection;

namespace Migrate.Api;

/// <summary>
/// <c>--version</c> for the project's programs: one line with the program's name, its version (as
/// published: <c>make images</c> sets the chart's appVersion) and the runtime, so an image can be
/// checked with <c>run IMAGE --version</c> before it is deployed.
/// </summary>
public static class ProgramVersion
{
    public static bool Requested(IReadOnlyList<string> args) => args is ["--version"];

    public static string Describe(string program, Assembly assembly)
    {
        ArgumentNullException.ThrowIfNull(assembly);
        var version = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? assembly.GetName().Version?.ToString() ?? "unknown";
        return $"{program} {version} (.NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier})";
    }
}

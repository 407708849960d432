using System.Globalization;
using System.Security.Cryptography;

namespace Migrate.TestSupport;

/// <summary>The small static C programs of tests/workloads, built on demand and cached by source hash.</summary>
public static class Workloads
{
    private static readonly Lock BuildGate = new();

    /// <summary>Builds tests/workloads/<paramref name="name"/>.c (once per version) and returns the binary's path.</summary>
    public static string Build(string name)
    {
        var source = RepositoryLayout.InRepository("tests", "workloads", name + ".c");
        var hash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(source)))[..16];
        var output = Path.Combine(RepositoryLayout.Artifacts, "workloads", hash, name);
        lock (BuildGate)
        {
            if (!File.Exists(output))
            {
                Prerequisites.RequirePrograms("gcc");
                Directory.CreateDirectory(Path.GetDirectoryName(output)!);
                var temp = output + ".tmp" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
                Prerequisites.Run("gcc", "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o", temp, source);
                File.Move(temp, output, overwrite: true);
            }
        }

        return output;
    }
}

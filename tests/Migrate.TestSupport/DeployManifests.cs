using System.Text.RegularExpressions;
using Migrate.TestSupport.Helm;

namespace Migrate.TestSupport;

/// <summary>
/// The install manifests as <c>kubectl kustomize deploy/</c> renders them, read as objects, with
/// what tests need from them: the objects of a kind, a container's environment resolved as the
/// kubelet resolves it (fieldRef values given, $(VAR) expanded).
/// </summary>
public sealed partial class DeployManifests
{
    private DeployManifests(IReadOnlyList<Dictionary<string, object?>> objects) => Objects = objects;

    public IReadOnlyList<Dictionary<string, object?>> Objects { get; }

    /// <summary>Runs kubectl kustomize on deploy/ (no server involved).</summary>
    public static async Task<DeployManifests> RenderAsync()
    {
        Prerequisites.RequirePrograms("kubectl");
        var cache = Directory.CreateTempSubdirectory("kubectl-cache-").FullName;
        try
        {
            var result = (await new Kubectl("/dev/null", cache).RunAsync("kustomize", RepositoryLayout.InRepository("deploy"))).Succeeded();
            return new DeployManifests([.. GoYaml.ParseAll(result.Output).OfType<Dictionary<string, object?>>()]);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    public static string Kind(Dictionary<string, object?> o) => (string)o["kind"]!;

    public static string Name(Dictionary<string, object?> o) => (string)((Dictionary<string, object?>)o["metadata"]!)["name"]!;

    public Dictionary<string, object?> Find(string kind, string name) =>
        Objects.Single(o => Kind(o) == kind && Name(o) == name);

    /// <summary>
    /// The environment of the first container of a workload, as the kubelet would give it: literal
    /// values with $(NAME) references to earlier variables expanded, fieldRefs from <paramref name="fields"/>.
    /// </summary>
    public Dictionary<string, string> Environment(string kind, string name, IReadOnlyDictionary<string, string> fields)
    {
        var template = (Dictionary<string, object?>)((Dictionary<string, object?>)Find(kind, name)["spec"]!)["template"]!;
        var container = (Dictionary<string, object?>)((List<object?>)((Dictionary<string, object?>)template["spec"]!)["containers"]!)[0]!;
        var environment = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in ((List<object?>?)container.GetValueOrDefault("env") ?? []).Cast<Dictionary<string, object?>>())
        {
            var variable = (string)entry["name"]!;
            if (entry.GetValueOrDefault("value") is string value)
            {
                environment[variable] = Reference().Replace(value, m => environment.TryGetValue(m.Groups[1].Value, out var v) ? v : m.Value);
            }
            else if (entry.GetValueOrDefault("valueFrom") is Dictionary<string, object?> from && from.GetValueOrDefault("fieldRef") is Dictionary<string, object?> field)
            {
                var path = (string)field["fieldPath"]!;
                environment[variable] = fields.TryGetValue(path, out var v) ? v : throw new KeyNotFoundException($"{kind}/{name}: no value given for fieldRef {path} of {variable}");
            }
            else
            {
                throw new NotSupportedException($"{kind}/{name}: variable {variable} is neither a value nor a fieldRef");
            }
        }

        return environment;
    }

    [GeneratedRegex(@"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")]
    private static partial Regex Reference();
}

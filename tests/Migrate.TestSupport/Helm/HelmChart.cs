using System.Text.Json;
using System.Text.Json.Nodes;
using Json.Schema;

namespace Migrate.TestSupport.Helm;

/// <summary>A chart's rendered output: the manifests (each a document), the CRDs and NOTES.txt.</summary>
public sealed record RenderedChart(IReadOnlyList<Dictionary<string, object?>> Manifests, IReadOnlyList<Dictionary<string, object?>> Crds, string Notes, string Text);

/// <summary>Values that the chart's values.schema.json refuses, each with the field it concerns.</summary>
public sealed class ChartValuesException(IReadOnlyList<string> problems)
    : Exception("values don't meet the specifications of the schema:\n" + string.Join("\n", problems.Select(p => "- " + p)))
{
    public IReadOnlyList<string> Problems { get; } = problems;
}

/// <summary>
/// Renders a Helm chart as <c>helm template</c> does: user values merged over values.yaml (maps
/// merged key by key, null removes a key), the result validated against values.schema.json, every
/// template under templates/ except partials (<c>_*</c>) rendered with .Values, .Release and .Chart,
/// empty documents dropped; crds/ read as they are.
/// </summary>
public sealed class HelmChart
{
    private readonly string _directory;
    private readonly Dictionary<string, object?> _chart;

    public HelmChart(string directory)
    {
        _directory = directory;
        _chart = GoYaml.Parse(File.ReadAllText(Path.Combine(directory, "Chart.yaml"))) as Dictionary<string, object?>
            ?? throw new InvalidDataException($"{directory}/Chart.yaml is not a map");
    }

    public string Name => (string)_chart["name"]!;

    public Dictionary<string, object?> DefaultValues() =>
        GoYaml.Parse(File.ReadAllText(Path.Combine(_directory, "values.yaml"))) as Dictionary<string, object?> ?? [];

    /// <summary>Errors of values against values.schema.json, each "path: problem" (none: valid).</summary>
    public IReadOnlyList<string> Validate(Dictionary<string, object?> values)
    {
        var schema = JsonSchema.FromText(File.ReadAllText(Path.Combine(_directory, "values.schema.json")));
        using var document = JsonDocument.Parse(ToJson(values)!.ToJsonString());
        var result = schema.Evaluate(document.RootElement, new EvaluationOptions { OutputFormat = OutputFormat.List });
        if (result.IsValid)
        {
            return [];
        }

        return [.. (result.Details ?? [])
            .Where(d => d.Errors is { Count: > 0 })
            .SelectMany(d => d.Errors!.Select(e => $"{Location(d.InstanceLocation.ToString())}: {e.Value}"))
            .Distinct()];
    }

    private static string Location(string pointer) =>
        pointer.Length <= 1 ? "(root)" : pointer.TrimStart('/').Replace('/', '.');

    public RenderedChart Render(string releaseName, string releaseNamespace, Dictionary<string, object?>? overrides = null)
    {
        var values = Merge(DefaultValues(), overrides ?? []);
        var problems = Validate(values);
        if (problems.Count > 0)
        {
            throw new ChartValuesException(problems);
        }

        var root = new Dictionary<string, object?>
        {
            ["Values"] = values,
            ["Release"] = new Dictionary<string, object?>
            {
                ["Name"] = releaseName,
                ["Namespace"] = releaseNamespace,
                ["Service"] = "Helm",
                ["IsInstall"] = true,
                ["IsUpgrade"] = false,
                ["Revision"] = 1.0,
            },
            ["Chart"] = new Dictionary<string, object?>
            {
                ["Name"] = _chart["name"],
                ["Version"] = _chart["version"],
                ["AppVersion"] = _chart.GetValueOrDefault("appVersion"),
            },
        };

        var templates = new GoTemplateSet();
        var files = Directory.EnumerateFiles(Path.Combine(_directory, "templates"), "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        foreach (var file in files)
        {
            templates.Add(Path.GetRelativePath(_directory, file), File.ReadAllText(file));
        }

        var manifests = new List<Dictionary<string, object?>>();
        var text = new System.Text.StringBuilder();
        string notes = "";
        foreach (var file in files.Select(f => Path.GetRelativePath(_directory, f)))
        {
            var name = Path.GetFileName(file);
            if (name.StartsWith('_'))
            {
                continue;
            }

            var output = templates.Execute(file, root);
            if (name == "NOTES.txt")
            {
                notes = output;
                continue;
            }

            text.Append("---\n# Source: ").Append(Name).Append('/').Append(file).Append('\n').Append(output).Append('\n');
            foreach (var document in GoYaml.ParseAll(output))
            {
                manifests.Add(document as Dictionary<string, object?> ?? throw new InvalidDataException($"{file} rendered a document that is not a map"));
            }
        }

        var crds = new List<Dictionary<string, object?>>();
        var crdDirectory = Path.Combine(_directory, "crds");
        if (Directory.Exists(crdDirectory))
        {
            foreach (var file in Directory.EnumerateFiles(crdDirectory).Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            {
                crds.AddRange(GoYaml.ParseAll(File.ReadAllText(file)).OfType<Dictionary<string, object?>>());
            }
        }

        return new RenderedChart(manifests, crds, notes, text.ToString());
    }

    /// <summary>Helm's coalescing of user values over the chart's: maps merge, anything else replaces, null deletes.</summary>
    public static Dictionary<string, object?> Merge(Dictionary<string, object?> defaults, Dictionary<string, object?> overrides)
    {
        var merged = new Dictionary<string, object?>(defaults, StringComparer.Ordinal);
        foreach (var (key, value) in overrides)
        {
            if (value is null)
            {
                merged.Remove(key);
            }
            else if (value is Dictionary<string, object?> map && merged.GetValueOrDefault(key) is Dictionary<string, object?> existing)
            {
                merged[key] = Merge(existing, map);
            }
            else
            {
                merged[key] = value;
            }
        }

        return merged;
    }

    /// <summary>"a.b.c=value" (value read as YAML, as --set reads it) as a nested override.</summary>
    public static Dictionary<string, object?> Set(string assignment)
    {
        var (path, value) = (assignment[..assignment.IndexOf('=', StringComparison.Ordinal)], assignment[(assignment.IndexOf('=', StringComparison.Ordinal) + 1)..]);
        object? leaf = GoYaml.Parse("v: " + value) is Dictionary<string, object?> wrapper ? wrapper["v"] : null;
        foreach (var key in path.Split('.').Reverse())
        {
            leaf = new Dictionary<string, object?>(StringComparer.Ordinal) { [key] = leaf };
        }

        return (Dictionary<string, object?>)leaf!;
    }

    public static JsonNode? ToJson(object? value) => value switch
    {
        null => null,
        Dictionary<string, object?> map => new JsonObject(map.Select(p => KeyValuePair.Create(p.Key, ToJson(p.Value)))),
        List<object?> list => new JsonArray([.. list.Select(ToJson)]),
        string s => JsonValue.Create(s),
        bool b => JsonValue.Create(b),
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e15 => JsonValue.Create((long)d),
        double d => JsonValue.Create(d),
        GoTemplateSet.GoInt i => JsonValue.Create(i.Value),
        _ => throw new InvalidDataException($"cannot convert {value.GetType().Name} to JSON"),
    };
}

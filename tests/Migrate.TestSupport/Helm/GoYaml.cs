using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using YamlDotNet.RepresentationModel;

namespace Migrate.TestSupport.Helm;

/// <summary>
/// YAML as Helm sees values and manifests: maps with string keys, lists, strings, booleans, nil
/// and numbers as floats (Helm reads values through JSON). Emits block YAML with sorted keys, as
/// Helm's toYaml does.
/// </summary>
public static partial class GoYaml
{
    public static object? Parse(string text) => ParseAll(text).FirstOrDefault();

    /// <summary>Every document of a multi-document stream (empty documents skipped).</summary>
    public static List<object?> ParseAll(string text)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(text));
        return [.. stream.Documents.Select(d => Convert(d.RootNode)).Where(d => d is not null)];
    }

    private static object? Convert(YamlNode node) => node switch
    {
        YamlMappingNode map => map.Children.ToDictionary(p => ((YamlScalarNode)p.Key).Value ?? "", p => Convert(p.Value), StringComparer.Ordinal),
        YamlSequenceNode list => list.Children.Select(Convert).ToList(),
        YamlScalarNode scalar => Scalar(scalar),
        _ => throw new FormatException($"unsupported YAML node {node.NodeType} at {node.Start}"),
    };

    private static object? Scalar(YamlScalarNode scalar)
    {
        var value = scalar.Value ?? "";
        if (scalar.Style != YamlDotNet.Core.ScalarStyle.Plain)
        {
            return value;
        }

        return value switch
        {
            "" or "~" or "null" or "Null" or "NULL" => null,
            "true" or "True" or "TRUE" => true,
            "false" or "False" or "FALSE" => false,
            _ when Number().IsMatch(value) => double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture),
            _ => value,
        };
    }

    [GeneratedRegex(@"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")]
    private static partial Regex Number();

    /// <summary>Block YAML (keys sorted), strings JSON-quoted where a plain scalar would read back differently.</summary>
    public static string Emit(object? value)
    {
        var output = new StringBuilder();
        Emit(value, 0, output, inList: false);
        return output.ToString();
    }

    private static void Emit(object? value, int indent, StringBuilder output, bool inList)
    {
        var pad = new string(' ', indent);
        switch (value)
        {
            case Dictionary<string, object?> map when map.Count > 0:
            {
                bool first = true;
                foreach (var (key, item) in map.OrderBy(p => p.Key, StringComparer.Ordinal))
                {
                    output.Append(first && inList ? "" : pad).Append(ScalarText(key)).Append(':');
                    first = false;
                    if (item is Dictionary<string, object?> { Count: > 0 } or List<object?> { Count: > 0 })
                    {
                        output.Append('\n');
                        Emit(item, item is List<object?> ? indent : indent + 2, output, inList: false);
                    }
                    else
                    {
                        output.Append(' ').Append(ScalarText(item)).Append('\n');
                    }
                }

                break;
            }

            case List<object?> list when list.Count > 0:
                foreach (var item in list)
                {
                    output.Append(pad).Append("- ");
                    if (item is Dictionary<string, object?> { Count: > 0 } or List<object?> { Count: > 0 })
                    {
                        if (item is List<object?>)
                        {
                            output.Append('\n');
                        }

                        Emit(item, indent + 2, output, inList: item is Dictionary<string, object?>);
                    }
                    else
                    {
                        output.Append(ScalarText(item)).Append('\n');
                    }
                }

                break;
            default:
                output.Append(pad).Append(ScalarText(value)).Append('\n');
                break;
        }
    }

    private static string ScalarText(object? value) => value switch
    {
        null => "null",
        bool b => b ? "true" : "false",
        double d when d == Math.Floor(d) && Math.Abs(d) < 1e15 => ((long)d).ToString(CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        GoTemplateSet.GoInt i => i.Value.ToString(CultureInfo.InvariantCulture),
        string s when s.Length > 0 && Scalar(new YamlScalarNode(s)) is string && !NeedsQuotes().IsMatch(s) => s,
        string s => JsonSerializer.Serialize(s),
        Dictionary<string, object?> => "{}",
        List<object?> => "[]",
        _ => throw new FormatException($"cannot write {value.GetType().Name} as YAML"),
    };

    [GeneratedRegex(@"^[\s\-?:,\[\]{}#&*!|>'""%@`]|[:#]\s|\s$|[\n\t]|:$")]
    private static partial Regex NeedsQuotes();
}

using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>A label selector (the string syntax of <c>?labelSelector=</c>, or a LabelSelector object).</summary>
public sealed class LabelSelector
{
    private readonly List<Func<IReadOnlyDictionary<string, string>, bool>> _requirements = [];

    public static readonly LabelSelector Everything = new();

    public bool IsEmpty => _requirements.Count == 0;

    public bool Matches(IReadOnlyDictionary<string, string> labels) => _requirements.All(r => r(labels));

    /// <summary>Parses "a=b,c!=d,e in (x,y),f notin (z),g,!h".</summary>
    public static LabelSelector Parse(string? text)
    {
        var selector = new LabelSelector();
        if (string.IsNullOrWhiteSpace(text))
        {
            return selector;
        }

        foreach (var part in SplitTopLevel(text))
        {
            var term = part.Trim();
            if (term.Length == 0)
            {
                continue;
            }

            int inIndex = IndexOfWord(term, " in ");
            int notInIndex = IndexOfWord(term, " notin ");
            if (notInIndex > 0 || inIndex > 0)
            {
                bool negate = notInIndex > 0;
                int at = negate ? notInIndex : inIndex;
                var key = term[..at].Trim();
                var values = ParseSet(term[(at + (negate ? 7 : 4))..], text);
                Validate(key, text);
                selector._requirements.Add(negate
                    ? labels => !labels.TryGetValue(key, out var v) || !values.Contains(v)
                    : labels => labels.TryGetValue(key, out var v) && values.Contains(v));
            }
            else if (term.Contains("!=", StringComparison.Ordinal))
            {
                var (key, value) = Split(term, "!=");
                Validate(key, text);
                selector._requirements.Add(labels => !labels.TryGetValue(key, out var v) || v != value);
            }
            else if (term.Contains("==", StringComparison.Ordinal) || term.Contains('=', StringComparison.Ordinal))
            {
                var (key, value) = Split(term, term.Contains("==", StringComparison.Ordinal) ? "==" : "=");
                Validate(key, text);
                selector._requirements.Add(labels => labels.TryGetValue(key, out var v) && v == value);
            }
            else if (term.StartsWith('!'))
            {
                var key = term[1..].Trim();
                Validate(key, text);
                selector._requirements.Add(labels => !labels.ContainsKey(key));
            }
            else
            {
                Validate(term, text);
                selector._requirements.Add(labels => labels.ContainsKey(term));
            }
        }

        return selector;
    }

    /// <summary>A metav1.LabelSelector object (matchLabels, matchExpressions). Null selects nothing; empty selects everything.</summary>
    public static LabelSelector? FromObject(JsonNode? node)
    {
        if (node is not JsonObject o)
        {
            return null;
        }

        var selector = new LabelSelector();
        foreach (var (key, value) in Json.StringMap(o["matchLabels"]))
        {
            selector._requirements.Add(labels => labels.TryGetValue(key, out var v) && v == value);
        }

        if (o["matchExpressions"] is JsonArray expressions)
        {
            foreach (var e in expressions.OfType<JsonObject>())
            {
                var key = Json.GetString(e, "key") ?? "";
                var op = Json.GetString(e, "operator") ?? "";
                var values = Json.StringList(e["values"]).ToHashSet(StringComparer.Ordinal);
                selector._requirements.Add(op switch
                {
                    "In" => labels => labels.TryGetValue(key, out var v) && values.Contains(v),
                    "NotIn" => labels => !labels.TryGetValue(key, out var v) || !values.Contains(v),
                    "Exists" => labels => labels.ContainsKey(key),
                    "DoesNotExist" => labels => !labels.ContainsKey(key),
                    _ => throw ApiException.BadRequest($"\"{op}\" is not a valid label selector operator"),
                });
            }
        }

        return selector;
    }

    private static HashSet<string> ParseSet(string text, string whole)
    {
        var t = text.Trim();
        if (!t.StartsWith('(') || !t.EndsWith(')'))
        {
            throw ApiException.BadRequest($"unable to parse requirement: found '{t}', expected: '(' in label selector \"{whole}\"");
        }

        return t[1..^1].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
    }

    private static (string, string) Split(string term, string op)
    {
        int at = term.IndexOf(op, StringComparison.Ordinal);
        return (term[..at].Trim(), term[(at + op.Length)..].Trim());
    }

    private static void Validate(string key, string whole)
    {
        if (key.Length == 0 || key.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or '/')))
        {
            throw ApiException.BadRequest($"unable to parse requirement: invalid label key \"{key}\" in label selector \"{whole}\"");
        }
    }

    private static int IndexOfWord(string term, string word) => term.IndexOf(word, StringComparison.Ordinal);

    /// <summary>Splits on commas outside parentheses.</summary>
    private static List<string> SplitTopLevel(string text)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '(')
            {
                depth++;
            }
            else if (text[i] == ')')
            {
                depth--;
            }
            else if (text[i] == ',' && depth == 0)
            {
                parts.Add(text[start..i]);
                start = i + 1;
            }
        }

        parts.Add(text[start..]);
        return parts;
    }
}

/// <summary>A field selector: "a=b,c!=d" over the fields a resource supports.</summary>
public sealed class FieldSelector
{
    private readonly List<(string Field, string Value, bool Negate)> _terms = [];

    public static readonly FieldSelector Everything = new();

    public IReadOnlyList<(string Field, string Value, bool Negate)> Terms => _terms;

    /// <summary>Fields each resource can be selected by, besides metadata.name and metadata.namespace.</summary>
    private static readonly Dictionary<string, string[]> Supported = new(StringComparer.Ordinal)
    {
        ["/pods"] = ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName", "spec.hostNetwork"],
        ["/events"] = ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"],
        ["events.k8s.io/events"] = ["regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "reason", "type", "reportingController"],
        ["/nodes"] = ["spec.unschedulable"],
        ["/namespaces"] = ["status.phase"],
        ["/secrets"] = ["type"],
        ["apps/replicasets"] = ["status.replicas"],
    };

    public static FieldSelector Parse(string? text, ResourceType type)
    {
        var selector = new FieldSelector();
        if (string.IsNullOrWhiteSpace(text))
        {
            return selector;
        }

        Supported.TryGetValue(type.StorageKey, out var extra);
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            bool negate = part.Contains("!=", StringComparison.Ordinal);
            var op = negate ? "!=" : part.Contains("==", StringComparison.Ordinal) ? "==" : "=";
            int at = part.IndexOf(op, StringComparison.Ordinal);
            if (at <= 0)
            {
                throw ApiException.BadRequest($"invalid field selector: '{part}'");
            }

            var field = part[..at].Trim();
            var value = part[(at + op.Length)..].Trim();
            if (field is not ("metadata.name" or "metadata.namespace") && (extra is null || !extra.Contains(field)))
            {
                throw ApiException.BadRequest($"field label not supported: {field}");
            }

            selector._terms.Add((field, value, negate));
        }

        return selector;
    }

    public bool Matches(JsonObject obj)
    {
        foreach (var (field, value, negate) in _terms)
        {
            var actual = Json.ScalarText(Json.Walk(obj, field.Split('.'))) ?? "";
            if (field == "spec.unschedulable" && actual.Length == 0)
            {
                actual = "false";
            }

            if ((actual == value) == negate)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The name a selector pins (metadata.name=x), if any.</summary>
    public string? PinnedName => _terms.FirstOrDefault(t => t.Field == "metadata.name" && !t.Negate).Value;
}

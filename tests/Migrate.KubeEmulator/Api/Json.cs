using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>Small helpers over System.Text.Json nodes for Kubernetes objects.</summary>
public static class Json
{
    public static readonly JsonSerializerOptions Compact = new() { WriteIndented = false };

    public static JsonObject Metadata(JsonObject obj)
    {
        if (obj["metadata"] is JsonObject m)
        {
            return m;
        }

        var created = new JsonObject();
        obj["metadata"] = created;
        return created;
    }

    public static string? GetString(JsonNode? node, params string[] path)
    {
        var value = Walk(node, path);
        return value is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
    }

    public static JsonNode? Walk(JsonNode? node, params string[] path)
    {
        foreach (var p in path)
        {
            if (node is not JsonObject o || !o.TryGetPropertyValue(p, out node))
            {
                return null;
            }
        }

        return node;
    }

    public static JsonObject ObjectAt(JsonObject root, params string[] path)
    {
        var current = root;
        foreach (var p in path)
        {
            if (current[p] is not JsonObject next)
            {
                next = new JsonObject();
                current[p] = next;
            }

            current = next;
        }

        return current;
    }

    /// <summary>An integer however the node was made (parsed JSON or a CLR value); null if it is not one.</summary>
    public static long? WholeNumber(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == JsonValueKind.Number
        && long.TryParse(v.ToJsonString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : null;

    public static bool? Truth(JsonNode? node) => node?.GetValueKind() switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    public static Dictionary<string, string> Labels(JsonObject obj) => StringMap(Walk(obj, "metadata", "labels"));

    public static Dictionary<string, string> StringMap(JsonNode? node)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (node is JsonObject o)
        {
            foreach (var (k, v) in o)
            {
                if (v is JsonValue value && value.TryGetValue<string>(out var s))
                {
                    result[k] = s;
                }
            }
        }

        return result;
    }

    public static List<string> StringList(JsonNode? node)
    {
        var result = new List<string>();
        if (node is JsonArray a)
        {
            foreach (var item in a)
            {
                if (item is JsonValue v && v.TryGetValue<string>(out var s))
                {
                    result.Add(s);
                }
            }
        }

        return result;
    }

    public static JsonArray ToArray(IEnumerable<string> items)
    {
        var array = new JsonArray();
        foreach (var s in items)
        {
            array.Add(s);
        }

        return array;
    }

    public static string Timestamp(DateTimeOffset time) =>
        time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    public static DateTimeOffset? ParseTimestamp(string? text) =>
        DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t) ? t : null;

    /// <summary>The scalar at a dotted path as a selector compares it (strings as-is, numbers and booleans as text).</summary>
    public static string? ScalarText(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonValue v when v.GetValueKind() is JsonValueKind.True => "true",
        JsonValue v when v.GetValueKind() is JsonValueKind.False => "false",
        JsonValue v => v.ToJsonString(),
        _ => null,
    };

    public static JsonObject ParseObject(ReadOnlySpan<byte> body)
    {
        try
        {
            return JsonNode.Parse(body) as JsonObject ?? throw ApiException.BadRequest("the request body is not a JSON object");
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
    }

    /// <summary>Writes the standard field order of a Kubernetes object: kind, apiVersion, metadata, then the rest.</summary>
    public static JsonObject Ordered(JsonObject obj)
    {
        var result = new JsonObject();
        foreach (var key in new[] { "kind", "apiVersion", "metadata" })
        {
            if (obj.TryGetPropertyValue(key, out var value))
            {
                result[key] = value?.DeepClone();
            }
        }

        foreach (var (key, value) in obj)
        {
            if (key is not ("kind" or "apiVersion" or "metadata"))
            {
                result[key] = value?.DeepClone();
            }
        }

        return result;
    }
}

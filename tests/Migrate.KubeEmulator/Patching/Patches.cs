using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Api;

namespace Migrate.KubeEmulator.Patching;

/// <summary>RFC 6902 JSON Patch.</summary>
public static class JsonPatch
{
    public static JsonObject Apply(JsonObject target, JsonArray operations)
    {
        JsonNode document = target.DeepClone();
        foreach (var raw in operations)
        {
            if (raw is not JsonObject op)
            {
                throw ApiException.BadRequest("each JSON patch operation must be an object");
            }

            var kind = Json.GetString(op, "op") ?? throw ApiException.BadRequest("JSON patch operation without \"op\"");
            var path = Json.GetString(op, "path") ?? throw ApiException.BadRequest($"JSON patch {kind} without \"path\"");
            switch (kind)
            {
                case "add":
                    document = Add(document, path, Value(op));
                    break;
                case "remove":
                    document = Remove(document, path, out _);
                    break;
                case "replace":
                    document = Remove(document, path, out _);
                    document = Add(document, path, Value(op));
                    break;
                case "move":
                    {
                        var from = Json.GetString(op, "from") ?? throw ApiException.BadRequest("JSON patch move without \"from\"");
                        document = Remove(document, from, out var moved);
                        document = Add(document, path, moved);
                        break;
                    }

                case "copy":
                    {
                        var from = Json.GetString(op, "from") ?? throw ApiException.BadRequest("JSON patch copy without \"from\"");
                        document = Add(document, path, Resolve(document, from)?.DeepClone());
                        break;
                    }

                case "test":
                    if (!JsonNode.DeepEquals(Resolve(document, path), Value(op)))
                    {
                        throw new ApiException(422, "Invalid", $"the server rejected our request due to an error in our request: testing value {path} failed");
                    }

                    break;
                default:
                    throw ApiException.BadRequest($"unknown JSON patch operation \"{kind}\"");
            }
        }

        return document as JsonObject ?? throw ApiException.BadRequest("JSON patch replaced the whole object with a non-object");
    }

    private static JsonNode? Value(JsonObject op) =>
        op.TryGetPropertyValue("value", out var v) ? v?.DeepClone() : throw ApiException.BadRequest("JSON patch operation without \"value\"");

    private static List<string> Pointer(string path)
    {
        if (path.Length == 0)
        {
            return [];
        }

        if (path[0] != '/')
        {
            throw ApiException.BadRequest($"JSON pointer \"{path}\" must start with '/'");
        }

        return path[1..].Split('/').Select(t => t.Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal)).ToList();
    }

    private static JsonNode? Resolve(JsonNode? node, string path)
    {
        foreach (var token in Pointer(path))
        {
            node = node switch
            {
                JsonObject o when o.TryGetPropertyValue(token, out var child) => child,
                JsonArray a when int.TryParse(token, out int i) && i >= 0 && i < a.Count => a[i],
                _ => throw new ApiException(422, "Invalid", $"the server rejected our request due to an error in our request: path {path} does not exist"),
            };
        }

        return node;
    }

    private static JsonNode Add(JsonNode document, string path, JsonNode? value)
    {
        var tokens = Pointer(path);
        if (tokens.Count == 0)
        {
            return value ?? throw ApiException.BadRequest("cannot replace the document with null");
        }

        var parent = Resolve(document, "/" + string.Join('/', tokens[..^1].Select(Escape)));
        var last = tokens[^1];
        switch (parent)
        {
            case JsonObject o:
                o[last] = value;
                break;
            case JsonArray a when last == "-":
                a.Add(value);
                break;
            case JsonArray a when int.TryParse(last, out int i) && i >= 0 && i <= a.Count:
                a.Insert(i, value);
                break;
            default:
                throw new ApiException(422, "Invalid", $"the server rejected our request due to an error in our request: cannot add at {path}");
        }

        return document;
    }

    private static JsonNode Remove(JsonNode document, string path, out JsonNode? removed)
    {
        var tokens = Pointer(path);
        var parent = Resolve(document, "/" + string.Join('/', tokens[..^1].Select(Escape)));
        var last = tokens[^1];
        switch (parent)
        {
            case JsonObject o when o.TryGetPropertyValue(last, out removed):
                o.Remove(last);
                break;
            case JsonArray a when int.TryParse(last, out int i) && i >= 0 && i < a.Count:
                removed = a[i];
                a.RemoveAt(i);
                break;
            default:
                throw new ApiException(422, "Invalid", $"the server rejected our request due to an error in our request: path {path} does not exist");
        }

        removed = removed?.DeepClone();
        return document;
    }

    private static string Escape(string token) => token.Replace("~", "~0", StringComparison.Ordinal).Replace("/", "~1", StringComparison.Ordinal);
}

/// <summary>RFC 7386 JSON Merge Patch.</summary>
public static class MergePatch
{
    public static JsonObject Apply(JsonObject target, JsonObject patch) => (JsonObject)Merge(target.DeepClone(), patch)!;

    private static JsonNode? Merge(JsonNode? target, JsonNode? patch)
    {
        if (patch is not JsonObject patchObject)
        {
            return patch?.DeepClone();
        }

        var result = target as JsonObject ?? new JsonObject();
        foreach (var (key, value) in patchObject)
        {
            if (value is null)
            {
                result.Remove(key);
            }
            else
            {
                result.TryGetPropertyValue(key, out var existing);
                var merged = Merge(existing?.DeepClone(), value);
                result[key] = merged;
            }
        }

        return result;
    }
}

/// <summary>
/// Kubernetes strategic merge patch for built-in kinds: like a merge patch, except that lists
/// with a merge key (containers by name, conditions by type, ...) are merged element by element,
/// lists of primitives marked "merge" (finalizers) are unions, and the $patch, $retainKeys,
/// $setElementOrder and $deleteFromPrimitiveList directives kubectl sends are honoured.
/// </summary>
public static class StrategicMergePatch
{
    /// <summary>Merge keys by field name; the field names are unambiguous across the kinds served here.</summary>
    private static readonly Dictionary<string, string> MergeKeys = new(StringComparer.Ordinal)
    {
        ["containers"] = "name",
        ["initContainers"] = "name",
        ["ephemeralContainers"] = "name",
        ["env"] = "name",
        ["volumes"] = "name",
        ["volumeMounts"] = "mountPath",
        ["volumeDevices"] = "devicePath",
        ["imagePullSecrets"] = "name",
        ["conditions"] = "type",
        ["ownerReferences"] = "uid",
        ["hostAliases"] = "ip",
        ["taints"] = "key",
        ["addresses"] = "type",
        ["readinessGates"] = "conditionType",
        ["resourceClaims"] = "name",
        ["ports"] = "containerPort",
        ["secrets"] = "name",
    };

    /// <summary>Lists of primitives whose patch strategy is "merge" (a union).</summary>
    private static readonly HashSet<string> MergedPrimitiveLists = new(StringComparer.Ordinal) { "finalizers" };

    public static JsonObject Apply(JsonObject target, JsonObject patch, ResourceType type)
    {
        bool servicePorts = type.StorageKey == "/services";
        return MergeObject(target.DeepClone().AsObject(), patch, servicePorts);
    }

    private static JsonObject MergeObject(JsonObject target, JsonObject patch, bool servicePorts)
    {
        var directive = Json.GetString(patch, "$patch");
        if (directive == "replace")
        {
            var replacement = patch.DeepClone().AsObject();
            replacement.Remove("$patch");
            return replacement;
        }

        if (directive == "delete")
        {
            return new JsonObject();
        }

        if (patch["$retainKeys"] is JsonArray retain)
        {
            var keep = Json.StringList(retain).ToHashSet(StringComparer.Ordinal);
            foreach (var key in target.Select(p => p.Key).ToList())
            {
                if (!keep.Contains(key))
                {
                    target.Remove(key);
                }
            }
        }

        foreach (var (key, value) in patch)
        {
            if (key is "$patch" or "$retainKeys" || key.StartsWith("$setElementOrder/", StringComparison.Ordinal))
            {
                continue; // ordering directives only reorder; element content is what matters here
            }

            if (key.StartsWith("$deleteFromPrimitiveList/", StringComparison.Ordinal))
            {
                var field = key["$deleteFromPrimitiveList/".Length..];
                if (target[field] is JsonArray list && value is JsonArray remove)
                {
                    for (int i = list.Count - 1; i >= 0; i--)
                    {
                        if (remove.Any(r => JsonNode.DeepEquals(r, list[i])))
                        {
                            list.RemoveAt(i);
                        }
                    }
                }

                continue;
            }

            if (value is null)
            {
                target.Remove(key);
                continue;
            }

            target.TryGetPropertyValue(key, out var existing);
            JsonNode merged = value switch
            {
                JsonObject o => MergeObject(existing as JsonObject ?? new JsonObject(), o, servicePorts),
                JsonArray a => MergeList(key, existing as JsonArray, a, servicePorts),
                _ => value.DeepClone(),
            };
            if (!ReferenceEquals(merged, existing))
            {
                target[key] = merged;
            }
        }

        return target;
    }

    private static JsonArray MergeList(string field, JsonArray? target, JsonArray patch, bool servicePorts)
    {
        if (MergedPrimitiveLists.Contains(field))
        {
            var union = target?.DeepClone().AsArray() ?? [];
            foreach (var item in patch)
            {
                if (!union.Any(u => JsonNode.DeepEquals(u, item)))
                {
                    union.Add(item?.DeepClone());
                }
            }

            return union;
        }

        var mergeKey = field == "ports" && servicePorts ? "port" : MergeKeys.GetValueOrDefault(field);
        bool replaceAll = patch.OfType<JsonObject>().Any(o => Json.GetString(o, "$patch") == "replace");
        if (mergeKey is null || target is null || replaceAll)
        {
            var replaced = new JsonArray();
            foreach (var item in patch)
            {
                if (item is JsonObject o && Json.GetString(o, "$patch") is "replace" or "delete")
                {
                    continue;
                }

                replaced.Add(item?.DeepClone());
            }

            return replaced;
        }

        var result = target.DeepClone().AsArray();
        foreach (var item in patch)
        {
            if (item is not JsonObject element || element[mergeKey] is not JsonNode keyValue)
            {
                result.Add(item?.DeepClone());
                continue;
            }

            int index = -1;
            for (int i = 0; i < result.Count; i++)
            {
                if (result[i] is JsonObject candidate && JsonNode.DeepEquals(candidate[mergeKey], keyValue))
                {
                    index = i;
                    break;
                }
            }

            if (Json.GetString(element, "$patch") == "delete")
            {
                if (index >= 0)
                {
                    result.RemoveAt(index);
                }

                continue;
            }

            if (index >= 0)
            {
                var current = (JsonObject)result[index]!;
                var merged = MergeObject(current, element, servicePorts);
                if (!ReferenceEquals(merged, current))
                {
                    result[index] = merged;
                }
            }
            else
            {
                var added = element.DeepClone().AsObject();
                added.Remove("$patch");
                result.Add(added);
            }
        }

        return result;
    }
}

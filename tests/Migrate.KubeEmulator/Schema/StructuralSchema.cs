using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Migrate.KubeEmulator.Api;

namespace Migrate.KubeEmulator.Schema;

/// <summary>One x-kubernetes-validations rule, compiled.</summary>
public sealed record ValidationRule(string Rule, string? Message, string? Reason, string? FieldPath, CelExpression Expression)
{
    public bool IsTransition => Expression.ReferencesOldSelf;
}

/// <summary>
/// A CRD version's openAPIV3Schema as the server uses it: to prune unknown fields, apply
/// defaults, and validate (types, required, enum, bounds, lengths, patterns, list types, CEL rules).
/// </summary>
public sealed class StructuralSchema
{
    public string? Type { get; private init; }

    public string? Description { get; private init; }

    public Dictionary<string, StructuralSchema> Properties { get; } = new(StringComparer.Ordinal);

    public HashSet<string> Required { get; } = new(StringComparer.Ordinal);

    public StructuralSchema? Items { get; private set; }

    public StructuralSchema? AdditionalProperties { get; private set; }

    public bool AdditionalPropertiesAllowed { get; private set; }

    public List<JsonNode?> Enum { get; } = [];

    public double? Minimum { get; private init; }

    public double? Maximum { get; private init; }

    public bool ExclusiveMinimum { get; private init; }

    public bool ExclusiveMaximum { get; private init; }

    public long? MinLength { get; private init; }

    public long? MaxLength { get; private init; }

    public long? MinItems { get; private init; }

    public long? MaxItems { get; private init; }

    public long? MinProperties { get; private init; }

    public long? MaxProperties { get; private init; }

    public Regex? Pattern { get; private init; }

    public string? PatternText { get; private init; }

    public bool Nullable { get; private init; }

    public JsonNode? Default { get; private init; }

    public bool PreserveUnknownFields { get; private init; }

    public bool IntOrString { get; private init; }

    public bool EmbeddedResource { get; private init; }

    public string? ListType { get; private init; }

    public List<string> ListMapKeys { get; } = [];

    public List<ValidationRule> Rules { get; } = [];

    /// <summary>Rules that could not be compiled (reported as warnings when the CRD is written, not enforced).</summary>
    public List<string> UnsupportedRules { get; } = [];

    public static StructuralSchema Parse(JsonObject node)
    {
        var schema = new StructuralSchema
        {
            Type = Json.GetString(node, "type"),
            Description = Json.GetString(node, "description"),
            Minimum = Number(node["minimum"]),
            Maximum = Number(node["maximum"]),
            ExclusiveMinimum = node["exclusiveMinimum"]?.GetValueKind() == JsonValueKind.True,
            ExclusiveMaximum = node["exclusiveMaximum"]?.GetValueKind() == JsonValueKind.True,
            MinLength = Integer(node["minLength"]),
            MaxLength = Integer(node["maxLength"]),
            MinItems = Integer(node["minItems"]),
            MaxItems = Integer(node["maxItems"]),
            MinProperties = Integer(node["minProperties"]),
            MaxProperties = Integer(node["maxProperties"]),
            PatternText = Json.GetString(node, "pattern"),
            Pattern = Json.GetString(node, "pattern") is { } p ? new Regex(p, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)) : null,
            Nullable = node["nullable"]?.GetValueKind() == JsonValueKind.True,
            Default = node["default"]?.DeepClone(),
            PreserveUnknownFields = node["x-kubernetes-preserve-unknown-fields"]?.GetValueKind() == JsonValueKind.True,
            IntOrString = node["x-kubernetes-int-or-string"]?.GetValueKind() == JsonValueKind.True,
            EmbeddedResource = node["x-kubernetes-embedded-resource"]?.GetValueKind() == JsonValueKind.True,
            ListType = Json.GetString(node, "x-kubernetes-list-type"),
        };

        if (node["properties"] is JsonObject properties)
        {
            foreach (var (name, value) in properties)
            {
                if (value is JsonObject child)
                {
                    schema.Properties[name] = Parse(child);
                }
            }
        }

        foreach (var r in Json.StringList(node["required"]))
        {
            schema.Required.Add(r);
        }

        if (node["items"] is JsonObject items)
        {
            schema.Items = Parse(items);
        }

        switch (node["additionalProperties"])
        {
            case JsonObject additional:
                schema.AdditionalProperties = Parse(additional);
                schema.AdditionalPropertiesAllowed = true;
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.True:
                schema.AdditionalPropertiesAllowed = true;
                break;
        }

        if (node["enum"] is JsonArray values)
        {
            schema.Enum.AddRange(values.Select(v => v?.DeepClone()));
        }

        schema.ListMapKeys.AddRange(Json.StringList(node["x-kubernetes-list-map-keys"]));

        if (node["x-kubernetes-validations"] is JsonArray rules)
        {
            foreach (var rule in rules.OfType<JsonObject>())
            {
                var text = Json.GetString(rule, "rule") ?? "";
                try
                {
                    schema.Rules.Add(new ValidationRule(text, Json.GetString(rule, "message"), Json.GetString(rule, "reason"),
                        Json.GetString(rule, "fieldPath"), CelExpression.Compile(text)));
                }
                catch (CelException e)
                {
                    schema.UnsupportedRules.Add($"{text}: {e.Message}");
                }
            }
        }

        return schema;
    }

    /// <summary>All rules of this schema and below that could not be compiled.</summary>
    public IEnumerable<string> AllUnsupportedRules() =>
        UnsupportedRules
            .Concat(Properties.Values.SelectMany(p => p.AllUnsupportedRules()))
            .Concat(Items?.AllUnsupportedRules() ?? [])
            .Concat(AdditionalProperties?.AllUnsupportedRules() ?? []);

    /// <summary>Removes fields the schema does not declare (and nulls where not nullable); returns their paths.</summary>
    public void Prune(JsonNode? node, string path, List<string> unknown, bool isRoot = false)
    {
        if (PreserveUnknownFields && Properties.Count == 0 && AdditionalProperties is null)
        {
            return;
        }

        if (node is JsonObject obj)
        {
            foreach (var (key, value) in obj.ToList())
            {
                var childPath = Join(path, key);
                if (isRoot && key is "apiVersion" or "kind" or "metadata")
                {
                    continue;
                }

                if (Properties.TryGetValue(key, out var child))
                {
                    if (value is null && !child.Nullable)
                    {
                        obj.Remove(key);
                        continue;
                    }

                    child.Prune(value, childPath, unknown);
                }
                else if (AdditionalProperties is not null)
                {
                    AdditionalProperties.Prune(value, childPath, unknown);
                }
                else if (!PreserveUnknownFields && !AdditionalPropertiesAllowed && !(EmbeddedResource && key is "apiVersion" or "kind" or "metadata"))
                {
                    unknown.Add(childPath);
                    obj.Remove(key);
                }
            }
        }
        else if (node is JsonArray array && Items is not null)
        {
            for (int i = 0; i < array.Count; i++)
            {
                Items.Prune(array[i], $"{path}[{i}]", unknown);
            }
        }
    }

    /// <summary>Fills absent fields that have defaults, depth first.</summary>
    public void ApplyDefaults(JsonNode? node)
    {
        if (node is JsonObject obj)
        {
            foreach (var (key, child) in Properties)
            {
                if (!obj.ContainsKey(key) && child.Default is not null)
                {
                    obj[key] = child.Default.DeepClone();
                }

                if (obj[key] is { } value)
                {
                    child.ApplyDefaults(value);
                }
            }

            if (AdditionalProperties is not null)
            {
                foreach (var (key, value) in obj.ToList())
                {
                    if (!Properties.ContainsKey(key))
                    {
                        AdditionalProperties.ApplyDefaults(value);
                    }
                }
            }
        }
        else if (node is JsonArray array && Items is not null)
        {
            foreach (var item in array)
            {
                Items.ApplyDefaults(item);
            }
        }
    }

    public void Validate(JsonNode? value, JsonNode? old, string path, List<FieldError> errors, bool isRoot = false)
    {
        if (value is null)
        {
            if (!Nullable && !isRoot)
            {
                errors.Add(new FieldError(path, "FieldValueInvalid", "Invalid value: \"null\": " + path + " in body must be of type " + (Type ?? "object") + ": \"null\""));
            }

            return;
        }

        if (!CheckType(value, path, errors))
        {
            return;
        }

        if (Enum.Count > 0 && !Enum.Any(e => JsonNode.DeepEquals(e, value)))
        {
            var supported = string.Join(", ", Enum.Select(e => e?.ToJsonString() ?? "null"));
            errors.Add(new FieldError(path, "FieldValueNotSupported", $"Unsupported value: {value.ToJsonString()}: supported values: {supported}"));
        }

        switch (value)
        {
            case JsonObject obj:
                ValidateObject(obj, old as JsonObject, path, errors, isRoot);
                break;
            case JsonArray array:
                ValidateArray(array, old as JsonArray, path, errors);
                break;
            case JsonValue scalar:
                ValidateScalar(scalar, path, errors);
                break;
        }

        foreach (var rule in Rules)
        {
            if (rule.IsTransition && old is null)
            {
                continue; // transition rules only apply to updates of an existing value
            }

            bool ok;
            try
            {
                ok = rule.Expression.Evaluate(value, old);
            }
            catch (CelException e)
            {
                errors.Add(new FieldError(path, "FieldValueInvalid", $"Invalid value: \"{TypeName(value)}\": rule \"{rule.Rule}\" could not be evaluated: {e.Message}"));
                continue;
            }

            if (!ok)
            {
                var fieldPath = rule.FieldPath is { } fp ? path + fp : path;
                var reason = rule.Reason ?? "FieldValueInvalid";
                var message = rule.Message ?? $"failed rule: {rule.Rule}";
                errors.Add(new FieldError(fieldPath, reason, $"Invalid value: \"{TypeName(value)}\": {message}"));
            }
        }
    }

    private void ValidateObject(JsonObject obj, JsonObject? old, string path, List<FieldError> errors, bool isRoot)
    {
        foreach (var required in Required)
        {
            if (!obj.ContainsKey(required) || (obj[required] is null && !(Properties.GetValueOrDefault(required)?.Nullable ?? false)))
            {
                errors.Add(new FieldError(Join(path, required), "FieldValueRequired", "Required value"));
            }
        }

        if (MinProperties is long minProperties && obj.Count < minProperties)
        {
            errors.Add(new FieldError(path, "FieldValueInvalid", $"Invalid value: {obj.Count}: {path} in body should have at least {minProperties} properties"));
        }

        if (MaxProperties is long maxProperties && obj.Count > maxProperties)
        {
            errors.Add(new FieldError(path, "TooMany", $"Too many: {obj.Count}: must have at most {maxProperties} items"));
        }

        foreach (var (key, value) in obj)
        {
            if (isRoot && key is "apiVersion" or "kind" or "metadata")
            {
                continue;
            }

            var schema = Properties.GetValueOrDefault(key) ?? AdditionalProperties;
            schema?.Validate(value, old?[key], Join(path, key), errors);
        }
    }

    private void ValidateArray(JsonArray array, JsonArray? old, string path, List<FieldError> errors)
    {
        if (MinItems is long minItems && array.Count < minItems)
        {
            errors.Add(new FieldError(path, "FieldValueInvalid", $"Invalid value: {array.Count}: {path} in body should have at least {minItems} items"));
        }

        if (MaxItems is long maxItems && array.Count > maxItems)
        {
            errors.Add(new FieldError(path, "TooMany", $"Too many: {array.Count}: must have at most {maxItems} items"));
        }

        if (ListType == "set")
        {
            for (int i = 0; i < array.Count; i++)
            {
                for (int j = 0; j < i; j++)
                {
                    if (JsonNode.DeepEquals(array[i], array[j]))
                    {
                        errors.Add(new FieldError($"{path}[{i}]", "FieldValueDuplicate", $"Duplicate value: {array[i]?.ToJsonString()}"));
                    }
                }
            }
        }
        else if (ListType == "map" && ListMapKeys.Count > 0)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < array.Count; i++)
            {
                var key = string.Join("\u0000", ListMapKeys.Select(k => array[i]?[k]?.ToJsonString() ?? "null"));
                if (!seen.Add(key))
                {
                    var shown = string.Join(", ", ListMapKeys.Select(k => $"\"{k}\":{array[i]?[k]?.ToJsonString()}"));
                    errors.Add(new FieldError($"{path}[{i}]", "FieldValueDuplicate", $"Duplicate value: map[{shown}]"));
                }
            }
        }

        if (Items is not null)
        {
            for (int i = 0; i < array.Count; i++)
            {
                Items.Validate(array[i], null, $"{path}[{i}]", errors);
            }
        }
    }

    private void ValidateScalar(JsonValue value, string path, List<FieldError> errors)
    {
        if (value.TryGetValue<string>(out var s))
        {
            int length = s.EnumerateRunes().Count();
            if (MaxLength is long maxLength && length > maxLength)
            {
                errors.Add(new FieldError(path, "FieldValueTooLong", $"Too long: may not be more than {maxLength} bytes"));
            }

            if (MinLength is long minLength && length < minLength)
            {
                errors.Add(new FieldError(path, "FieldValueInvalid", $"Invalid value: \"{s}\": {path} in body should be at least {minLength} chars long"));
            }

            if (Pattern is not null && !Pattern.IsMatch(s))
            {
                errors.Add(new FieldError(path, "FieldValueInvalid", $"Invalid value: \"{s}\": {path} in body should match '{PatternText}'"));
            }
        }
        else if (value.GetValueKind() == JsonValueKind.Number)
        {
            double number = value.GetValue<double>();
            var shown = value.ToJsonString();
            if (Minimum is double min && (ExclusiveMinimum ? number <= min : number < min))
            {
                errors.Add(new FieldError(path, "FieldValueInvalid",
                    $"Invalid value: {shown}: {path} in body should be greater than {(ExclusiveMinimum ? "" : "or equal to ")}{Format(min)}"));
            }

            if (Maximum is double max && (ExclusiveMaximum ? number >= max : number > max))
            {
                errors.Add(new FieldError(path, "FieldValueInvalid",
                    $"Invalid value: {shown}: {path} in body should be less than {(ExclusiveMaximum ? "" : "or equal to ")}{Format(max)}"));
            }
        }
    }

    private bool CheckType(JsonNode value, string path, List<FieldError> errors)
    {
        if (Type is null || IntOrString && value is JsonValue v && (v.GetValueKind() == JsonValueKind.String || IsInteger(v)))
        {
            return true;
        }

        bool ok = Type switch
        {
            "object" => value is JsonObject,
            "array" => value is JsonArray,
            "string" => value is JsonValue s && s.GetValueKind() == JsonValueKind.String,
            "boolean" => value is JsonValue b && b.GetValueKind() is JsonValueKind.True or JsonValueKind.False,
            "integer" => value is JsonValue i && IsInteger(i),
            "number" => value is JsonValue n && n.GetValueKind() == JsonValueKind.Number,
            _ => true,
        };
        if (!ok)
        {
            var shown = value is JsonValue sv && sv.GetValueKind() == JsonValueKind.String ? value.ToJsonString() : $"\"{TypeName(value)}\"";
            errors.Add(new FieldError(path, "FieldValueTypeInvalid", $"Invalid value: {shown}: {path} in body must be of type {Type}: {shown}"));
        }

        return ok;
    }

    private static bool IsInteger(JsonValue v) =>
        v.GetValueKind() == JsonValueKind.Number && double.IsInteger(v.GetValue<double>());

    internal static string TypeName(JsonNode? value) => value switch
    {
        JsonObject => "object",
        JsonArray => "array",
        JsonValue v => v.GetValueKind() switch
        {
            JsonValueKind.String => "string",
            JsonValueKind.Number => IsInteger(v) ? "integer" : "number",
            JsonValueKind.True or JsonValueKind.False => "boolean",
            _ => "null",
        },
        _ => "null",
    };

    private static string Join(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";

    private static string Format(double d) => d.ToString(CultureInfo.InvariantCulture);

    private static double? Number(JsonNode? node) => node is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : null;

    private static long? Integer(JsonNode? node) => node is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? (long)v.GetValue<double>() : null;
}

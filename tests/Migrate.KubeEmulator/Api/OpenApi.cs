using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>
/// OpenAPI v3 documents, as far as kubectl needs them: the index of group-versions, and per
/// group-version the operations (which tell kubectl the server validates fields itself, so it
/// sends fieldValidation=Strict) and the schemas. Custom resources carry their CRD's schema, so
/// <c>kubectl explain</c> works for them; built-in kinds carry only a stub (explain is partial).
/// </summary>
public sealed class OpenApi(ResourceRegistry registry)
{
    private static readonly JsonObject ObjectMetaSchema = new()
    {
        ["type"] = "object",
        ["description"] = "Standard object's metadata.",
        ["properties"] = new JsonObject
        {
            ["name"] = new JsonObject { ["type"] = "string", ["description"] = "Name must be unique within a namespace." },
            ["namespace"] = new JsonObject { ["type"] = "string", ["description"] = "Namespace defines the space within which each name must be unique." },
            ["labels"] = new JsonObject { ["type"] = "object", ["additionalProperties"] = new JsonObject { ["type"] = "string" }, ["description"] = "Map of string keys and values that can be used to organize and categorize objects." },
            ["annotations"] = new JsonObject { ["type"] = "object", ["additionalProperties"] = new JsonObject { ["type"] = "string" }, ["description"] = "Annotations is an unstructured key value map stored with a resource." },
            ["resourceVersion"] = new JsonObject { ["type"] = "string", ["description"] = "An opaque value that represents the internal version of this object." },
            ["uid"] = new JsonObject { ["type"] = "string", ["description"] = "UID is the unique in time and space value for this object." },
            ["generation"] = new JsonObject { ["type"] = "integer", ["description"] = "A sequence number representing a specific generation of the desired state." },
            ["finalizers"] = new JsonObject { ["type"] = "array", ["items"] = new JsonObject { ["type"] = "string" }, ["description"] = "Must be empty before the object is deleted from the registry." },
        },
    };

    public JsonObject Index()
    {
        var paths = new JsonObject();
        foreach (var (group, versions) in registry.Groups())
        {
            foreach (var version in versions)
            {
                var key = group.Length == 0 ? $"api/{version}" : $"apis/{group}/{version}";
                paths[key] = new JsonObject { ["serverRelativeURL"] = $"/openapi/v3/{key}?hash={Hash(group, version)}" };
            }
        }

        return new JsonObject { ["paths"] = paths };
    }

    public JsonObject? Document(string group, string version)
    {
        var types = registry.All.Where(t => t.Group == group && t.Version == version).ToList();
        if (types.Count == 0)
        {
            return null;
        }

        var paths = new JsonObject();
        var schemas = new JsonObject { ["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] = ObjectMetaSchema.DeepClone() };
        foreach (var t in types)
        {
            var prefix = group.Length == 0 ? $"/api/{version}" : $"/apis/{group}/{version}";
            var collection = t.Namespaced ? $"{prefix}/namespaces/{{namespace}}/{t.Plural}" : $"{prefix}/{t.Plural}";
            paths[collection] = new JsonObject
            {
                ["get"] = Operation(t, "list"),
                ["post"] = Operation(t, "post"),
            };
            if (!t.Ephemeral)
            {
                paths[$"{collection}/{{name}}"] = new JsonObject
                {
                    ["get"] = Operation(t, "get"),
                    ["put"] = Operation(t, "put"),
                    ["patch"] = Operation(t, "patch"),
                    ["delete"] = Operation(t, "delete"),
                };
            }

            schemas[SchemaName(t)] = KindSchema(t);
        }

        return new JsonObject
        {
            ["openapi"] = "3.0.0",
            ["info"] = new JsonObject { ["title"] = "Kubernetes", ["version"] = "v1.32.0" },
            ["paths"] = paths,
            ["components"] = new JsonObject { ["schemas"] = schemas },
        };
    }

    private static JsonObject Operation(ResourceType t, string action)
    {
        var parameters = new JsonArray(
            new JsonObject { ["name"] = "dryRun", ["in"] = "query", ["schema"] = new JsonObject { ["type"] = "string", ["uniqueItems"] = true } });
        if (action is "post" or "put" or "patch")
        {
            parameters.Add(new JsonObject
            {
                ["name"] = "fieldValidation",
                ["in"] = "query",
                ["description"] = "instructs the server on how to handle objects in the request containing unknown or duplicate fields",
                ["schema"] = new JsonObject { ["type"] = "string", ["uniqueItems"] = true },
            });
            parameters.Add(new JsonObject { ["name"] = "fieldManager", ["in"] = "query", ["schema"] = new JsonObject { ["type"] = "string", ["uniqueItems"] = true } });
        }

        var reference = new JsonObject { ["$ref"] = $"#/components/schemas/{SchemaName(t)}" };
        return new JsonObject
        {
            ["operationId"] = $"{action}{t.Kind}",
            ["parameters"] = parameters,
            ["responses"] = new JsonObject
            {
                ["200"] = new JsonObject
                {
                    ["description"] = "OK",
                    ["content"] = new JsonObject { ["application/json"] = new JsonObject { ["schema"] = reference } },
                },
            },
            ["x-kubernetes-action"] = action,
            ["x-kubernetes-group-version-kind"] = new JsonObject { ["group"] = t.Group, ["version"] = t.Version, ["kind"] = t.Kind },
        };
    }

    private static JsonObject KindSchema(ResourceType t)
    {
        JsonObject schema;
        if (t.IsCustom && t.SourceSchema is { } source)
        {
            schema = source.DeepClone().AsObject();
        }
        else
        {
            schema = new JsonObject
            {
                ["type"] = "object",
                ["description"] = $"{t.Kind} (the emulator serves no field schema for built-in kinds).",
                ["x-kubernetes-preserve-unknown-fields"] = true,
            };
        }

        var properties = schema["properties"] as JsonObject ?? new JsonObject();
        schema["properties"] = properties;
        properties["apiVersion"] = new JsonObject { ["type"] = "string", ["description"] = "APIVersion defines the versioned schema of this representation of an object." };
        properties["kind"] = new JsonObject { ["type"] = "string", ["description"] = "Kind is a string value representing the REST resource this object represents." };
        properties["metadata"] = new JsonObject
        {
            ["allOf"] = new JsonArray(new JsonObject { ["$ref"] = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" }),
            ["description"] = "Standard object's metadata.",
        };
        schema["x-kubernetes-group-version-kind"] = new JsonArray(new JsonObject { ["group"] = t.Group, ["kind"] = t.Kind, ["version"] = t.Version });
        return schema;
    }

    private static string SchemaName(ResourceType t)
    {
        var group = t.Group.Length == 0 ? "core" : string.Join('.', t.Group.Split('.').Reverse());
        return t.IsCustom ? $"{group}.{t.Version}.{t.Kind}" : $"io.k8s.api.{group}.{t.Version}.{t.Kind}";
    }

    private string Hash(string group, string version)
    {
        var text = new StringBuilder();
        foreach (var t in registry.All.Where(t => t.Group == group && t.Version == version))
        {
            text.Append(t.Kind).Append('|').Append(t.SourceSchema?.ToJsonString()).Append('\n');
        }

        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..32];
    }
}

using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>
/// API discovery documents: the legacy per-group lists (/api, /apis, /api/v1, /apis/g/v) and the
/// aggregated apidiscovery.k8s.io/v2 form kubectl 1.30+ asks for first.
/// </summary>
public sealed class Discovery(ResourceRegistry registry)
{
    public const string AggregatedContentType = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

    public static bool WantsAggregated(string? accept) =>
        accept is not null && accept.Contains("g=apidiscovery.k8s.io", StringComparison.Ordinal)
                           && accept.Contains("v=v2", StringComparison.Ordinal);

    public JsonObject CoreVersions(string serverAddress) => new()
    {
        ["kind"] = "APIVersions",
        ["versions"] = new JsonArray("v1"),
        ["serverAddressByClientCIDRs"] = new JsonArray(new JsonObject { ["clientCIDR"] = "0.0.0.0/0", ["serverAddress"] = serverAddress }),
    };

    public JsonObject GroupList()
    {
        var groups = new JsonArray();
        foreach (var (group, versions) in registry.Groups().Where(g => g.Group.Length > 0))
        {
            groups.Add(Group(group, versions));
        }

        return new JsonObject { ["kind"] = "APIGroupList", ["apiVersion"] = "v1", ["groups"] = groups };
    }

    public JsonObject? GroupDocument(string group)
    {
        var match = registry.Groups().FirstOrDefault(g => g.Group == group);
        if (match.Group is null)
        {
            return null;
        }

        var document = Group(match.Group, match.Versions);
        document["kind"] = "APIGroup";
        document["apiVersion"] = "v1";
        return document;
    }

    public JsonObject? ResourceList(string group, string version)
    {
        var types = registry.All.Where(t => t.Group == group && t.Version == version).ToList();
        if (types.Count == 0)
        {
            return null;
        }

        var resources = new JsonArray();
        foreach (var t in types)
        {
            resources.Add(WithNames(t, new JsonObject
            {
                ["name"] = t.Plural,
                ["singularName"] = t.Singular,
                ["namespaced"] = t.Namespaced,
                ["kind"] = t.Kind,
                ["verbs"] = Json.ToArray(t.Verbs),
            }));
            foreach (var (sub, kindGroup, kindVersion, kind, verbs) in Subresources(t))
            {
                var entry = new JsonObject
                {
                    ["name"] = $"{t.Plural}/{sub}",
                    ["singularName"] = "",
                    ["namespaced"] = t.Namespaced,
                    ["kind"] = kind,
                    ["verbs"] = Json.ToArray(verbs),
                };
                if (kindGroup != t.Group || kindVersion != t.Version)
                {
                    entry["group"] = kindGroup;
                    entry["version"] = kindVersion;
                }

                resources.Add(entry);
            }
        }

        return new JsonObject
        {
            ["kind"] = "APIResourceList",
            ["apiVersion"] = "v1",
            ["groupVersion"] = types[0].GroupVersion,
            ["resources"] = resources,
        };
    }

    /// <summary>The aggregated document for /api (core) or /apis (every named group).</summary>
    public JsonObject Aggregated(bool core)
    {
        var items = new JsonArray();
        foreach (var (group, versions) in registry.Groups().Where(g => (g.Group.Length == 0) == core))
        {
            var versionList = new JsonArray();
            foreach (var version in versions)
            {
                var resources = new JsonArray();
                foreach (var t in registry.All.Where(t => t.Group == group && t.Version == version))
                {
                    var resource = WithNames(t, new JsonObject
                    {
                        ["resource"] = t.Plural,
                        ["responseKind"] = Kind(t.Group, t.Version, t.Kind),
                        ["scope"] = t.Namespaced ? "Namespaced" : "Cluster",
                        ["singularResource"] = t.Singular,
                        ["verbs"] = Json.ToArray(t.Verbs),
                    });

                    var subresources = new JsonArray();
                    foreach (var (sub, kindGroup, kindVersion, kind, verbs) in Subresources(t))
                    {
                        subresources.Add(new JsonObject
                        {
                            ["subresource"] = sub,
                            ["responseKind"] = Kind(kindGroup, kindVersion, kind),
                            ["verbs"] = Json.ToArray(verbs),
                        });
                    }

                    if (subresources.Count > 0)
                    {
                        resource["subresources"] = subresources;
                    }

                    resources.Add(resource);
                }

                versionList.Add(new JsonObject { ["version"] = version, ["resources"] = resources, ["freshness"] = "Current" });
            }

            items.Add(new JsonObject
            {
                ["metadata"] = new JsonObject { ["name"] = group, ["creationTimestamp"] = null },
                ["versions"] = versionList,
            });
        }

        return new JsonObject
        {
            ["kind"] = "APIGroupDiscoveryList",
            ["apiVersion"] = "apidiscovery.k8s.io/v2",
            ["metadata"] = new JsonObject(),
            ["items"] = items,
        };
    }

    /// <summary>Adds a resource's short names and categories, when it has any.</summary>
    private static JsonObject WithNames(ResourceType t, JsonObject resource)
    {
        if (!t.ShortNames.IsEmpty)
        {
            resource["shortNames"] = Json.ToArray(t.ShortNames);
        }

        if (!t.Categories.IsEmpty)
        {
            resource["categories"] = Json.ToArray(t.Categories);
        }

        return resource;
    }

    private static JsonObject Group(string group, IReadOnlyList<string> versions)
    {
        var list = new JsonArray();
        foreach (var v in versions)
        {
            list.Add(new JsonObject { ["groupVersion"] = $"{group}/{v}", ["version"] = v });
        }

        return new JsonObject
        {
            ["name"] = group,
            ["versions"] = list,
            ["preferredVersion"] = new JsonObject { ["groupVersion"] = $"{group}/{versions[0]}", ["version"] = versions[0] },
        };
    }

    private static JsonObject Kind(string group, string version, string kind) =>
        new() { ["group"] = group, ["version"] = version, ["kind"] = kind };

    private static IEnumerable<(string Sub, string Group, string Version, string Kind, string[] Verbs)> Subresources(ResourceType t)
    {
        if (t.HasStatus)
        {
            yield return ("status", t.Group, t.Version, t.Kind, ["get", "patch", "update"]);
        }

        foreach (var sub in t.Subresources)
        {
            yield return sub switch
            {
                "log" => (sub, t.Group, t.Version, "Pod", ["get"]),
                "eviction" => (sub, "policy", "v1", "Eviction", ["create"]),
                "binding" => (sub, t.Group, t.Version, "Binding", ["create"]),
                "token" => (sub, "authentication.k8s.io", "v1", "TokenRequest", ["create"]),
                "finalize" => (sub, t.Group, t.Version, t.Kind, ["update"]),
                _ => (sub, t.Group, t.Version, t.Kind, ["get"]),
            };
        }
    }
}

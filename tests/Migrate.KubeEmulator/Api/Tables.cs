using System.Globalization;
using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>
/// Server-side printing: the meta.k8s.io/v1 Table kubectl asks for when it prints. Built-in kinds
/// get the columns kubectl users know; custom resources get their CRD's printer columns.
/// </summary>
public sealed class Tables(TimeProvider clock)
{
    private sealed record Column(string Name, string Type, int Priority, Func<JsonObject, JsonNode?> Cell, string Format = "");

    public static bool WantsTable(string? accept) =>
        accept is not null && accept.Contains("as=Table", StringComparison.Ordinal);

    public JsonObject Convert(ResourceType type, IEnumerable<JsonObject> objects, string resourceVersion, string? includeObject, string? continueToken = null)
    {
        var columns = ColumnsFor(type);
        var definitions = new JsonArray();
        foreach (var c in columns)
        {
            definitions.Add(new JsonObject
            {
                ["name"] = c.Name,
                ["type"] = c.Type,
                ["format"] = c.Format,
                ["description"] = c.Name,
                ["priority"] = c.Priority,
            });
        }

        var rows = new JsonArray();
        foreach (var obj in objects)
        {
            var cells = new JsonArray();
            foreach (var c in columns)
            {
                cells.Add(c.Cell(obj)?.DeepClone());
            }

            var row = new JsonObject { ["cells"] = cells };
            switch (includeObject ?? "Metadata")
            {
                case "Object":
                    row["object"] = obj.DeepClone();
                    break;
                case "Metadata":
                    row["object"] = new JsonObject
                    {
                        ["kind"] = "PartialObjectMetadata",
                        ["apiVersion"] = "meta.k8s.io/v1",
                        ["metadata"] = obj["metadata"]?.DeepClone(),
                    };
                    break;
            }

            rows.Add(row);
        }

        var metadata = new JsonObject { ["resourceVersion"] = resourceVersion };
        if (continueToken is not null)
        {
            metadata["continue"] = continueToken;
        }

        return new JsonObject
        {
            ["kind"] = "Table",
            ["apiVersion"] = "meta.k8s.io/v1",
            ["metadata"] = metadata,
            ["columnDefinitions"] = definitions,
            ["rows"] = rows,
        };
    }

    private List<Column> ColumnsFor(ResourceType type)
    {
        var name = new Column("Name", "string", 0, o => Json.GetString(o, "metadata", "name"), "name");
        var age = new Column("Age", "string", 0, Age);
        if (type.IsCustom)
        {
            if (type.PrinterColumns.IsEmpty)
            {
                return [name, age];
            }

            return [name, .. type.PrinterColumns.Select(p => new Column(p.Name, p.Type, p.Priority, o => PrinterCell(o, p), p.Format))];
        }

        return type.StorageKey switch
        {
            "/pods" =>
            [
                name,
                new Column("Ready", "string", 0, o => PodReady(o)),
                new Column("Status", "string", 0, o => PodStatus(o)),
                new Column("Restarts", "string", 0, o => PodContainers(o).Sum(c => Json.WholeNumber(c["restartCount"]) ?? 0).ToString(CultureInfo.InvariantCulture)),
                age,
                new Column("IP", "string", 1, o => Json.GetString(o, "status", "podIP") ?? "<none>"),
                new Column("Node", "string", 1, o => Json.GetString(o, "spec", "nodeName") ?? "<none>"),
                new Column("Nominated Node", "string", 1, o => Json.GetString(o, "status", "nominatedNodeName") ?? "<none>"),
                new Column("Readiness Gates", "string", 1, _ => "<none>"),
            ],
            "/nodes" =>
            [
                name,
                new Column("Status", "string", 0, o => NodeStatus(o)),
                new Column("Roles", "string", 0, o => NodeRoles(o)),
                age,
                new Column("Version", "string", 0, o => Json.GetString(o, "status", "nodeInfo", "kubeletVersion") ?? ""),
                new Column("Internal-IP", "string", 1, o => NodeAddress(o, "InternalIP")),
                new Column("External-IP", "string", 1, o => NodeAddress(o, "ExternalIP")),
                new Column("OS-Image", "string", 1, o => Json.GetString(o, "status", "nodeInfo", "osImage") ?? "<unknown>"),
                new Column("Kernel-Version", "string", 1, o => Json.GetString(o, "status", "nodeInfo", "kernelVersion") ?? "<unknown>"),
                new Column("Container-Runtime", "string", 1, o => Json.GetString(o, "status", "nodeInfo", "containerRuntimeVersion") ?? "<unknown>"),
            ],
            "/namespaces" => [name, new Column("Status", "string", 0, o => Json.GetString(o, "status", "phase") ?? "Active"), age],
            "/events" =>
            [
                new Column("Last Seen", "string", 0, o => Since(Json.GetString(o, "lastTimestamp") ?? Json.GetString(o, "eventTime") ?? Json.GetString(o, "metadata", "creationTimestamp"))),
                new Column("Type", "string", 0, o => Json.GetString(o, "type")),
                new Column("Reason", "string", 0, o => Json.GetString(o, "reason")),
                new Column("Object", "string", 0, o => $"{Json.GetString(o, "involvedObject", "kind")?.ToLowerInvariant()}/{Json.GetString(o, "involvedObject", "name")}"),
                new Column("Message", "string", 0, o => Json.GetString(o, "message")),
            ],
            "coordination.k8s.io/leases" => [name, new Column("Holder", "string", 0, o => Json.GetString(o, "spec", "holderIdentity") ?? ""), age],
            "apps/deployments" =>
            [
                name,
                new Column("Ready", "string", 0, o => $"{Int(o, "status", "readyReplicas")}/{Int(o, "spec", "replicas", 1)}"),
                new Column("Up-to-date", "integer", 0, o => Int(o, "status", "updatedReplicas")),
                new Column("Available", "integer", 0, o => Int(o, "status", "availableReplicas")),
                age,
            ],
            "apps/daemonsets" =>
            [
                name,
                new Column("Desired", "integer", 0, o => Int(o, "status", "desiredNumberScheduled")),
                new Column("Current", "integer", 0, o => Int(o, "status", "currentNumberScheduled")),
                new Column("Ready", "integer", 0, o => Int(o, "status", "numberReady")),
                new Column("Up-to-date", "integer", 0, o => Int(o, "status", "updatedNumberScheduled")),
                new Column("Available", "integer", 0, o => Int(o, "status", "numberAvailable")),
                age,
            ],
            "policy/poddisruptionbudgets" =>
            [
                name,
                new Column("Min Available", "string", 0, o => Json.Walk(o, "spec", "minAvailable")?.ToString() ?? "N/A"),
                new Column("Max Unavailable", "string", 0, o => Json.Walk(o, "spec", "maxUnavailable")?.ToString() ?? "N/A"),
                new Column("Allowed Disruptions", "integer", 0, o => Int(o, "status", "disruptionsAllowed")),
                age,
            ],
            "apiextensions.k8s.io/customresourcedefinitions" =>
                [name, new Column("Created At", "date", 0, o => Json.GetString(o, "metadata", "creationTimestamp"))],
            _ => [name, age],
        };
    }

    private JsonNode? PrinterCell(JsonObject obj, PrinterColumn column)
    {
        var value = JsonPathValue(obj, column.JsonPath);
        if (value is null)
        {
            return null;
        }

        if (column.Type == "date")
        {
            return Since(Json.ScalarText(value));
        }

        return value.DeepClone();
    }

    /// <summary>The simple JSONPath CRD printer columns use: ".spec.a.b", ".status.items[0].x", ".metadata.labels.x".</summary>
    public static JsonNode? JsonPathValue(JsonNode? node, string path)
    {
        var p = path.Trim();
        if (p.StartsWith('{') && p.EndsWith('}'))
        {
            p = p[1..^1];
        }

        foreach (var raw in p.TrimStart('$').Split('.', StringSplitOptions.RemoveEmptyEntries))
        {
            var part = raw;
            int? index = null;
            int bracket = part.IndexOf('[', StringComparison.Ordinal);
            if (bracket >= 0 && part.EndsWith(']'))
            {
                if (int.TryParse(part[(bracket + 1)..^1], out int i))
                {
                    index = i;
                }

                part = part[..bracket];
            }

            node = part.Length == 0 ? node : (node as JsonObject)?[part];
            if (index is int n)
            {
                node = node is JsonArray a && n < a.Count ? a[n] : null;
            }

            if (node is null)
            {
                return null;
            }
        }

        return node;
    }

    private JsonNode Age(JsonObject obj) => Since(Json.GetString(obj, "metadata", "creationTimestamp"));

    private string Since(string? timestamp)
    {
        var t = Json.ParseTimestamp(timestamp);
        return t is null ? "<unknown>" : HumanDuration(clock.GetUtcNow() - t.Value);
    }

    /// <summary>The age format kubectl users know: 45s, 3m20s, 17m, 5h10m, 2d3h, 40d, 2y10d.</summary>
    public static string HumanDuration(TimeSpan d)
    {
        long seconds = (long)d.TotalSeconds;
        if (seconds < -1)
        {
            return "<invalid>";
        }

        if (seconds < 0)
        {
            return "0s";
        }

        if (seconds < 120)
        {
            return $"{seconds}s";
        }

        long minutes = (long)d.TotalMinutes;
        if (minutes < 10)
        {
            long s = seconds % 60;
            return s == 0 ? $"{minutes}m" : $"{minutes}m{s}s";
        }

        if (minutes < 180)
        {
            return $"{minutes}m";
        }

        long hours = (long)d.TotalHours;
        if (hours < 8)
        {
            long m = minutes % 60;
            return m == 0 ? $"{hours}h" : $"{hours}h{m}m";
        }

        if (hours < 48)
        {
            return $"{hours}h";
        }

        if (hours < 24 * 8)
        {
            long h = hours % 24;
            return h == 0 ? $"{hours / 24}d" : $"{hours / 24}d{h}h";
        }

        if (hours < 24 * 365 * 2)
        {
            return $"{hours / 24}d";
        }

        if (hours < 24 * 365 * 8)
        {
            long days = hours / 24 % 365;
            return days == 0 ? $"{hours / 24 / 365}y" : $"{hours / 24 / 365}y{days}d";
        }

        return $"{hours / 24 / 365}y";
    }

    private static IEnumerable<JsonObject> PodContainers(JsonObject pod) =>
        (Json.Walk(pod, "status", "containerStatuses") as JsonArray)?.OfType<JsonObject>() ?? [];

    private static string PodReady(JsonObject pod)
    {
        int total = (Json.Walk(pod, "spec", "containers") as JsonArray)?.Count ?? 0;
        int ready = PodContainers(pod).Count(c => Json.Truth(c["ready"]) == true);
        return $"{ready}/{total}";
    }

    private static string PodStatus(JsonObject pod)
    {
        if (Json.GetString(pod, "metadata", "deletionTimestamp") is not null)
        {
            return "Terminating";
        }

        var reason = Json.GetString(pod, "status", "reason") ?? Json.GetString(pod, "status", "phase") ?? "Pending";
        foreach (var c in PodContainers(pod))
        {
            if (Json.GetString(c, "state", "waiting", "reason") is { Length: > 0 } waiting)
            {
                reason = waiting;
            }
            else if (Json.GetString(c, "state", "terminated", "reason") is { Length: > 0 } terminated)
            {
                reason = terminated;
            }
        }

        return reason;
    }

    private static string NodeStatus(JsonObject node)
    {
        var ready = (Json.Walk(node, "status", "conditions") as JsonArray)?.OfType<JsonObject>()
            .FirstOrDefault(c => Json.GetString(c, "type") == "Ready");
        var status = Json.GetString(ready, "status") switch
        {
            "True" => "Ready",
            null => "Unknown",
            _ => "NotReady",
        };
        if (Json.Truth(Json.Walk(node, "spec", "unschedulable")) == true)
        {
            status += ",SchedulingDisabled";
        }

        return status;
    }

    private static string NodeRoles(JsonObject node)
    {
        var roles = Json.Labels(node).Keys
            .Where(k => k.StartsWith("node-role.kubernetes.io/", StringComparison.Ordinal))
            .Select(k => k["node-role.kubernetes.io/".Length..])
            .ToList();
        return roles.Count == 0 ? "<none>" : string.Join(',', roles);
    }

    private static string NodeAddress(JsonObject node, string type) =>
        (Json.Walk(node, "status", "addresses") as JsonArray)?.OfType<JsonObject>()
            .FirstOrDefault(a => Json.GetString(a, "type") == type) is { } address
            ? Json.GetString(address, "address") ?? "<none>"
            : "<none>";

    private static JsonValue Int(JsonObject obj, string a, string b, long fallback = 0) =>
        JsonValue.Create(Json.WholeNumber(Json.Walk(obj, a, b)) ?? fallback);
}

using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Schema;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Api;

public sealed partial class ApiServer
{
    private const string CrdKey = "apiextensions.k8s.io/customresourcedefinitions";
    private const string CrdCleanupFinalizer = "customresourcecleanup.apiextensions.k8s.io";
    private readonly Lock _housekeeping = new();
    private int _serviceIpCounter = 10;

    private void Bootstrap()
    {
        var admin = new Auth.UserInfo("system:apiserver", ["system:masters"]);
        foreach (var ns in new[] { "default", "kube-system", "kube-public", "kube-node-lease" })
        {
            CreateAsync(Registry.Find("", "v1", "namespaces")!, null, new JsonObject { ["metadata"] = new JsonObject { ["name"] = ns } }, admin, false, "Strict", null)
                .GetAwaiter().GetResult();
        }
    }

    /// <summary>Defaults a real server's strategy fills in on create.</summary>
    private void PrepareCreate(ResourceType type, JsonObject obj)
    {
        switch (type.StorageKey)
        {
            case "/pods":
                {
                    var spec = Json.ObjectAt(obj, "spec");
                    spec["restartPolicy"] ??= "Always";
                    spec["terminationGracePeriodSeconds"] ??= 30;
                    spec["dnsPolicy"] ??= "ClusterFirst";
                    spec["schedulerName"] ??= "default-scheduler";
                    spec["serviceAccountName"] ??= "default";
                    spec["serviceAccount"] ??= spec["serviceAccountName"]!.DeepClone();
                    spec["securityContext"] ??= new JsonObject();
                    spec["enableServiceLinks"] ??= true;
                    spec["priority"] ??= 0;
                    foreach (var c in (spec["containers"] as JsonArray)?.OfType<JsonObject>() ?? [])
                    {
                        c["terminationMessagePath"] ??= "/dev/termination-log";
                        c["terminationMessagePolicy"] ??= "File";
                        c["resources"] ??= new JsonObject();
                        var image = Json.GetString(c, "image") ?? "";
                        c["imagePullPolicy"] ??= image.EndsWith(":latest", StringComparison.Ordinal) || !image.Contains(':', StringComparison.Ordinal) ? "Always" : "IfNotPresent";
                    }

                    obj["status"] = new JsonObject { ["phase"] = "Pending", ["qosClass"] = QosClass(spec) };
                    break;
                }

            case "/namespaces":
                Json.ObjectAt(obj, "spec")["finalizers"] = new JsonArray("kubernetes");
                obj["status"] = new JsonObject { ["phase"] = "Active" };
                var labels = Json.ObjectAt(obj, "metadata", "labels");
                labels["kubernetes.io/metadata.name"] = Json.GetString(obj, "metadata", "name");
                break;
            case "/services":
                {
                    var spec = Json.ObjectAt(obj, "spec");
                    spec["type"] ??= "ClusterIP";
                    if (spec["clusterIP"] is null && Json.GetString(spec, "type") != "ExternalName")
                    {
                        int n = Interlocked.Increment(ref _serviceIpCounter);
                        spec["clusterIP"] = $"10.96.{n / 250}.{n % 250 + 1}";
                        spec["clusterIPs"] = new JsonArray(spec["clusterIP"]!.DeepClone());
                    }

                    spec["sessionAffinity"] ??= "None";
                    break;
                }

            case CrdKey:
                {
                    var finalizers = Json.StringList(Json.Walk(obj, "metadata", "finalizers"));
                    if (!finalizers.Contains(CrdCleanupFinalizer))
                    {
                        finalizers.Add(CrdCleanupFinalizer);
                        Json.Metadata(obj)["finalizers"] = Json.ToArray(finalizers);
                    }

                    obj.Remove("status");
                    break;
                }
        }
    }

    private static string QosClass(JsonObject spec)
    {
        var containers = (spec["containers"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        bool any = containers.Any(c => Json.Walk(c, "resources", "requests") is JsonObject { Count: > 0 } || Json.Walk(c, "resources", "limits") is JsonObject { Count: > 0 });
        if (!any)
        {
            return "BestEffort";
        }

        bool guaranteed = containers.All(c =>
            Json.Walk(c, "resources", "limits") is JsonObject limits && limits["cpu"] is not null && limits["memory"] is not null
            && (Json.Walk(c, "resources", "requests") is not JsonObject requests
                || (JsonNode.DeepEquals(requests["cpu"] ?? limits["cpu"], limits["cpu"]) && JsonNode.DeepEquals(requests["memory"] ?? limits["memory"], limits["memory"]))));
        return guaranteed ? "Guaranteed" : "Burstable";
    }

    /// <summary>The validation of built-in kinds this emulator enforces (a subset of the real server's).</summary>
    private static void ValidateBuiltIn(ResourceType type, JsonObject obj, JsonObject? old)
    {
        var name = Json.GetString(obj, "metadata", "name");
        var errors = new List<FieldError>();
        switch (type.StorageKey)
        {
            case "/pods":
                ValidatePod(obj, old, errors);
                break;
            case "node.k8s.io/runtimeclasses":
                if (string.IsNullOrEmpty(Json.GetString(obj, "handler")))
                {
                    errors.Add(new FieldError("handler", "FieldValueRequired", "Required value"));
                }

                break;
            case "coordination.k8s.io/leases":
                if (Json.WholeNumber(Json.Walk(obj, "spec", "leaseDurationSeconds")) is long seconds && seconds <= 0)
                {
                    errors.Add(new FieldError("spec.leaseDurationSeconds", "FieldValueInvalid", $"Invalid value: {seconds}: must be greater than 0"));
                }

                break;
            case CrdKey:
                ValidateCrd(obj, old, errors);
                break;
        }

        if (errors.Count > 0)
        {
            throw ApiException.Invalid(type, name, errors);
        }
    }

    private static void ValidatePod(JsonObject pod, JsonObject? old, List<FieldError> errors)
    {
        var containers = Json.Walk(pod, "spec", "containers") as JsonArray;
        if (containers is null || containers.Count == 0)
        {
            errors.Add(new FieldError("spec.containers", "FieldValueRequired", "Required value"));
        }
        else
        {
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < containers.Count; i++)
            {
                var c = containers[i] as JsonObject;
                var cname = Json.GetString(c, "name");
                if (string.IsNullOrEmpty(cname))
                {
                    errors.Add(new FieldError($"spec.containers[{i}].name", "FieldValueRequired", "Required value"));
                }
                else if (!names.Add(cname))
                {
                    errors.Add(new FieldError($"spec.containers[{i}].name", "FieldValueDuplicate", $"Duplicate value: \"{cname}\""));
                }

                if (string.IsNullOrEmpty(Json.GetString(c, "image")))
                {
                    errors.Add(new FieldError($"spec.containers[{i}].image", "FieldValueRequired", "Required value"));
                }
            }
        }

        if (old is null)
        {
            return;
        }

        // Pod specs are immutable but for a few fields.
        static JsonObject Mutable(JsonObject p)
        {
            var spec = (p["spec"] as JsonObject)?.DeepClone().AsObject() ?? new JsonObject();
            foreach (var list in new[] { "containers", "initContainers" })
            {
                foreach (var c in (spec[list] as JsonArray)?.OfType<JsonObject>() ?? [])
                {
                    c.Remove("image");
                }
            }

            spec.Remove("activeDeadlineSeconds");
            spec.Remove("tolerations");
            spec.Remove("terminationGracePeriodSeconds");
            spec.Remove("schedulingGates");
            return spec;
        }

        if (!JsonNode.DeepEquals(Mutable(pod), Mutable(old)))
        {
            errors.Add(new FieldError("spec", "FieldValueForbidden",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
    }

    private static void ValidateCrd(JsonObject crd, JsonObject? old, List<FieldError> errors)
    {
        var group = Json.GetString(crd, "spec", "group") ?? "";
        var plural = Json.GetString(crd, "spec", "names", "plural") ?? "";
        var kind = Json.GetString(crd, "spec", "names", "kind") ?? "";
        var scope = Json.GetString(crd, "spec", "scope") ?? "";
        if (group.Length == 0 || !group.Contains('.', StringComparison.Ordinal))
        {
            errors.Add(new FieldError("spec.group", "FieldValueInvalid", $"Invalid value: \"{group}\": should be a domain with at least one dot"));
        }

        if (plural.Length == 0)
        {
            errors.Add(new FieldError("spec.names.plural", "FieldValueRequired", "Required value"));
        }

        if (kind.Length == 0)
        {
            errors.Add(new FieldError("spec.names.kind", "FieldValueRequired", "Required value"));
        }

        if (scope is not ("Namespaced" or "Cluster"))
        {
            errors.Add(new FieldError("spec.scope", "FieldValueNotSupported", $"Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""));
        }

        var name = Json.GetString(crd, "metadata", "name");
        if (name != $"{plural}.{group}")
        {
            errors.Add(new FieldError("metadata.name", "FieldValueInvalid", $"Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"));
        }

        var versions = (Json.Walk(crd, "spec", "versions") as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        if (versions.Count == 0)
        {
            errors.Add(new FieldError("spec.versions", "FieldValueInvalid", "Invalid value: null: must have exactly one version marked as storage version"));
        }
        else if (versions.Count(v => Json.Truth(v["storage"]) == true) != 1)
        {
            errors.Add(new FieldError("spec.versions", "FieldValueInvalid", "Invalid value: must have exactly one version marked as storage version"));
        }

        for (int i = 0; i < versions.Count; i++)
        {
            if (Json.Walk(versions[i], "schema", "openAPIV3Schema") is not JsonObject schema)
            {
                errors.Add(new FieldError($"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueRequired", "Required value: schemas are required"));
                continue;
            }

            if (Json.GetString(schema, "type") != "object")
            {
                errors.Add(new FieldError($"spec.versions[{i}].schema.openAPIV3Schema.type", "FieldValueRequired", "Required value: must be object at the root"));
            }

            try
            {
                StructuralSchema.Parse(schema);
            }
            catch (ArgumentException e)
            {
                errors.Add(new FieldError($"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueInvalid", $"Invalid value: {e.Message}"));
            }
        }

        if (old is not null)
        {
            foreach (var (path, label) in new[] { (new[] { "spec", "group" }, "spec.group"), (new[] { "spec", "scope" }, "spec.scope"), (new[] { "spec", "names", "plural" }, "spec.names.plural") })
            {
                if (Json.GetString(crd, path) != Json.GetString(old, path))
                {
                    errors.Add(new FieldError(label, "FieldValueInvalid", "Invalid value: field is immutable"));
                }
            }
        }
    }

    /// <summary>Controllers' reactions to a stored change (the emulator runs them inline).</summary>
    private void AfterWrite(ResourceType type, StoredObject? before, StoredObject after)
    {
        switch (type.StorageKey)
        {
            case CrdKey when !IsTerminating(after):
                EstablishCrd(after);
                break;
            case "/namespaces" when before is null:
                var sa = Registry.Find("", "v1", "serviceaccounts")!;
                if (Store.Get(sa.StorageKey, after.Name, "default") is null)
                {
                    try
                    {
                        Store.Create(sa.StorageKey, after.Name, "default", new JsonObject
                        {
                            ["apiVersion"] = "v1",
                            ["kind"] = "ServiceAccount",
                            ["metadata"] = new JsonObject
                            {
                                ["name"] = "default",
                                ["namespace"] = after.Name,
                                ["uid"] = Guid.NewGuid().ToString(),
                                ["creationTimestamp"] = Json.Timestamp(_clock.GetUtcNow()),
                            },
                        });
                    }
                    catch (ObjectExistsException)
                    {
                        // created meanwhile
                    }
                }

                break;
        }
    }

    private void AfterRemove(ResourceType type, StoredObject gone)
    {
        if (type.StorageKey == CrdKey)
        {
            Registry.SetDefinedBy(gone.Name, []);
        }

        RunHousekeeping();
    }

    /// <summary>Registers the resource types a CRD defines and reports it Established.</summary>
    private void EstablishCrd(StoredObject crd)
    {
        var spec = crd.Body["spec"] as JsonObject ?? new JsonObject();
        var group = Json.GetString(spec, "group")!;
        var names = spec["names"] as JsonObject ?? new JsonObject();
        var types = new List<ResourceType>();
        var versions = (spec["versions"] as JsonArray)?.OfType<JsonObject>().ToList() ?? [];
        // The storage version is preferred in discovery when served: list it first.
        foreach (var v in versions.OrderByDescending(v => Json.Truth(v["storage"]) == true))
        {
            if (Json.Truth(v["served"]) != true)
            {
                continue;
            }

            var schemaNode = Json.Walk(v, "schema", "openAPIV3Schema") as JsonObject;
            var columns = ((v["additionalPrinterColumns"] as JsonArray)?.OfType<JsonObject>() ?? [])
                .Select(c => new PrinterColumn(
                    Json.GetString(c, "name") ?? "", Json.GetString(c, "type") ?? "string", Json.GetString(c, "jsonPath") ?? "",
                    Json.GetString(c, "description") ?? "", (int)(Json.WholeNumber(c["priority"]) ?? 0), Json.GetString(c, "format") ?? ""))
                .ToImmutableArray();
            types.Add(new ResourceType
            {
                Group = group,
                Version = Json.GetString(v, "name")!,
                Kind = Json.GetString(names, "kind")!,
                Plural = Json.GetString(names, "plural")!,
                Singular = Json.GetString(names, "singular") ?? Json.GetString(names, "kind")!.ToLowerInvariant(),
                Namespaced = Json.GetString(spec, "scope") == "Namespaced",
                ShortNames = [.. Json.StringList(names["shortNames"])],
                Categories = [.. Json.StringList(names["categories"])],
                HasStatus = Json.Walk(v, "subresources", "status") is not null,
                Schema = schemaNode is null ? null : StructuralSchema.Parse(schemaNode),
                SourceSchema = schemaNode?.DeepClone().AsObject(),
                PrinterColumns = columns,
                DefinedBy = crd.Name,
            });
        }

        Registry.SetDefinedBy(crd.Name, types);
        var storage = versions.FirstOrDefault(v => Json.Truth(v["storage"]) == true);
        var crdType = Registry.Find("apiextensions.k8s.io", "v1", "customresourcedefinitions")!;
        var now = Json.Timestamp(_clock.GetUtcNow());
        SystemUpdate(crdType, null, crd.Name, body =>
        {
            var status = new JsonObject
            {
                ["acceptedNames"] = names.DeepClone(),
                ["conditions"] = new JsonArray(
                    new JsonObject { ["type"] = "NamesAccepted", ["status"] = "True", ["reason"] = "NoConflicts", ["message"] = "no conflicts found", ["lastTransitionTime"] = now },
                    new JsonObject { ["type"] = "Established", ["status"] = "True", ["reason"] = "InitialNamesAccepted", ["message"] = "the initial names have been accepted", ["lastTransitionTime"] = now }),
                ["storedVersions"] = new JsonArray(Json.GetString(storage, "name")),
            };
            var existing = body["status"] as JsonObject;
            if (existing is not null && JsonNode.DeepEquals(existing["acceptedNames"], status["acceptedNames"])
                && JsonNode.DeepEquals(existing["storedVersions"], status["storedVersions"]))
            {
                return false;
            }

            body["status"] = status;
            return true;
        }, "status");
    }

    /// <summary>Unsupported CEL rules of a CRD, as warnings for whoever wrote it.</summary>
    internal static IEnumerable<string> CrdWarnings(JsonObject crd) =>
        ((Json.Walk(crd, "spec", "versions") as JsonArray)?.OfType<JsonObject>() ?? [])
        .Select(v => Json.Walk(v, "schema", "openAPIV3Schema") as JsonObject)
        .Where(s => s is not null)
        .SelectMany(s => StructuralSchema.Parse(s!).AllUnsupportedRules())
        .Select(rule => $"x-kubernetes-validations rule not supported by the emulator, not enforced: {rule}");

    /// <summary>
    /// What the garbage collector, namespace controller and CRD finalizer do, run to a fixed
    /// point after each deletion: background and foreground propagation to dependents, orphaning,
    /// emptying terminating namespaces and removing a deleted CRD's objects.
    /// </summary>
    internal void RunHousekeeping()
    {
        if (!_housekeeping.TryEnter())
        {
            return; // the running pass loops until nothing changes
        }

        try
        {
            for (int pass = 0; pass < 100 && HousekeepingPass(); pass++)
            {
            }
        }
        finally
        {
            _housekeeping.Exit();
        }
    }

    private bool HousekeepingPass()
    {
        bool progress = false;
        var all = Registry.All.GroupBy(t => t.StorageKey).Select(g => g.First())
            .SelectMany(t => Store.List(t.StorageKey, null).Items.Select(o => (Type: t, Object: o)))
            .ToList();
        var byUid = all.ToDictionary(x => Json.GetString(x.Object.Body, "metadata", "uid") ?? Guid.NewGuid().ToString(), x => x);

        // Dependents whose owners are gone (background propagation) or dangling owner references.
        foreach (var (type, obj) in all)
        {
            var owners = (Json.Walk(obj.Body, "metadata", "ownerReferences") as JsonArray)?.OfType<JsonObject>().ToList();
            if (owners is null || owners.Count == 0 || IsTerminating(obj))
            {
                continue;
            }

            var existing = owners.Where(o => Json.GetString(o, "uid") is { } uid && byUid.ContainsKey(uid)).ToList();
            bool foregroundOwner = existing.Any(o => byUid[Json.GetString(o, "uid")!] is var owner
                                                     && IsTerminating(owner.Object)
                                                     && Json.StringList(Json.Walk(owner.Object.Body, "metadata", "finalizers")).Contains(ForegroundFinalizer));
            if (foregroundOwner || existing.Count == 0)
            {
                TryDelete(type, obj, foregroundOwner ? "Foreground" : "Background");
                progress = true;
            }
            else if (existing.Count < owners.Count)
            {
                SystemUpdate(type, obj.Namespace, obj.Name, body =>
                {
                    Json.Metadata(body)["ownerReferences"] = new JsonArray(existing.Select(a => (JsonNode)a.DeepClone()).ToArray());
                    return true;
                });
                progress = true;
            }
        }

        foreach (var (type, obj) in all.Where(x => IsTerminating(x.Object)))
        {
            var uid = Json.GetString(obj.Body, "metadata", "uid");
            var finalizers = Json.StringList(Json.Walk(obj.Body, "metadata", "finalizers"));
            var dependents = all.Where(x => Owners(x.Object).Contains(uid)).ToList();
            if (finalizers.Contains(OrphanFinalizer))
            {
                foreach (var (dt, d) in dependents)
                {
                    SystemUpdate(dt, d.Namespace, d.Name, body =>
                    {
                        var refs = (Json.Walk(body, "metadata", "ownerReferences") as JsonArray)?.OfType<JsonObject>()
                            .Where(o => Json.GetString(o, "uid") != uid).Select(o => (JsonNode)o.DeepClone()).ToArray() ?? [];
                        Json.Metadata(body)["ownerReferences"] = new JsonArray(refs);
                        return true;
                    });
                }

                DropFinalizer(type, obj, OrphanFinalizer);
                progress = true;
            }
            else if (finalizers.Contains(ForegroundFinalizer) && dependents.Count == 0)
            {
                DropFinalizer(type, obj, ForegroundFinalizer);
                progress = true;
            }
            else if (type.StorageKey == "/namespaces")
            {
                var content = all.Where(x => x.Type.Namespaced && x.Object.Namespace == obj.Name).ToList();
                foreach (var (ct, c) in content.Where(x => !IsTerminating(x.Object)))
                {
                    TryDelete(ct, c, "Background");
                    progress = true;
                }

                if (content.Count == 0 && Json.StringList(Json.Walk(obj.Body, "spec", "finalizers")).Count > 0)
                {
                    SystemUpdate(type, null, obj.Name, body =>
                    {
                        Json.ObjectAt(body, "spec")["finalizers"] = new JsonArray();
                        return true;
                    });
                    progress = true;
                }
            }
            else if (type.StorageKey == CrdKey && finalizers.Contains(CrdCleanupFinalizer))
            {
                var crs = all.Where(x => x.Type.DefinedBy == obj.Name).ToList();
                foreach (var (ct, c) in crs.Where(x => !IsTerminating(x.Object)))
                {
                    TryDelete(ct, c, "Background");
                    progress = true;
                }

                if (crs.Count == 0)
                {
                    DropFinalizer(type, obj, CrdCleanupFinalizer);
                    progress = true;
                }
            }

            var latest = Store.Get(type.StorageKey, obj.Namespace, obj.Name);
            if (latest is not null && ReadyToRemove(type, latest))
            {
                Remove(type, latest);
                progress = true;
            }
        }

        return progress;
    }

    private static HashSet<string?> Owners(StoredObject obj) =>
        ((Json.Walk(obj.Body, "metadata", "ownerReferences") as JsonArray)?.OfType<JsonObject>() ?? [])
        .Select(o => Json.GetString(o, "uid")).ToHashSet();

    private void TryDelete(ResourceType type, StoredObject obj, string policy)
    {
        try
        {
            DeleteOnce(type, obj, new DeleteOptions(policy, null, null, null), dryRun: false);
        }
        catch (Exception e) when (e is RevisionConflictException or ObjectMissingException or ApiException)
        {
            // changed meanwhile; the next pass looks again
        }
    }

    private void DropFinalizer(ResourceType type, StoredObject obj, string finalizer)
    {
        SystemUpdate(type, obj.Namespace, obj.Name, body =>
        {
            var list = Json.StringList(Json.Walk(body, "metadata", "finalizers"));
            if (!list.Remove(finalizer))
            {
                return false;
            }

            Json.Metadata(body)["finalizers"] = Json.ToArray(list);
            return true;
        });
    }
}

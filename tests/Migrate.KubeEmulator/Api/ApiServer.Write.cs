using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Admission;
using Migrate.KubeEmulator.Auth;
using Migrate.KubeEmulator.Patching;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Api;

/// <summary>How a delete treats dependents and grace (metav1.DeleteOptions).</summary>
internal sealed record DeleteOptions(string? PropagationPolicy, long? GracePeriodSeconds, string? PreconditionUid, string? PreconditionResourceVersion)
{
    public static DeleteOptions From(JsonObject? body, IQueryCollection query)
    {
        long? grace = Json.WholeNumber(body?["gracePeriodSeconds"])
            ?? (long.TryParse(query["gracePeriodSeconds"].FirstOrDefault(), out var q) ? q : null);
        var policy = Json.GetString(body, "propagationPolicy") ?? query["propagationPolicy"].FirstOrDefault();
        if (policy is null && Json.Truth(body?["orphanDependents"]) is bool orphan)
        {
            policy = orphan ? "Orphan" : "Background";
        }

        if (policy is not (null or "Orphan" or "Background" or "Foreground"))
        {
            throw ApiException.BadRequest($"propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\"");
        }

        return new DeleteOptions(policy, grace, Json.GetString(body, "preconditions", "uid"), Json.GetString(body, "preconditions", "resourceVersion"));
    }
}

public sealed partial class ApiServer
{
    private const string ForegroundFinalizer = "foregroundDeletion";
    private const string OrphanFinalizer = "orphan";

    private async Task CreateFromRequestAsync(ApiRequest r)
    {
        var body = await ReadBodyAsync(r.Http);
        if (r.Type.Ephemeral)
        {
            await WriteJsonAsync(r.Http, 201, Review(r, body));
            return;
        }

        var created = await CreateAsync(r.Type, r.Namespace, body, r.User, r.DryRun, r.FieldValidation, r.Http);
        await WriteObjectAsync(r, 201, created);
    }

    /// <summary>Creates an object, with every check a real server makes before storing it.</summary>
    internal async Task<JsonObject> CreateAsync(ResourceType type, string? urlNamespace, JsonObject body, UserInfo user, bool dryRun, string fieldValidation, HttpContext? http)
    {
        CheckKind(type, body);
        var obj = body.DeepClone().AsObject();
        var metadata = Json.Metadata(obj);
        var ns = Json.GetString(metadata, "namespace") is { Length: > 0 } given ? given : null;
        if (type.Namespaced)
        {
            if (ns is not null && urlNamespace is not null && ns != urlNamespace)
            {
                throw ApiException.BadRequest("the namespace of the provided object does not match the namespace sent on the request");
            }

            ns ??= urlNamespace ?? throw ApiException.BadRequest("a namespace is required for a namespaced resource");
            metadata["namespace"] = ns;
            var namespaceObject = Store.Get("/namespaces", null, ns) ?? throw ApiException.NotFound(Registry.Find("", "v1", "namespaces")!, ns);
            if (Json.GetString(namespaceObject.Body, "metadata", "deletionTimestamp") is not null)
            {
                throw ApiException.Forbidden($"{type.QualifiedResource} \"{Json.GetString(metadata, "name") ?? Json.GetString(metadata, "generateName")}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated");
            }
        }
        else
        {
            metadata.Remove("namespace");
        }

        var name = Json.GetString(metadata, "name");
        if (string.IsNullOrEmpty(name))
        {
            var prefix = Json.GetString(metadata, "generateName");
            if (string.IsNullOrEmpty(prefix))
            {
                throw ApiException.Invalid(type, "", [new FieldError("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")]);
            }

            name = prefix + RandomSuffix();
            metadata["name"] = name;
        }

        if (type.IsCustom && type.DefinedBy is { } crdName && IsTerminating(Store.Get("apiextensions.k8s.io/customresourcedefinitions", null, crdName)))
        {
            throw new ApiException(405, "MethodNotAllowed", $"create not allowed while custom resource definition is terminating");
        }

        ValidateName(type, name);
        foreach (var key in new[] { "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields" })
        {
            metadata.Remove(key);
        }

        metadata["uid"] = Guid.NewGuid().ToString();
        metadata["creationTimestamp"] = Json.Timestamp(_clock.GetUtcNow());
        metadata["generation"] = 1;
        if (type.HasStatus && type.IsCustom)
        {
            obj.Remove("status"); // the status subresource owns status; a create cannot set it
        }

        PrepareCreate(type, obj);
        ApplySchema(type, obj, null, fieldValidation, http);
        ValidateBuiltIn(type, obj, null);
        await _webhooks.ReviewAsync(new AdmissionAttributes("CREATE", type, null, ns, name, Present(type, obj), null, user, dryRun), CancellationToken.None);
        if (dryRun)
        {
            return Present(type, obj);
        }

        StoredObject stored;
        try
        {
            stored = Store.Create(type.StorageKey, type.Namespaced ? ns : null, name, obj);
        }
        catch (ObjectExistsException)
        {
            throw ApiException.AlreadyExists(type, name);
        }

        AfterWrite(type, null, stored);
        WarnAboutCrd(type, stored.Body, http);
        return Present(type, stored.Body);
    }

    private static void WarnAboutCrd(ResourceType type, JsonObject body, HttpContext? http)
    {
        if (http is not null && type.StorageKey == CrdKey)
        {
            foreach (var warning in CrdWarnings(body))
            {
                AddWarning(http, warning);
            }
        }
    }

    private async Task UpdateFromRequestAsync(ApiRequest r)
    {
        var body = await ReadBodyAsync(r.Http);
        CheckKind(r.Type, body);
        var name = r.Info.Name!;
        var bodyName = Json.GetString(body, "metadata", "name");
        if (bodyName is not null && bodyName != name)
        {
            throw ApiException.BadRequest($"the name of the object ({bodyName}) does not match the name on the URL ({name})");
        }

        var current = Store.Get(r.Type.StorageKey, r.Namespace, name) ?? throw ApiException.NotFound(r.Type, name);
        var rv = Json.GetString(body, "metadata", "resourceVersion");
        if (rv is null && r.Type.IsCustom)
        {
            throw ApiException.Invalid(r.Type, name, [new FieldError("metadata.resourceVersion", "FieldValueInvalid", "Invalid value: 0x0: must be specified for an update")]);
        }

        if (rv is not null && rv != current.Revision.ToString(CultureInfo.InvariantCulture))
        {
            throw ApiException.StaleUpdate(r.Type, name);
        }

        var updated = MergeForUpdate(r.Type, current.Body, body, r.Info.Subresource == "status");
        var result = await CommitAsync(r.Type, current, updated, r.User, r.DryRun, r.FieldValidation, r.Http, r.Info.Subresource);
        await WriteObjectAsync(r, 200, result);
    }

    private async Task PatchFromRequestAsync(ApiRequest r)
    {
        var contentType = r.Http.Request.ContentType?.Split(';')[0].Trim() ?? "";
        if (contentType is "application/apply-patch+yaml" or "application/apply-patch+json")
        {
            throw new ApiException(415, "UnsupportedMediaType", "server-side apply is not emulated; use client-side apply (kubectl apply without --server-side)");
        }

        if (contentType == "application/strategic-merge-patch+json" && r.Type.IsCustom)
        {
            throw new ApiException(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources; use a merge patch (--type merge) or a JSON patch (--type json)");
        }

        var patch = await ReadBodyNodeAsync(r.Http) ?? throw ApiException.BadRequest("the patch is empty");
        var name = r.Info.Name!;
        var expectedRv = patch is JsonObject po ? Json.GetString(po, "metadata", "resourceVersion") : null;
        for (int attempt = 0; ; attempt++)
        {
            var current = Store.Get(r.Type.StorageKey, r.Namespace, name) ?? throw ApiException.NotFound(r.Type, name);
            if (expectedRv is not null && expectedRv != current.Revision.ToString(CultureInfo.InvariantCulture))
            {
                throw ApiException.StaleUpdate(r.Type, name);
            }

            var patched = contentType switch
            {
                "application/json-patch+json" => JsonPatch.Apply(current.Body, patch as JsonArray ?? throw ApiException.BadRequest("a JSON patch must be an array")),
                "application/merge-patch+json" => MergePatch.Apply(current.Body, patch as JsonObject ?? throw ApiException.BadRequest("a merge patch must be an object")),
                "application/strategic-merge-patch+json" => StrategicMergePatch.Apply(current.Body, patch as JsonObject ?? throw ApiException.BadRequest("a strategic merge patch must be an object"), r.Type),
                _ => throw ApiException.UnsupportedMediaType(contentType),
            };
            var updated = MergeForUpdate(r.Type, current.Body, patched, r.Info.Subresource == "status");
            try
            {
                var result = await CommitAsync(r.Type, current, updated, r.User, r.DryRun, r.FieldValidation, r.Http, r.Info.Subresource);
                await WriteObjectAsync(r, 200, result);
                return;
            }
            catch (ApiException e) when (e.Reason == "Conflict" && expectedRv is null && attempt < 5)
            {
                // someone wrote in between: re-apply the patch to the new state, as the real server does
            }
        }
    }

    /// <summary>The object an update stores: the incoming body with the fields the request may not change put back.</summary>
    private static JsonObject MergeForUpdate(ResourceType type, JsonObject current, JsonObject incoming, bool statusOnly)
    {
        JsonObject result;
        if (statusOnly)
        {
            result = current.DeepClone().AsObject();
            if (incoming["status"] is { } status)
            {
                result["status"] = status.DeepClone();
            }
            else
            {
                result.Remove("status");
            }
        }
        else
        {
            result = incoming.DeepClone().AsObject();
            if (type.HasStatus)
            {
                if (current["status"] is { } status)
                {
                    result["status"] = status.DeepClone();
                }
                else
                {
                    result.Remove("status");
                }
            }
        }

        var metadata = Json.Metadata(result);
        var old = Json.Metadata(current);
        foreach (var key in new[] { "uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds", "generation" })
        {
            if (old[key] is { } value)
            {
                metadata[key] = value.DeepClone();
            }
            else
            {
                metadata.Remove(key);
            }
        }

        metadata.Remove("resourceVersion");
        metadata.Remove("managedFields");
        result["apiVersion"] = current["apiVersion"]?.DeepClone();
        result["kind"] = current["kind"]?.DeepClone();
        return result;
    }

    /// <summary>Validates and stores an update of <paramref name="current"/>, then finishes a deletion it may complete.</summary>
    internal async Task<JsonObject> CommitAsync(ResourceType type, StoredObject current, JsonObject updated, UserInfo? user, bool dryRun,
        string fieldValidation, HttpContext? http, string? subresource)
    {
        var oldFinalizers = Json.StringList(Json.Walk(current.Body, "metadata", "finalizers"));
        var newFinalizers = Json.StringList(Json.Walk(updated, "metadata", "finalizers"));
        if (IsTerminating(current) && newFinalizers.Except(oldFinalizers).Any())
        {
            throw ApiException.Invalid(type, current.Name, [new FieldError("metadata.finalizers", "FieldValueForbidden", "Forbidden: no new finalizers can be added if the object is being deleted")]);
        }

        ApplySchema(type, updated, current.Body, fieldValidation, http);
        ValidateBuiltIn(type, updated, current.Body);
        if (SpecChanged(type, current.Body, updated))
        {
            var generation = Json.WholeNumber(Json.Walk(current.Body, "metadata", "generation")) ?? 0;
            Json.Metadata(updated)["generation"] = generation + 1;
        }

        if (NoChange(current.Body, updated))
        {
            return Present(type, current.Body);
        }

        if (user is not null)
        {
            await _webhooks.ReviewAsync(new AdmissionAttributes("UPDATE", type, subresource, current.Namespace, current.Name,
                Present(type, updated), Present(type, current.Body), user, dryRun), CancellationToken.None);
        }

        if (dryRun)
        {
            return Present(type, updated);
        }

        StoredObject stored;
        try
        {
            stored = Store.Replace(type.StorageKey, current.Namespace, current.Name, current.Revision, updated);
        }
        catch (RevisionConflictException)
        {
            throw ApiException.StaleUpdate(type, current.Name);
        }
        catch (ObjectMissingException)
        {
            throw ApiException.NotFound(type, current.Name);
        }

        AfterWrite(type, current, stored);
        WarnAboutCrd(type, stored.Body, http);
        if (ReadyToRemove(type, stored))
        {
            Remove(type, stored);
        }

        return Present(type, stored.Body);
    }

    /// <summary>Like <see cref="CommitAsync"/> for the server's own writes (controllers): no admission, retried on conflict.</summary>
    internal JsonObject? SystemUpdate(ResourceType type, string? ns, string name, Func<JsonObject, bool> mutate, string? subresource = null)
    {
        for (int attempt = 0; attempt < 10; attempt++)
        {
            var current = Store.Get(type.StorageKey, ns, name);
            if (current is null)
            {
                return null;
            }

            var updated = current.Body.DeepClone().AsObject();
            if (!mutate(updated))
            {
                return current.Body;
            }

            try
            {
                return CommitAsync(type, current, updated, null, false, "Ignore", null, subresource).GetAwaiter().GetResult();
            }
            catch (ApiException e) when (e.Reason == "Conflict")
            {
                // retry on the newer state
            }
        }

        throw new InvalidOperationException($"could not update {type.QualifiedResource} {name}: too many conflicts");
    }

    private async Task DeleteFromRequestAsync(ApiRequest r)
    {
        var body = await ReadBodyNodeAsync(r.Http) as JsonObject;
        var options = DeleteOptions.From(body, r.Query);
        var result = await DeleteAsync(r.Type, r.Namespace, r.Info.Name!, options, r.User, r.DryRun);
        await WriteObjectAsync(r, 200, result);
    }

    /// <summary>
    /// Deletes an object the way the real server does: preconditions, graceful deletion of pods
    /// bound to a node (the kubelet finishes it), finalizers (the object stays, marked, until they
    /// are gone), and the propagation policy for dependents.
    /// </summary>
    internal async Task<JsonObject> DeleteAsync(ResourceType type, string? ns, string name, DeleteOptions options, UserInfo? user, bool dryRun)
    {
        for (int attempt = 0; ; attempt++)
        {
            var current = Store.Get(type.StorageKey, ns, name) ?? throw ApiException.NotFound(type, name);
            var uid = Json.GetString(current.Body, "metadata", "uid");
            if (options.PreconditionUid is { } wantedUid && wantedUid != uid)
            {
                throw ApiException.Conflict(type, name, $"Precondition failed: UID in precondition: {wantedUid}, UID in object meta: {uid}");
            }

            if (options.PreconditionResourceVersion is { } wantedRv && wantedRv != current.Revision.ToString(CultureInfo.InvariantCulture))
            {
                throw ApiException.Conflict(type, name, $"Precondition failed: ResourceVersion in precondition: {wantedRv}, ResourceVersion in object meta: {current.Revision}");
            }

            if (user is not null && attempt == 0)
            {
                await _webhooks.ReviewAsync(new AdmissionAttributes("DELETE", type, null, ns, name, null, Present(type, current.Body), user, dryRun), CancellationToken.None);
            }

            try
            {
                return DeleteOnce(type, current, options, dryRun);
            }
            catch (RevisionConflictException) when (attempt < 5)
            {
                // changed meanwhile: decide again on the new state
            }
        }
    }

    private JsonObject DeleteOnce(ResourceType type, StoredObject current, DeleteOptions options, bool dryRun)
    {
        var body = current.Body;
        var metadata = Json.Metadata(body);
        var finalizers = Json.StringList(metadata["finalizers"]);
        bool pod = type.StorageKey == "/pods";
        long grace = 0;
        if (pod && Json.GetString(body, "spec", "nodeName") is not null
            && Json.GetString(body, "status", "phase") is not ("Succeeded" or "Failed"))
        {
            grace = options.GracePeriodSeconds
                    ?? Json.WholeNumber(Json.Walk(body, "spec", "terminationGracePeriodSeconds")) ?? 30;
        }

        if (IsTerminating(current))
        {
            // Already being deleted: only a shorter grace period (a forced delete) changes anything.
            var currentGrace = Json.WholeNumber(metadata["deletionGracePeriodSeconds"]) ?? 0;
            if (pod && options.GracePeriodSeconds is long shorter && shorter < currentGrace && !dryRun)
            {
                var updated = body.DeepClone().AsObject();
                Json.Metadata(updated)["deletionGracePeriodSeconds"] = shorter;
                Json.Metadata(updated)["deletionTimestamp"] = Json.Timestamp(_clock.GetUtcNow().AddSeconds(shorter));
                var stored = Store.Replace(type.StorageKey, current.Namespace, current.Name, current.Revision, updated);
                if (ReadyToRemove(type, stored))
                {
                    Remove(type, stored);
                }

                return Present(type, stored.Body);
            }

            return Present(type, body);
        }

        var policy = options.PropagationPolicy ?? "Background";
        var newFinalizers = new List<string>(finalizers);
        if (policy == "Foreground" && !newFinalizers.Contains(ForegroundFinalizer))
        {
            newFinalizers.Add(ForegroundFinalizer);
        }
        else if (policy == "Orphan" && !newFinalizers.Contains(OrphanFinalizer))
        {
            newFinalizers.Add(OrphanFinalizer);
        }

        bool namespaceContent = type.StorageKey == "/namespaces";
        if (grace > 0 || newFinalizers.Count > 0 || namespaceContent)
        {
            var updated = body.DeepClone().AsObject();
            var m = Json.Metadata(updated);
            m["deletionTimestamp"] = Json.Timestamp(_clock.GetUtcNow().AddSeconds(grace));
            m["deletionGracePeriodSeconds"] = grace;
            if (newFinalizers.Count > 0)
            {
                m["finalizers"] = Json.ToArray(newFinalizers);
            }

            if (namespaceContent)
            {
                Json.ObjectAt(updated, "status")["phase"] = "Terminating";
            }

            if (dryRun)
            {
                return Present(type, updated);
            }

            var stored = Store.Replace(type.StorageKey, current.Namespace, current.Name, current.Revision, updated);
            AfterWrite(type, current, stored);
            RunHousekeeping();
            return Present(type, Store.Get(type.StorageKey, current.Namespace, current.Name)?.Body ?? stored.Body);
        }

        if (dryRun)
        {
            return Present(type, body);
        }

        var gone = Store.Remove(type.StorageKey, current.Namespace, current.Name, current.Revision);
        AfterRemove(type, gone);
        return Present(type, gone.Body);
    }

    private async Task DeleteCollectionAsync(ApiRequest r)
    {
        var body = await ReadBodyNodeAsync(r.Http) as JsonObject;
        var options = DeleteOptions.From(body, r.Query);
        var labels = LabelSelector.Parse(r.Query["labelSelector"].FirstOrDefault());
        var fields = FieldSelector.Parse(r.Query["fieldSelector"].FirstOrDefault(), r.Type);
        var deleted = new JsonArray();
        foreach (var o in Store.List(r.Type.StorageKey, r.Namespace).Items.Where(o => labels.Matches(Json.Labels(o.Body)) && fields.Matches(o.Body)))
        {
            try
            {
                deleted.Add(await DeleteAsync(r.Type, o.Namespace, o.Name, options, r.User, r.DryRun));
            }
            catch (ApiException e) when (e.Code == 404)
            {
                // gone meanwhile
            }
        }

        await WriteJsonAsync(r.Http, 200, new JsonObject
        {
            ["kind"] = r.Type.ListKind,
            ["apiVersion"] = r.Type.GroupVersion,
            ["metadata"] = new JsonObject { ["resourceVersion"] = Store.Revision.ToString(CultureInfo.InvariantCulture) },
            ["items"] = deleted,
        });
    }

    /// <summary>True when a marked object has nothing left holding it: no finalizers and no running grace period.</summary>
    private static bool ReadyToRemove(ResourceType type, StoredObject stored)
    {
        if (!IsTerminating(stored) || Json.StringList(Json.Walk(stored.Body, "metadata", "finalizers")).Count > 0)
        {
            return false;
        }

        if (type.StorageKey == "/namespaces" && Json.StringList(Json.Walk(stored.Body, "spec", "finalizers")).Count > 0)
        {
            return false;
        }

        var grace = Json.WholeNumber(Json.Walk(stored.Body, "metadata", "deletionGracePeriodSeconds")) ?? 0;
        return grace == 0;
    }

    private void Remove(ResourceType type, StoredObject stored)
    {
        try
        {
            var gone = Store.Remove(type.StorageKey, stored.Namespace, stored.Name, stored.Revision);
            AfterRemove(type, gone);
        }
        catch (Exception e) when (e is RevisionConflictException or ObjectMissingException)
        {
            // someone else finished it
        }
    }

    internal static bool IsTerminating(StoredObject? stored) =>
        stored is not null && Json.GetString(stored.Body, "metadata", "deletionTimestamp") is not null;

    private static bool SpecChanged(ResourceType type, JsonObject before, JsonObject after)
    {
        static JsonObject Strip(JsonObject o, bool dropStatus)
        {
            var c = o.DeepClone().AsObject();
            c.Remove("metadata");
            if (dropStatus)
            {
                c.Remove("status");
            }

            return c;
        }

        return !JsonNode.DeepEquals(Strip(before, type.HasStatus), Strip(after, type.HasStatus));
    }

    private static bool NoChange(JsonObject before, JsonObject after)
    {
        var a = before.DeepClone().AsObject();
        var b = after.DeepClone().AsObject();
        Json.Metadata(a).Remove("resourceVersion");
        Json.Metadata(b).Remove("resourceVersion");
        return JsonNode.DeepEquals(a, b);
    }

    private void CheckKind(ResourceType type, JsonObject body)
    {
        var apiVersion = Json.GetString(body, "apiVersion");
        var kind = Json.GetString(body, "kind");
        if (kind is not null && kind != type.Kind)
        {
            throw ApiException.BadRequest($"the kind in the data ({kind}) does not match the expected kind ({type.Kind})");
        }

        if (apiVersion is not null && apiVersion != type.GroupVersion && Registry.FindByKind(type.Group, apiVersion.Split('/')[^1], type.Kind) is null)
        {
            throw ApiException.BadRequest($"the API version in the data ({apiVersion}) does not match the expected API version ({type.GroupVersion})");
        }
    }

    private static void ValidateName(ResourceType type, string name)
    {
        bool label = type.StorageKey is "/namespaces" or "/services";
        int max = label ? 63 : 253;
        bool ok = name.Length <= max
                  && name.Length > 0
                  && char.IsAsciiLetterOrDigit(name[0]) && char.IsAsciiLetterOrDigit(name[^1])
                  && name.All(c => char.IsAsciiDigit(c) || char.IsAsciiLetterLower(c) || c == '-' || (!label && c == '.'));
        if (!ok)
        {
            var what = label ? "a lowercase RFC 1123 label" : "a lowercase RFC 1123 subdomain";
            throw ApiException.Invalid(type, name, [new FieldError("metadata.name", "FieldValueInvalid",
                $"Invalid value: \"{name}\": {what} must consist of lower case alphanumeric characters, '-'{(label ? "" : " or '.'")}, and must start and end with an alphanumeric character")]);
        }
    }

    /// <summary>Prunes unknown fields, applies defaults and validates against a custom resource's schema.</summary>
    private static void ApplySchema(ResourceType type, JsonObject obj, JsonObject? old, string fieldValidation, HttpContext? http)
    {
        if (type.Schema is not { } schema)
        {
            return;
        }

        var unknown = new List<string>();
        schema.Prune(obj, "", unknown, isRoot: true);
        if (unknown.Count > 0)
        {
            if (fieldValidation == "Strict")
            {
                throw ApiException.BadRequest($"strict decoding error: {string.Join(", ", unknown.Select(u => $"unknown field \"{u}\""))}");
            }

            if (fieldValidation == "Warn" && http is not null)
            {
                foreach (var u in unknown)
                {
                    AddWarning(http, $"unknown field \"{u}\"");
                }
            }
        }

        schema.ApplyDefaults(obj);
        var errors = new List<FieldError>();
        schema.Validate(obj, old, "", errors, isRoot: true);
        if (errors.Count > 0)
        {
            throw ApiException.Invalid(type, Json.GetString(obj, "metadata", "name"), errors);
        }
    }

    private static string RandomSuffix()
    {
        const string alphabet = "bcdfghjklmnpqrstvwxz2456789";
        Span<char> chars = stackalloc char[5];
        for (int i = 0; i < chars.Length; i++)
        {
            chars[i] = alphabet[RandomNumberGenerator.GetInt32(alphabet.Length)];
        }

        return new string(chars);
    }
}

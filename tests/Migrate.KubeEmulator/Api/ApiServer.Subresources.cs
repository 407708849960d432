using System.Globalization;
using System.Net.Security;
using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Admission;
using Migrate.KubeEmulator.Auth;

namespace Migrate.KubeEmulator.Api;

public sealed partial class ApiServer
{
    // The real API server does not verify kubelet serving certificates unless told to; nor does this one.
    private static readonly string[] LogQueryParameters = ["follow", "tailLines", "timestamps", "previous", "sinceSeconds", "limitBytes"];
#pragma warning disable CA5359 // deliberate: like the real API server's default, kubelet certificates are not verified
    private static readonly HttpClient KubeletClient = new(new SocketsHttpHandler
    {
        SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = (_, _, _, _) => true },
    })
#pragma warning restore CA5359
    {
        Timeout = Timeout.InfiniteTimeSpan,
    };

    /// <summary>pods/log: proxied to the kubelet of the pod's node (its InternalIP and kubelet port).</summary>
    private async Task PodLogAsync(ApiRequest r)
    {
        var name = r.Info.Name!;
        var pod = Store.Get(r.Type.StorageKey, r.Namespace, name)?.Body ?? throw ApiException.NotFound(r.Type, name);
        var containers = ((Json.Walk(pod, "spec", "containers") as JsonArray)?.OfType<JsonObject>() ?? [])
            .Select(c => Json.GetString(c, "name")!).ToList();
        var container = r.Query["container"].FirstOrDefault();
        if (string.IsNullOrEmpty(container))
        {
            container = containers.Count == 1
                ? containers[0]
                : throw ApiException.BadRequest($"a container name must be specified for pod {name}, choose one of: [{string.Join(' ', containers)}]");
        }
        else if (!containers.Contains(container))
        {
            throw ApiException.BadRequest($"container {container} is not valid for pod {name}");
        }

        var nodeName = Json.GetString(pod, "spec", "nodeName") ?? throw ApiException.BadRequest($"pod {name} does not have a host assigned");
        var node = Store.Get("/nodes", null, nodeName)?.Body ?? throw ApiException.NotFound(Registry.Find("", "v1", "nodes")!, nodeName);
        var address = ((Json.Walk(node, "status", "addresses") as JsonArray)?.OfType<JsonObject>() ?? [])
            .FirstOrDefault(a => Json.GetString(a, "type") == "InternalIP") is { } a ? Json.GetString(a, "address") : null;
        var port = Json.WholeNumber(Json.Walk(node, "status", "daemonEndpoints", "kubeletEndpoint", "Port")) ?? 10250;
        if (address is null)
        {
            throw new ApiException(500, "InternalError", $"node {nodeName} reports no InternalIP address");
        }

        var query = string.Join('&', LogQueryParameters
            .Where(k => r.Query.ContainsKey(k)).Select(k => $"{k}={Uri.EscapeDataString(r.Query[k].ToString())}"));
        var host = address.Contains(':', StringComparison.Ordinal) ? $"[{address}]" : address;
        var url = $"https://{host}:{port}/containerLogs/{r.Namespace}/{name}/{container}{(query.Length > 0 ? "?" + query : "")}";
        HttpResponseMessage response;
        try
        {
            response = await KubeletClient.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, r.Aborted);
        }
        catch (HttpRequestException e)
        {
            throw new ApiException(500, "InternalError", $"Get \"{url}\": {e.Message}");
        }

        using (response)
        {
            if (!response.IsSuccessStatusCode)
            {
                var text = await response.Content.ReadAsStringAsync(r.Aborted);
                throw new ApiException((int)response.StatusCode, "BadRequest", text.Trim());
            }

            r.Http.Response.StatusCode = 200;
            r.Http.Response.ContentType = "text/plain";
            await using var stream = await response.Content.ReadAsStreamAsync(r.Aborted);
            var buffer = new byte[16 * 1024];
            int read;
            while ((read = await stream.ReadAsync(buffer, r.Aborted)) > 0)
            {
                await r.Http.Response.Body.WriteAsync(buffer.AsMemory(0, read), r.Aborted);
                await r.Http.Response.Body.FlushAsync(r.Aborted);
            }
        }
    }

    /// <summary>pods/eviction: a deletion that honours PodDisruptionBudgets (429 when it would break one).</summary>
    private async Task EvictAsync(ApiRequest r)
    {
        var eviction = await ReadBodyAsync(r.Http);
        var name = r.Info.Name!;
        var podType = r.Type;
        var current = Store.Get(podType.StorageKey, r.Namespace, name) ?? throw ApiException.NotFound(podType, name);
        await _webhooks.ReviewAsync(new AdmissionAttributes("CREATE", podType, "eviction", r.Namespace, name, eviction, null, r.User, r.DryRun), r.Aborted);

        var pod = current.Body;
        if (!IsTerminating(current) && IsHealthy(pod))
        {
            var labels = Json.Labels(pod);
            var budgets = Store.List("policy/poddisruptionbudgets", r.Namespace).Items
                .Where(b => LabelSelector.FromObject(Json.Walk(b.Body, "spec", "selector"))?.Matches(labels) == true)
                .ToList();
            if (budgets.Count > 1)
            {
                throw new ApiException(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.");
            }

            if (budgets.Count == 1)
            {
                var budget = budgets[0].Body;
                var selector = LabelSelector.FromObject(Json.Walk(budget, "spec", "selector"))!;
                var covered = Store.List(podType.StorageKey, r.Namespace).Items.Where(p => selector.Matches(Json.Labels(p.Body))).ToList();
                int healthy = covered.Count(p => !IsTerminating(p) && IsHealthy(p.Body));
                int desired = DesiredHealthy(budget, covered.Count);
                int allowed = healthy - desired;
                if (allowed <= 0)
                {
                    var budgetName = Json.GetString(budget, "metadata", "name");
                    throw ApiException.TooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", new JsonObject
                    {
                        ["causes"] = new JsonArray(new JsonObject
                        {
                            ["reason"] = "DisruptionBudget",
                            ["message"] = $"The disruption budget {budgetName} needs {desired} healthy pods and has {healthy} currently",
                        }),
                    });
                }
            }
        }

        var options = eviction["deleteOptions"] is JsonObject o ? DeleteOptions.From(o, r.Query) : new DeleteOptions(null, null, null, null);
        await DeleteAsync(podType, r.Namespace, name, options, null, r.DryRun);
        await WriteJsonAsync(r.Http, 201, ApiException.Status(201, "", "", null));
    }

    private static bool IsHealthy(JsonObject pod) =>
        Json.GetString(pod, "status", "phase") == "Running"
        && ((Json.Walk(pod, "status", "conditions") as JsonArray)?.OfType<JsonObject>()
            .Any(c => Json.GetString(c, "type") == "Ready" && Json.GetString(c, "status") == "True") ?? false);

    /// <summary>How many covered pods a budget wants healthy (minAvailable, or total minus maxUnavailable; ints or percentages).</summary>
    private static int DesiredHealthy(JsonObject budget, int total)
    {
        static int Resolve(JsonNode? value, int total, bool roundUp) => value switch
        {
            JsonValue v when Json.WholeNumber(v) is long n => (int)n,
            JsonValue v when v.TryGetValue<string>(out var s) && s.EndsWith('%') && int.TryParse(s[..^1], out var pct) =>
                (int)(roundUp ? Math.Ceiling(total * pct / 100.0) : Math.Floor(total * pct / 100.0)),
            JsonValue v when v.TryGetValue<string>(out var s) && int.TryParse(s, out var n) => n,
            _ => 0,
        };

        if (Json.Walk(budget, "spec", "minAvailable") is { } min)
        {
            return Resolve(min, total, roundUp: true);
        }

        if (Json.Walk(budget, "spec", "maxUnavailable") is { } max)
        {
            return total - Resolve(max, total, roundUp: true);
        }

        return 0;
    }

    /// <summary>pods/binding: what the scheduler does to assign a pod to a node.</summary>
    private async Task BindAsync(ApiRequest r)
    {
        var binding = await ReadBodyAsync(r.Http);
        var name = r.Info.Name!;
        var target = Json.GetString(binding, "target", "name") ?? throw ApiException.BadRequest("a binding needs target.name");
        for (int attempt = 0; attempt < 5; attempt++)
        {
            var current = Store.Get(r.Type.StorageKey, r.Namespace, name) ?? throw ApiException.NotFound(r.Type, name);
            if (Json.GetString(current.Body, "spec", "nodeName") is { } assigned)
            {
                throw ApiException.Conflict(r.Type, name, $"pod {name} is already assigned to node \"{assigned}\"");
            }

            var updated = current.Body.DeepClone().AsObject();
            Json.ObjectAt(updated, "spec")["nodeName"] = target;
            var conditions = Json.ObjectAt(updated, "status")["conditions"] as JsonArray ?? [];
            conditions.Add(new JsonObject
            {
                ["type"] = "PodScheduled",
                ["status"] = "True",
                ["lastTransitionTime"] = Json.Timestamp(_clock.GetUtcNow()),
            });
            Json.ObjectAt(updated, "status")["conditions"] = conditions;
            if (r.DryRun)
            {
                break;
            }

            try
            {
                Store.Replace(r.Type.StorageKey, r.Namespace, name, current.Revision, updated);
                break;
            }
            catch (Storage.RevisionConflictException)
            {
                // retry on the new state
            }
        }

        await WriteJsonAsync(r.Http, 201, ApiException.Status(201, "", "", null));
    }

    /// <summary>serviceaccounts/token: a bearer token for the account (TokenRequest).</summary>
    private async Task TokenRequestAsync(ApiRequest r)
    {
        var request = await ReadBodyAsync(r.Http);
        var name = r.Info.Name!;
        var account = Store.Get(r.Type.StorageKey, r.Namespace, name) ?? throw ApiException.NotFound(r.Type, name);
        long seconds = Json.WholeNumber(Json.Walk(request, "spec", "expirationSeconds")) ?? 3600;
        if (seconds < 600)
        {
            throw ApiException.Invalid(Registry.Find("", "v1", "serviceaccounts")!, name,
                [new FieldError("spec.expirationSeconds", "FieldValueInvalid", $"Invalid value: {seconds}: may not specify a duration less than 10 minutes")]);
        }

        var expires = _clock.GetUtcNow().AddSeconds(seconds);
        var token = Authenticator.IssueServiceAccountToken(r.Namespace!, name, Json.GetString(account.Body, "metadata", "uid")!, expires);
        var response = request.DeepClone().AsObject();
        response["apiVersion"] = "authentication.k8s.io/v1";
        response["kind"] = "TokenRequest";
        response["status"] = new JsonObject { ["token"] = token, ["expirationTimestamp"] = Json.Timestamp(expires) };
        await WriteJsonAsync(r.Http, 201, response);
    }

    /// <summary>namespaces/finalize: writes spec.finalizers only (the namespace controller's last step).</summary>
    private async Task FinalizeNamespaceAsync(ApiRequest r)
    {
        var body = await ReadBodyAsync(r.Http);
        var finalizers = Json.Walk(body, "spec", "finalizers")?.DeepClone() ?? new JsonArray();
        var result = SystemUpdate(r.Type, null, r.Info.Name!, ns =>
        {
            Json.ObjectAt(ns, "spec")["finalizers"] = finalizers.DeepClone();
            return true;
        }) ?? throw ApiException.NotFound(r.Type, r.Info.Name!);
        RunHousekeeping();
        await WriteJsonAsync(r.Http, 200, Present(r.Type, result));
    }

    /// <summary>Access and token reviews: answered, never stored.</summary>
    private JsonObject Review(ApiRequest r, JsonObject body)
    {
        var result = body.DeepClone().AsObject();
        result["apiVersion"] = r.Type.GroupVersion;
        result["kind"] = r.Type.Kind;
        switch (r.Type.Kind)
        {
            case "TokenReview":
                {
                    var user = Authenticator.Authenticate(Json.GetString(body, "spec", "token"),
                        (ns, name) => Json.GetString(Store.Get("/serviceaccounts", ns, name)?.Body, "metadata", "uid"), _clock.GetUtcNow());
                    result["status"] = user is null
                        ? new JsonObject { ["authenticated"] = false }
                        : new JsonObject
                        {
                            ["authenticated"] = true,
                            ["user"] = new JsonObject { ["username"] = user.Name, ["groups"] = Json.ToArray(user.Groups) },
                        };
                    return result;
                }

            default:
                {
                    var subject = r.Type.Kind == "SelfSubjectAccessReview"
                        ? r.User
                        : new UserInfo(Json.GetString(body, "spec", "user") ?? "", Json.StringList(Json.Walk(body, "spec", "groups")));
                    AccessRequest access;
                    if (Json.Walk(body, "spec", "resourceAttributes") is JsonObject ra)
                    {
                        access = new AccessRequest(subject, Json.GetString(ra, "verb") ?? "", true, Json.GetString(ra, "group") ?? "",
                            Json.GetString(ra, "resource") ?? "", NullIfEmpty(Json.GetString(ra, "subresource")), NullIfEmpty(Json.GetString(ra, "namespace")),
                            NullIfEmpty(Json.GetString(ra, "name")), "");
                    }
                    else
                    {
                        var na = Json.Walk(body, "spec", "nonResourceAttributes") as JsonObject;
                        access = new AccessRequest(subject, Json.GetString(na, "verb") ?? "get", false, "", "", null, null, null, Json.GetString(na, "path") ?? "/");
                    }

                    bool allowed = IsAllowed(access);
                    result["status"] = new JsonObject
                    {
                        ["allowed"] = allowed,
                        ["reason"] = allowed ? "allowed by RBAC" : "",
                    };
                    return result;
                }
        }
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;

    internal static string Revision(long revision) => revision.ToString(CultureInfo.InvariantCulture);
}

using System.Net.Http.Json;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Migrate.KubeEmulator.Api;
using Migrate.KubeEmulator.Auth;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Admission;

/// <summary>What is being admitted (admission.k8s.io/v1 AdmissionRequest fields).</summary>
public sealed record AdmissionAttributes(
    string Operation, ResourceType Type, string? Subresource, string? Namespace, string Name,
    JsonObject? NewObject, JsonObject? OldObject, UserInfo User, bool DryRun);

/// <summary>
/// Calls the ValidatingWebhookConfigurations whose rules match a request, as the real admission
/// chain does: AdmissionReview v1 over HTTPS (verified against the webhook's caBundle), per-webhook
/// timeout, failurePolicy, namespaceSelector and objectSelector. A denial fails the request with
/// the webhook's status code and message.
/// </summary>
public sealed class WebhookDispatcher(ObjectStore store, EmulatorOptions options, ILogger logger)
{
    public async Task ReviewAsync(AdmissionAttributes a, CancellationToken cancellationToken)
    {
        var configurations = store.List("admissionregistration.k8s.io/validatingwebhookconfigurations", null).Items;
        if (configurations.Count == 0)
        {
            return;
        }

        foreach (var configuration in configurations)
        {
            foreach (var webhook in (configuration.Body["webhooks"] as JsonArray)?.OfType<JsonObject>() ?? [])
            {
                if (!Matches(webhook, a))
                {
                    continue;
                }

                await CallAsync(webhook, a, cancellationToken);
            }
        }
    }

    private bool Matches(JsonObject webhook, AdmissionAttributes a)
    {
        var resource = a.Subresource is null ? a.Type.Plural : $"{a.Type.Plural}/{a.Subresource}";
        bool ruleMatches = ((webhook["rules"] as JsonArray)?.OfType<JsonObject>() ?? []).Any(rule =>
        {
            var operations = Json.StringList(rule["operations"]);
            var groups = Json.StringList(rule["apiGroups"]);
            var versions = Json.StringList(rule["apiVersions"]);
            var resources = Json.StringList(rule["resources"]);
            var scope = Json.GetString(rule, "scope") ?? "*";
            return (operations.Contains("*") || operations.Contains(a.Operation))
                   && (groups.Contains("*") || groups.Contains(a.Type.Group))
                   && (versions.Contains("*") || versions.Contains(a.Type.Version))
                   && resources.Any(r => r == resource || r == "*/*"
                                         || (r == "*" && a.Subresource is null)
                                         || (r == $"{a.Type.Plural}/*" && a.Subresource is not null)
                                         || (r == $"*/{a.Subresource}" && a.Subresource is not null))
                   && (scope == "*" || (scope == "Namespaced") == a.Type.Namespaced);
        });
        if (!ruleMatches)
        {
            return false;
        }

        if (a.Namespace is not null && webhook["namespaceSelector"] is JsonObject namespaceSelector)
        {
            var ns = store.Get("/namespaces", null, a.Namespace)?.Body;
            var selector = LabelSelector.FromObject(namespaceSelector);
            if (ns is null || selector?.Matches(Json.Labels(ns)) != true)
            {
                return false;
            }
        }

        if (webhook["objectSelector"] is JsonObject objectSelector && a.Subresource is null)
        {
            var selector = LabelSelector.FromObject(objectSelector);
            bool newMatches = a.NewObject is not null && selector?.Matches(Json.Labels(a.NewObject)) == true;
            bool oldMatches = a.OldObject is not null && selector?.Matches(Json.Labels(a.OldObject)) == true;
            if (!newMatches && !oldMatches)
            {
                return false;
            }
        }

        return true;
    }

    private async Task CallAsync(JsonObject webhook, AdmissionAttributes a, CancellationToken cancellationToken)
    {
        var name = Json.GetString(webhook, "name") ?? "webhook";
        bool ignoreFailure = Json.GetString(webhook, "failurePolicy") == "Ignore";
        int timeoutSeconds = (int)(Json.WholeNumber(webhook["timeoutSeconds"]) ?? 10);
        var uid = Guid.NewGuid().ToString();
        var review = new JsonObject
        {
            ["apiVersion"] = "admission.k8s.io/v1",
            ["kind"] = "AdmissionReview",
            ["request"] = new JsonObject
            {
                ["uid"] = uid,
                ["kind"] = Gvk(a),
                ["resource"] = new JsonObject { ["group"] = a.Type.Group, ["version"] = a.Type.Version, ["resource"] = a.Type.Plural },
                ["subResource"] = a.Subresource,
                ["requestKind"] = Gvk(a),
                ["requestResource"] = new JsonObject { ["group"] = a.Type.Group, ["version"] = a.Type.Version, ["resource"] = a.Type.Plural },
                ["requestSubResource"] = a.Subresource,
                ["name"] = a.Name,
                ["namespace"] = a.Namespace,
                ["operation"] = a.Operation,
                ["userInfo"] = new JsonObject { ["username"] = a.User.Name, ["groups"] = Json.ToArray(a.User.Groups) },
                ["object"] = a.NewObject?.DeepClone(),
                ["oldObject"] = a.OldObject?.DeepClone(),
                ["dryRun"] = a.DryRun,
            },
        };

        JsonObject? response;
        try
        {
            var (url, ca, serverName) = Endpoint(webhook);
            using var handler = new SocketsHttpHandler
            {
                SslOptions = new SslClientAuthenticationOptions
                {
                    // a Service is called by its name (name.namespace.svc), and its certificate must carry that name, as the real
                    // server checks; the connection goes to the mapped address, so the name is checked here
                    TargetHost = serverName,
                    RemoteCertificateValidationCallback = (_, certificate, _, errors) => Verify(certificate, errors, ca, serverName),
                },
            };
            using var client = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(timeoutSeconds) };
            using var reply = await client.PostAsJsonAsync(url, review, cancellationToken);
            reply.EnsureSuccessStatusCode();
            response = (await reply.Content.ReadFromJsonAsync<JsonObject>(cancellationToken))?["response"] as JsonObject;
            if (response is null || Json.GetString(response, "uid") != uid)
            {
                throw new InvalidOperationException("the webhook answered without a matching response.uid");
            }
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or InvalidOperationException or System.Text.Json.JsonException)
        {
            logger.LogWarning("admission webhook {Name} failed: {Error}", name, e.InnerException is null ? e.Message : $"{e.Message} ({e.InnerException.Message})");
            if (ignoreFailure)
            {
                return;
            }

            throw new ApiException(500, "InternalError", $"Internal error occurred: failed calling webhook \"{name}\": {e.Message}");
        }

        if (Json.Truth(response["allowed"]) == true)
        {
            return;
        }

        var status = response["status"] as JsonObject;
        int code = Json.WholeNumber(status?["code"]) is long cv && cv >= 400 ? (int)cv : 403;
        var message = Json.GetString(status, "message") ?? "";
        var reason = Json.GetString(status, "reason") ?? (code == 429 ? "TooManyRequests" : "Forbidden");
        throw new ApiException(code, reason, $"admission webhook \"{name}\" denied the request: {message}");
    }

    private static JsonObject Gvk(AdmissionAttributes a) => a.Subresource switch
    {
        "eviction" => new JsonObject { ["group"] = "policy", ["version"] = "v1", ["kind"] = "Eviction" },
        _ => new JsonObject { ["group"] = a.Type.Group, ["version"] = a.Type.Version, ["kind"] = a.Type.Kind },
    };

    private (string Url, X509Certificate2Collection? Ca, string? ServerName) Endpoint(JsonObject webhook)
    {
        var config = webhook["clientConfig"] as JsonObject ?? throw new InvalidOperationException("webhook without clientConfig");
        X509Certificate2Collection? ca = null;
        if (Json.GetString(config, "caBundle") is { Length: > 0 } bundle)
        {
            ca = [];
            ca.ImportFromPem(System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(bundle)));
        }

        if (Json.GetString(config, "url") is { } url)
        {
            return (url, ca, null);
        }

        if (config["service"] is JsonObject service)
        {
            var key = $"{Json.GetString(service, "name")}.{Json.GetString(service, "namespace")}.svc";
            var port = Json.WholeNumber(service["port"]) ?? 443;
            var path = Json.GetString(service, "path") ?? "/";
            if (options.ServiceEndpoints.TryGetValue(key, out var target)
                || (target = ReadyEndpoint(Json.GetString(service, "namespace")!, Json.GetString(service, "name")!, port)) is not null)
            {
                return ($"https://{target}{path}", ca, key);
            }

            throw new InvalidOperationException($"service {key}:{port} has no endpoint known to the emulator (no ready address in its Endpoints; or map it with --service-endpoint)");
        }

        throw new InvalidOperationException("webhook clientConfig has neither url nor service");
    }

    /// <summary>
    /// As kube-apiserver reaches a webhook's Service through its endpoints: the first ready address
    /// of the Service's Endpoints, with the target port of the Service port named; null when there is none.
    /// </summary>
    private string? ReadyEndpoint(string ns, string name, long port)
    {
        var servicePorts = store.Get("/services", ns, name)?.Body["spec"]?["ports"] as JsonArray;
        var portName = servicePorts?.OfType<JsonObject>().FirstOrDefault(p => Json.WholeNumber(p["port"]) == port) is { } declared ? Json.GetString(declared, "name") ?? "" : null;
        if (portName is null || store.Get("/endpoints", ns, name)?.Body["subsets"] is not JsonArray subsets)
        {
            return null;
        }

        foreach (var subset in subsets.OfType<JsonObject>())
        {
            var ip = (subset["addresses"] as JsonArray)?.OfType<JsonObject>().Select(a => Json.GetString(a, "ip")).FirstOrDefault(a => a is not null);
            var target = (subset["ports"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(p => (Json.GetString(p, "name") ?? "") == portName);
            if (ip is not null && target is not null && Json.WholeNumber(target["port"]) is { } number)
            {
                return $"{ip}:{number}";
            }
        }

        return null;
    }

    private static bool Verify(X509Certificate? certificate, SslPolicyErrors errors, X509Certificate2Collection? ca, string? serverName)
    {
        if (serverName is not null)
        {
            if (certificate is null || !X509CertificateLoader.LoadCertificate(certificate.GetRawCertData()).MatchesHostname(serverName))
            {
                return false;
            }

            errors &= ~SslPolicyErrors.RemoteCertificateNameMismatch;
        }

        if (ca is null || ca.Count == 0)
        {
            return errors == SslPolicyErrors.None;
        }

        if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
        {
            return false;
        }

        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var leaf = new X509Certificate2(certificate);
        return chain.Build(leaf);
    }
}

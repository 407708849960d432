using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Admission;

/// <summary>
/// The operator's validating webhook for pod evictions (POST /validate-evictions): `kubectl drain`
/// and every tool that drains through the Eviction API (upgrades, autoscalers). The eviction of a
/// pod that opted in (label podmigration.io/migrate=true on the pod or its namespace) becomes a
/// MigrationRequest and is refused with 429 until the pod has moved; the drain's own retries then
/// find it gone. A request the user deleted cancels for good: the pod is marked and its next
/// eviction is an ordinary one. Pods that did not opt in are never held up (and with
/// failurePolicy Ignore, a down operator holds up nothing).
/// </summary>
public static class EvictionGuard
{
    public const string Path = "/validate-evictions";



    /// <summary>Migrations tried per pod before its evictions are refused with the last failure (the pod is never killed).</summary>
    public const int MaxAttempts = 3;

    /// <summary>Null if the eviction may go ahead, otherwise why not (and a migration is under way or has failed).</summary>
    public static async Task<string?> RefusalAsync(IKubernetes client, string ns, string name, bool dryRun, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(client);
        V1Pod pod;
        try
        {
            pod = await client.CoreV1.ReadNamespacedPodAsync(name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }

        if (pod.Metadata.DeletionTimestamp is not null || pod.Metadata.Annotations?.ContainsKey(Annotations.EvictionMigrationCancelled) == true || !await OptedInAsync(client, pod, cancellationToken))
        {
            return null;
        }

        var raw = await client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, ns, MigrationRequest.Plural,
            cancellationToken: cancellationToken);
        var requests = KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText()).Items
            .Where(r => r.Spec.PodName == name).OrderBy(r => r.Metadata.CreationTimestamp).ToList();
        if (requests.FirstOrDefault(r => !MigrationPhases.IsFinal(r.Status?.Phase)) is { } active)
        {
            return $"pod {ns}/{name} is being migrated to another node by MigrationRequest {active.Metadata.Name} instead of being evicted; retry the eviction later";
        }

        if (requests.Any(r => r.Status?.Phase == MigrationPhases.Succeeded))
        {
            return $"pod {ns}/{name} has been migrated and is being removed; retry the eviction later";
        }

        // a pod of a group is moved with its group: its attempts are the group requests naming that group
        var all = KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText()).Items;
        var attempts = DrainAttempts.AttemptsFor(pod, all).ToList();
        if (attempts.FirstOrDefault(r => !MigrationPhases.IsFinal(r.Status?.Phase)) is { } group)
        {
            return $"pod {ns}/{name} is being migrated to another node with its group by MigrationRequest {group.Metadata.Name} instead of being evicted; retry the eviction later";
        }

        var failures = DrainAttempts.Failures(attempts.Where(r => r.Metadata.Labels?.ContainsKey(Labels.Trigger) == true));
        if (failures.Count >= MaxAttempts)
        {
            var last = failures[^1].Status!;
            return $"pod {ns}/{name} opted in to migration and {failures.Count} migrations failed (last: {last.Reason}: {last.Message}); it is not evicted. " +
                $"Delete MigrationRequest {failures[^1].Metadata.Name} to let evictions through";
        }

        var request = DrainAttempts.NextFor("evict", pod, failures, new Dictionary<string, string> { [Labels.Trigger] = "eviction" });
        try
        {
            if (!dryRun)
            {
                await client.CustomObjects.CreateNamespacedCustomObjectAsync(request, MigrationRequest.Group, MigrationRequest.Version, ns, MigrationRequest.Plural,
                    cancellationToken: cancellationToken);
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by the eviction before this one
        }

        return $"pod {ns}/{name} is being migrated to another node by MigrationRequest {request.Metadata.Name} instead of being evicted; retry the eviction later";
    }

    private static async Task<bool> OptedInAsync(IKubernetes client, V1Pod pod, CancellationToken cancellationToken)
    {
        if (pod.Metadata.Labels?.ContainsKey(Labels.Migrate) == true)
        {
            return DrainAttempts.OptedIn(pod, namespaceOptedIn: false);
        }

        var ns = await client.CoreV1.ReadNamespaceAsync(pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        return DrainAttempts.OptedIn(pod, ns.Metadata.Labels?.TryGetValue(Labels.Migrate, out var value) == true && value == "true");
    }

    /// <summary>The webhook endpoint: a pods/eviction CREATE is allowed or refused with 429 and the reason.</summary>
    public static Task ReviewAsync(HttpContext http, IKubernetes client) =>
        AdmissionReviews.AnswerAsync(http, async (request, cancellationToken) =>
            request["operation"]?.GetValue<string>() == "CREATE" && request["subResource"]?.GetValue<string>() == "eviction"
                && request["name"]?.GetValue<string>() is { } name && request["namespace"]?.GetValue<string>() is { } ns
                ? await RefusalAsync(client, ns, name, request["dryRun"]?.GetValue<bool>() == true, cancellationToken)
                : null, 429, "TooManyRequests");
}

using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Admission;

/// <summary>
/// The operator's validating webhook for pod creation (POST /validate-pods, AdmissionReview v1).
/// While a MigrationRequest moves a pod that keeps its name (a StatefulSet's), the name is free for
/// a moment between the source's deletion and its replacement's creation; the StatefulSet
/// controller would fill it with a fresh pod. This refuses any pod of that name but the one that
/// carries the request's restore annotation. Every replica answers (not only the leader): the
/// decision is read from the requests themselves.
/// </summary>
public static class PodNameGuard
{
    public const string Path = "/validate-pods";

    /// <summary>Null if the pod may be created, otherwise why not.</summary>
    public static async Task<string?> RefusalAsync(IKubernetes client, string ns, JsonObject pod, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(pod);
        if (pod["metadata"]?["name"]?.GetValue<string>() is not { Length: > 0 } name)
        {
            return null; // a generated name never collides
        }

        var raw = await client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, ns, MigrationRequest.Plural,
            cancellationToken: cancellationToken);
        var requests = KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText()).Items;
        var holder = requests.FirstOrDefault(r => r.Spec?.PodName == name && MigrationExecutor.KeepsName(r) && !MigrationPhases.IsFinal(r.Status?.Phase));
        if (holder is null)
        {
            return null;
        }

        var restoring = pod["metadata"]?["annotations"]?[Annotations.RestoreFrom]?.GetValue<string>();
        return restoring == MigrationExecutor.MigrationId(holder)
            ? null
            : $"pod {ns}/{name} is being moved by MigrationRequest {holder.Metadata.Name}; until the move ends only its replacement may take this name";
    }

    /// <summary>The webhook endpoint: a pod CREATE is allowed or refused with 409 and the reason.</summary>
    public static Task ReviewAsync(HttpContext http, IKubernetes client) =>
        AdmissionReviews.AnswerAsync(http, async (request, cancellationToken) =>
        {
            if (request["operation"]?.GetValue<string>() != "CREATE" || request["object"] is not JsonObject pod)
            {
                return null;
            }

            var ns = request["namespace"]?.GetValue<string>() ?? pod["metadata"]?["namespace"]?.GetValue<string>() ?? "default";
            return await RefusalAsync(client, ns, pod, cancellationToken);
        }, 409, "Conflict");
}

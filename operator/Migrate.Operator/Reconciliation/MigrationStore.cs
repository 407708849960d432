using System.Text.Json;
using k8s;

namespace Migrate.Operator.Reconciliation;

/// <summary>MigrationRequests in the API server: list, and status writes that fail on a stale resourceVersion (409), so two writers never both win.</summary>
public sealed class MigrationStore(IKubernetes client)
{
    public async Task<IReadOnlyList<MigrationRequest>> ListAsync(CancellationToken cancellationToken)
    {
        var raw = await client.CustomObjects.ListClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, MigrationRequest.Plural, cancellationToken: cancellationToken);
        var list = KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText());
        return [.. list.Items];
    }


    /// <summary>Adds or removes the operator's finalizer (a JSON merge patch of the finalizer list); returns the request as stored.</summary>
    public async Task<MigrationRequest> SetFinalizerAsync(MigrationRequest request, bool present, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var finalizers = (request.Metadata.Finalizers ?? []).Where(f => f != Finalizers.Cleanup).ToList();
        if (present)
        {
            finalizers.Add(Finalizers.Cleanup);
        }

        var raw = await client.CustomObjects.PatchNamespacedCustomObjectAsync(FinalizerPatch(finalizers, request.Metadata.ResourceVersion), MigrationRequest.Group, MigrationRequest.Version,
            request.Metadata.NamespaceProperty, MigrationRequest.Plural, request.Metadata.Name, cancellationToken: cancellationToken);
        return KubernetesJson.Deserialize<MigrationRequest>(((JsonElement)raw).GetRawText());
    }

    /// <summary>A JSON merge patch that sets an object's finalizer list, only if the object is still at <paramref name="resourceVersion"/> (409 otherwise).</summary>
    public static k8s.Models.V1Patch FinalizerPatch(IEnumerable<string> finalizers, string? resourceVersion) =>
        new(JsonSerializer.Serialize(new Dictionary<string, object?> { ["metadata"] = new Dictionary<string, object?> { ["finalizers"] = finalizers, ["resourceVersion"] = resourceVersion } }),
            k8s.Models.V1Patch.PatchType.MergePatch);

    /// <summary>Replaces the status (the request's resourceVersion must still be current).</summary>
    public async Task<MigrationRequest> WriteStatusAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var raw = await client.CustomObjects.ReplaceNamespacedCustomObjectStatusAsync(request, MigrationRequest.Group, MigrationRequest.Version,
            request.Metadata.NamespaceProperty, MigrationRequest.Plural, request.Metadata.Name, cancellationToken: cancellationToken);
        return KubernetesJson.Deserialize<MigrationRequest>(((JsonElement)raw).GetRawText());
    }
}

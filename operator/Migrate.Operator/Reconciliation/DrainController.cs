using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Reconciles NodeDrains: the node is cordoned; each pod that opted in (label
/// podmigration.io/migrate=true on the pod or its namespace) gets a MigrationRequest, at most
/// maxParallel at once, retried on another node up to maxAttempts (the pod is never killed);
/// every other pod is evicted through the Eviction API, so PodDisruptionBudgets apply; DaemonSet,
/// mirror and finished pods stay, as with kubectl drain. Deleting the NodeDrain uncordons the node
/// (if this drain cordoned it) and lets it go. Driven by the shared informers: a drain is looked at
/// when it, its requests, or the pods and the node it drains change (and every few seconds while it
/// drains, for evictions a budget refused); only while this replica leads.
/// </summary>
public sealed partial class DrainController : BackgroundService
{
    private readonly IKubernetes client;
    private readonly ClusterCache _cache;
    private readonly ILeaderGate _leader;
    private readonly ILogger<DrainController> logger;
    private readonly TimeProvider time;
    private readonly EventRecorder _events;
    private readonly WorkQueue<ObjectKey> _queue;

    public DrainController(IKubernetes client, ClusterCache cache, ILeaderGate leader, ILogger<DrainController> logger, TimeProvider time)
    {
        this.client = client;
        _cache = cache;
        _leader = leader;
        this.logger = logger;
        this.time = time;
        _events = new EventRecorder(client, time);
        _queue = new WorkQueue<ObjectKey>(time);
        cache.Drains.OnChange(c => _queue.Add(ObjectKey.Of((c.New ?? c.Old!).Metadata)));
        cache.Requests.OnChange(c =>
        {
            if (Keys.Get((c.New ?? c.Old!).Metadata.Labels, Labels.Drain) is { } drain)
            {
                _queue.Add(new ObjectKey("", drain));
            }
        });
        cache.Pods.OnChange(c => WakeDrainsOf((c.New ?? c.Old!).Spec?.NodeName));
        cache.Nodes.OnChange(c => WakeDrainsOf((c.New ?? c.Old!).Metadata.Name));
    }

    /// <summary>How soon a drain still under way is looked at again without a change (a refused eviction is retried then).</summary>
    public TimeSpan Resync { get; init; } = TimeSpan.FromSeconds(2);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await _cache.WaitForSyncAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        await new ControllerLoop("NodeDrain", _queue, ReconcileKeyAsync, () => _cache.Drains.Items.Select(d => ObjectKey.Of(d.Metadata)), _leader, logger, workers: 2)
            .RunAsync(stoppingToken);
    }

    public override void Dispose()
    {
        base.Dispose();
        _queue.Dispose();
    }

    private void WakeDrainsOf(string? node)
    {
        foreach (var drain in _cache.Drains.Items.Where(d => d.Spec.NodeName == node))
        {
            _queue.Add(ObjectKey.Of(drain.Metadata));
        }
    }

    private async Task<TimeSpan?> ReconcileKeyAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        if (_cache.Drains.Get(null, key.Name) is not { } drain)
        {
            return null;
        }

        try
        {
            await ReconcileAsync(drain, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // someone wrote first; the next pass starts from what they wrote
            return TimeSpan.FromMilliseconds(100);
        }

        return _cache.Drains.Get(null, key.Name)?.Status?.Phase is NodeDrainStatus.Drained ? null : Resync;
    }

    private async Task ReconcileAsync(NodeDrain drain, CancellationToken cancellationToken)
    {
        if (drain.Metadata.DeletionTimestamp is not null)
        {
            await StopAsync(drain, cancellationToken);
            return;
        }

        if (drain.Metadata.Finalizers?.Contains(Finalizers.Uncordon) != true)
        {
            drain = await SetFinalizerAsync(drain, [.. drain.Metadata.Finalizers ?? [], Finalizers.Uncordon], cancellationToken);
        }

        var status = drain.Status is null ? new NodeDrainStatus { StartTime = time.GetUtcNow().UtcDateTime }
            : JsonSerializer.Deserialize<NodeDrainStatus>(JsonSerializer.Serialize(drain.Status))!;
        var previousPhase = status.Phase;
        var nodeName = drain.Spec.NodeName;
        if (_cache.Nodes.Get(null, nodeName) is not { } node)
        {
            status.Phase = NodeDrainStatus.Blocked;
            status.Message = $"Node {nodeName} does not exist.";
            await WriteStatusAsync(drain, status, previousPhase, cancellationToken);
            return;
        }

        if (node.Spec?.Unschedulable != true)
        {
            await PatchNodeAsync(nodeName, true, drain.Metadata.Name, cancellationToken);
            await _events.RecordAsync("v1", "Node", node.Metadata, "Normal", "Cordoned", $"Cordoned by NodeDrain {drain.Metadata.Name}{Because(drain)}.", cancellationToken);
        }

        var pods = _cache.Pods.Items.Where(p => p.Spec.NodeName == nodeName).ToList();
        var optedInNamespaces = _cache.Namespaces.Items.Where(n => Keys.Get(n.Metadata.Labels, Labels.Migrate) == "true")
            .Select(n => n.Metadata.Name).ToHashSet(StringComparer.Ordinal);
        var requests = _cache.Requests.Items.Where(r => Keys.Get(r.Metadata.Labels, Labels.Drain) == drain.Metadata.Name).ToList();
        int inFlight = requests.Count(r => !MigrationPhases.IsFinal(r.Status?.Phase));
        var blocking = new List<BlockingPod>();
        int remaining = 0;
        int failed = 0;
        foreach (var pod in pods.Where(p => Drainable(p)).OrderBy(p => p.Metadata.NamespaceProperty, StringComparer.Ordinal).ThenBy(p => p.Metadata.Name, StringComparer.Ordinal))
        {
            remaining++;
            if (pod.Metadata.DeletionTimestamp is not null)
            {
                continue; // on its way out
            }

            var ns = pod.Metadata.NamespaceProperty;
            if (DrainAttempts.OptedIn(pod, optedInNamespaces.Contains(ns)))
            {
                // (a pod of a group moves with its group: one group request for all of them)
                var attempts = DrainAttempts.AttemptsFor(pod, requests).OrderBy(r => r.Metadata.CreationTimestamp).ToList();
                if (attempts.Any(r => !MigrationPhases.IsFinal(r.Status?.Phase)))
                {
                    continue;
                }

                var failures = DrainAttempts.Failures(attempts);
                if (failures.Count >= drain.Spec.MaxAttempts)
                {
                    failed++;
                    var last = failures[^1].Status!;
                    blocking.Add(new BlockingPod(ns, pod.Metadata.Name, $"{failures.Count} migration(s) failed, the last with {last.Reason}: {last.Message}"));
                    continue;
                }

                if (inFlight >= drain.Spec.MaxParallel)
                {
                    continue; // waits for a slot
                }

                await CreateRequestAsync(drain, pod, failures, cancellationToken);
                inFlight++;
            }
            else if (await EvictAsync(pod, cancellationToken) is { } refusal)
            {
                blocking.Add(new BlockingPod(ns, pod.Metadata.Name, refusal));
            }
            else
            {
                status.Evicted++;
            }
        }

        status.Migrated = requests.Count(r => r.Status?.Phase == MigrationPhases.Succeeded);
        status.Failed = failed;
        status.Remaining = remaining;
        status.BlockingPods = blocking;
        status.ObservedGeneration = drain.Metadata.Generation;
        status.Phase = PhaseOf(remaining, inFlight, blocking.Count);
        if (status.Phase == NodeDrainStatus.Drained)
        {
            status.CompletionTime ??= time.GetUtcNow().UtcDateTime;
            status.Message = $"Node {nodeName} is drained: {status.Migrated} pod(s) migrated, {status.Evicted} evicted.";
        }
        else if (status.Phase == NodeDrainStatus.Blocked)
        {
            status.Message = $"{remaining} pod(s) on node {nodeName} cannot be moved or evicted now; see blockingPods.";
        }
        else
        {
            status.Message = $"{remaining} pod(s) left on node {nodeName}: {inFlight} migrating, {blocking.Count} blocked.";
        }

        await WriteStatusAsync(drain, status, previousPhase, cancellationToken);
    }

    /// <summary>
    /// A drain's phase from what is left on its node: drained when no pod is left and no migration of
    /// it still runs (a migration's request ends a moment after its source pod goes); blocked only
    /// when pods are left and every one of them is blocked.
    /// </summary>
    public static string PhaseOf(int remaining, int inFlight, int blocked) =>
        remaining == 0 && inFlight == 0 ? NodeDrainStatus.Drained
        : remaining > 0 && blocked == remaining ? NodeDrainStatus.Blocked
        : NodeDrainStatus.Draining;

    /// <summary>What a drain acts on: like kubectl drain, not mirror pods, DaemonSet pods or pods that have finished.</summary>
    private static bool Drainable(V1Pod pod) =>
        pod.Metadata.Annotations?.ContainsKey("kubernetes.io/config.mirror") != true
        && pod.Metadata.OwnerReferences?.Any(o => o.Controller == true && o.Kind == "DaemonSet") != true
        && pod.Status?.Phase is not ("Succeeded" or "Failed");

    private async Task CreateRequestAsync(NodeDrain drain, V1Pod pod, List<MigrationRequest> failures, CancellationToken cancellationToken)
    {
        int attempt = failures.Count + 1;
        var request = DrainAttempts.NextFor("drain-" + drain.Metadata.Name, pod, failures,
            new Dictionary<string, string> { [Labels.Drain] = drain.Metadata.Name }, drain.Spec.TargetNodeSelector,
            new V1OwnerReference { ApiVersion = drain.ApiVersion, Kind = NodeDrain.KindName, Name = drain.Metadata.Name, Uid = drain.Metadata.Uid, BlockOwnerDeletion = false });
        try
        {
            await client.CustomObjects.CreateNamespacedCustomObjectAsync(request, MigrationRequest.Group, MigrationRequest.Version, pod.Metadata.NamespaceProperty,
                MigrationRequest.Plural, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            return; // made by an earlier pass whose list did not show it yet
        }

        await _events.RecordAsync(drain.ApiVersion, NodeDrain.KindName, drain.Metadata, "Normal", "Migrating",
            DrainAttempts.GroupOf(pod) is { } group
                ? $"Moving pod {pod.Metadata.NamespaceProperty}/{pod.Metadata.Name} off node {drain.Spec.NodeName} with the pods of its group {group} (MigrationRequest {request.Metadata.Name}, attempt {attempt})."
                : $"Moving pod {pod.Metadata.NamespaceProperty}/{pod.Metadata.Name} off node {drain.Spec.NodeName} (MigrationRequest {request.Metadata.Name}, attempt {attempt}).", cancellationToken);
    }

    /// <summary>Evicts the pod through the Eviction API; returns why not when it was refused (a disruption budget, usually).</summary>
    private async Task<string?> EvictAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.CreateNamespacedPodEvictionAsync(new V1Eviction
            {
                Metadata = new V1ObjectMeta { Name = pod.Metadata.Name, NamespaceProperty = pod.Metadata.NamespaceProperty },
            }, pod.Metadata.Name, pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
            return null;
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null; // gone already
        }
        catch (HttpOperationException e) when ((int)e.Response.StatusCode is 429 or 403 or 500)
        {
            var message = JsonNode.Parse(e.Response.Content)?["message"]?.GetValue<string>() ?? e.Message;
            return $"eviction refused: {message}";
        }
    }

    private async Task StopAsync(NodeDrain drain, CancellationToken cancellationToken)
    {
        if (drain.Metadata.Finalizers?.Contains(Finalizers.Uncordon) != true)
        {
            return;
        }

        try
        {
            var node = await client.CoreV1.ReadNodeAsync(drain.Spec.NodeName, cancellationToken: cancellationToken);
            if (node.Metadata.Annotations?.TryGetValue(Annotations.CordonedBy, out var by) == true && by == drain.Metadata.Name)
            {
                await PatchNodeAsync(drain.Spec.NodeName, false, null, cancellationToken);
                await _events.RecordAsync("v1", "Node", node.Metadata, "Normal", "Uncordoned", $"NodeDrain {drain.Metadata.Name} was deleted.", cancellationToken);
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // the node is gone: nothing to uncordon
        }

        await SetFinalizerAsync(drain, [.. (drain.Metadata.Finalizers ?? []).Where(f => f != Finalizers.Uncordon)], cancellationToken);
    }

    private async Task PatchNodeAsync(string name, bool cordon, string? drain, CancellationToken cancellationToken)
    {
        var patch = new JsonObject
        {
            ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [Annotations.CordonedBy] = drain } },
            ["spec"] = new JsonObject { ["unschedulable"] = cordon ? true : null },
        };
        await client.CoreV1.PatchNodeAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), name, cancellationToken: cancellationToken);
    }

    private async Task<NodeDrain> SetFinalizerAsync(NodeDrain drain, List<string> finalizers, CancellationToken cancellationToken)
    {
        var raw = await client.CustomObjects.PatchClusterCustomObjectAsync(MigrationStore.FinalizerPatch(finalizers, drain.Metadata.ResourceVersion),
            MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, drain.Metadata.Name, cancellationToken: cancellationToken);
        return KubernetesJson.Deserialize<NodeDrain>(((JsonElement)raw).GetRawText());
    }

    private async Task WriteStatusAsync(NodeDrain drain, NodeDrainStatus status, string? previousPhase, CancellationToken cancellationToken)
    {
        if (drain.Status is not null && JsonSerializer.Serialize(drain.Status) == JsonSerializer.Serialize(status))
        {
            return;
        }

        drain.Status = status;
        await client.CustomObjects.ReplaceClusterCustomObjectStatusAsync(drain, MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, drain.Metadata.Name,
            cancellationToken: cancellationToken);
        if (status.Phase != previousPhase)
        {
            await _events.RecordAsync(drain.ApiVersion, NodeDrain.KindName, drain.Metadata, status.Phase == NodeDrainStatus.Blocked ? "Warning" : "Normal",
                status.Phase!, status.Message ?? "", cancellationToken);
            LogPhase(drain.Metadata.Name, status.Phase, status.Message);
        }
    }

    private static string Because(NodeDrain drain) => string.IsNullOrEmpty(drain.Spec.Reason) ? "" : $" ({drain.Spec.Reason})";

    [LoggerMessage(Level = LogLevel.Information, Message = "NodeDrain {Name}: {Phase}: {Message}")]
    private partial void LogPhase(string name, string? phase, string? message);

}

using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>Writes to namespaced objects of the project's kinds: finalizers, annotations, status.</summary>
public sealed class NamespacedObjects(IKubernetes client)
{
    public async Task SetFinalizersAsync(IKubernetesObject<V1ObjectMeta> item, string plural, IEnumerable<string> finalizers, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(item);
        await client.CustomObjects.PatchNamespacedCustomObjectAsync(MigrationStore.FinalizerPatch(finalizers, item.Metadata.ResourceVersion), MigrationRequest.Group,
            MigrationRequest.Version, item.Metadata.NamespaceProperty, plural, item.Metadata.Name, cancellationToken: cancellationToken);
    }

    public async Task AnnotateAsync(IKubernetesObject<V1ObjectMeta> item, string plural, string key, string value, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(item);
        var patch = new JsonObject
        {
            ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [key] = value }, ["resourceVersion"] = item.Metadata.ResourceVersion },
        };
        await client.CustomObjects.PatchNamespacedCustomObjectAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), MigrationRequest.Group,
            MigrationRequest.Version, item.Metadata.NamespaceProperty, plural, item.Metadata.Name, cancellationToken: cancellationToken);
    }

    /// <summary>Replaces the status (the object's resourceVersion must still be current).</summary>
    public async Task WriteStatusAsync(IKubernetesObject<V1ObjectMeta> item, string plural, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(item);
        await client.CustomObjects.ReplaceNamespacedCustomObjectStatusAsync(item, MigrationRequest.Group, MigrationRequest.Version,
            item.Metadata.NamespaceProperty, plural, item.Metadata.Name, cancellationToken: cancellationToken);
    }
}

/// <summary>
/// Reconciles Checkpoints (see <see cref="CheckpointDecisions"/>): observes the pod, its node and
/// what the node's agent keeps, decides, then carries out the one action decided and writes the
/// status. Driven by the shared informers and by polling while a checkpoint is taken; only while
/// this replica leads.
/// </summary>
public sealed partial class CheckpointController : QueueController
{
    private readonly ILogger<CheckpointController> _logger;
    private readonly LeftCheckpoints _left;
    private readonly IAgentDirectory _agents;
    private readonly TimeProvider _time;
    private readonly NamespacedObjects _objects;
    private readonly EventRecorder _events;
    private readonly KeptViews _views;
    private readonly IKubernetes _client;

    public CheckpointController(IKubernetes client, ClusterCache cache, IAgentDirectory agents, ILeaderGate leader, ILogger<CheckpointController> logger, TimeProvider time,
        LeftCheckpoints left)
        : base("Checkpoint", cache, leader, logger, time, workers: 2)
    {
        _left = left;
        _logger = logger;
        _agents = agents;
        _time = time;
        _objects = new NamespacedObjects(client);
        _events = new EventRecorder(client, time);
        _views = new KeptViews(agents, time);
        _client = client;
        cache.Checkpoints.OnChange(c =>
        {
            var checkpoint = c.New ?? c.Old!;
            Queue.Add(ObjectKey.Of(checkpoint.Metadata));
            if (CheckpointGroupDecisions.GroupOwner(checkpoint) is { } owner)
            {
                Queue.Add(new ObjectKey(checkpoint.Metadata.NamespaceProperty, owner.Name));
            }
        });
    }

    public CheckpointPolicy Policy { get; init; } = new();

    public CheckpointGroupPolicy GroupPolicy { get; init; } = new();

    /// <summary>How long a group member's agent holds its pod frozen, dumped, waiting for the group's decision.</summary>
    public TimeSpan GroupHold { get; init; } = TimeSpan.FromSeconds(60);

    protected override IEnumerable<ObjectKey> AllKeys() => Cache.Checkpoints.Items.Select(c => ObjectKey.Of(c.Metadata));

    protected override async Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        OperatorTelemetry.SetCheckpointStorage(Cache.Checkpoints.Items.Where(c => c.Status?.Phase == CheckpointPhases.Ready && !c.Spec.IsGroup).Sum(c => c.Status!.SizeBytes ?? 0));
        if (Cache.Checkpoints.Get(key.Namespace, key.Name) is not { } checkpoint)
        {
            return null;
        }

        if (checkpoint.Spec.IsGroup)
        {
            return await ReconcileGroupAsync(checkpoint, cancellationToken);
        }

        var owner = CheckpointGroupDecisions.GroupOwner(checkpoint);
        var group = owner is null ? null : Cache.Checkpoints.Get(checkpoint.Metadata.NamespaceProperty, owner.Name) is { } g && g.Metadata.Uid == owner.Uid ? g : null;

        var pod = checkpoint.Spec.Source is null ? Cache.Pods.Get(checkpoint.Metadata.NamespaceProperty, checkpoint.Spec.PodName) : null;
        var nodeName = checkpoint.Status?.NodeName ?? pod?.Spec?.NodeName;
        var node = nodeName is not null ? Cache.Nodes.Get(null, nodeName)
            : checkpoint.Spec.Source is not null ? CheckpointDecisions.ImportNode(checkpoint.Spec.NodeName, Cache.Nodes.Items) : null;
        var facts = new CheckpointFacts
        {
            Checkpoint = checkpoint,
            Now = _time.GetUtcNow().UtcDateTime,
            Pod = pod,
            Node = node,
            // (only an admission chooses a parent)
            Earlier = checkpoint.Status?.Phase is null or CheckpointPhases.Pending
                ? [.. Cache.Checkpoints.Items.Where(c => c.Metadata.NamespaceProperty == checkpoint.Metadata.NamespaceProperty)] : [],
            // (a Ready or Failed checkpoint needs its agent again only to be deleted)
            ArchiveNode = checkpoint.Metadata.DeletionTimestamp is not null && checkpoint.Status?.Export is not null
                ? CheckpointDecisions.ImportNode(null, Cache.Nodes.Items.Where(n => n.Metadata.Name != checkpoint.Status.NodeName))?.Metadata.Name : null,
            Agent = checkpoint.Status?.NodeName is not null && (!CheckpointPhases.IsFinal(checkpoint.Status.Phase) || checkpoint.Metadata.DeletionTimestamp is not null)
                ? await _views.GetAsync(node, checkpoint.Metadata.Uid, cancellationToken) : KeptView.None,
            IsGroupMember = owner is not null,
            // (a member whose group is gone is rolled back: nobody is left to decide)
            GroupDecision = owner is null ? null : group is null || group.Metadata.DeletionTimestamp is not null ? Migrate.Agent.Contracts.Groups.CheckpointHolds.Abort : group.Status?.Group?.Decision,
        };
        var decision = CheckpointDecisions.Decide(facts, Policy);
        try
        {
            await ExecuteAsync(checkpoint, pod, node, decision.Action, cancellationToken);
            // (the metadata writes changed the resourceVersion: the status waits for the next pass)
            bool statusToo = decision.Action is not (CheckpointAction.AddFinalizer or CheckpointAction.RemoveFinalizer or CheckpointAction.SavePod);
            await WriteOutcomeAsync(checkpoint, statusToo ? decision.Status : null, decision.Event, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Conflict or HttpStatusCode.NotFound)
        {
            return TimeSpan.FromMilliseconds(100); // someone wrote first (or it is gone); the next pass starts from what is there
        }
        catch (RpcException e)
        {
            LogAgentCall(checkpoint.Metadata.NamespaceProperty, checkpoint.Metadata.Name, e.Status.Detail);
            return Policy.PollInterval;
        }

        return decision.Requeue;
    }

    private async Task ExecuteAsync(Checkpoint checkpoint, V1Pod? pod, V1Node? node, CheckpointAction action, CancellationToken cancellationToken)
    {
        switch (action)
        {
            case CheckpointAction.AddFinalizer:
                await _objects.SetFinalizersAsync(checkpoint, Checkpoint.Plural, [.. checkpoint.Metadata.Finalizers ?? [], Finalizers.Cleanup], cancellationToken);
                break;
            case CheckpointAction.RemoveFinalizer remove:
                if (remove.ImagesLeft && checkpoint.Status?.NodeName is { } keptOn)
                {
                    // let go while the agent was silent: the sweeper removes the images once it answers
                    _left.Add(keptOn, checkpoint.Metadata.Uid);
                }

                if (remove.ExportVia is { } via && remove.ExportPath is { } exportPath)
                {
                    // (a failed call leaves the finalizer: the next pass tries again)
                    await Agent(Cache.Nodes.Get(null, via), via).DeleteExportAsync(new DeleteExportRequest { Path = exportPath }, cancellationToken: cancellationToken);
                }

                await _objects.SetFinalizersAsync(checkpoint, Checkpoint.Plural, (checkpoint.Metadata.Finalizers ?? []).Where(f => f != Finalizers.Cleanup), cancellationToken);
                break;
            case CheckpointAction.SavePod save:
                await _objects.AnnotateAsync(checkpoint, Checkpoint.Plural, CheckpointDecisions.SourcePodAnnotation, save.Json ?? KubernetesJson.Serialize(SavedPod(pod!)), cancellationToken);
                break;
            case CheckpointAction.Take take:
                await Agent(node, take.Node).TakeCheckpointAsync(new TakeCheckpointRequest
                {
                    CheckpointId = checkpoint.Metadata.Uid,
                    NodeName = take.Node,
                    Pod = new PodRef { Namespace = checkpoint.Metadata.NamespaceProperty, Name = checkpoint.Spec.PodName, Uid = checkpoint.Status?.PodUid ?? pod?.Metadata.Uid ?? "" },
                    ExportPath = take.ExportPath ?? "",
                    SavedPodJson = Keys.Get(checkpoint.Metadata.Annotations, CheckpointDecisions.SourcePodAnnotation) ?? "",
                    ParentCheckpointId = take.ParentId ?? "",
                    GroupHold = take.GroupHold,
                    HoldTimeoutSeconds = take.GroupHold ? (uint)Math.Max(1, GroupHold.TotalSeconds) : 0,
                }, cancellationToken: cancellationToken);
                break;
            case CheckpointAction.Continue decided:
                await Agent(node, decided.Node).ContinueCheckpointAsync(new ContinueCheckpointRequest { CheckpointId = checkpoint.Metadata.Uid, Decision = decided.Decision },
                    cancellationToken: cancellationToken);
                break;
            case CheckpointAction.Import import:
                await Agent(node, import.Node).ImportCheckpointAsync(new ImportCheckpointRequest
                {
                    CheckpointId = checkpoint.Metadata.Uid,
                    Path = import.Path,
                    Digest = import.Digest ?? "",
                }, cancellationToken: cancellationToken);
                break;
            case CheckpointAction.Delete delete:
                await Agent(node, delete.Node).DeleteCheckpointAsync(new CheckpointRef { CheckpointId = checkpoint.Metadata.Uid, DeleteExport = delete.DeleteExport }, cancellationToken: cancellationToken);
                break;
        }
    }

    /// <summary>One pass over a group Checkpoint (<see cref="CheckpointGroupDecisions"/>): members made or deleted, the status (the decision members follow) written.</summary>
    private async Task<TimeSpan?> ReconcileGroupAsync(Checkpoint group, CancellationToken cancellationToken)
    {
        if (group.Metadata.DeletionTimestamp is not null)
        {
            return null; // its members go with it (owner references); a member still held is told Abort
        }

        var decision = CheckpointGroupDecisions.Decide(new CheckpointGroupFacts
        {
            Group = group,
            Now = _time.GetUtcNow().UtcDateTime,
            Members = [.. CheckpointGroupDecisions.MembersOf(group, Cache.Checkpoints.Items)],
            Pods = [.. Cache.Pods.Items.Where(p => p.Metadata.NamespaceProperty == group.Metadata.NamespaceProperty)],
        }, GroupPolicy);
        try
        {
            foreach (var member in decision.Create)
            {
                await CreateMemberAsync(group, member, cancellationToken);
            }

            foreach (var name in decision.Delete)
            {
                await _client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, group.Metadata.NamespaceProperty,
                    Checkpoint.Plural, name, cancellationToken: cancellationToken);
            }

            await WriteOutcomeAsync(group, decision.Status, decision.Event, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Conflict or HttpStatusCode.NotFound)
        {
            return TimeSpan.FromMilliseconds(100);
        }

        return decision.Requeue;
    }

    /// <summary>
    /// A pass's outcome: the status, when given and changed (counted in the metrics when it ends the
    /// checkpoint), then the decision's Event (decisions carry one only on a transition).
    /// </summary>
    private async Task WriteOutcomeAsync(Checkpoint checkpoint, CheckpointStatus? status, (string Type, string Reason, string Message)? note, CancellationToken cancellationToken)
    {
        if (status is not null && JsonSerializer.Serialize(status) != JsonSerializer.Serialize(checkpoint.Status ?? new CheckpointStatus()))
        {
            bool ends = CheckpointPhases.IsFinal(status.Phase) && !CheckpointPhases.IsFinal(checkpoint.Status?.Phase);
            checkpoint.Status = status;
            await _objects.WriteStatusAsync(checkpoint, Checkpoint.Plural, cancellationToken);
            if (ends && !checkpoint.Spec.IsGroup)
            {
                // (a group's members are the checkpoints counted: its own figures are theirs again)
                OperatorTelemetry.CheckpointEnded(status.Phase!, status.Reason, status.FreezeMillis, status.SizeBytes);
            }
        }

        if (note is { } n)
        {
            await _events.RecordAsync(checkpoint.ApiVersion, Checkpoint.KindName, checkpoint.Metadata, n.Type, n.Reason, n.Message, cancellationToken);
        }
    }

    private async Task CreateMemberAsync(Checkpoint group, NewCheckpointMember member, CancellationToken cancellationToken)
    {
        var checkpoint = new Checkpoint
        {
            Metadata = new V1ObjectMeta
            {
                Name = member.Name,
                NamespaceProperty = group.Metadata.NamespaceProperty,
                Labels = new Dictionary<string, string> { [Labels.Group] = group.Metadata.Name },
                OwnerReferences =
                [
                    new V1OwnerReference { ApiVersion = group.ApiVersion, Kind = Checkpoint.KindName, Name = group.Metadata.Name, Uid = group.Metadata.Uid, Controller = true, BlockOwnerDeletion = false },
                ],
            },
            Spec = new CheckpointSpec { PodName = member.PodName, Incremental = group.Spec.Incremental },
        };
        try
        {
            await _client.CustomObjects.CreateNamespacedCustomObjectAsync(checkpoint, MigrationRequest.Group, MigrationRequest.Version, group.Metadata.NamespaceProperty,
                Checkpoint.Plural, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by an earlier pass whose cache did not show it yet
        }
    }

    /// <summary>What a restore needs of the pod: its spec, labels and annotations (not its status or owners).</summary>
    public static V1Pod SavedPod(V1Pod pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = pod.Metadata.Name, Uid = pod.Metadata.Uid, Labels = pod.Metadata.Labels, Annotations = pod.Metadata.Annotations },
            Spec = pod.Spec,
        };
    }

    private NodeAgent.NodeAgentClient Agent(V1Node? node, string name) =>
        (node is null ? null : _agents.Connect(node))?.Client ?? throw new RpcException(new Status(StatusCode.Unavailable, $"node {name} has no agent"));

    [LoggerMessage(Level = LogLevel.Warning, Message = "Checkpoint {Namespace}/{Name}: an agent call failed: {Message}")]
    private partial void LogAgentCall(string @namespace, string name, string message);
}

/// <summary>Asks a node's agent what it keeps of a checkpoint (a short deadline, no retries) and remembers since when it has been silent.</summary>
public sealed class KeptViews(IAgentDirectory agents, TimeProvider time)
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, DateTime> _silentSince = new(StringComparer.Ordinal);

    public TimeSpan Deadline { get; init; } = TimeSpan.FromSeconds(3);

    public async Task<KeptView> GetAsync(V1Node? node, string checkpointId, CancellationToken cancellationToken)
    {
        if (node is null || agents.Observe(node) is not { } agent)
        {
            return KeptView.None;
        }

        var name = node.Metadata.Name;
        try
        {
            var kept = await agent.Client.GetCheckpointAsync(new CheckpointRef { CheckpointId = checkpointId }, deadline: DateTime.UtcNow + Deadline, cancellationToken: cancellationToken);
            _silentSince.TryRemove(name, out _);
            return new KeptView(true, kept);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            _silentSince.TryRemove(name, out _);
            return KeptView.KnowsNothing;
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            return new KeptView(false, null, _silentSince.GetOrAdd(name, _ => time.GetUtcNow().UtcDateTime), e.Status.Detail);
        }
    }
}

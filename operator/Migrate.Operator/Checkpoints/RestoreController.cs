using System.Net;
using System.Text.Json;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.V1;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>
/// Reconciles Restores (see <see cref="RestoreDecisions"/>): observes the checkpoint, the agents of
/// its node and of the restore's node, and the restored pod; decides; carries out the one action
/// decided; writes the status. Only while this replica leads.
/// </summary>
public sealed partial class RestoreController : QueueController
{
    private readonly ILogger<RestoreController> _logger;
    private readonly IKubernetes _client;
    private readonly IAgentDirectory _agents;
    private readonly CapabilitiesCache _capabilities;
    private readonly TimeProvider _time;
    private readonly Func<TransferClaims, string> _mintToken;
    private readonly NamespacedObjects _objects;
    private readonly EventRecorder _events;
    private readonly KeptViews _kept;
    private readonly AgentViews _views;

    public RestoreController(IKubernetes client, ClusterCache cache, IAgentDirectory agents, ILeaderGate leader, ILogger<RestoreController> logger, TimeProvider time,
        Func<TransferClaims, string> mintToken)
        : base("Restore", cache, leader, logger, time, workers: 2)
    {
        _logger = logger;
        _client = client;
        _agents = agents;
        _capabilities = new CapabilitiesCache(agents, time);
        _time = time;
        _mintToken = mintToken;
        _objects = new NamespacedObjects(client);
        _events = new EventRecorder(client, time);
        _kept = new KeptViews(agents, time);
        _views = new AgentViews(agents, time);
        cache.Restores.OnChange(c => Queue.Add(ObjectKey.Of((c.New ?? c.Old!).Metadata)));
        cache.Checkpoints.OnChange(c =>
        {
            var changed = (c.New ?? c.Old!).Metadata;
            foreach (var restore in cache.Restores.Items.Where(r => r.Metadata.NamespaceProperty == changed.NamespaceProperty && r.Spec.CheckpointName == changed.Name))
            {
                Queue.Add(ObjectKey.Of(restore.Metadata));
            }
        });
    }

    public CheckpointPolicy Policy { get; init; } = new();

    protected override IEnumerable<ObjectKey> AllKeys() => Cache.Restores.Items.Select(r => ObjectKey.Of(r.Metadata));

    protected override async Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        if (Cache.Restores.Get(key.Namespace, key.Name) is not { } restore || RestorePhases.IsFinal(restore.Status?.Phase))
        {
            return null;
        }

        var ns = restore.Metadata.NamespaceProperty;
        var checkpoint = Cache.Checkpoints.Get(ns, restore.Spec.CheckpointName);
        var sourceNode = checkpoint?.Status?.NodeName is { } source ? Cache.Nodes.Get(null, source) : null;
        var targetNode = restore.Status?.NodeName is { } target ? Cache.Nodes.Get(null, target) : null;
        bool admitting = restore.Status?.Phase is null or RestorePhases.Pending;
        var facts = new RestoreFacts
        {
            Restore = restore,
            Now = _time.GetUtcNow().UtcDateTime,
            Checkpoint = checkpoint,
            Source = checkpoint is null ? KeptView.None : await _kept.GetAsync(sourceNode, checkpoint.Metadata.Uid, cancellationToken),
            Target = targetNode is null ? AgentView.None : await _views.GetAsync(targetNode, restore.Metadata.Uid, cancellationToken),
            Nodes = admitting && checkpoint?.Status?.Phase == CheckpointPhases.Ready ? await CandidatesAsync(cancellationToken) : [.. Cache.Nodes.Items.Select(n => new RestoreCandidate(n, null))],
            Pod = Cache.Pods.Get(ns, restore.Spec.PodName is { Length: > 0 } name ? name : restore.Metadata.Name),
        };
        var decision = RestoreDecisions.Decide(facts, Policy);
        try
        {
            await ExecuteAsync(restore, checkpoint, decision, cancellationToken);
            if (JsonSerializer.Serialize(decision.Status) != JsonSerializer.Serialize(restore.Status ?? new RestoreStatus()))
            {
                restore.Status = decision.Status;
                await _objects.WriteStatusAsync(restore, Restore.Plural, cancellationToken);
                if (decision.Event is { } note)
                {
                    await _events.RecordAsync(restore.ApiVersion, Restore.KindName, restore.Metadata, note.Type, note.Reason, note.Message, cancellationToken);
                }
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Conflict)
        {
            return TimeSpan.FromMilliseconds(100);
        }
        catch (RpcException e)
        {
            LogAgentCall(ns, restore.Metadata.Name, e.Status.Detail);
            return Policy.PollInterval;
        }

        return decision.Requeue;
    }

    private async Task<IReadOnlyList<RestoreCandidate>> CandidatesAsync(CancellationToken cancellationToken)
    {
        var nodes = Cache.Nodes.Items.ToList();
        var answers = await Task.WhenAll(nodes.Select(n => _capabilities.GetAsync(n, cancellationToken)));
        return [.. nodes.Zip(answers, (n, a) => new RestoreCandidate(n, a))];
    }

    private async Task ExecuteAsync(Restore restore, Checkpoint? checkpoint, RestoreDecision decision, CancellationToken cancellationToken)
    {
        var s = decision.Status;
        switch (decision.Action)
        {
            case RestoreAction.ExpectImages expect:
                await Agent(expect.Node).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = restore.Metadata.Uid, Token = Token(restore, checkpoint!, s) },
                    cancellationToken: cancellationToken);
                break;
            case RestoreAction.Send send:
                var target = Cache.Nodes.Get(null, send.TargetNode) is { } node && _agents.Observe(node) is { } peer ? peer.Endpoint
                    : throw new RpcException(new Status(StatusCode.Unavailable, $"node {send.TargetNode} has no agent"));
                await Agent(send.SourceNode).SendCheckpointAsync(new SendCheckpointRequest
                {
                    CheckpointId = checkpoint!.Metadata.Uid,
                    RestoreId = restore.Metadata.Uid,
                    Target = new TransferTarget { Address = target, Node = send.TargetNode, Token = Token(restore, checkpoint, s) },
                }, cancellationToken: cancellationToken);
                break;
            case RestoreAction.CreatePod create:
                try
                {
                    await _client.CoreV1.CreateNamespacedPodAsync(RestoredPod(checkpoint!, restore, s.PodName!, create.Node), restore.Metadata.NamespaceProperty,
                        cancellationToken: cancellationToken);
                }
                catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
                {
                    // made by an earlier pass (or by someone else: the next pass says so)
                }

                break;
            case RestoreAction.Finish finish:
                if (finish.DeletePod is { } pod)
                {
                    try
                    {
                        await _client.CoreV1.DeleteNamespacedPodAsync(pod, restore.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
                    }
                    catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
                    {
                        // gone already
                    }
                }

                if (finish.TargetNode is { } targetNode && Cache.Nodes.Get(null, targetNode) is { } at && _agents.Observe(at) is { } agent)
                {
                    try
                    {
                        await agent.Client.CleanupAsync(new MigrationRef { MigrationId = restore.Metadata.Uid }, deadline: DateTime.UtcNow.AddSeconds(10), cancellationToken: cancellationToken);
                    }
                    catch (RpcException e)
                    {
                        // the agent removes what nobody comes back for after its staging TTL
                        LogAgentCall(restore.Metadata.NamespaceProperty, restore.Metadata.Name, "removing the restore's images: " + e.Status.Detail);
                    }
                }

                break;
        }
    }

    private string Token(Restore restore, Checkpoint checkpoint, RestoreStatus status) =>
        _mintToken(new TransferClaims(restore.Metadata.Uid, status.SourceNode!, status.NodeName!, ((checkpoint.Status?.SizeBytes ?? 0) * 2) + (1L << 30),
            _time.GetUtcNow().AddHours(1).ToUnixTimeSeconds()));

    /// <summary>
    /// The pod a restore makes: the checkpointed pod's spec, pinned to the node and restored by the
    /// podmig runtime class, with its annotations, but not its labels (a controller or Service
    /// selecting them would adopt or serve it; the restored pod is the user's own copy) unless the
    /// Restore keeps them (a pod replacing one that is gone), labelled with the restore and the checkpoint.
    /// </summary>
    public static V1Pod RestoredPod(Checkpoint checkpoint, Restore restore, string name, string node)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(restore);
        var saved = Keys.Get(checkpoint.Metadata.Annotations, CheckpointDecisions.SourcePodAnnotation) is { } json
            ? KubernetesJson.Deserialize<V1Pod>(json)
            : throw new InvalidOperationException($"checkpoint {checkpoint.Metadata.Name} holds no copy of its pod");
        var spec = KubernetesJson.Deserialize<V1PodSpec>(KubernetesJson.Serialize(saved.Spec));
        spec.NodeName = node;
        spec.RuntimeClassName = MigrationExecutor.RuntimeClass;
        spec.Hostname ??= saved.Metadata.Name;
        var annotations = (saved.Metadata.Annotations ?? new Dictionary<string, string>())
            .Where(a => !Keys.IsOurs(a.Key) && a.Key != Annotations.PodDeletionCost)
            .ToDictionary(a => a.Key, a => a.Value);
        annotations[Annotations.RestoreFrom] = restore.Metadata.Uid;
        annotations[Annotations.MigratedFrom] = $"{saved.Metadata.Name}@{checkpoint.Status?.NodeName}";
        return new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                Labels = (restore.Spec.KeepLabels ? saved.Metadata.Labels ?? new Dictionary<string, string>() : new Dictionary<string, string>())
                    .Where(l => !Keys.IsOurs(l.Key))
                    .Append(new(Labels.Restore, restore.Metadata.Name))
                    .Append(new(Labels.RestoredFrom, checkpoint.Metadata.Name))
                    .ToDictionary(l => l.Key, l => l.Value),
                Annotations = annotations,
            },
            Spec = spec,
        };
    }

    private NodeAgent.NodeAgentClient Agent(string name) =>
        (Cache.Nodes.Get(null, name) is { } node ? _agents.Connect(node) : null)?.Client ?? throw new RpcException(new Status(StatusCode.Unavailable, $"node {name} has no agent"));

    [LoggerMessage(Level = LogLevel.Warning, Message = "Restore {Namespace}/{Name}: an agent call failed: {Message}")]
    private partial void LogAgentCall(string @namespace, string name, string message);
}

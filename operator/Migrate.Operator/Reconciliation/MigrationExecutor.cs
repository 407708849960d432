using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>An action could not be carried out for now (an agent or the API server did not answer); the pass is retried with backoff.</summary>
public sealed class TransientActionException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>This replica stopped leading: it must not touch anything any more.</summary>
public sealed class LeadershipLostException() : Exception("this operator replica no longer holds the leader Lease");

/// <summary>
/// Carries out a <see cref="Decision"/>: writes the status it computed (only when it differs from
/// the stored one, and only against the resourceVersion that was observed: 409 means someone
/// wrote first and the pass is redone), then the one action, then the events. Every action is
/// idempotent (agent calls are keyed by the migration id, pods by deterministic names and UIDs).
/// An agent's refusal of a forward step (the pod cannot move, the token is refused) marks the
/// request for rollback with the agent's words; an agent or API server that does not answer is
/// a <see cref="TransientActionException"/>. Leadership is checked before every side effect.
/// </summary>
public sealed class MigrationExecutor(IKubernetes client, IAgentDirectory agents, Func<TransferClaims, string> mintToken, TimeProvider time,
    EventRecorder? events = null, ILeaderGate? leader = null)
{
    public const string RuntimeClass = "podmig";

    private readonly MigrationStore _store = new(client);

    /// <summary>Per-migration send-rate cap handed to the source agent (0: none).</summary>
    public ulong BandwidthPerMigration { get; init; }

    /// <summary>Signs a replacement's pinned address for the node's IPAM (<see cref="PinToken"/>); without it a pinned replacement cannot be made.</summary>
    public Func<PinClaims, string>? MintPin { get; init; }

    /// <summary>How long a group member's handoff may wait at a hold before its agent gives up and thaws the pod.</summary>
    public TimeSpan GroupHoldTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Ask for lazy memory where the target's CRIU can restore it (<see cref="OperatorOptions.LazyRestore"/>).</summary>
    public bool LazyRestore { get; init; } = true;

    /// <summary>The migration id agents know a request by: its UID (a DNS label).</summary>
    public static string MigrationId(MigrationRequest request) => request?.Metadata.Uid ?? throw new ArgumentNullException(nameof(request));

    /// <summary>The replacement pod's name: the source's, with a suffix from the request (or the very name, for a pod that keeps it).</summary>
    public static string ReplacementName(MigrationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (KeepsName(request))
        {
            return request.Spec.PodName;
        }

        var suffix = "-m" + MigrationId(request)[..5];
        var name = request.Spec.PodName;
        return (name.Length + suffix.Length > 63 ? name[..(63 - suffix.Length)] : name) + suffix;
    }

    /// <summary>Whether the replacement takes the source's name (admitted as a StatefulSet pod that opted in).</summary>
    public static bool KeepsName(MigrationRequest request) => request?.Status?.Is(ConditionTypes.KeepsName) == true;

    /// <summary>Admission decided that the replacement keeps the pod's address (condition KeepsAddress).</summary>
    public static bool KeepsAddress(MigrationRequest request) => request?.Status?.Is(ConditionTypes.KeepsAddress) == true;

    /// <summary>Writes the decided status, then carries out the action; returns the request as stored afterwards.</summary>
    public async Task<MigrationRequest> ExecuteAsync(MigrationFacts facts, Decision decision, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(facts);
        ArgumentNullException.ThrowIfNull(decision);
        var request = facts.Request;
        var before = request.Status;
        if (StatusChanged(before, decision.Status))
        {
            EnsureLeader();
            request.Status = decision.Status;
            try
            {
                request = await _store.WriteStatusAsync(request, cancellationToken);
            }
            finally
            {
                facts.Request.Status = before;
            }

            Observe(before, request.Status!);
        }

        using var activity = await SpanAsync(request, decision.Action, cancellationToken);
        try
        {
            request = await ActAsync(facts with { Request = request }, decision.Action, cancellationToken) ?? request;
        }
        catch (RpcException e) when (IsTransient(e.StatusCode))
        {
            throw new TransientActionException($"{Describe(decision.Action)}: {e.Status.Detail}", e);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode != HttpStatusCode.Conflict && (int)e.Response.StatusCode >= 500)
        {
            throw new TransientActionException($"{Describe(decision.Action)}: the API server answered {(int)e.Response.StatusCode}", e);
        }
        catch (HttpRequestException e)
        {
            throw new TransientActionException($"{Describe(decision.Action)}: {e.Message}", e);
        }
        catch (RpcException e) when (IsForward(decision.Action))
        {
            // the agent refused a step forward (the pod cannot move, the token is wrong): roll back, saying why
            return await MarkForRollbackAsync(request, decision.Action is MigrationAction.BeginCheckpoint ? Reasons.CheckpointRefused : Reasons.AgentCallFailed,
                $"{Describe(decision.Action)} was refused: {e.Status.Detail.TrimEnd('.')}.", cancellationToken);
        }
        catch (RpcException e)
        {
            // a step of the rollback or the cut-over was refused: the next pass decides again on what it sees
            throw new TransientActionException($"{Describe(decision.Action)}: {e.Status.Detail}", e);
        }

        foreach (var note in decision.Events)
        {
            await EventAsync(request, note, cancellationToken);
        }

        return request;
    }

    private async Task<MigrationRequest?> ActAsync(MigrationFacts facts, MigrationAction action, CancellationToken cancellationToken)
    {
        if (action is MigrationAction.Nothing)
        {
            return null;
        }

        EnsureLeader();
        var request = facts.Request;
        var status = request.Status!;
        var id = MigrationId(request);
        var ns = request.Metadata.NamespaceProperty;
        switch (action)
        {
            case MigrationAction.AddFinalizer:
                return await _store.SetFinalizerAsync(request, present: true, cancellationToken);
            case MigrationAction.RemoveFinalizer:
                if (Keys.Get(request.Metadata.Labels, Labels.Trigger) is not null && status.Phase != MigrationPhases.Succeeded)
                {
                    // cancelled by its user: the pod's next eviction is an ordinary one, not a new migration
                    await PatchPodAsync(request.Spec.PodName, ns, Annotate(Annotations.EvictionMigrationCancelled, request.Metadata.Name), cancellationToken);
                }

                return await _store.SetFinalizerAsync(request, present: false, cancellationToken);
            case MigrationAction.StartTrace:
                return await StartTraceAsync(request, cancellationToken);
            case MigrationAction.BeginCheckpoint:
                await Agent(facts.SourceNode, status.SourceNode).BeginCheckpointAsync(new BeginCheckpointRequest
                {
                    MigrationId = id,
                    Pod = new PodRef { Namespace = ns, Name = request.Spec.PodName, Uid = facts.SourcePod?.Metadata.Uid ?? "" },
                    NodeName = status.SourceNode,
                    KeepAddress = KeepsAddress(request),
                    // left to the operator (keepAddress unset): a pod that cannot keep its address gets a new one
                    AddressOptional = request.Spec.KeepAddress is null,
                }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.ExpectImages expect:
                await Agent(NodeOf(facts, expect.Node), expect.Node).ExpectImagesAsync(new ExpectImagesRequest
                {
                    MigrationId = id,
                    Token = Token(request, expect.Node),
                    // a group member's replacement talks to nobody until every member's is restored
                    HoldNetwork = facts.IsGroupMember && expect.Node == status.TargetNode,
                    // post-copy: where the target's agent fetches the pages the final dump leaves on the source
                    PostCopySource = ModeChoice.MayLeaveMemoryOnSource(request) && expect.Node == status.TargetNode
                        ? Target(facts, request, status.SourceNode!).Address : "",
                    // what StartHandoff will ask of the source (the replacement's runtime prepares for it)
                    LazyMemory = expect.Node == status.TargetNode && await LeavesMemoryLazyAsync(request, status, facts, cancellationToken),
                }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.StartPreCopy:
                var limits = request.Spec.PreCopy ?? new PreCopyLimits();
                await Agent(facts.SourceNode, status.SourceNode).StartPreCopyAsync(new StartPreCopyRequest
                {
                    MigrationId = id,
                    Target = Target(facts, request, status.TargetNode!),
                    MaxRounds = limits.MaxRounds,
                    MinShrinkPercent = limits.MinShrinkPercent,
                    ReleaseSentRounds = MigrationDecisions.SourceMayReleaseRounds(facts.KeepsName, await LeavesMemoryLazyAsync(request, status, facts, cancellationToken)),
                }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.StartHandoff:
                // post-copy (asked for or chosen): lazy memory is its mechanism, whatever the operator's default
                bool postCopy = MigrationModes.LeavesMemoryOnSource(ModeChoice.Effective(request));
                bool agentPath = status.CheckpointPath != CheckpointPaths.Cri;
                var targetFacts = await TargetFactsAsync(status, facts, cancellationToken);
                await Agent(facts.SourceNode, status.SourceNode).StartHandoffAsync(new StartHandoffRequest
                {
                    MigrationId = id,
                    Target = Target(facts, request, status.TargetNode!),
                    CriCheckpoint = !agentPath,
                    LazyMemory = LeavesMemoryLazy(postCopy, targetFacts),
                    // (a target of an older release cannot build them: CRIU there would find no mapping for the mounts)
                    CarryTmpfsMounts = targetFacts?.RestoresCarriedMounts == true,
                    PostCopy = postCopy,
                    GroupHold = facts.IsGroupMember,
                    HoldTimeoutSeconds = (uint)GroupHoldTimeout.TotalSeconds,
                }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.ContinueHandoff continuing:
                await Agent(facts.SourceNode, status.SourceNode).ContinueHandoffAsync(new ContinueHandoffRequest { MigrationId = id, Through = continuing.Through },
                    cancellationToken: cancellationToken);
                return null;
            case MigrationAction.ReleaseNetwork:
                await Agent(facts.TargetNode, status.TargetNode!).ReleaseNetworkAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.StartTransfer transfer:
                await Agent(facts.SourceNode, status.SourceNode).StartTransferAsync(new StartTransferRequest { MigrationId = id, Target = Target(facts, request, transfer.Node) },
                    cancellationToken: cancellationToken);
                return null;
            case MigrationAction.CreateReplacement create:
                await CreateReplacementAsync(facts, create.Node, cancellationToken);
                return null;
            case MigrationAction.KeepSourcePod:
                return await KeepSourcePodAsync(request, facts.SourcePod!, cancellationToken);
            case MigrationAction.FinishSource:
                await Agent(facts.SourceNode, status.SourceNode).FinishAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.MarkSourceExpendable:
                // if the owner sees both pods for a moment, the source is the one it removes
                await PatchPodAsync(request.Spec.PodName, ns, Annotate(Annotations.PodDeletionCost, int.MinValue.ToString(CultureInfo.InvariantCulture)), cancellationToken);
                return null;
            case MigrationAction.HandOverIdentity:
                await HandOverIdentityAsync(facts.Replacement!, cancellationToken);
                return null;
            case MigrationAction.DeletePod delete:
                await DeletePodAsync(delete.Name, ns, delete.Uid, cancellationToken);
                return null;
            case MigrationAction.AbortRestore abort:
                await Agent(NodeOf(facts, abort.Node), abort.Node).AbortRestoreAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken);
                return null;
            case MigrationAction.ResumeSource resume:
                await Agent(facts.SourceNode, status.SourceNode).ResumeAsync(new ResumeRequest { MigrationId = id, ReplacementRemoved = resume.ReplacementRemoved },
                    cancellationToken: cancellationToken);
                return null;
            case MigrationAction.Cleanup cleanup:
                await Task.WhenAll(cleanup.Nodes.Select(node =>
                    Agent(NodeOf(facts, node), node).CleanupAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken).ResponseAsync));
                return null;
            default:
                throw new InvalidOperationException($"unknown action {action}");
        }
    }

    /// <summary>A refused forward step: the request is marked for rollback (the next pass starts it).</summary>
    private async Task<MigrationRequest> MarkForRollbackAsync(MigrationRequest request, string reason, string message, CancellationToken cancellationToken)
    {
        EnsureLeader();
        var status = request.Status!;
        status.Reason = reason;
        status.Message = message;
        status.SetCondition(ConditionTypes.RollingBack, "True", reason, message, request.Metadata.Generation, time.GetUtcNow().UtcDateTime);
        return await _store.WriteStatusAsync(request, cancellationToken);
    }

    /// <summary>Metrics of a status change: phase durations, and the outcome once final.</summary>
    private void Observe(MigrationRequestStatus? before, MigrationRequestStatus after)
    {
        if (before?.Phase == after.Phase)
        {
            return;
        }

        if (before?.PhaseStartTime is { } began && before.Phase is { } phase)
        {
            OperatorTelemetry.PhaseDuration.Record((time.GetUtcNow().UtcDateTime - began).TotalMilliseconds, new KeyValuePair<string, object?>("phase", phase));
        }

        if (MigrationPhases.IsFinal(after.Phase))
        {
            OperatorTelemetry.Ended(after.Phase!, after.Reason, after.StartTime, after.CompletionTime, after.Phase == MigrationPhases.Succeeded ? after.DowntimeMillis : null);
        }
    }

    /// <summary>The target's capabilities, for a migration through this project's agents (null on the runtime's own checkpoint path, or with no target).</summary>
    private async Task<GetCapabilitiesResponse?> TargetFactsAsync(MigrationRequestStatus status, MigrationFacts facts, CancellationToken cancellationToken) =>
        status.CheckpointPath != CheckpointPaths.Cri && facts.TargetNode is { } targetNode ? await agents.GetCapabilitiesAsync(targetNode, cancellationToken) : null;

    /// <summary>Whether the source leaves the pod's private memory to a lazy restore: post-copy, or this operator's default, on a target whose CRIU restores lazily.</summary>
    private bool LeavesMemoryLazy(bool postCopy, GetCapabilitiesResponse? target) => (LazyRestore || postCopy) && target?.Criu?.LazyPages == true;

    /// <inheritdoc cref="LeavesMemoryLazy"/>
    private async Task<bool> LeavesMemoryLazyAsync(MigrationRequest request, MigrationRequestStatus status, MigrationFacts facts, CancellationToken cancellationToken) =>
        LeavesMemoryLazy(MigrationModes.LeavesMemoryOnSource(ModeChoice.Effective(request)), await TargetFactsAsync(status, facts, cancellationToken));

    private NodeAgent.NodeAgentClient Agent(V1Node? node, string? name) =>
        node is not null && agents.Connect(node) is { } agent
            ? agent.Client
            : throw new TransientActionException($"node {name} has no reachable pod-migration agent");

    private TransferTarget Target(MigrationFacts facts, MigrationRequest request, string node)
    {
        var target = NodeOf(facts, node) is { } known && agents.Connect(known) is { } agent
            ? agent.Endpoint
            : throw new TransientActionException($"node {node} has no reachable pod-migration agent");
        return new TransferTarget { Address = target, Node = node, Token = Token(request, node), MaxBytesPerSecond = BandwidthPerMigration };
    }

    private static V1Node? NodeOf(MigrationFacts facts, string node) =>
        node == facts.Status.TargetNode ? facts.TargetNode : node == facts.Status.SourceNode ? facts.SourceNode : null;

    /// <summary>The operator's signed permission for the source to send this migration's images to <paramref name="targetNode"/>.</summary>
    private string Token(MigrationRequest request, string targetNode)
    {
        var status = request.Status!;
        return mintToken(new TransferClaims(MigrationId(request), status.SourceNode!, targetNode,
            status.ImageBytes is { } staged ? (staged * 2) + (1L << 30) : 64L << 30,
            time.GetUtcNow().AddSeconds(request.Spec.TimeoutSeconds + 3600).ToUnixTimeSeconds()));
    }

    private async Task CreateReplacementAsync(MigrationFacts facts, string node, CancellationToken cancellationToken)
    {
        var request = facts.Request;
        var name = ReplacementName(request);
        var source = KeepsName(request) ? SavedSource(request) : facts.SourcePod ?? throw new TransientActionException($"pod {request.Spec.PodName} is not in the cache yet");
        try
        {
            var replacement = request.Status?.CheckpointPath == CheckpointPaths.Cri
                ? FromCheckpointImages(source, request, name, node, facts.SourceAgent.Migration?.CheckpointImages ?? [])
                : Replacement(source, request, name, node);
            if (replacement.Metadata.Annotations.TryGetValue(Annotations.PinnedAddress, out var pinned))
            {
                // the node's IPAM gives the address only to this pod of this migration, and only while the migration may run
                var mint = MintPin ?? throw new TransientActionException("the operator has no key to sign the replacement's pinned address with");
                replacement.Metadata.Annotations[Annotations.PinnedAddressToken] = mint(new PinClaims(pinned, MigrationId(request), request.Metadata.NamespaceProperty, name,
                    time.GetUtcNow().AddSeconds(request.Spec.TimeoutSeconds + 3600).ToUnixTimeSeconds()));
            }

            await client.CoreV1.CreateNamespacedPodAsync(replacement, request.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by an earlier pass; the next one sees it
        }
    }

    /// <summary>
    /// The CRI path's replacement: the RuntimeClass path's (<see cref="Replacement"/>) under the
    /// source's own runtime class, each container's image the checkpoint image it was published as,
    /// pulled if the node lacks it; the node's runtime restores the checkpoint as it creates the
    /// container. A container without a checkpoint image is refused (nothing is created).
    /// </summary>
    public static V1Pod FromCheckpointImages(V1Pod source, MigrationRequest request, string name, string node, IEnumerable<Agent.V1.CheckpointImage> images)
    {
        ArgumentNullException.ThrowIfNull(source);
        var byContainer = (images ?? []).ToDictionary(i => i.Container, i => i.Image, StringComparer.Ordinal);
        var pod = Replacement(source, request, name, node);
        // (its restore-from annotation stays: it marks the pod as this migration's; no podmig runtime reads it here)
        pod.Spec.RuntimeClassName = source.Spec.RuntimeClassName;
        foreach (var container in pod.Spec.Containers)
        {
            container.Image = byContainer.TryGetValue(container.Name, out var image) ? image
                : throw new TransientActionException($"container {container.Name} of pod {source.Metadata.Name} has no checkpoint image yet");
            container.ImagePullPolicy = "IfNotPresent";
        }

        return pod;
    }

    /// <summary>
    /// The source's spec, pinned to the node, restored by the podmig runtime class. Its labels and
    /// owner references are held back (in annotations) until cut-over: while it restores, no
    /// ReplicaSet counts or adopts it (it would remove the newest, not-yet-ready pod first: the
    /// replacement) and no Service sends it traffic.
    /// </summary>
    public static V1Pod Replacement(V1Pod source, MigrationRequest request, string name, string node)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(request);
        var spec = KubernetesJson.Deserialize<V1PodSpec>(KubernetesJson.Serialize(source.Spec));
        spec.NodeName = node;
        spec.RuntimeClassName = RuntimeClass;
        spec.Hostname ??= source.Metadata.Name;
        // the source's own marks (it may itself be the replacement of an earlier move) are not carried over
        var annotations = (source.Metadata.Annotations ?? new Dictionary<string, string>())
            .Where(a => !Keys.IsOurs(a.Key) && a.Key != Annotations.PodDeletionCost)
            .ToDictionary(a => a.Key, a => a.Value);
        annotations[Annotations.RestoreFrom] = MigrationId(request);
        annotations[Annotations.MigratedFrom] = $"{source.Metadata.Name}@{request.Status!.SourceNode}";
        if (KeepsAddress(request))
        {
            // the network gives the replacement the source's address (podmig-ipam; silent until the handover);
            // never without the pin, or the moved address would be one the network thinks is the source's alone
            annotations[Annotations.PinnedAddress] = source.Status?.PodIP is { Length: > 0 } address ? address
                : throw new TransientActionException($"pod {source.Metadata.Name} has no IP in its status yet; its replacement is pinned to it");
        }

        if (KeepsName(request))
        {
            // the source is gone already: nobody could count the two together
            return new V1Pod
            {
                Metadata = new V1ObjectMeta { Name = name, Labels = source.Metadata.Labels, Annotations = annotations, OwnerReferences = source.Metadata.OwnerReferences },
                Spec = spec,
            };
        }

        annotations[Annotations.HeldLabels] = KubernetesJson.Serialize(source.Metadata.Labels ?? new Dictionary<string, string>());
        annotations[Annotations.HeldOwnerReferences] = KubernetesJson.Serialize(source.Metadata.OwnerReferences ?? []);
        return new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                Labels = new Dictionary<string, string> { [Labels.ReplacementOf] = source.Metadata.Name },
                Annotations = annotations,
            },
            Spec = spec,
        };
    }

    /// <summary>The replacement takes the source's labels and owner references (idempotent: nothing to do once they are there).</summary>
    private async Task HandOverIdentityAsync(V1Pod replacement, CancellationToken cancellationToken)
    {
        if (Keys.Get(replacement.Metadata.Annotations, Annotations.HeldLabels) is not { } heldLabels)
        {
            return;
        }

        var labels = new JsonObject { [Labels.ReplacementOf] = null, [Keys.Deprecated(Labels.ReplacementOf)!] = null };
        foreach (var (key, value) in KubernetesJson.Deserialize<Dictionary<string, string>>(heldLabels))
        {
            labels[key] = value;
        }

        var owners = Keys.Get(replacement.Metadata.Annotations, Annotations.HeldOwnerReferences) is { } heldOwners ? JsonNode.Parse(heldOwners) : new JsonArray();
        var dropped = new JsonObject();
        foreach (var key in new[] { Annotations.HeldLabels, Annotations.HeldOwnerReferences })
        {
            dropped[key] = null;
            dropped[Keys.Deprecated(key)!] = null;
        }

        await PatchPodAsync(replacement.Metadata.Name, replacement.Metadata.NamespaceProperty, new JsonObject
        {
            ["metadata"] = new JsonObject { ["labels"] = labels, ["ownerReferences"] = owners, ["annotations"] = dropped },
        }, cancellationToken);
    }

    /// <summary>For a pod that keeps its name: the source pod as it was, kept in the request (its replacement is made from it once it is deleted).</summary>
    private async Task<MigrationRequest> KeepSourcePodAsync(MigrationRequest request, V1Pod source, CancellationToken cancellationToken)
    {
        var kept = new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = source.Metadata.Name,
                Uid = source.Metadata.Uid,
                Labels = source.Metadata.Labels,
                Annotations = source.Metadata.Annotations,
                OwnerReferences = source.Metadata.OwnerReferences,
            },
            Spec = source.Spec,
            // its address: a replacement that keeps it is pinned to it after the source is gone
            Status = new V1PodStatus { PodIP = source.Status?.PodIP, PodIPs = source.Status?.PodIPs },
        };
        return await PatchRequestAsync(request, Annotate(Annotations.SourcePod, KubernetesJson.Serialize(kept)), cancellationToken);
    }

    public static V1Pod SavedSource(MigrationRequest request) =>
        Keys.Get(request?.Metadata.Annotations, Annotations.SourcePod) is { } json
            ? KubernetesJson.Deserialize<V1Pod>(json)
            : throw new InvalidOperationException($"the request holds no copy of pod {request?.Spec.PodName} to make its replacement from");

    /// <summary>The migration's root span: its W3C context kept in the request's annotation, so every later step (in any replica) is one trace.</summary>
    private async Task<MigrationRequest> StartTraceAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var previous = Activity.Current;
        Activity.Current = null;
        try
        {
            using var root = OperatorTelemetry.Source.StartActivity("migration", ActivityKind.Internal, default(ActivityContext));
            var id = root?.Id ?? new ActivityContext(ActivityTraceId.CreateRandom(), ActivitySpanId.CreateRandom(), ActivityTraceFlags.None).ToString();
            root?.SetTag("k8s.namespace.name", request.Metadata.NamespaceProperty);
            root?.SetTag("podmig.request", request.Metadata.Name);
            root?.SetTag("k8s.pod.name", request.Spec.PodName);
            return await PatchRequestAsync(request, Annotate(Annotations.TraceContext, id), cancellationToken);
        }
        finally
        {
            Activity.Current = previous;
        }
    }

    /// <summary>A span for the action, a child of the migration's root span.</summary>
    private static Task<Activity?> SpanAsync(MigrationRequest request, MigrationAction action, CancellationToken cancellationToken)
    {
        _ = cancellationToken;
        if (action is MigrationAction.Nothing or MigrationAction.AddFinalizer or MigrationAction.StartTrace
            || Keys.Get(request.Metadata.Annotations, Annotations.TraceContext) is not { } stored || !ActivityContext.TryParse(stored, null, out var parent))
        {
            return Task.FromResult<Activity?>(null);
        }

        var activity = OperatorTelemetry.Source.StartActivity("migration." + request.Status?.Phase, ActivityKind.Internal, parent);
        activity?.SetTag("podmig.action", action.GetType().Name);
        activity?.SetTag("migration.id", request.Metadata.Uid);
        activity?.SetTag("k8s.pod.name", request.Spec.PodName);
        return Task.FromResult(activity);
    }

    private async Task<MigrationRequest> PatchRequestAsync(MigrationRequest request, JsonObject patch, CancellationToken cancellationToken)
    {
        var raw = await client.CustomObjects.PatchNamespacedCustomObjectAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch),
            MigrationRequest.Group, MigrationRequest.Version, request.Metadata.NamespaceProperty, MigrationRequest.Plural, request.Metadata.Name, cancellationToken: cancellationToken);
        return KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
    }

    private static JsonObject Annotate(string key, string? value) =>
        new() { ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [key] = value } } };

    private async Task PatchPodAsync(string name, string ns, JsonObject patch, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.PatchNamespacedPodAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // gone already
        }
    }

    /// <summary>Deletes this very pod (its UID) at once; a pod already gone, or a new one of the name, is left alone.</summary>
    private async Task DeletePodAsync(string name, string ns, string uid, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.DeleteNamespacedPodAsync(name, ns,
                new V1DeleteOptions { GracePeriodSeconds = 0, Preconditions = new V1Preconditions { Uid = uid } }, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Conflict)
        {
            // gone already, or the name belongs to another pod now
        }
    }

    private async Task EventAsync(MigrationRequest request, EventNote note, CancellationToken cancellationToken)
    {
        if (events is null)
        {
            return;
        }

        if (note.PodName is { } pod)
        {
            await events.RecordAsync("v1", "Pod", new V1ObjectMeta { Name = pod, NamespaceProperty = request.Metadata.NamespaceProperty }, note.Type, note.Reason, note.Message,
                cancellationToken);
        }
        else
        {
            await events.RecordAsync($"{MigrationRequest.Group}/{MigrationRequest.Version}", MigrationRequest.KindName, request.Metadata, note.Type, note.Reason, note.Message,
                cancellationToken);
        }
    }

    private void EnsureLeader()
    {
        if (leader?.IsLeader == false)
        {
            throw new LeadershipLostException();
        }
    }

    private static bool StatusChanged(MigrationRequestStatus? before, MigrationRequestStatus after) =>
        before is null || KubernetesJson.Serialize(before) != KubernetesJson.Serialize(after);

    /// <summary>The agent did not answer (or is busy): try again, the step has not happened or is idempotent.</summary>
    private static bool IsTransient(StatusCode code) =>
        code is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.Cancelled or StatusCode.Unknown or StatusCode.ResourceExhausted;

    private static bool IsForward(MigrationAction action) =>
        action is MigrationAction.BeginCheckpoint or MigrationAction.ExpectImages or MigrationAction.StartPreCopy or MigrationAction.StartHandoff or MigrationAction.ContinueHandoff;

    private static string Describe(MigrationAction action) => action switch
    {
        MigrationAction.BeginCheckpoint => "Checkpointing the pod",
        MigrationAction.ExpectImages e => $"Preparing node {e.Node} to receive the images",
        MigrationAction.StartPreCopy => "Starting pre-copy",
        MigrationAction.StartHandoff => "Starting the handoff",
        MigrationAction.StartTransfer t => $"Sending the images to {t.Node}",
        MigrationAction.CreateReplacement c => $"Creating the replacement pod on {c.Node}",
        MigrationAction.AbortRestore a => $"Aborting the restore on {a.Node}",
        MigrationAction.ResumeSource => "Thawing the source",
        MigrationAction.Cleanup c => $"Removing the images on {string.Join(" and ", c.Nodes)}",
        MigrationAction.FinishSource => "Ending the source's processes",
        MigrationAction.ContinueHandoff c => $"Letting the handoff go on to {c.Through}",
        MigrationAction.ReleaseNetwork => "Releasing the replacement's network",
        _ => action.GetType().Name,
    };
}

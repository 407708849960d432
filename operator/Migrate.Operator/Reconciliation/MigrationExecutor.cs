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

/// <summary>A step failed in a way that rolls the migration back; the reason is CamelCase, the message one sentence.</summary>
public sealed class MigrationStepException(string reason, string message, Exception? inner = null) : Exception(message, inner)
{
    public string Reason { get; } = reason;
}

/// <summary>
/// Drives an admitted MigrationRequest through its phases, one phase per call: Checkpointing
/// (pre-copy rounds, final dump: the source is frozen), Transferring (agent to agent), Restoring
/// (the replacement pod, pinned to the target, restored by the podmig runtime, until Running),
/// CuttingOver (the frozen source ended and its pod deleted), then Succeeded. The next phase is
/// written to the status before its side effects, and every step is idempotent (agent calls per
/// migration id, a deterministic replacement name), so an operator restarted at any point redoes
/// at most the step it was in, never a finished one. Any failure before cut-over rolls back: the
/// replacement is deleted, the source thawed, staged images removed; the source's state is kept.
/// </summary>
public sealed class MigrationExecutor(IKubernetes client, IAgentDirectory agents, Func<TransferClaims, string> mintToken, TimeProvider time, EventRecorder? events = null)
{
    public const string RuntimeClass = "podmig";
    private const string SourceRetired = ConditionTypes.SourceRetired;
    private const string RollingBack = ConditionTypes.RollingBack;
    private const string Frozen = ConditionTypes.Frozen;

    private readonly MigrationStore _store = new(client);

    /// <summary>How long the replacement pod may take to run.</summary>
    public TimeSpan RestoreTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>How often at most a running transfer's progress is written into the request's status.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long each of Checkpointing, Transferring and Restoring may take; agent calls are cancelled when it runs out.</summary>
    public TimeSpan PhaseTimeout { get; init; } = TimeSpan.FromMinutes(5);

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
    public static bool KeepsName(MigrationRequest request) =>
        request?.Status?.Conditions.Any(c => c.Type == ConditionTypes.KeepsName && c.Status == "True") == true;

    private static bool IsRetired(MigrationRequest request) =>
        request.Status?.Conditions.Any(c => c.Type == SourceRetired && c.Status == "True") == true;

    private static bool IsOurs(V1Pod pod, MigrationRequest request) =>
        Keys.Get(pod.Metadata.Annotations, Annotations.RestoreFrom) == MigrationId(request);


    /// <summary>The migration's root span context: from the request's annotation, or a new root span recorded there.</summary>
    private async Task<ActivityContext> TraceParentAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        if (Keys.Get(request.Metadata.Annotations, Annotations.TraceContext) is { } stored && ActivityContext.TryParse(stored, null, out var context))
        {
            return context;
        }

        Activity.Current = null;
        using var root = OperatorTelemetry.Source.StartActivity("migration", ActivityKind.Internal, default(ActivityContext));
        if (root is null)
        {
            return default;
        }

        root.SetTag("k8s.namespace.name", request.Metadata.NamespaceProperty);
        root.SetTag("podmig.request", request.Metadata.Name);
        root.SetTag("k8s.pod.name", request.Spec.PodName);
        var patch = new JsonObject { ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [Annotations.TraceContext] = root.Id } } };
        var raw = await client.CustomObjects.PatchNamespacedCustomObjectAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch),
            MigrationRequest.Group, MigrationRequest.Version, request.Metadata.NamespaceProperty, MigrationRequest.Plural, request.Metadata.Name, cancellationToken: cancellationToken);
        // in place: the caller goes on with this request
        var patched = KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
        request.Metadata.ResourceVersion = patched.Metadata.ResourceVersion;
        request.Metadata.Annotations = patched.Metadata.Annotations;
        return root.Context;
    }

    /// <summary>Does the work of the request's phase and moves it on; returns the request as stored.</summary>
    public async Task<MigrationRequest> StepAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var status = request.Status!;
        if (status.Conditions.Any(c => c.Type == RollingBack && c.Status == "True"))
        {
            return await RollBackAsync(request, cancellationToken);
        }

        // every step of a migration is a span of one trace, whose root the first step made and the request keeps
        var trace = await TraceParentAsync(request, cancellationToken);
        using var activity = OperatorTelemetry.Source.StartActivity("migration." + status.Phase, ActivityKind.Internal, trace);
        activity?.SetTag("migration.id", request.Metadata.Uid);
        activity?.SetTag("k8s.pod.name", request.Spec.PodName);
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var phaseLeft = PhaseTimeout - (time.GetUtcNow().UtcDateTime - (status.PhaseStartTime ?? time.GetUtcNow().UtcDateTime));
        try
        {
            if (status.Phase != MigrationPhases.CuttingOver && status.StartTime is { } start
                && time.GetUtcNow().UtcDateTime - start > TimeSpan.FromSeconds(request.Spec.TimeoutSeconds))
            {
                throw new MigrationStepException("TimedOut", $"The migration did not reach cut-over within {request.Spec.TimeoutSeconds} seconds.");
            }

            if (status.Phase is MigrationPhases.Checkpointing or MigrationPhases.Transferring or MigrationPhases.Restoring)
            {
                if (phaseLeft <= TimeSpan.Zero)
                {
                    throw PhaseTimedOut(status.Phase);
                }

                budget.CancelAfter(phaseLeft);
                await RequireTargetReadyAsync(request, budget.Token);
            }

            return status.Phase switch
            {
                MigrationPhases.Pending => await StartAsync(request, budget.Token),
                MigrationPhases.Checkpointing => await CheckpointAsync(request, budget.Token),
                MigrationPhases.Transferring => await TransferAsync(request, budget.Token),
                MigrationPhases.Restoring => await RestoreAsync(request, budget.Token),
                MigrationPhases.CuttingOver => await CutOverAsync(request, cancellationToken),
                _ => request,
            };
        }
        catch (Exception e) when (e is MigrationStepException or RpcException or OperationCanceledException
            && status.Phase != MigrationPhases.CuttingOver && !cancellationToken.IsCancellationRequested)
        {
            var (reason, message) = e switch
            {
                MigrationStepException step => (step.Reason, step.Message),
                _ when budget.IsCancellationRequested => (PhaseTimedOut(status.Phase!).Reason, PhaseTimedOut(status.Phase!).Message),
                RpcException rpc => ($"{status.Phase}Failed", $"{status.Phase} failed: {rpc.Status.Detail}"),
                _ => ($"{status.Phase}Failed", $"{status.Phase} was cancelled."),
            };
            status.Reason = reason;
            status.Message = message;
            SetCondition(request, RollingBack, "True", reason, message);
            request = await _store.WriteStatusAsync(request, cancellationToken);
            return await RollBackAsync(request, cancellationToken);
        }
    }

    /// <summary>A target that went away or NotReady before cut-over ends the migration: the source is still there to go back to.</summary>
    private async Task RequireTargetReadyAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var name = request.Status!.TargetNode!;
        V1Node node;
        try
        {
            node = await client.CoreV1.ReadNodeAsync(name, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            throw new MigrationStepException("TargetNodeGone", $"Target node {name} was removed during {request.Status.Phase}.");
        }

        if (node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready") is not { Status: "True" })
        {
            throw new MigrationStepException("TargetNodeNotReady", $"Target node {name} became NotReady during {request.Status.Phase}.");
        }
    }

    private MigrationStepException PhaseTimedOut(string phase) =>
        new("PhaseTimedOut", $"{phase} took longer than {PhaseTimeout.TotalSeconds:0} seconds.");

    private async Task<MigrationRequest> StartAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        await Event(MigrationEvent.Pod(request), "Normal", "Migrating", $"Moving to node {status.TargetNode} (MigrationRequest {request.Metadata.Name}).", cancellationToken);
        return await MoveToAsync(request, MigrationPhases.Checkpointing, "Checkpointing the pod on " + status.SourceNode + ".", cancellationToken);
    }

    private async Task<MigrationRequest> CheckpointAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var source = await AgentAsync(status.SourceNode!, cancellationToken);
        var id = MigrationId(request);
        await source.Client.BeginCheckpointAsync(new BeginCheckpointRequest
        {
            MigrationId = id,
            Pod = new PodRef { Namespace = request.Metadata.NamespaceProperty, Name = request.Spec.PodName },
            NodeName = status.SourceNode,
        }, cancellationToken: cancellationToken);
        if (request.Spec.Mode == MigrationModes.PreCopy)
        {
            var limits = request.Spec.PreCopy ?? new PreCopyLimits();
            ulong previous = ulong.MaxValue;
            for (int round = 1; round <= limits.MaxRounds; round++)
            {
                var result = await source.Client.PreDumpAsync(new PreDumpRequest { MigrationId = id, Round = round }, cancellationToken: cancellationToken);
                if (status.PreCopyRounds is null || status.PreCopyRounds < round)
                {
                    status.PreCopyRounds = round;
                    request = await _store.WriteStatusAsync(request, cancellationToken);
                    status = request.Status!;
                }

                // the dirty set stopped shrinking: more rounds would not shorten the final dump
                if (previous != ulong.MaxValue && result.PagesWritten * 100 > previous * (ulong)(100 - limits.MinShrinkPercent))
                {
                    break;
                }

                previous = result.PagesWritten;
            }

            // the rounds travel while the pod still runs: after the freeze only the final dump's difference has to
            if (status.BytesTransferred is null)
            {
                status.BytesTransferred = await SendImagesAsync(request, cancellationToken);
                request = await _store.WriteStatusAsync(request, cancellationToken);
                status = request.Status!;
            }
        }

        SetCondition(request, Frozen, "True", "FinalDump", $"The pod's processes on {status.SourceNode} are frozen for the final dump.");
        request = await _store.WriteStatusAsync(request, cancellationToken);
        var dump = await source.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = id }, cancellationToken: cancellationToken);
        request.Status!.ImageBytes = (long)dump.StagedBytes;
        return await MoveToAsync(request, MigrationPhases.Transferring, $"Copying {dump.StagedBytes} bytes of checkpoint to {status.TargetNode}.", cancellationToken);
    }

    private async Task<MigrationRequest> TransferAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var sent = await SendImagesAsync(request, cancellationToken);
        status.BytesTransferred = (status.BytesTransferred ?? 0) + sent;
        return await MoveToAsync(request, MigrationPhases.Restoring, $"Restoring the pod on {status.TargetNode}.", cancellationToken);
    }

    /// <summary>Has the source agent send what it has staged to the target agent; returns the bytes that went over the wire (what the target already held is skipped).</summary>
    private Task<long> SendImagesAsync(MigrationRequest request, CancellationToken cancellationToken) =>
        SendImagesAsync(request, request.Status!.TargetNode!, cancellationToken);

    /// <summary>Has the source agent send what it has staged to <paramref name="targetNode"/>'s agent (the source node itself, to restore there); returns the bytes sent.</summary>
    private async Task<long> SendImagesAsync(MigrationRequest request, string targetNode, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var source = await AgentAsync(status.SourceNode!, cancellationToken);
        var target = await AgentAsync(targetNode, cancellationToken);
        var id = MigrationId(request);
        var token = mintToken(new TransferClaims(id, status.SourceNode!, targetNode, status.ImageBytes is { } staged ? (staged * 2) + (1L << 30) : 64L << 30,
            time.GetUtcNow().AddSeconds(request.Spec.TimeoutSeconds).ToUnixTimeSeconds()));
        await target.Client.ExpectImagesAsync(new ExpectImagesRequest { MigrationId = id, Token = token }, cancellationToken: cancellationToken);
        using var call = source.Client.SendImages(new SendImagesRequest { MigrationId = id, TargetAddress = target.Endpoint, TargetNode = targetNode, Token = token },
            cancellationToken: cancellationToken);
        TransferProgress? last = null;
        DateTimeOffset reported = DateTimeOffset.MinValue;
        while (await call.ResponseStream.MoveNext(cancellationToken))
        {
            last = call.ResponseStream.Current;
            var now = time.GetUtcNow();
            status.Progress = new MigrationProgress { Phase = status.Phase, BytesSent = (long)last.BytesSent, BytesTotal = (long)last.TotalBytes, UpdateTime = now.UtcDateTime };
            if (!last.Staged && now - reported >= ProgressInterval)
            {
                // in place: the caller's request goes on with the new resourceVersion
                var written = await _store.WriteStatusAsync(request, cancellationToken);
                request.Metadata.ResourceVersion = written.Metadata.ResourceVersion;
                reported = now;
            }
        }

        if (last?.Staged != true)
        {
            throw new MigrationStepException("TransferIncomplete", $"The checkpoint did not arrive complete on {targetNode}.");
        }

        return (long)last.BytesSent;
    }

    private async Task<MigrationRequest> RestoreAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var ns = request.Metadata.NamespaceProperty;
        var name = ReplacementName(request);
        if (status.ReplacementPod is null)
        {
            status.ReplacementPod = name;
            request = await _store.WriteStatusAsync(request, cancellationToken);
            status = request.Status!;
        }

        if (KeepsName(request))
        {
            request = await RetireSourceAsync(request, cancellationToken);
            status = request.Status!;
        }

        var replacement = await ReadPodAsync(name, ns, cancellationToken);
        if (replacement is null)
        {
            var source = KeepsName(request)
                ? SavedSource(request)
                : await ReadPodAsync(request.Spec.PodName, ns, cancellationToken)
                    ?? throw new MigrationStepException("SourcePodGone", $"Pod {ns}/{request.Spec.PodName} disappeared during the migration.");
            replacement = await client.CoreV1.CreateNamespacedPodAsync(Replacement(source, request, name, status.TargetNode!), ns, cancellationToken: cancellationToken);
        }
        else if (KeepsName(request) && !IsOurs(replacement, request))
        {
            throw new MigrationStepException("NameTaken",
                $"Pod {ns}/{name} was created by someone else after the source was retired; is the operator's pod webhook installed?");
        }

        await WaitRunningAsync(replacement, status.TargetNode!, cancellationToken);
        if (status.Conditions.FirstOrDefault(c => c.Type == Frozen) is { } frozen)
        {
            status.DowntimeMillis = (long)(time.GetUtcNow().UtcDateTime - frozen.LastTransitionTime).TotalMilliseconds;
        }

        return await MoveToAsync(request, MigrationPhases.CuttingOver, $"The replacement pod {name} runs on {status.TargetNode}; retiring the source.", cancellationToken);
    }

    /// <summary>Waits until the pod runs; a pod that cannot start, or does not within <see cref="RestoreTimeout"/>, fails the step.</summary>
    private async Task<V1Pod> WaitRunningAsync(V1Pod pod, string node, CancellationToken cancellationToken)
    {
        var name = pod.Metadata.Name;
        var ns = pod.Metadata.NamespaceProperty;
        var clock = Stopwatch.StartNew();
        while (pod.Status?.Phase != "Running")
        {
            var waiting = pod.Status?.ContainerStatuses?.Select(c => c.State?.Waiting).FirstOrDefault(w => w is not null && w.Reason != "ContainerCreating");
            if (pod.Status?.Phase is "Failed" or "Succeeded" || waiting is not null)
            {
                throw new MigrationStepException("RestoreFailed",
                    $"The replacement pod {name} on {node} did not start: {waiting?.Reason ?? pod.Status?.Phase} {waiting?.Message ?? pod.Status?.Message}".TrimEnd() + ".");
            }

            if (clock.Elapsed > RestoreTimeout)
            {
                throw new MigrationStepException("RestoreTimedOut", $"The replacement pod {name} was not Running within {RestoreTimeout.TotalSeconds:0} seconds.");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(100), time, cancellationToken);
            pod = await ReadPodAsync(name, ns, cancellationToken)
                ?? throw new MigrationStepException("RestoreFailed", $"The replacement pod {name} was deleted while it was restored.");
        }

        return pod;
    }

    /// <summary>
    /// For a pod that keeps its name: the source pod is kept in the request (its replacement is made
    /// from it), its frozen processes are ended (their state is whole in the staged images) and the
    /// object is deleted, so that the name is free. From here a failure restores the pod on its own
    /// node rather than thawing it. Every step is idempotent.
    /// </summary>
    private async Task<MigrationRequest> RetireSourceAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var ns = request.Metadata.NamespaceProperty;
        var name = request.Spec.PodName;
        if (!IsRetired(request))
        {
            var source = await ReadPodAsync(name, ns, cancellationToken)
                ?? throw new MigrationStepException("SourcePodGone", $"Pod {ns}/{name} disappeared during the migration.");
            if (Keys.Get(request.Metadata.Annotations, Annotations.SourcePod) is null)
            {
                var kept = new V1Pod
                {
                    Metadata = new V1ObjectMeta
                    {
                        Name = source.Metadata.Name,
                        Labels = source.Metadata.Labels,
                        Annotations = source.Metadata.Annotations,
                        OwnerReferences = source.Metadata.OwnerReferences,
                    },
                    Spec = source.Spec,
                };
                var patch = new JsonObject { ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [Annotations.SourcePod] = KubernetesJson.Serialize(kept) } } };
                var raw = await client.CustomObjects.PatchNamespacedCustomObjectAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch),
                    MigrationRequest.Group, MigrationRequest.Version, ns, MigrationRequest.Plural, request.Metadata.Name, cancellationToken: cancellationToken);
                request = KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
            }

            SetCondition(request, SourceRetired, "True", "NameHandedOver",
                $"Pod {name} on {request.Status!.SourceNode} was ended and deleted so that its replacement can take its name; its state is in the checkpoint.");
            request = await _store.WriteStatusAsync(request, cancellationToken);
        }

        var agent = await AgentAsync(request.Status!.SourceNode!, cancellationToken);
        await agent.Client.FinishAsync(new MigrationRef { MigrationId = MigrationId(request) }, cancellationToken: cancellationToken);
        if (await ReadPodAsync(name, ns, cancellationToken) is { } current && !IsOurs(current, request))
        {
            await DeleteExactlyAsync(current, cancellationToken);
        }

        return request;
    }

    private static V1Pod SavedSource(MigrationRequest request) =>
        Keys.Get(request.Metadata.Annotations, Annotations.SourcePod) is { } json
            ? KubernetesJson.Deserialize<V1Pod>(json)
            : throw new MigrationStepException("SourcePodLost", $"The request holds no copy of pod {request.Spec.PodName} to make its replacement from.");

    /// <summary>Deletes this very pod (its UID), then waits until the name is free.</summary>
    private async Task DeleteExactlyAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        var name = pod.Metadata.Name;
        var ns = pod.Metadata.NamespaceProperty;
        try
        {
            await client.CoreV1.DeleteNamespacedPodAsync(name, ns,
                new V1DeleteOptions { GracePeriodSeconds = 0, Preconditions = new V1Preconditions { Uid = pod.Metadata.Uid } }, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Conflict)
        {
            // gone already, or the name belongs to another pod now
        }

        var clock = Stopwatch.StartNew();
        while (await ReadPodAsync(name, ns, cancellationToken) is { } left && left.Metadata.Uid == pod.Metadata.Uid)
        {
            if (clock.Elapsed > RestoreTimeout)
            {
                throw new MigrationStepException("PodNotDeleted", $"Pod {ns}/{name} was not gone within {RestoreTimeout.TotalSeconds:0} seconds of its deletion.");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(100), time, cancellationToken);
        }
    }

    private async Task<MigrationRequest> CutOverAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var id = MigrationId(request);
        var ns = request.Metadata.NamespaceProperty;
        var source = await AgentAsync(status.SourceNode!, cancellationToken);
        if (!KeepsName(request))
        {
            // if the owner sees both pods for a moment, the source is the one it removes
            await PatchPodAsync(request.Spec.PodName, ns, new JsonObject
            {
                ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [Annotations.PodDeletionCost] = int.MinValue.ToString(CultureInfo.InvariantCulture) } },
            }, cancellationToken);
        }

        await source.Client.FinishAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken);
        if (!KeepsName(request))
        {
            // (a pod that keeps its name was retired before its replacement existed)
            await HandOverIdentityAsync(status.ReplacementPod!, ns, cancellationToken);
            await DeletePodAsync(request.Spec.PodName, ns, cancellationToken);
        }

        await CleanupAsync(request, cancellationToken);
        status.Phase = MigrationPhases.Succeeded;
        status.Reason = "Migrated";
        status.Message = $"Pod {request.Spec.PodName} moved from {status.SourceNode} to {status.TargetNode} as {status.ReplacementPod}.";
        status.CompletionTime = time.GetUtcNow().UtcDateTime;
        SetCondition(request, Frozen, "False", "Migrated", "The source's processes were ended after the replacement ran.");
        SetCondition(request, "Ready", "True", "Migrated", status.Message);
        request = await _store.WriteStatusAsync(request, cancellationToken);
        OperatorTelemetry.Ended(MigrationPhases.Succeeded, "Migrated", status.StartTime, status.CompletionTime, status.DowntimeMillis);

        await Event(MigrationEvent.Request(request), "Normal", "Migrated", status.Message, cancellationToken);
        await Event(MigrationEvent.Pod(request, status.ReplacementPod), "Normal", "Migrated", $"Restored from {request.Spec.PodName} on {status.SourceNode}.", cancellationToken);
        return request;
    }

    /// <summary>Stops an in-flight migration (its request is being deleted): rolled back before cut-over, finished during it.</summary>
    public async Task<MigrationRequest> AbortAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var status = request.Status!;
        if (status.Phase == MigrationPhases.CuttingOver)
        {
            // the source may already be ended: the only safe way out is forward
            return await CutOverAsync(request, cancellationToken);
        }

        if (!status.Conditions.Any(c => c.Type == RollingBack && c.Status == "True"))
        {
            status.Reason = "Deleted";
            status.Message = "The MigrationRequest was deleted while in flight; the migration was rolled back.";
            SetCondition(request, RollingBack, "True", status.Reason, status.Message);
            request = await _store.WriteStatusAsync(request, cancellationToken);
        }

        return await RollBackAsync(request, cancellationToken);
    }

    /// <summary>Undoes what was done before cut-over: the replacement goes, the source is thawed, staged images are removed.</summary>
    private async Task<MigrationRequest> RollBackAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        if (IsRetired(request))
        {
            return await RestoreInPlaceAsync(request, cancellationToken);
        }

        if (!KeepsName(request))
        {
            // (a pod that keeps its name has no replacement before its source is retired)
            await DeletePodAsync(ReplacementName(request), request.Metadata.NamespaceProperty, cancellationToken);
        }

        var source = await AgentAsync(status.SourceNode!, cancellationToken);
        await source.Client.ResumeAsync(new MigrationRef { MigrationId = MigrationId(request) }, cancellationToken: cancellationToken);
        await CleanupAsync(request, cancellationToken);
        status.Phase = MigrationPhases.RolledBack;
        status.CompletionTime = time.GetUtcNow().UtcDateTime;
        SetCondition(request, RollingBack, "False", "RolledBack", "The replacement was removed and the source pod runs on.");
        SetCondition(request, Frozen, "False", "RolledBack", "The source's processes were thawed.");
        SetCondition(request, "Ready", "False", status.Reason ?? "RolledBack", status.Message ?? "The migration was rolled back.");
        request = await _store.WriteStatusAsync(request, cancellationToken);
        OperatorTelemetry.Ended(MigrationPhases.RolledBack, status.Reason, status.StartTime, status.CompletionTime);
        await Event(MigrationEvent.Request(request), "Warning", status.Reason ?? "RolledBack", status.Message ?? "The migration was rolled back.", cancellationToken);
        await Event(MigrationEvent.Pod(request), "Warning", "MigrationRolledBack", $"The move to {status.TargetNode} was rolled back; the pod runs on. {status.Message}", cancellationToken);
        return request;
    }

    /// <summary>
    /// The rollback of a pod whose source was already retired (it kept its name): the failed
    /// replacement goes, the checkpoint is staged on the source node itself and the pod is restored
    /// there under its name. If even that fails, the request ends Failed and the checkpoint stays.
    /// </summary>
    private async Task<MigrationRequest> RestoreInPlaceAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var ns = request.Metadata.NamespaceProperty;
        var name = request.Spec.PodName;
        var home = status.SourceNode!;
        try
        {
            var pod = await ReadPodAsync(name, ns, cancellationToken);
            if (pod is not null && !(IsOurs(pod, request) && pod.Spec.NodeName == home))
            {
                await DeleteExactlyAsync(pod, cancellationToken);
                pod = null;
            }

            if (pod is null)
            {
                await SendImagesAsync(request, home, cancellationToken);
                pod = await client.CoreV1.CreateNamespacedPodAsync(Replacement(SavedSource(request), request, name, home), ns, cancellationToken: cancellationToken);
            }

            await WaitRunningAsync(pod, home, cancellationToken);
        }
        catch (Exception e) when (e is MigrationStepException or RpcException or HttpOperationException && !cancellationToken.IsCancellationRequested)
        {
            var detail = e is RpcException rpc ? rpc.Status.Detail : e.Message;
            status.Phase = MigrationPhases.Failed;
            status.CompletionTime = time.GetUtcNow().UtcDateTime;
            status.Message = $"{status.Message} Restoring pod {name} on {home} failed as well ({detail.TrimEnd('.')}); its checkpoint is kept on {home} and {status.TargetNode} as migration {MigrationId(request)}.";
            status.Reason = "RestoreInPlaceFailed";
            SetCondition(request, RollingBack, "False", status.Reason, status.Message);
            SetCondition(request, "Ready", "False", status.Reason, status.Message);
            request = await _store.WriteStatusAsync(request, cancellationToken);
            OperatorTelemetry.Ended(MigrationPhases.Failed, status.Reason, status.StartTime, status.CompletionTime);
            await Event(MigrationEvent.Request(request), "Warning", status.Reason, status.Message, cancellationToken);
            return request;
        }

        await CleanupAsync(request, cancellationToken);
        status.Phase = MigrationPhases.RolledBack;
        status.CompletionTime = time.GetUtcNow().UtcDateTime;
        status.Message = $"{status.Message} Pod {name} was restored on {home} under its name.";
        SetCondition(request, RollingBack, "False", "RolledBack", $"Pod {name} was restored from its checkpoint on {home}.");
        SetCondition(request, "Ready", "False", status.Reason ?? "RolledBack", status.Message);
        request = await _store.WriteStatusAsync(request, cancellationToken);
        OperatorTelemetry.Ended(MigrationPhases.RolledBack, status.Reason, status.StartTime, status.CompletionTime);
        await Event(MigrationEvent.Request(request), "Warning", status.Reason ?? "RolledBack", status.Message, cancellationToken);
        await Event(MigrationEvent.Pod(request), "Warning", "MigrationRolledBack", $"The move to {status.TargetNode} was rolled back; the pod was restored on {home}.", cancellationToken);
        return request;
    }

    private async Task CleanupAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var id = MigrationId(request);
        foreach (var node in new[] { request.Status!.SourceNode, request.Status.TargetNode }.OfType<string>().Distinct())
        {
            var agent = await AgentAsync(node, cancellationToken);
            await agent.Client.CleanupAsync(new MigrationRef { MigrationId = id }, cancellationToken: cancellationToken);
        }
    }

    /// <summary>
    /// The source's spec, pinned to the target, restored by the podmig runtime class. Its labels and
    /// owner references are held back (in annotations) until cut-over: while it restores, no
    /// ReplicaSet counts or adopts it (it would remove the newest, not-yet-ready pod first: the
    /// replacement) and no Service sends it traffic.
    /// </summary>
    private static V1Pod Replacement(V1Pod source, MigrationRequest request, string name, string node)
    {
        var spec = KubernetesJson.Deserialize<V1PodSpec>(KubernetesJson.Serialize(source.Spec));
        spec.NodeName = node;
        spec.RuntimeClassName = RuntimeClass;
        spec.Hostname ??= source.Metadata.Name;
        var annotations = new Dictionary<string, string>(source.Metadata.Annotations ?? new Dictionary<string, string>())
        {
            [Annotations.RestoreFrom] = MigrationId(request),
            [Annotations.MigratedFrom] = $"{source.Metadata.Name}@{request.Status!.SourceNode}",
        };
        annotations.Remove(Annotations.PodDeletionCost);
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
    private async Task HandOverIdentityAsync(string name, string ns, CancellationToken cancellationToken)
    {
        var replacement = await ReadPodAsync(name, ns, cancellationToken);
        if (Keys.Get(replacement?.Metadata.Annotations, Annotations.HeldLabels) is not { } heldLabels)
        {
            return;
        }

        var labels = new JsonObject { [Labels.ReplacementOf] = null };
        foreach (var (key, value) in KubernetesJson.Deserialize<Dictionary<string, string>>(heldLabels))
        {
            labels[key] = value;
        }

        var owners = Keys.Get(replacement!.Metadata.Annotations, Annotations.HeldOwnerReferences) is { } heldOwners ? JsonNode.Parse(heldOwners) : new JsonArray();
        await PatchPodAsync(name, ns, new JsonObject
        {
            ["metadata"] = new JsonObject
            {
                ["labels"] = labels,
                ["ownerReferences"] = owners,
                ["annotations"] = new JsonObject { [Annotations.HeldLabels] = null, [Annotations.HeldOwnerReferences] = null },
            },
        }, cancellationToken);
    }

    private async Task PatchPodAsync(string name, string ns, JsonObject patch, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.PatchNamespacedPodAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // gone already (a restarted cut-over that got further before)
        }
    }

    private async Task<MigrationRequest> MoveToAsync(MigrationRequest request, string phase, string message, CancellationToken cancellationToken)
    {
        var status = request.Status!;
        var now = time.GetUtcNow().UtcDateTime;
        if (status.PhaseStartTime is { } began)
        {
            OperatorTelemetry.PhaseDuration.Record((now - began).TotalMilliseconds, new KeyValuePair<string, object?>("phase", status.Phase));
        }

        status.Phase = phase;
        status.PhaseStartTime = now;
        status.Reason = phase;
        status.Message = message;
        SetCondition(request, "Progressing", "True", phase, message);
        request = await _store.WriteStatusAsync(request, cancellationToken);
        await Event(MigrationEvent.Request(request), "Normal", phase, message, cancellationToken);
        return request;
    }

    private async Task Event((string ApiVersion, string Kind, V1ObjectMeta Subject) target, string type, string reason, string message, CancellationToken cancellationToken)
    {
        if (events is not null)
        {
            await events.RecordAsync(target.ApiVersion, target.Kind, target.Subject, type, reason, message, cancellationToken);
        }
    }

    private async Task<(NodeAgent.NodeAgentClient Client, string Endpoint)> AgentAsync(string nodeName, CancellationToken cancellationToken)
    {
        var node = await client.CoreV1.ReadNodeAsync(nodeName, cancellationToken: cancellationToken);
        return agents.Connect(node) ?? throw new MigrationStepException("AgentMissing", $"Node {nodeName} has no pod-migration agent.");
    }

    private async Task<V1Pod?> ReadPodAsync(string name, string ns, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadNamespacedPodAsync(name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private async Task DeletePodAsync(string name, string ns, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.DeleteNamespacedPodAsync(name, ns, new V1DeleteOptions { GracePeriodSeconds = 0 }, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // already gone
        }
    }

    private void SetCondition(MigrationRequest request, string type, string value, string reason, string message) =>
        request.Status!.SetCondition(type, value, reason, message, request.Metadata.Generation, time.GetUtcNow().UtcDateTime);
}

/// <summary>The objects a migration's events are about.</summary>
internal static class MigrationEvent
{
    public static (string ApiVersion, string Kind, V1ObjectMeta Subject) Request(MigrationRequest request) =>
        ($"{MigrationRequest.Group}/{MigrationRequest.Version}", MigrationRequest.KindName, request.Metadata);

    public static (string ApiVersion, string Kind, V1ObjectMeta Subject) Pod(MigrationRequest request, string? name = null) =>
        ("v1", "Pod", new V1ObjectMeta { Name = name ?? request.Spec.PodName, NamespaceProperty = request.Metadata.NamespaceProperty });
}

using System.Globalization;
using k8s;
using k8s.Models;
using Migrate.Agent.Contracts.Groups;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// What to do next with a MigrationRequest, from what was observed and nothing else: no I/O, no
/// clock but <see cref="MigrationFacts.Now"/>. First the failure ladder (an ordered chain of
/// checks; the first that fails gives the reason a migration in flight is rolled back), then at
/// most one phase advance, and only on observed facts (an agent's report, a pod's status). The
/// rollback is a ladder of its own: replacement gone, target told to restore nothing, source
/// thawed, images removed; it waits for an agent it needs only so long, and never makes a second
/// copy of the workload.
/// <para>
/// The phases, and what moves a request out of each:
/// Pending (a free slot) → Checkpointing (the source agent's pre-copy rounds converged, the
/// replacement pod's sandbox waits for the images, the handoff froze and dumped the pod) →
/// Transferring (the final images were committed on the target) → Restoring (the replacement
/// runs) → CuttingOver (source ended and deleted, images removed) → Succeeded.
/// </para>
/// </summary>
public static class MigrationDecisions
{
    public const string PreCopyOperation = "PreCopy";
    public const string HandoffOperation = "Handoff";
    public const string TransferOperation = "Transfer";

    public static Decision Decide(MigrationFacts facts, MigrationPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(facts);
        ArgumentNullException.ThrowIfNull(policy);
        return new Pass(facts, policy).Run();
    }

    /// <summary>Whether the pod runs (all of its containers started).</summary>
    public static bool IsRunning(V1Pod? pod) => pod?.Status?.Phase == "Running";

    /// <summary>
    /// Whether the source agent may give back a pre-copy round's pages once the target staged them
    /// (StartPreCopyRequest.release_sent_rounds): only when the final dump leaves memory lazy (read
    /// from the write tracker; a plain one is compared with the last round) and the source's images
    /// are no pod's fallback (a pod that keeps its name is ended before its replacement runs, and
    /// restored in place from them if that fails).
    /// </summary>
    public static bool SourceMayReleaseRounds(bool keepsName, bool finalLazy) => finalLazy && !keepsName;

    /// <summary>status.memoryTracking for the method the source agent reports its pre-copy rounds used; null when it reports none.</summary>
    public static string? TrackingOf(Agent.V1.PreCopyMethod method) => method switch
    {
        Agent.V1.PreCopyMethod.WriteTracking => MemoryTrackingMethods.WriteProtect,
        Agent.V1.PreCopyMethod.KernelTracking => MemoryTrackingMethods.SoftDirty,
        Agent.V1.PreCopyMethod.ContentComparison => MemoryTrackingMethods.ContentComparison,
        _ => null,
    };

    /// <summary>
    /// Whether the replacement pod may be made while pre-copy rounds still run, so that its sandbox,
    /// network and root file system are prepared during them instead of after. Its restore then
    /// waits for the commit (podmig-runc gives up after 100 s), so only when the rounds still allowed
    /// plus the handoff, each reckoned as long as round 1 and half again, end within
    /// <paramref name="budget"/>: later rounds copy only what was written since the one before, never
    /// more than round 1 copied. Once round 1 is staged its length is known; while it runs, it is
    /// estimated (<see cref="FirstRoundEstimateMillis"/>) and what is left of it counts too.
    /// </summary>
    /// <param name="progress">The source agent's report of its rounds.</param>
    /// <param name="maxRounds">The request's round limit.</param>
    /// <param name="budget">How long the replacement's restore may be expected to wait.</param>
    /// <param name="floorBytesPerSecond">The least rate round 1 is assumed to run at before its transfer shows its own.</param>
    public static bool PrepareDuringPreCopy(Agent.V1.PreCopyProgress? progress, int maxRounds, TimeSpan budget, double floorBytesPerSecond = 50e6)
    {
        if (progress is null || progress.Converged)
        {
            return false;
        }

        if (progress.FirstRoundMillis > 0)
        {
            // rounds not begun, the one under way (from round 2 on: Rounds counts rounds begun), the handoff
            int left = Math.Max(maxRounds - Math.Max(progress.Rounds, 2), 0) + 2;
            return TimeSpan.FromMilliseconds(progress.FirstRoundMillis * 1.5 * left) <= budget;
        }

        if (FirstRoundEstimateMillis(progress, floorBytesPerSecond) is not { } first)
        {
            return false;
        }

        // round 1 under way: what is left of it, then the rounds after it and the handoff
        double rest = Math.Max(first - progress.RoundMillis, 0) + (first * 1.5 * (Math.Max(maxRounds - 1, 0) + 1));
        return TimeSpan.FromMilliseconds(rest) <= budget;
    }

    /// <summary>
    /// Round 1's whole length, estimated while it runs: once its transfer has sent something, the time
    /// so far scaled by the part of the transfer still to go (the pre-dump scaled with it, so the
    /// estimate errs long); before that, the time so far plus the tree's memory at
    /// <paramref name="floorBytesPerSecond"/>. Null when the agent reported neither.
    /// </summary>
    public static double? FirstRoundEstimateMillis(Agent.V1.PreCopyProgress progress, double floorBytesPerSecond)
    {
        ArgumentNullException.ThrowIfNull(progress);
        if (progress.Rounds == 1 && progress.BytesSent > 0 && progress.BytesTotal >= progress.BytesSent && progress.RoundMillis > 0)
        {
            return progress.RoundMillis * ((double)progress.BytesTotal / progress.BytesSent);
        }

        if (progress.MemoryBytes > 0 && floorBytesPerSecond > 0)
        {
            return progress.RoundMillis + (progress.MemoryBytes / floorBytesPerSecond * 1000);
        }

        return null;
    }

    /// <summary>Why a pod cannot start, or null while it starts or runs.</summary>
    public static string? StartFailure(V1Pod? pod)
    {
        if (pod?.Status is not { } status)
        {
            return null;
        }

        if (status.Phase is "Failed" or "Succeeded")
        {
            return $"it is {status.Phase}{(string.IsNullOrEmpty(status.Message) ? "" : ": " + status.Message)}";
        }

        var waiting = status.ContainerStatuses?.Select(c => c.State?.Waiting)
            .FirstOrDefault(w => w is not null && w.Reason is not ("ContainerCreating" or "PodInitializing"));
        return waiting is null ? null : $"{waiting.Reason} {waiting.Message}".TrimEnd();
    }

    private sealed class Pass(MigrationFacts f, MigrationPolicy p)
    {
        private readonly MigrationRequestStatus _s = f.Request.Status?.Copy() ?? new MigrationRequestStatus();
        private readonly List<EventNote> _events = [];

        private MigrationStatus? Source => f.SourceAgent.Migration;

        private IncomingStatus? Incoming => f.TargetAgent.Incoming;

        private string Phase => _s.Phase ?? "";

        private bool Retired => _s.Is(ConditionTypes.SourceRetired);

        /// <summary>The final images may have reached the target's commit (or did): from here only the target can say no restore began.</summary>
        private bool CommitMayHaveHappened =>
            Source?.Handoff?.Step >= HandoffStep.Committing || Incoming?.Committed == true || Phase is MigrationPhases.Restoring or MigrationPhases.CuttingOver;

        private bool RestoreBegan => Incoming?.RestoreBegan == true;

        /// <summary>The final dump left memory to a lazy restore (staged on the target, or left on the source in post-copy).</summary>
        private bool LeftLazy => Source?.FinalDump?.Containers.Any(c => c.LazyMemory) == true;

        /// <summary>The migration takes the CRI path: the runtimes' own checkpoint, published as images, restored by the target's runtime.</summary>
        private bool Cri => _s.CheckpointPath == CheckpointPaths.Cri;

        public Decision Run()
        {
            if (_s.Is(MigrationController.ReconcileErrorCondition))
            {
                Set(MigrationController.ReconcileErrorCondition, false, "Recovered", "The last pass over the request worked.");
            }

            var meta = f.Request.Metadata;
            bool deleting = meta.DeletionTimestamp is not null;
            bool hasFinalizer = meta.Finalizers?.Contains(Finalizers.Cleanup) == true;

            if (MigrationPhases.IsFinal(_s.Phase))
            {
                return Final(deleting, hasFinalizer);
            }

            if (_s.SourceNode is null)
            {
                if (deleting)
                {
                    return Do(hasFinalizer ? new MigrationAction.RemoveFinalizer() : MigrationAction.None);
                }

                return hasFinalizer ? Admit() : Do(new MigrationAction.AddFinalizer());
            }

            if (deleting)
            {
                if (Phase == MigrationPhases.Pending)
                {
                    return Do(hasFinalizer ? new MigrationAction.RemoveFinalizer() : MigrationAction.None);
                }

                if (Phase != MigrationPhases.CuttingOver && !_s.Is(ConditionTypes.RollingBack))
                {
                    return StartRollback(Reasons.Deleted, "The MigrationRequest was deleted while in flight; the migration was rolled back.");
                }
            }

            if (_s.Is(ConditionTypes.RollingBack))
            {
                return Retired ? RestoreInPlace() : RollBack();
            }

            if (Phase == MigrationPhases.Pending)
            {
                return Queue();
            }

            if (Phase is MigrationPhases.Checkpointing or MigrationPhases.Transferring or MigrationPhases.Restoring && Failure() is { } failure)
            {
                return StartRollback(failure.Reason, failure.Message);
            }

            return Phase switch
            {
                MigrationPhases.Checkpointing => Checkpointing(),
                MigrationPhases.Transferring => Transferring(),
                MigrationPhases.Restoring => Restoring(),
                MigrationPhases.CuttingOver => CuttingOver(),
                _ => Do(MigrationAction.None),
            };
        }

        // ------------------------------------------------------------------ admission and queueing

        private Decision Admit()
        {
            var validation = f.Admission ?? throw new InvalidOperationException("a request not yet admitted needs the admission's verdict");
            _s.ObservedGeneration = f.Request.Metadata.Generation;
            _s.StartTime ??= f.Now;
            if (validation.Failed)
            {
                _s.Phase = MigrationPhases.Failed;
                _s.Reason = validation.FailureReason;
                _s.Message = validation.FailureMessage;
                _s.CompletionTime = f.Now;
                Set(ConditionTypes.Ready, false, validation.FailureReason!, validation.FailureMessage!);
                _events.Add(new EventNote("Warning", validation.FailureReason!, validation.FailureMessage!));
                return Do(MigrationAction.None);
            }

            _s.Phase = MigrationPhases.Pending;
            _s.SourceNode = validation.SourceNode;
            _s.TargetNode = validation.TargetNode;
            _s.CheckpointPath = validation.CheckpointPath;
            if (validation.Mode is { } mode)
            {
                _s.Mode = mode.Mode;
                _s.SetCondition(ConditionTypes.ModeChosen, mode.Decided ? "True" : "Unknown", mode.Reason, mode.Message, f.Request.Metadata.Generation, f.Now);
            }
            _s.Reason = Reasons.Validated;
            _s.Message = $"Pod {f.Request.Spec.PodName} can move from {validation.SourceNode} to {validation.TargetNode}.";
            Set(ConditionTypes.Validated, true, Reasons.Validated, _s.Message);
            if (validation.KeepsName)
            {
                Set(ConditionTypes.KeepsName, true, "StatefulSetPod",
                    $"The replacement takes the name {f.Request.Spec.PodName}: the source is ended and deleted just before it is created.");
            }

            if (validation.KeepsAddress)
            {
                Set(ConditionTypes.KeepsAddress, true, f.Request.Spec.KeepAddress == true ? "Requested" : "NetworkMovesAddresses",
                    f.Request.Spec.KeepAddress == true
                        ? "The replacement keeps the pod's address, as requested; its established connections move with it."
                        : $"The replacement keeps the pod's address: the pod network of {validation.SourceNode} and {validation.TargetNode} can move it (keepAddress: false gives it a new one).");
            }

            _events.Add(new EventNote("Normal", Reasons.Validated, _s.Message));
            return Do(MigrationAction.None, TimeSpan.Zero);
        }

        private Decision Queue()
        {
            string? wait = null;
            if (f.IsGroupMember)
            {
                // the group was admitted as a whole, within its own limits: a member waiting for a slot would hold up every other
                wait = null;
            }
            else if (f.InFlight >= p.MaxConcurrentMigrations)
            {
                wait = $"Waiting: {f.InFlight} migrations are in flight, the limit is {p.MaxConcurrentMigrations}.";
            }
            else if (f.OutboundFromSource >= p.MaxOutboundPerNode)
            {
                wait = $"Waiting: {f.OutboundFromSource} migration(s) already leave node {_s.SourceNode}, the limit is {p.MaxOutboundPerNode}.";
            }
            else if (f.InboundToTarget >= p.MaxInboundPerNode)
            {
                wait = $"Waiting: {f.InboundToTarget} migration(s) already go to node {_s.TargetNode}, the limit is {p.MaxInboundPerNode}.";
            }

            if (wait is not null)
            {
                _s.Reason = Reasons.Queued;
                _s.Message = wait;
                return Do(MigrationAction.None, p.PollInterval);
            }

            _events.Add(new EventNote("Normal", "Migrating", $"Moving to node {_s.TargetNode} (MigrationRequest {f.Request.Metadata.Name}).", f.Request.Spec.PodName));
            return MoveTo(MigrationPhases.Checkpointing, $"Checkpointing the pod on {_s.SourceNode}.");
        }

        // ------------------------------------------------------------------ the failure ladder

        private (string Reason, string Message)? Failure()
        {
            if (f.GroupGate == GroupGates.RollBack && !GroupSteps.AtLeast(_s.GroupStep, GroupSteps.Released))
            {
                // another member failed before the group was released: all or nothing
                return (Reasons.GroupRolledBack, $"Group {Keys.Get(f.Request.Metadata.Labels, Labels.Group)} is rolled back: another member failed before every member was restored.");
            }

            if (MigrationDecisions.IsRunning(f.Replacement) && f.Replacement!.Spec.NodeName == _s.TargetNode
                && !(f.IsGroupMember && !GroupSteps.AtLeast(_s.GroupStep, GroupSteps.Released) && _s.PhaseStartTime is { } restoring && f.Now - restoring > p.PhaseTimeout))
            {
                // once its memory is all in place the state is in the replacement: whatever else happens, the way out
                // is forward. Until then (a lazy restore) only its memory failing, or never filling, goes back to the source.
                return LazyMemoryFailure();
            }

            if (_s.StartTime is { } start && f.Now - start > TimeSpan.FromSeconds(f.Request.Spec.TimeoutSeconds))
            {
                return (Reasons.TimedOut, $"The migration did not reach cut-over within {f.Request.Spec.TimeoutSeconds} seconds.");
            }

            if (_s.PhaseStartTime is { } began && f.Now - began > p.PhaseTimeout)
            {
                return (Reasons.PhaseTimedOut, $"{Phase} took longer than {p.PhaseTimeout.TotalSeconds:0} seconds.");
            }

            if (!Retired && !CommitMayHaveHappened && (f.SourcePod is null || (Source?.Pod?.Uid is { Length: > 0 } uid && f.SourcePod.Metadata.Uid != uid)))
            {
                return (Reasons.SourcePodGone, $"Pod {f.Request.Metadata.NamespaceProperty}/{f.Request.Spec.PodName} disappeared during the migration.");
            }

            if (f.TargetNode is null)
            {
                return (Reasons.TargetNodeGone, $"Target node {_s.TargetNode} was removed during {Phase}.");
            }

            if (!IsReady(f.TargetNode))
            {
                return (Reasons.TargetNodeNotReady, $"Target node {_s.TargetNode} became NotReady during {Phase}.");
            }

            if (f.TargetAgent.Silence(f.Now) > p.AgentGrace)
            {
                return (Reasons.TargetAgentUnreachable, $"The agent on {_s.TargetNode} has not answered for {f.TargetAgent.Silence(f.Now).TotalSeconds:0} seconds ({f.TargetAgent.Error}).");
            }

            if (f.SourceAgent.Silence(f.Now) > p.AgentGrace)
            {
                return (Reasons.SourceAgentUnreachable, $"The agent on {_s.SourceNode} has not answered for {f.SourceAgent.Silence(f.Now).TotalSeconds:0} seconds ({f.SourceAgent.Error}).");
            }

            if (Source?.Operation is { State: OperationState.Failed } failed && failed.Kind is PreCopyOperation or HandoffOperation)
            {
                var reason = failed.Kind == PreCopyOperation ? Reasons.PreCopyFailed : Reasons.HandoffFailed;
                return (reason, Sentence($"{failed.Kind} on {_s.SourceNode} failed ({failed.Reason}): {failed.Message}"));
            }

            // (a source thawed while its operation still runs is an operation failing: it says why in a moment)
            if (!Retired && f.SourceAgent.Reachable && (Source is null && Phase != MigrationPhases.Checkpointing
                || Source?.Phase is MigrationPhase.Resumed or MigrationPhase.Cleaned && Source.Operation?.State != OperationState.Running))
            {
                return (Reasons.SourceAgentRestarted, $"The agent on {_s.SourceNode} no longer holds the migration (it restarted and thawed the pod, or lost its staging directory).");
            }

            if (Incoming?.Restores.FirstOrDefault(r => !string.IsNullOrEmpty(r.Error)) is { } broken)
            {
                return (Reasons.RestoreFailed, Sentence($"Restoring container {broken.Container} on {_s.TargetNode} failed: {broken.Error}"));
            }

            if (!f.KeepsName && Phase == MigrationPhases.Restoring && f.Replacement is null)
            {
                return (Reasons.RestoreFailed, $"The replacement pod {_s.ReplacementPod} was deleted before it ran.");
            }

            if (f.Replacement is { } replacement && StartFailure(replacement) is { } why)
            {
                return (Reasons.RestoreFailed, Sentence($"The replacement pod {replacement.Metadata.Name} on {replacement.Spec.NodeName} did not start: {why}"));
            }

            if (!f.KeepsName && Phase == MigrationPhases.Checkpointing && f.Replacement?.Metadata.CreationTimestamp is { } created
                && Source?.Operation?.Kind != HandoffOperation && Incoming?.Restores.Any(r => r.Waiting) != true && f.Now - created > p.PreparationTimeout)
            {
                return (Reasons.TargetPreparationTimedOut,
                    $"The replacement pod {f.Replacement.Metadata.Name} was not ready for the restore within {p.PreparationTimeout.TotalSeconds:0} seconds (its sandbox, network or root file system); the source was never frozen.");
            }

            if (f.ForeignNameHolder is { } foreign && (Retired || f.KeepsName && Phase == MigrationPhases.Restoring && f.SourcePod is null))
            {
                return (Reasons.NameTaken, $"Pod {foreign.Metadata.NamespaceProperty}/{foreign.Metadata.Name} was created by someone else after the source was retired; is the operator's pod webhook installed?");
            }

            return null;
        }

        /// <summary>A lazily restored container whose memory will not all arrive, or has not within the phase's time.</summary>
        private (string Reason, string Message)? LazyMemoryFailure()
        {
            var lazy = Incoming?.Restores.Where(r => r.Restored && r.LazyMemory).ToList() ?? [];
            if (lazy.FirstOrDefault(r => !string.IsNullOrEmpty(r.MemoryError)) is { } unfilled)
            {
                return (Reasons.RestoreFailed,
                    Sentence($"Container {unfilled.Container} on {_s.TargetNode} ran before its memory was in place, and not all of it arrived: {unfilled.MemoryError}"));
            }

            if (LeftLazy && f.TargetAgent.Silence(f.Now) > p.AgentGrace)
            {
                return (Reasons.TargetAgentUnreachable,
                    $"The agent on {_s.TargetNode} has not answered for {f.TargetAgent.Silence(f.Now).TotalSeconds:0} seconds ({f.TargetAgent.Error}) while the replacement's memory was arriving: nobody can say all of it did.");
            }

            bool unconfirmed = lazy.Any(r => !r.MemoryFilled) || (LeftLazy && (!f.TargetAgent.Reachable || Incoming is null));
            if (unconfirmed && _s.PhaseStartTime is { } began && f.Now - began > p.PhaseTimeout)
            {
                return (Reasons.PhaseTimedOut, $"The memory of the lazily restored replacement was not all in place within {p.PhaseTimeout.TotalSeconds:0} seconds.");
            }

            return null;
        }

        // ------------------------------------------------------------------ the phases

        private Decision Checkpointing()
        {
            if (Keys.Get(f.Request.Metadata.Annotations, Annotations.TraceContext) is null)
            {
                return Do(new MigrationAction.StartTrace(), TimeSpan.Zero);
            }

            if (Source is null)
            {
                return f.SourceAgent.Reachable ? Do(new MigrationAction.BeginCheckpoint(), TimeSpan.Zero) : Wait();
            }

            _s.ImageStaging = Source.StagedInMemory ? ImageStagingMedia.Memory : ImageStagingMedia.Disk;

            if (_s.Is(ConditionTypes.KeepsAddress) && f.Request.Spec.KeepAddress != true && !Source.KeepsAddress && Source.AddressNote is { Length: > 0 } note)
            {
                // the network could move the address, the pod could not keep it: a new one, said before the replacement is made
                var message = $"The replacement gets a new address: {note}.";
                Set(ConditionTypes.KeepsAddress, false, Reasons.PodAddressCannotMove, message);
                _events.Add(new EventNote("Normal", Reasons.PodAddressCannotMove, message));
                return Do(MigrationAction.None, TimeSpan.Zero);
            }

            if (Cri)
            {
                return CriCheckpointing();
            }

            if (Incoming?.Expected != true)
            {
                return f.TargetAgent.Reachable ? Do(new MigrationAction.ExpectImages(_s.TargetNode!), TimeSpan.Zero) : Wait();
            }

            var operation = Source.Operation;
            if (MigrationModes.HasRounds(ModeChoice.Effective(f.Request)) && operation?.Kind is not (PreCopyOperation or HandoffOperation))
            {
                return Do(new MigrationAction.StartPreCopy(), TimeSpan.Zero);
            }

            if (operation?.Kind == PreCopyOperation && Source.PreCopy?.Converged != true)
            {
                Progress(Source.PreCopy?.BytesSent, Source.PreCopy?.BytesTotal);
                _s.PreCopyRounds = Source.PreCopy?.Rounds is > 0 and var rounds ? rounds : _s.PreCopyRounds;
                if (!f.KeepsName && f.Replacement is null
                    && MigrationDecisions.PrepareDuringPreCopy(Source.PreCopy, (f.Request.Spec.PreCopy ?? new PreCopyLimits()).MaxRounds, p.ReplacementWaitBudget,
                        p.FirstRoundFloorBytesPerSecond))
                {
                    // the rounds left end well before the replacement's restore would give up waiting: prepare it meanwhile
                    _s.ReplacementPod = MigrationExecutor.ReplacementName(f.Request);
                    return Do(new MigrationAction.CreateReplacement(_s.TargetNode!), TimeSpan.Zero);
                }

                return Wait();
            }

            if (Source.PreCopy is { Rounds: > 0 } precopy)
            {
                _s.PreCopyRounds = precopy.Rounds;
                _s.MemoryTracking = MigrationDecisions.TrackingOf(precopy.Method) ?? _s.MemoryTracking;
                if (ModeChoice.Pending(_s) && operation?.Kind == PreCopyOperation)
                {
                    // Auto: the rounds ended; how what they left is sent is settled (and written) before the handoff asks for it
                    var mode = ModeChoice.AfterRounds(precopy, (f.Request.Spec.PreCopy ?? new PreCopyLimits()).FrozenSendLimitMillis);
                    _s.Mode = mode.Mode;
                    Set(ConditionTypes.ModeChosen, true, mode.Reason, mode.Message);
                    _events.Add(new EventNote("Normal", mode.Reason, mode.Message));
                    return Do(MigrationAction.None, TimeSpan.Zero);
                }
            }

            if (operation?.Kind != HandoffOperation)
            {
                if (!f.KeepsName)
                {
                    // the target is made ready while the source still runs: the freeze covers only the
                    // final dump, the last difference's transfer and the restore
                    if (f.Replacement is null)
                    {
                        _s.ReplacementPod = MigrationExecutor.ReplacementName(f.Request);
                        return Do(new MigrationAction.CreateReplacement(_s.TargetNode!), TimeSpan.Zero);
                    }

                    if (Incoming?.Restores.Any(r => r.Waiting) != true)
                    {
                        _s.Reason = MigrationPhases.Checkpointing;
                        _s.Message = $"Preparing the replacement pod {f.Replacement.Metadata.Name} on {_s.TargetNode} (sandbox, network, root file system) while the pod runs.";
                        return Wait();
                    }
                }

                if (f.IsGroupMember)
                {
                    _s.GroupStep = GroupSteps.Ready;
                    if (!GroupGates.AtLeast(f.GroupGate, GroupGates.Freeze))
                    {
                        _s.Reason = MigrationPhases.Checkpointing;
                        _s.Message = $"Ready to freeze; waiting for the other members of group {Keys.Get(f.Request.Metadata.Labels, Labels.Group)}.";
                        return Wait();
                    }
                }

                return Do(new MigrationAction.StartHandoff(), TimeSpan.Zero);
            }

            if (Source.Handoff is { FrozenUnixMillis: > 0 } handoff && !_s.Is(ConditionTypes.Frozen))
            {
                Set(ConditionTypes.Frozen, true, "FinalDump", $"The pod's processes on {_s.SourceNode} are frozen for the final dump.", FromUnixMillis(handoff.FrozenUnixMillis));
            }

            if (Source.Handoff?.Step >= HandoffStep.Sending)
            {
                _s.ImageBytes = Source.FinalDump is { StagedBytes: > 0 } dump ? (long)dump.StagedBytes : _s.ImageBytes;
                return MoveTo(MigrationPhases.Transferring, $"Copying the final {Source.FinalDump?.StagedBytes ?? 0} bytes of checkpoint to {_s.TargetNode}.");
            }

            return GroupHold() ?? Wait();
        }

        /// <summary>
        /// The CRI path: the source's runtime checkpoints the frozen pod and its agent publishes the
        /// checkpoint images; then the replacement is created from them (its runtime restores them as
        /// it creates the containers), and the migration goes on as a restore.
        /// </summary>
        private Decision CriCheckpointing()
        {
            var handoff = Source!.Handoff;
            if (Source.Operation?.Kind != HandoffOperation)
            {
                return Do(new MigrationAction.StartHandoff(), TimeSpan.Zero);
            }

            if (handoff is { FrozenUnixMillis: > 0 } && !_s.Is(ConditionTypes.Frozen))
            {
                Set(ConditionTypes.Frozen, true, "CriCheckpoint", $"The pod's processes on {_s.SourceNode} are frozen for the runtime's checkpoint.", FromUnixMillis(handoff.FrozenUnixMillis));
            }

            if (handoff?.Step != HandoffStep.Committed)
            {
                return Wait();
            }

            _s.CheckpointImages = [.. Source.CheckpointImages.Select(i => i.Image)];
            _s.ImageBytes = Source.FinalDump is { StagedBytes: > 0 } dump ? (long)dump.StagedBytes : _s.ImageBytes;
            if (f.Replacement is null)
            {
                _s.ReplacementPod = MigrationExecutor.ReplacementName(f.Request);
                return Do(new MigrationAction.CreateReplacement(_s.TargetNode!), TimeSpan.Zero);
            }

            return MoveTo(MigrationPhases.Restoring,
                $"The runtime on {_s.SourceNode} checkpointed the pod into {Source.CheckpointImages.Count} checkpoint image(s) ({_s.ImageBytes} bytes); the runtime on {_s.TargetNode} restores the replacement {f.Replacement.Metadata.Name} from them.");
        }

        private Decision Transferring()
        {
            var handoff = Source?.Handoff;
            Progress(handoff?.BytesSent, handoff?.BytesTotal);
            _s.BytesTransferred = BytesSent() ?? _s.BytesTransferred;
            if (GroupHold() is { } held)
            {
                return held;
            }

            if (handoff?.Step == HandoffStep.Committed || Incoming?.Committed == true)
            {
                return MoveTo(MigrationPhases.Restoring, $"Restoring the pod on {_s.TargetNode}.");
            }

            return Wait();
        }

        private Decision Restoring()
        {
            _s.BytesTransferred = BytesSent() ?? _s.BytesTransferred;
            if (f.KeepsName)
            {
                if (!Retired)
                {
                    if (Keys.Get(f.Request.Metadata.Annotations, Annotations.SourcePod) is null)
                    {
                        return f.SourcePod is null ? StartRollback(Reasons.SourcePodGone, $"Pod {f.Request.Spec.PodName} disappeared before it was retired.")
                            : Do(new MigrationAction.KeepSourcePod(), TimeSpan.Zero);
                    }

                    Set(ConditionTypes.SourceRetired, true, "NameHandedOver",
                        $"Pod {f.Request.Spec.PodName} on {_s.SourceNode} was ended and deleted so that its replacement can take its name; its state is in the checkpoint.");
                    return Do(MigrationAction.None, TimeSpan.Zero);
                }

                if (Source is not null && Source.Phase != MigrationPhase.Finished)
                {
                    return f.SourceAgent.Reachable ? Do(new MigrationAction.FinishSource(), TimeSpan.Zero) : Wait();
                }

                if (f.SourcePod is { } old)
                {
                    return Do(new MigrationAction.DeletePod(old.Metadata.Name, old.Metadata.Uid), TimeSpan.Zero);
                }

                if (f.NamedPod is null)
                {
                    _s.ReplacementPod = f.Request.Spec.PodName;
                    return Do(new MigrationAction.CreateReplacement(_s.TargetNode!), TimeSpan.Zero);
                }
            }

            if (!MigrationDecisions.IsRunning(f.Replacement))
            {
                return Wait();
            }

            _s.DowntimeMillis = Downtime();
            _s.RestoreMillis = RestoreTime() ?? _s.RestoreMillis;
            if (LeftLazy && (!f.TargetAgent.Reachable || Incoming is null))
            {
                // memory left to a lazy restore is in place only once the target's agent says so: while it does not
                // answer, nobody knows, and the source stays frozen (its silence beyond the agent grace rolls back)
                return Wait();
            }

            if (Incoming?.Restores.Where(r => r.Restored).ToList() is { Count: > 0 } restored)
            {
                _s.MemoryRestore = restored.Any(r => r.LazyMemory) ? MemoryRestoreModes.Lazy : MemoryRestoreModes.Full;
                if (Source?.FinalDump?.Containers.Sum(c => (long)c.PagesLeftOnSource) is > 0 and var left)
                {
                    _s.PostCopyBytes = left * 4096;
                }
                if (restored.Any(r => r.LazyMemory && !r.MemoryFilled))
                {
                    // the replacement runs, but pages are still arriving: until the last one is in place the source
                    // stays frozen, so that a helper dying now rolls back to it instead of leaving zero-filled memory
                    return Wait();
                }
            }

            if (Source?.FinalDump?.Containers.Where(c => c.PagesLeftOnSource > 0)
                    .Any(c => Incoming?.Restores.FirstOrDefault(r => r.Container == c.ContainerName) is not { Restored: true, MemoryFilled: true }) == true)
            {
                // post-copy: every container that left pages on the source must say they all arrived before the source goes
                return Wait();
            }

            if (f.IsGroupMember && !GroupSteps.AtLeast(_s.GroupStep, GroupSteps.Released))
            {
                // a member's replacement runs, its network locked until every member's does
                bool held = Incoming?.NetworkHeld == true;
                if (!held && Source?.KeepsAddress == true && Incoming?.NetworkReleased != true)
                {
                    return Wait(); // its last container is being restored
                }

                _s.GroupStep = GroupSteps.Restored;
                if (f.GroupGate != GroupGates.Release)
                {
                    _s.Reason = MigrationPhases.Restoring;
                    _s.Message = $"The replacement pod {f.Replacement!.Metadata.Name} runs on {_s.TargetNode} with its network locked; waiting for the other members of group {Keys.Get(f.Request.Metadata.Labels, Labels.Group)}.";
                    return Wait();
                }

                if (held && Incoming?.NetworkReleased != true)
                {
                    return Do(new MigrationAction.ReleaseNetwork(), TimeSpan.Zero);
                }

                _s.GroupStep = GroupSteps.Released;
                if (Incoming?.NetworkReleasedUnixMillis is > 0 and var released && Source?.Handoff?.FrozenUnixMillis is > 0 and var frozen)
                {
                    // its peers saw it only once the group released it
                    _s.DowntimeMillis = Math.Max(_s.DowntimeMillis ?? 0, released - frozen);
                }
            }

            MoveTo(MigrationPhases.CuttingOver, $"The replacement pod {f.Replacement!.Metadata.Name} runs on {_s.TargetNode}; retiring the source.");
            // and the cut-over's first step in the same pass (the new phase written before it, as any pass's status)
            return CuttingOver();
        }

        /// <summary>
        /// A group member's handoff at one of its holds: reported in groupStep, and let through once
        /// the group's gate is open that far (every member reached the hold). Null when not held.
        /// </summary>
        private Decision? GroupHold()
        {
            if (!f.IsGroupMember || Source?.Handoff is not { } handoff || string.IsNullOrEmpty(handoff.Held))
            {
                return null;
            }

            var (step, gate, through) = handoff.Held == GroupHolds.Frozen
                ? (GroupSteps.Frozen, GroupGates.Dump, GroupHolds.Dump)
                : (GroupSteps.Staged, GroupGates.Commit, GroupHolds.Commit);
            _s.GroupStep = step;
            if (!GroupGates.AtLeast(f.GroupGate, gate))
            {
                _s.Message = step == GroupSteps.Frozen
                    ? $"Frozen with its network locked; waiting until every member of group {Keys.Get(f.Request.Metadata.Labels, Labels.Group)} is."
                    : $"The final images are staged on {_s.TargetNode}; waiting until every member's are.";
                return Wait();
            }

            return handoff.ContinuedThrough == through || handoff.ContinuedThrough == GroupHolds.Commit ? Wait() : Do(new MigrationAction.ContinueHandoff(through), TimeSpan.Zero);
        }

        private Decision CuttingOver()
        {
            // (a pass that cut over while the target's agent did not answer left it unset)
            _s.RestoreMillis ??= RestoreTime();
            if (!f.KeepsName)
            {
                if (f.SourcePod is { } source && Keys.Get(source.Metadata.Annotations, Annotations.PodDeletionCost) != int.MinValue.ToString(CultureInfo.InvariantCulture))
                {
                    return Do(new MigrationAction.MarkSourceExpendable(), TimeSpan.Zero);
                }

                if (Source is not null && Source.Phase != MigrationPhase.Finished && f.SourcePod is not null)
                {
                    if (f.SourceAgent.Reachable)
                    {
                        return Do(new MigrationAction.FinishSource(), TimeSpan.Zero);
                    }

                    if (f.SourceAgent.Silence(f.Now) < p.AgentGrace)
                    {
                        return Wait();
                    }

                    // the source agent is gone: deleting the pod has its runtime kill the frozen processes
                }

                if (f.Replacement is { } replacement && Keys.Get(replacement.Metadata.Annotations, Annotations.HeldLabels) is not null)
                {
                    return Do(new MigrationAction.HandOverIdentity(), TimeSpan.Zero);
                }

                if (f.SourcePod is { } left)
                {
                    return Do(new MigrationAction.DeletePod(left.Metadata.Name, left.Metadata.Uid), TimeSpan.Zero);
                }
            }

            if (CleanUp() is { } cleanup)
            {
                return cleanup;
            }

            _s.Phase = MigrationPhases.Succeeded;
            _s.Reason = Reasons.Migrated;
            _s.Message = $"Pod {f.Request.Spec.PodName} moved from {_s.SourceNode} to {_s.TargetNode} as {_s.ReplacementPod}.";
            _s.CompletionTime = f.Now;
            _s.Progress = null;
            Set(ConditionTypes.Frozen, false, Reasons.Migrated, "The source's processes were ended after the replacement ran.");
            Set(ConditionTypes.Progressing, false, Reasons.Migrated, _s.Message);
            Set(ConditionTypes.Ready, true, Reasons.Migrated, _s.Message);
            _events.Add(new EventNote("Normal", Reasons.Migrated, _s.Message));
            _events.Add(new EventNote("Normal", Reasons.Migrated, $"Restored from {f.Request.Spec.PodName} on {_s.SourceNode}.", _s.ReplacementPod));
            return Do(MigrationAction.None);
        }

        // ------------------------------------------------------------------ rollback

        private Decision StartRollback(string reason, string message)
        {
            _s.Reason = reason;
            _s.Message = message;
            Set(ConditionTypes.RollingBack, true, reason, message);
            return Do(MigrationAction.None, TimeSpan.Zero);
        }

        private Decision RollBack()
        {
            if (f.Replacement is { } replacement)
            {
                return Do(new MigrationAction.DeletePod(replacement.Metadata.Name, replacement.Metadata.Uid), TimeSpan.Zero);
            }

            // no restore may begin on the target from now on; before a commit none can, so there is nothing to ask
            // (on the CRI path only the replacement restores, and it is gone)
            if (!Cri && CommitMayHaveHappened && !RestoreBegan && f.TargetNode is not null && !(f.TargetAgent.Reachable && Incoming is not { Aborted: false }))
            {
                // (a target that answers and holds nothing, or aborted already, can restore nothing)
                if (f.TargetAgent.Reachable)
                {
                    return Do(new MigrationAction.AbortRestore(_s.TargetNode!), TimeSpan.Zero);
                }

                if (RolledBackSince() > p.RollbackGrace)
                {
                    return EndFrozen(Reasons.SourceFrozenTargetUnreachable,
                        $"{_s.Message} The final images may have been committed on {_s.TargetNode}, whose agent does not answer, so the pod stays frozen on {_s.SourceNode} (never two copies); it is thawed once that agent confirms no restore began.");
                }

                return Wait();
            }

            bool frozen = Source?.Handoff is { FrozenUnixMillis: > 0 } || _s.Is(ConditionTypes.Frozen);
            if (Source is not null && Source.Phase is not (MigrationPhase.Resumed or MigrationPhase.Cleaned or MigrationPhase.Finished))
            {
                return Do(new MigrationAction.ResumeSource(RestoreBegan), TimeSpan.Zero);
            }

            if (!f.SourceAgent.Reachable && frozen)
            {
                // the pod may be frozen there: its agent thaws it when it is back (its images were never committed)
                return RolledBackSince() > p.RollbackGrace
                    ? EndFrozen(Reasons.SourceFrozenAgentUnreachable,
                        $"{_s.Message} The agent on {_s.SourceNode} does not answer; it thaws the pod when it restarts (the final images were never committed).")
                    : Wait();
            }

            if (CleanUp() is { } cleanup)
            {
                return cleanup;
            }

            _s.Phase = MigrationPhases.RolledBack;
            _s.CompletionTime = f.Now;
            _s.Progress = null;
            var message = _s.Message ?? "The migration was rolled back.";
            Set(ConditionTypes.RollingBack, false, Reasons.RolledBack, "The replacement was removed and the source pod runs on.");
            Set(ConditionTypes.Frozen, false, Reasons.RolledBack, "The source's processes were thawed.");
            Set(ConditionTypes.Progressing, false, _s.Reason ?? Reasons.RolledBack, message);
            Set(ConditionTypes.Ready, false, _s.Reason ?? Reasons.RolledBack, message);
            _events.Add(new EventNote("Warning", _s.Reason ?? Reasons.RolledBack, message));
            _events.Add(new EventNote("Warning", "MigrationRolledBack", $"The move to {_s.TargetNode} was rolled back; the pod runs on. {message}", f.Request.Spec.PodName));
            return Do(MigrationAction.None);
        }

        /// <summary>
        /// A pod that kept its name was already ended and deleted on its node when the migration
        /// failed: it is restored there, under its name, from its own checkpoint. If even that
        /// fails, the request ends Failed and the checkpoint stays on both nodes.
        /// </summary>
        private Decision RestoreInPlace()
        {
            var home = _s.SourceNode!;
            var name = f.Request.Spec.PodName;
            if (f.NamedPod is { } holder && !(f.IsOurs(holder) && holder.Spec.NodeName == home))
            {
                return Do(new MigrationAction.DeletePod(holder.Metadata.Name, holder.Metadata.Uid), TimeSpan.Zero);
            }

            if (f.NamedPod is { } restored)
            {
                if (StartFailure(restored) is { } why)
                {
                    return EndInPlaceFailure(why);
                }

                if (!MigrationDecisions.IsRunning(restored))
                {
                    return Wait();
                }

                if (CleanUp() is { } cleanup)
                {
                    return cleanup;
                }

                _s.Phase = MigrationPhases.RolledBack;
                _s.CompletionTime = f.Now;
                _s.Progress = null;
                _s.Message = $"{_s.Message} Pod {name} was restored on {home} under its name.";
                Set(ConditionTypes.RollingBack, false, Reasons.RolledBack, $"Pod {name} was restored from its checkpoint on {home}.");
                Set(ConditionTypes.Progressing, false, _s.Reason ?? Reasons.RolledBack, _s.Message);
                Set(ConditionTypes.Ready, false, _s.Reason ?? Reasons.RolledBack, _s.Message);
                _events.Add(new EventNote("Warning", _s.Reason ?? Reasons.RolledBack, _s.Message));
                _events.Add(new EventNote("Warning", "MigrationRolledBack", $"The move to {_s.TargetNode} was rolled back; the pod was restored on {home}.", name));
                return Do(MigrationAction.None);
            }

            if (CommitMayHaveHappened && Incoming is { Aborted: false } && !RestoreBegan && f.TargetNode is not null && f.TargetAgent.Reachable)
            {
                return Do(new MigrationAction.AbortRestore(_s.TargetNode!), TimeSpan.Zero);
            }

            var homeIncoming = f.SourceAgent.Incoming;
            if (homeIncoming?.Committed != true)
            {
                if (Source?.Operation is { Kind: TransferOperation, State: OperationState.Failed } failed)
                {
                    return EndInPlaceFailure(failed.Message);
                }

                if (homeIncoming?.Expected != true)
                {
                    return f.SourceAgent.Reachable ? Do(new MigrationAction.ExpectImages(home), TimeSpan.Zero) : WaitInPlace();
                }

                return Source?.Operation is { Kind: TransferOperation, State: OperationState.Running } ? Wait()
                    : f.SourceAgent.Reachable ? Do(new MigrationAction.StartTransfer(home), TimeSpan.Zero) : WaitInPlace();
            }

            _s.ReplacementPod = name;
            return Do(new MigrationAction.CreateReplacement(home), TimeSpan.Zero);
        }

        private Decision WaitInPlace() =>
            RolledBackSince() > p.RollbackGrace ? EndInPlaceFailure($"the agent on {_s.SourceNode} does not answer") : Wait();

        private Decision EndInPlaceFailure(string why)
        {
            var message = $"{_s.Message} Restoring pod {f.Request.Spec.PodName} on {_s.SourceNode} failed as well ({why.TrimEnd('.')}); its checkpoint is kept on {_s.SourceNode} and {_s.TargetNode} as migration {f.MigrationId}.";
            return EndFailed(Reasons.RestoreInPlaceFailed, message);
        }

        /// <summary>The request ends Failed with the source pod left frozen (no state lost, never two copies).</summary>
        private Decision EndFrozen(string reason, string message) => EndFailed(reason, message);

        private Decision EndFailed(string reason, string message)
        {
            _s.Phase = MigrationPhases.Failed;
            _s.Reason = reason;
            _s.Message = message;
            _s.CompletionTime = f.Now;
            _s.Progress = null;
            foreach (var node in new[] { _s.SourceNode, _s.TargetNode }.OfType<string>().Distinct())
            {
                AddPendingCleanup(node);
            }

            Set(ConditionTypes.RollingBack, false, reason, message);
            Set(ConditionTypes.Progressing, false, reason, message);
            Set(ConditionTypes.Ready, false, reason, message);
            _events.Add(new EventNote("Warning", reason, message));
            return Do(MigrationAction.None);
        }

        private TimeSpan RolledBackSince() =>
            _s.Condition(ConditionTypes.RollingBack) is { Status: "True" } rolling ? f.Now - rolling.LastTransitionTime : TimeSpan.Zero;

        // ------------------------------------------------------------------ the end of every migration

        /// <summary>The next node whose agent still holds the migration's images; an agent that does not answer is noted for later.</summary>
        /// <summary>The images removed on both nodes at once (one pass, not one per node); null when neither holds any.</summary>
        private Decision? CleanUp()
        {
            var nodes = new List<string>();
            foreach (var (node, agent, nodeObject) in new[] { (_s.SourceNode, f.SourceAgent, f.SourceNode), (_s.TargetNode, f.TargetAgent, f.TargetNode) })
            {
                if (node is null || nodes.Contains(node))
                {
                    continue;
                }

                if (agent.Reachable)
                {
                    if (agent.Migration is not null && agent.Migration.Phase != MigrationPhase.Cleaned)
                    {
                        nodes.Add(node);
                    }
                }
                else if (nodeObject is not null && !ReferenceEquals(agent, AgentView.None))
                {
                    // its agent removes them when the operator reaches it again (or, a day later, by itself)
                    AddPendingCleanup(node);
                }
            }

            return nodes.Count > 0 ? Do(new MigrationAction.Cleanup(nodes), TimeSpan.Zero) : null;
        }

        private void AddPendingCleanup(string node)
        {
            _s.PendingCleanup ??= [];
            if (!_s.PendingCleanup.Contains(node))
            {
                _s.PendingCleanup.Add(node);
            }
        }

        /// <summary>A request that ended: images left on a node whose agent did not answer are removed once it does; then the finalizer goes.</summary>
        private Decision Final(bool deleting, bool hasFinalizer)
        {
            if (_s.Phase == MigrationPhases.Failed && IsStillFrozenHere(f.SourceAgent) && f.SourceAgent.Reachable)
            {
                // a pod left frozen because the target could not confirm that no restore began: thawed once it does
                if (Incoming?.Aborted == true || f.TargetNode is null || (RestoreBegan && f.Replacement is null))
                {
                    return Do(new MigrationAction.ResumeSource(RestoreBegan), TimeSpan.Zero);
                }

                if (!RestoreBegan && f.TargetAgent.Reachable && Incoming is { Aborted: false })
                {
                    return Do(new MigrationAction.AbortRestore(_s.TargetNode!), TimeSpan.Zero);
                }

                if (f.TargetAgent.Reachable && Incoming is null)
                {
                    return Do(new MigrationAction.ResumeSource(false), TimeSpan.Zero);
                }

                return Do(MigrationAction.None, p.PollInterval * 10);
            }

            if (_s.PendingCleanup is { Count: > 0 } pending)
            {
                foreach (var node in pending.ToList())
                {
                    var agent = node == _s.SourceNode ? f.SourceAgent : node == _s.TargetNode ? f.TargetAgent : AgentView.None;
                    var nodeObject = node == _s.SourceNode ? f.SourceNode : f.TargetNode;
                    if (agent.Reachable && agent.Migration is not null && agent.Migration.Phase != MigrationPhase.Cleaned && !IsStillFrozenHere(agent))
                    {
                        return Do(new MigrationAction.Cleanup([node]), TimeSpan.Zero);
                    }

                    if (agent.Reachable && (agent.Migration is null || agent.Migration.Phase == MigrationPhase.Cleaned) || nodeObject is null)
                    {
                        pending.Remove(node);
                    }
                }

                if (pending.Count == 0)
                {
                    _s.PendingCleanup = null;
                }
                else
                {
                    return Do(MigrationAction.None, p.PollInterval * 10);
                }
            }

            return deleting && hasFinalizer ? Do(new MigrationAction.RemoveFinalizer()) : Do(MigrationAction.None);
        }

        /// <summary>A pod left frozen by a request that ended Failed keeps its images until it is thawed.</summary>
        private static bool IsStillFrozenHere(AgentView agent) => agent.Migration?.Phase == MigrationPhase.Frozen;

        // ------------------------------------------------------------------ helpers

        private Decision MoveTo(string phase, string message)
        {
            _s.Phase = phase;
            _s.PhaseStartTime = f.Now;
            _s.Reason = phase;
            _s.Message = message;
            Set(ConditionTypes.Progressing, true, phase, message);
            _events.Add(new EventNote("Normal", phase, message));
            return Do(MigrationAction.None, TimeSpan.Zero);
        }

        private Decision Wait() => Do(MigrationAction.None, p.PollInterval);

        /// <summary>The pass's decision; after an action the request is looked at again at once (its outcome is the next observation).</summary>
        private Decision Do(MigrationAction action, TimeSpan? requeue = null) =>
            new(action, _s, requeue ?? (action is MigrationAction.Nothing ? null : TimeSpan.Zero), _events);

        private void Set(string type, bool value, string reason, string message, DateTime? at = null) =>
            _s.SetCondition(type, value ? "True" : "False", reason, message, f.Request.Metadata.Generation, at ?? f.Now);

        /// <summary>The transfer's progress, written at most once per interval while it runs.</summary>
        private void Progress(ulong? sent, ulong? total)
        {
            if (sent is null || total is null or 0)
            {
                return;
            }

            if (_s.Progress is { } last && last.Phase == Phase && f.Now - last.UpdateTime < p.ProgressInterval)
            {
                return;
            }

            _s.Progress = new MigrationProgress { Phase = Phase, BytesSent = (long)sent, BytesTotal = (long)total, UpdateTime = f.Now };
        }

        /// <summary>The bytes that went to the target: what pre-copy and the handoff sent, less the pages sent as references to ones sent before.</summary>
        private long? BytesSent()
        {
            if (Source is null)
            {
                return null;
            }

            ulong sent = (Source.PreCopy?.BytesSent ?? 0) + (Source.Handoff?.BytesSent ?? 0);
            return (long)(sent - Math.Min(Source.BytesReferenced, sent));
        }

        /// <summary>From the freeze to the restored processes running, by the agents' clocks where they reported both.</summary>
        private long Downtime()
        {
            long frozen = Source?.Handoff?.FrozenUnixMillis ?? 0;
            if (Cri && frozen > 0)
            {
                // the target's runtime restores without an agent reporting when: until the operator saw the replacement run
                return Math.Max(0, (long)(f.Now - FromUnixMillis(frozen)).TotalMilliseconds);
            }

            long restored = Incoming?.Restores.Where(r => r.Restored).Select(r => r.RestoredUnixMillis).DefaultIfEmpty(0).Max() ?? 0;
            if (frozen > 0 && restored >= frozen)
            {
                return restored - frozen;
            }

            return _s.Condition(ConditionTypes.Frozen) is { Status: "True" } condition ? (long)(f.Now - condition.LastTransitionTime).TotalMilliseconds : 0;
        }

        /// <summary>The pod's restore on the target as its restore runtime reported it (<see cref="RestoreTimes.SpanMillis"/>); null where none did (or its agent does not answer now: the figure it gave before stays).</summary>
        private long? RestoreTime() => Cri || Incoming is null ? null : RestoreTimes.SpanMillis(Incoming.Restores);

        private static bool IsReady(V1Node node) => node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status == "True";

        private static DateTime FromUnixMillis(long millis) => DateTimeOffset.FromUnixTimeMilliseconds(millis).UtcDateTime;

        private static string Sentence(string text) => text.TrimEnd().TrimEnd('.') + ".";

    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;
using Migrate.Agent.Contracts.Groups;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The long work of a migration on its source node, run here and observed by the operator through
/// the migration's status, never awaited by it: pre-copy (rounds, each sent to the target as it is
/// taken), the handoff (freeze, final dump, send, commit) and a transfer of what is staged. Also
/// the rules that keep exactly one copy of the workload: once the commit was sent, the pod is
/// thawed only if the target confirms that no restore began; and after a restart of this agent, a
/// pod it froze is thawed at once unless its images may have been committed.
/// </summary>
public sealed partial class MigrationOperations(CheckpointEngine engine, ImageSender sender, PeerAgents peers, MigrationEvents events,
    ILogger<MigrationOperations> logger, IHostApplicationLifetime lifetime, HandoffGates gates) : IHostedService
{
    public const string PreCopy = "PreCopy";
    public const string Handoff = "Handoff";
    public const string Transfer = "Transfer";

    private readonly ConcurrentDictionary<string, (Task Work, CancellationTokenSource Stop)> _running = new(StringComparer.Ordinal);

    /// <summary>How often a report of a running transfer is passed on to watchers, at most.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    public async Task<MigrationStatus> StartPreCopyAsync(StartPreCopyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        Require(request.Target, request.MigrationId);
        if (request.MaxRounds < 1)
        {
            throw new CheckpointException(StatusCode.InvalidArgument, "pre-copy needs at least one round");
        }

        bool start = await engine.UpdateAsync(request.MigrationId, record =>
        {
            if (record.Operation?.Kind is PreCopy or Handoff)
            {
                return false;
            }

            if (record.Phase is not (MigrationPhase.Prepared or MigrationPhase.PreCopying))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; pre-copy comes before the final dump");
            }

            record.Target = TransferTargetRecord.From(request.Target);
            record.Operation = Begin(PreCopy);
            return true;
        }, cancellationToken);
        if (start)
        {
            Run(request.MigrationId, ct => RunPreCopyAsync(request, ct));
        }

        return engine.Get(request.MigrationId);
    }

    public async Task<MigrationStatus> StartHandoffAsync(StartHandoffRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.CriCheckpoint)
        {
            return await StartCriHandoffAsync(request, cancellationToken);
        }

        Require(request.Target, request.MigrationId);
        bool start = await engine.UpdateAsync(request.MigrationId, record =>
        {
            if (record.Operation?.Kind == Handoff)
            {
                return false;
            }

            if (record.Operation is { Kind: PreCopy, State: OperationState.Running })
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is still pre-copying; the handoff follows it");
            }

            if (record.Phase is not (MigrationPhase.Prepared or MigrationPhase.PreCopying))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; there is nothing to hand off");
            }

            record.Target = TransferTargetRecord.From(request.Target);
            record.Operation = Begin(Handoff);
            record.Handoff.Step = HandoffStep.Freezing;
            return true;
        }, cancellationToken);
        if (start)
        {
            var hold = request.GroupHold
                ? (request.HoldTimeoutSeconds > 0 ? TimeSpan.FromSeconds(request.HoldTimeoutSeconds) : GroupHolds.DefaultTimeout)
                : (TimeSpan?)null;
            Run(request.MigrationId, ct => RunHandoffAsync(request.MigrationId, request.LazyMemory, request.LazyMemory && request.PostCopy, request.CarryTmpfsMounts, hold, ct));
        }

        return engine.Get(request.MigrationId);
    }

    /// <summary>
    /// The CRI path's handoff: the pod frozen and each container checkpointed by its runtime and
    /// published (<see cref="CheckpointEngine.CriDumpAsync"/>); then committed at once, since a
    /// replacement may now be made from the images anywhere: from here the pod stays frozen until the
    /// operator finishes or resumes it (an agent restart does not thaw it).
    /// </summary>
    private async Task<MigrationStatus> StartCriHandoffAsync(StartHandoffRequest request, CancellationToken cancellationToken)
    {
        if (request.GroupHold)
        {
            throw new CheckpointException(StatusCode.InvalidArgument, "a group member cannot take the CRI path (its holds need the agents' own dump and commit)");
        }

        bool start = await engine.UpdateAsync(request.MigrationId, record =>
        {
            if (record.Operation?.Kind == Handoff)
            {
                return false;
            }

            if (record.Phase != MigrationPhase.Prepared)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; the CRI path hands off a pod that was not pre-copied");
            }

            record.Operation = Begin(Handoff);
            record.Handoff.Step = HandoffStep.Freezing;
            return true;
        }, cancellationToken);
        if (start)
        {
            Run(request.MigrationId, ct => RunCriHandoffAsync(request.MigrationId, ct));
        }

        return engine.Get(request.MigrationId);
    }

    private async Task RunCriHandoffAsync(string id, CancellationToken cancellationToken)
    {
        try
        {
            var clock = Stopwatch.StartNew();
            await engine.CriDumpAsync(id, cancellationToken);
            await engine.UpdateAsync(id, r =>
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (r.Phase != MigrationPhase.Frozen)
                {
                    throw new CheckpointException(StatusCode.Aborted, $"the pod was thawed ({r.Phase}) before its checkpoint images were handed over");
                }

                r.Handoff.CommitAttempted = true;
                r.Handoff.Step = HandoffStep.Committed;
                End(r, OperationState.Succeeded, "", $"{r.CheckpointImages.Count} checkpoint image(s) published {clock.ElapsedMilliseconds} ms after the handoff began; the pod stays frozen here");
                return 0;
            }, CancellationToken.None);
        }
        catch (Exception e) when (IsFailure(e))
        {
            if (e is CheckpointException { Code: StatusCode.FailedPrecondition })
            {
                // refused before anything was frozen (what the path cannot carry, no registry)
                await FailAsync(id, "CriPathRefused", Describe(e) + " The pod was not frozen and runs on.");
                return;
            }

            // CriDumpAsync thawed the pod and deleted what it published
            await FailAsync(id, "CriCheckpointFailed", Describe(e) + " The pod was thawed and runs on.");
        }
    }

    /// <summary>A group member's handoff may go past its hold (now, or when it reaches it).</summary>
    public MigrationStatus ContinueHandoff(ContinueHandoffRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        _ = engine.Get(request.MigrationId);
        gates.Continue(request.MigrationId, request.Through);
        var status = engine.Get(request.MigrationId);
        status.Handoff ??= new HandoffProgress();
        status.Handoff.ContinuedThrough = gates.Through(request.MigrationId);
        return status;
    }

    public async Task<MigrationStatus> StartTransferAsync(StartTransferRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        Require(request.Target, request.MigrationId);
        var target = TransferTargetRecord.From(request.Target);
        bool start = await engine.UpdateAsync(request.MigrationId, record =>
        {
            if (record.Operation is { Kind: Transfer } running && running.State != OperationState.Failed && record.Target?.Node == target.Node)
            {
                return false;
            }

            if (record.FinalDump is null || record.Phase is not (MigrationPhase.Frozen or MigrationPhase.Finished))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} has no final images to send ({record.Phase})");
            }

            record.Operation = Begin(Transfer);
            return true;
        }, cancellationToken);
        if (start)
        {
            Run(request.MigrationId, ct => RunTransferAsync(request.MigrationId, target, ct));
        }

        return engine.Get(request.MigrationId);
    }

    /// <summary>Rollback: thaws the pod, unless its images may have been committed and the target has not confirmed that no restore began.</summary>
    public async Task<MigrationStatus> ResumeAsync(ResumeRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        // work still under way stops first: a handoff must not commit images of a pod that is being thawed
        await StopRunningAsync(request.MigrationId, cancellationToken);
        await EnsureNoRestoreAsync(request.MigrationId, request.ReplacementRemoved, cancellationToken);
        return await engine.ResumeAsync(request.MigrationId, cancellationToken);
    }

    /// <summary>Removes the migration's staged images (thawing a still-frozen pod only under the same rule as <see cref="ResumeAsync"/>).</summary>
    public async Task<MigrationStatus> CleanupAsync(string migrationId, CancellationToken cancellationToken)
    {
        if (engine.Find(migrationId) is { Phase: MigrationPhase.Frozen })
        {
            await EnsureNoRestoreAsync(migrationId, replacementRemoved: false, cancellationToken);
        }

        // work still reading the staged files ends first
        await StopRunningAsync(migrationId, cancellationToken);
        gates.Forget(migrationId);
        return await engine.CleanupAsync(migrationId, cancellationToken);
    }

    /// <summary>Recovery after a restart: work that was under way ended with the agent; a pod frozen before its images may have been committed is thawed.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var id in engine.MigrationIds)
        {
            var record = engine.Find(id);
            if (record is null)
            {
                continue;
            }

            if (record.Operation is { State: OperationState.Running } interrupted)
            {
                await engine.UpdateAsync(id, r =>
                {
                    End(r, OperationState.Failed, "AgentRestarted", $"the agent restarted while {interrupted.Kind} ran; the work was lost");
                    return 0;
                }, cancellationToken);
            }

            if (record.Phase == MigrationPhase.Frozen && !record.Handoff.CommitAttempted)
            {
                // the target cannot restore without a commit: the frozen pod is the only copy, thaw it
                await engine.ResumeAsync(id, cancellationToken);
                await engine.UpdateAsync(id, r =>
                {
                    r.Message = "the agent restarted while the pod was frozen, before its images were committed: the pod was thawed and runs on";
                    return 0;
                }, cancellationToken);
                LogThawedAfterRestart(id);
            }
            else if (record.Phase == MigrationPhase.Frozen && record.Handoff.Step != HandoffStep.Committed && !record.Handoff.AbortConfirmed)
            {
                Run(id, ct => SettleUnknownCommitAsync(id, ct));
            }
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private async Task RunPreCopyAsync(StartPreCopyRequest request, CancellationToken cancellationToken)
    {
        var id = request.MigrationId;
        try
        {
            ulong? previous = null;
            var record = engine.Find(id)!;
            var ended = PreCopyEnd.Limit;
            if (record.RoundCount == 0)
            {
                // about what round 1 copies: while it runs, the operator judges by it whether the replacement can be prepared meanwhile
                long memory = record.Containers.Sum(c => CopyOnWriteSharing.Once(CgroupFreezer.FromPath(c.FreezerDirectory).Processes()));
                await engine.UpdateAsync(id, r => r.PreCopy.MemoryBytes = (ulong)memory, cancellationToken);
            }

            for (int round = record.RoundCount + 1; round <= request.MaxRounds; round++)
            {
                var clock = Stopwatch.StartNew();
                ulong before = engine.Find(id)!.PreCopy.BytesSent;
                void Progress(MigrationRecord r, ulong sent, ulong total)
                {
                    // across rounds: what the target already held is not sent (nor counted) again
                    r.PreCopy.BytesSent = before + sent;
                    r.PreCopy.BytesTotal = before + total;
                    r.PreCopy.RoundMillis = (uint)clock.ElapsedMilliseconds;
                }

                // a round whose files are listed before its pages are read (a first round, or one whose writes were tracked) is sent as it is written
                var listed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var capture = engine.PreDumpAsync(new PreDumpRequest { MigrationId = id, Round = round }, cancellationToken, () => listed.TrySetResult());
                var sending = await Task.WhenAny(listed.Task, capture) == listed.Task && !capture.IsCompleted
                    ? SendAsync(id, record.Target!, Progress, cancellationToken)
                    : null;
                PreDumpResponse taken;
                try
                {
                    taken = await capture;
                }
                catch when (sending is not null)
                {
                    // the send stops at the bytes the capture never wrote; the capture's failure is the one to tell
                    try
                    {
                        await sending;
                    }
                    catch (Exception e) when (IsFailure(e) || e is OperationCanceledException)
                    {
                    }

                    throw;
                }

                await engine.UpdateAsync(id, r =>
                {
                    r.PreCopy.Rounds = round;
                    r.PreCopy.LastRoundPages = taken.PagesWritten;
                    r.PreCopy.RoundMillis = (uint)clock.ElapsedMilliseconds;
                    return 0;
                }, cancellationToken);
                await (sending ?? SendAsync(id, record.Target!, Progress, cancellationToken));
                // staged there: what no later round reads here is given back (memory, when staged in memory)
                await engine.ReleaseSentRoundsAsync(id, record.Target!.Node, request.ReleaseSentRounds, cancellationToken);
                if (round == 1)
                {
                    // what the operator judges the remaining rounds' length by (it may prepare the target meanwhile)
                    await engine.UpdateAsync(id, r => r.PreCopy.FirstRoundMillis = (uint)clock.ElapsedMilliseconds, cancellationToken);
                }

                // the rate a round runs at, which the operator judges the freeze's send by (mode Auto)
                await engine.UpdateAsync(id, r =>
                {
                    r.PreCopy.RoundsMillis += (uint)clock.ElapsedMilliseconds;
                    r.PreCopy.RoundMillis = (uint)clock.ElapsedMilliseconds;
                    return 0;
                }, cancellationToken);
                ended = PreCopyRounds.After(round, request.MaxRounds, previous, taken.PagesWritten, request.MinShrinkPercent);
                previous = taken.PagesWritten;
                LogRound(id, round, taken.PagesWritten, clock.ElapsedMilliseconds, ended);
                if (ended != PreCopyEnd.Continue)
                {
                    break;
                }
            }

            await engine.UpdateAsync(id, r =>
            {
                r.PreCopy.Converged = true;
                var why = ended switch
                {
                    PreCopyEnd.Small => $"the last found at most {PreCopyRounds.SmallPages} pages written",
                    PreCopyEnd.Stalled => "the dirty set stopped shrinking",
                    _ => "the round limit",
                };
                End(r, OperationState.Succeeded, "", $"pre-copy took {r.PreCopy.Rounds} round(s), ended by {why}; every round is staged on {r.Target!.Node}");
                return 0;
            }, CancellationToken.None);
        }
        catch (Exception e) when (IsFailure(e))
        {
            await FailAsync(id, e is RpcException ? "TransferFailed" : "PreDumpFailed", Describe(e));
        }
    }

    private async Task RunHandoffAsync(string id, bool lazyMemory, bool postCopy, bool carryMounts, TimeSpan? hold, CancellationToken cancellationToken)
    {
        var target = engine.Find(id)!.Target!;
        bool committing = false;
        try
        {
            var clock = Stopwatch.StartNew();
            // a group member: frozen and locked, it waits until every member is, before anything is dumped
            Func<MigrationRecord, Task>? frozen = hold is { } limit ? async record =>
            {
                record.Handoff.Held = GroupHolds.Frozen;
                record.Save();
                events.Changed(id);
                await gates.WaitAsync(id, GroupHolds.Frozen, limit, cancellationToken);
                record.Handoff.Held = "";
                record.Handoff.ContinuedThrough = gates.Through(id);
                record.Save();
            } : null;
            await engine.FinalDumpAsync(id, cancellationToken, lazyMemory, frozen, postCopy, carryMounts);
            await engine.UpdateAsync(id, r =>
            {
                r.Handoff.Step = HandoffStep.Sending;
                return 0;
            }, cancellationToken);
            await SendAsync(id, target, (r, sent, total) =>
            {
                r.Handoff.BytesSent = sent;
                r.Handoff.BytesTotal = total;
            }, cancellationToken);
            if (hold is { } staged)
            {
                // ...and staged on its target, it waits until every member's images are, before anything is committed
                await engine.UpdateAsync(id, r => r.Handoff.Held = GroupHolds.Staged, cancellationToken);
                await gates.WaitAsync(id, GroupHolds.Staged, staged, cancellationToken);
                await engine.UpdateAsync(id, r =>
                {
                    r.Handoff.Held = "";
                    r.Handoff.ContinuedThrough = gates.Through(id);
                    return 0;
                }, cancellationToken);
            }

            await engine.UpdateAsync(id, r =>
            {
                // under the migration's lock, against a Resume: images of a thawed pod are never committed
                cancellationToken.ThrowIfCancellationRequested();
                if (r.Phase != MigrationPhase.Frozen)
                {
                    throw new CheckpointException(StatusCode.Aborted, $"the pod was thawed ({r.Phase}) before its images were committed");
                }

                r.Handoff.Step = HandoffStep.Committing;
                r.Handoff.CommitAttempted = true;
                return 0;
            }, CancellationToken.None);
            committing = true;
            await peers.CommitAsync(id, target, CancellationToken.None);
            await engine.UpdateAsync(id, r =>
            {
                r.Handoff.Step = HandoffStep.Committed;
                End(r, OperationState.Succeeded, "", $"the final images were committed on {target.Node} {clock.ElapsedMilliseconds} ms after the handoff began; the pod stays frozen here");
                return 0;
            }, CancellationToken.None);
        }
        catch (Exception e) when (IsFailure(e))
        {
            if (!committing)
            {
                // before the commit the target cannot restore: the pod is thawed and runs on
                await ThawAfterFailureAsync(id);
                var reason = e is RpcException ? "TransferFailed"
                    : e is CheckpointException { Code: StatusCode.DeadlineExceeded } && hold is not null ? "GroupHoldTimedOut"
                    : "FinalDumpFailed";
                await FailAsync(id, reason, Describe(e) + " The pod was thawed and runs on.");
                return;
            }

            // the commit's outcome is unknown: only the target can say whether a restore may begin
            await SettleUnknownCommitAsync(id, CancellationToken.None, failure: Describe(e));
        }
    }

    private async Task RunTransferAsync(string id, TransferTargetRecord target, CancellationToken cancellationToken)
    {
        try
        {
            await SendAsync(id, target, (r, sent, total) =>
            {
                r.Handoff.BytesSent = sent;
                r.Handoff.BytesTotal = total;
            }, cancellationToken);
            await peers.CommitAsync(id, target, cancellationToken);
            await engine.UpdateAsync(id, r =>
            {
                End(r, OperationState.Succeeded, "", $"the images were sent to {target.Node} and committed there");
                return 0;
            }, CancellationToken.None);
        }
        catch (Exception e) when (IsFailure(e))
        {
            await FailAsync(id, "TransferFailed", Describe(e));
        }
    }

    /// <summary>
    /// After a commit whose outcome is unknown (the call failed, or the agent restarted in it): the
    /// target is asked to abort. Aborted: the pod is thawed. A restore began: the handoff counts as
    /// committed. No answer: the pod stays frozen (never two copies) and the question is asked
    /// again on the operator's next Resume.
    /// </summary>
    private async Task SettleUnknownCommitAsync(string id, CancellationToken cancellationToken, string? failure = null)
    {
        var record = engine.Find(id);
        if (record?.Target is not { } target)
        {
            return;
        }

        try
        {
            var reply = await peers.AbortAsync(id, target, cancellationToken);
            if (reply.RestoreBegan)
            {
                await engine.UpdateAsync(id, r =>
                {
                    r.Handoff.Step = HandoffStep.Committed;
                    End(r, OperationState.Succeeded, "", $"the final images were committed on {target.Node} and a restore began there; the pod stays frozen here");
                    return 0;
                }, CancellationToken.None);
                return;
            }

            await engine.UpdateAsync(id, r =>
            {
                r.Handoff.AbortConfirmed = true;
                return 0;
            }, CancellationToken.None);
            await ThawAfterFailureAsync(id);
            await FailAsync(id, "CommitFailed", $"{failure ?? "the agent restarted during the commit"}; {target.Node} confirmed no restore begins, and the pod was thawed.");
        }
        catch (Exception e) when (IsFailure(e))
        {
            await FailAsync(id, "CommitUnknown",
                $"{failure ?? "the agent restarted during the commit"}; {target.Node} did not answer whether a restore began ({Describe(e).TrimEnd('.')}), so the pod stays frozen until it does.");
        }
    }

    /// <summary>Thaws unless the target may restore (after a commit, only once it confirmed it will not).</summary>
    private async Task EnsureNoRestoreAsync(string id, bool replacementRemoved, CancellationToken cancellationToken)
    {
        var record = engine.Find(id);
        if (record is null || !record.Handoff.CommitAttempted || record.Handoff.AbortConfirmed || replacementRemoved || record.Target is null)
        {
            return;
        }

        TransferDecisionReply reply;
        try
        {
            reply = await peers.AbortAsync(id, record.Target, cancellationToken);
        }
        catch (RpcException e)
        {
            throw new CheckpointException(StatusCode.Unavailable,
                $"the final images of migration {id} were committed on {record.Target.Node}, whose agent does not answer ({e.Status.Detail}); the pod stays frozen until it confirms that no restore began");
        }

        if (reply.RestoreBegan)
        {
            throw new CheckpointException(StatusCode.FailedPrecondition,
                $"a restore of migration {id} began on {record.Target.Node}: the replacement holds the state, so the pod stays frozen here until the replacement is removed");
        }

        await engine.UpdateAsync(id, r =>
        {
            r.Handoff.AbortConfirmed = true;
            return 0;
        }, cancellationToken);
    }

    private async Task SendAsync(string id, TransferTargetRecord target, Action<MigrationRecord, ulong, ulong> progress, CancellationToken cancellationToken)
    {
        var directory = engine.Find(id)!.StagingDirectory;
        var reported = Stopwatch.StartNew();
        var sent = await sender.SendAsync(directory, target.ToSendRequest(id), async report =>
        {
            if (report.Staged)
            {
                await engine.UpdateAsync(id, r =>
                {
                    progress(r, report.BytesSent, report.TotalBytes);
                    r.BytesReferenced += report.BytesReferenced;
                    return 0;
                }, CancellationToken.None);
            }
            else if (reported.Elapsed >= ProgressInterval)
            {
                // progress only when the record is free: a round's capture holds it while its files are already sent
                reported.Restart();
                engine.TryUpdate(id, r => progress(r, report.BytesSent, report.TotalBytes));
            }
        }, (long)target.MaxBytesPerSecond, cancellationToken);
        LogSent(id, sent.BytesSent, sent.BytesSkipped, sent.BytesReferenced, target.Node, sent.ElapsedMillis, sent.ManifestMillis, sent.AcceptMillis, sent.DataMillis, sent.StageMillis);
    }

    private async Task ThawAfterFailureAsync(string id)
    {
        try
        {
            await engine.ResumeAsync(id, CancellationToken.None);
        }
        catch (CheckpointException e)
        {
            LogThawFailed(id, e.Message);
        }
    }

    private async Task FailAsync(string id, string reason, string message)
    {
        LogFailed(id, reason, message);
        try
        {
            await engine.UpdateAsync(id, r =>
            {
                End(r, OperationState.Failed, reason, message);
                return 0;
            }, CancellationToken.None);
        }
        catch (CheckpointException)
        {
            // cleaned up meanwhile
        }
    }

    /// <summary>Runs the work in the background, its spans children of the call that started it; one piece of work per migration at a time.</summary>
    private void Run(string id, Func<CancellationToken, Task> work)
    {
        var parent = Activity.Current?.Context ?? default;
        var stop = CancellationTokenSource.CreateLinkedTokenSource(lifetime.ApplicationStopping);
        var task = Task.Run(async () =>
        {
            using var activity = AgentTelemetry.Source.StartActivity("migration.operation", ActivityKind.Internal, parent);
            activity?.SetTag("migration.id", id);
            try
            {
                await work(stop.Token);
            }
            catch (OperationCanceledException) when (!lifetime.ApplicationStopping.IsCancellationRequested)
            {
                await FailAsync(id, "Cancelled", "the work was stopped: the migration is being rolled back.");
            }
            catch (OperationCanceledException)
            {
                // the agent stops: the record says Running, and the restart ends it
            }
            finally
            {
                events.Changed(id);
            }
        }, CancellationToken.None);
        _running[id] = (task, stop);
    }

    /// <summary>Stops the migration's background work, if any, and waits (a while) until it has.</summary>
    private async Task StopRunningAsync(string id, CancellationToken cancellationToken)
    {
        if (_running.TryGetValue(id, out var running) && !running.Work.IsCompleted)
        {
            await running.Stop.CancelAsync();
            await running.Work.WaitAsync(TimeSpan.FromSeconds(60), cancellationToken).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    private static void Require(TransferTarget? target, string migrationId)
    {
        if (target is null || string.IsNullOrEmpty(target.Address) || string.IsNullOrEmpty(target.Node) || string.IsNullOrEmpty(target.Token))
        {
            throw new CheckpointException(StatusCode.InvalidArgument, $"migration {migrationId}: the request names no target (address, node and token are required)");
        }
    }

    private static OperationRecord Begin(string kind) => new()
    {
        Kind = kind,
        State = OperationState.Running,
        StartedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
    };

    private static void End(MigrationRecord record, OperationState state, string reason, string message)
    {
        // one new object, swapped in at once: a status read concurrently sees the running operation or the
        // ended one, never "failed" with the message still to come
        var started = record.Operation ?? Begin("");
        record.Operation = new OperationRecord
        {
            Kind = started.Kind,
            State = state,
            Reason = reason,
            Message = message,
            StartedUnixMillis = started.StartedUnixMillis,
            EndedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
        };
        record.Message = message;
    }

    internal static bool IsFailure(Exception e) =>
        e is CheckpointException or RpcException or IOException or InvalidOperationException or TransferRejectedException or UnauthorizedAccessException or HttpRequestException;

    internal static string Describe(Exception e) => e switch
    {
        RpcException rpc => rpc.Status.Detail.TrimEnd('.') + ".",
        _ => e.Message.TrimEnd('.') + ".",
    };

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: sent {Bytes} bytes ({Skipped} already held, {Referenced} as references to pages sent before) to {Target} in {Millis} ms (manifest {Manifest} ms, accepted after {Accept} ms, bytes {Data} ms, staged after {Stage} ms)")]
    private partial void LogSent(string migration, ulong bytes, ulong skipped, ulong referenced, string target, uint millis, uint manifest, uint accept, uint data, uint stage);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: pre-copy round {Round} found {Pages} pages written, taken and sent in {Millis} ms; next: {End}")]
    private partial void LogRound(string migration, int round, ulong pages, long millis, PreCopyEnd end);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: {Reason}: {Message}")]
    private partial void LogFailed(string migration, string reason, string message);

    [LoggerMessage(Level = LogLevel.Error, Message = "Migration {Migration}: could not thaw the pod after a failure: {Message}")]
    private partial void LogThawFailed(string migration, string message);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: the agent restarted while the pod was frozen before a commit; the pod was thawed")]
    private partial void LogThawedAfterRestart(string migration);
}

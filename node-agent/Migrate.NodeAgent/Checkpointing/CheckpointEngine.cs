using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Migrate.Agent.V1;
using Migrate.Criu;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Networking;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>A checkpoint call failed; <see cref="Code"/> is the gRPC status the operator sees.</summary>
public sealed class CheckpointException(StatusCode code, string message, Exception? inner = null) : Exception(message, inner)
{
    public StatusCode Code { get; } = code;
}

/// <summary>
/// The checkpoint side of the agent: finds a pod through the CRI, checks that its state can
/// move, pre-copies its memory, freezes all its containers together and dumps them with the
/// options <c>runc restore</c> needs, captures their file system state, and later thaws (rollback)
/// or ends (success) the frozen processes. One record per migration, kept in the migration's
/// staging directory so an agent restart loses nothing; every operation is idempotent per
/// migration id.
/// </summary>
public sealed partial class CheckpointEngine : IDisposable
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private readonly PodLocator _locator;
    private readonly CriuClient _criu;
    private readonly AgentOptions _options;
    private readonly ILogger<CheckpointEngine> _logger;
    private readonly Lock _registry = new();
    private readonly Dictionary<string, MigrationRecord> _migrations = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SemaphoreSlim> _locks = new(StringComparer.Ordinal);

    /// <summary>How long a cleaned migration's record stays in memory.</summary>
    private static readonly TimeSpan CleanedRecordsKept = TimeSpan.FromHours(1);
    private readonly SemaphoreSlim _criuGate = new(1, 1);
    private readonly SourceAddressHandover _handover = new(new NamespaceStepRunner());

    /// <summary>
    /// Per migration whose pod keeps its address, its network lock being made ready from the
    /// checkpoint's start (<see cref="SourceAddressHandover.PrepareLock"/>, beside the rounds and the
    /// replacement's preparation), until its final dump takes it; one never taken is dropped when the
    /// migration leaves pre-copy (<see cref="DropLockAhead"/>).
    /// </summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Task<(PreparedNetworkChange? Lock, string? Reason)>> _locksAhead = new(StringComparer.Ordinal);

    /// <summary>How this node finds what a pre-copy round must send (kernel tracking where CRIU has it, else content comparison), learned once.</summary>
    private Criu.Incremental.PreCopyMethod? _method;

    public CheckpointEngine(PodLocator locator, CriuClient criu, IOptions<AgentOptions> options, ILogger<CheckpointEngine> logger, MigrationEvents? events = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _locator = locator;
        _criu = criu;
        _options = options.Value;
        _logger = logger;
        _events = events ?? new MigrationEvents();
        _trackers = new WriteTrackers(_options.WriteTracking, logger);
        LoadRecords();
    }

    private readonly WriteTrackers _trackers;

    // each migration's give-back of its sent rounds' bytes under way (GiveBackBeside)
    private readonly Dictionary<string, Task> _givingBack = new(StringComparer.Ordinal);

    private readonly MigrationEvents _events;

    /// <summary>The migrations this node checkpoints (for recovery after a restart and for watchers).</summary>
    public IReadOnlyList<string> MigrationIds
    {
        get
        {
            lock (_registry)
            {
                return [.. _migrations.Keys];
            }
        }
    }

    /// <summary>Changes a migration's record under its lock and saves it; watchers are told.</summary>
    public async Task<T> UpdateAsync<T>(string migrationId, Func<MigrationRecord, T> change, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(change);
        var result = await WithMigrationAsync(migrationId, record =>
        {
            var value = change(record);
            record.Save();
            return Task.FromResult(value);
        }, cancellationToken);
        _events.Changed(migrationId);
        return result;
    }

    /// <summary>
    /// <see cref="UpdateAsync"/> only if the migration's lock is free now: false (nothing changed) while
    /// another operation holds it, as a round's capture does while its files are already being sent.
    /// </summary>
    public bool TryUpdate(string migrationId, Action<MigrationRecord> change)
    {
        ArgumentNullException.ThrowIfNull(change);
        ValidateId(migrationId);
        var gate = LockFor(migrationId);
        if (!gate.Wait(0))
        {
            return false;
        }

        try
        {
            if (TryGet(migrationId) is not { } record)
            {
                return false;
            }

            change(record);
            record.Save();
        }
        finally
        {
            gate.Release();
        }

        _events.Changed(migrationId);
        return true;
    }

    /// <summary>The record of a migration, read without its lock (for status), or null.</summary>
    public MigrationRecord? Find(string migrationId) => TryGet(migrationId);

    public string StagingRoot => _options.StagingDirectory;

    /// <summary>Where migrations whose images fit are staged in memory (<see cref="AgentOptions.MemoryStagingDirectory"/>), or null.</summary>
    public string? MemoryStagingRoot => _options.MemoryStagingDirectory is { Length: > 0 } root ? root : null;

    /// <summary>
    /// Finds the pod, checks it can move, opens the migration's staging directory (in memory when its
    /// images fit and are <paramref name="transient"/>, see <see cref="StagingMediumDecision"/>). Nothing is frozen.
    /// </summary>
    /// <param name="request">The pod and the migration.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <param name="transient">The images are sent and discarded (a migration); false for a checkpoint kept on this node, which stays on disk.</param>
    public async Task<MigrationStatus> BeginAsync(BeginCheckpointRequest request, CancellationToken cancellationToken, bool transient = true)
    {
        ArgumentNullException.ThrowIfNull(request);
        ValidateId(request.MigrationId);
        if (request.Pod is null || string.IsNullOrEmpty(request.Pod.Namespace) || string.IsNullOrEmpty(request.Pod.Name))
        {
            throw new CheckpointException(StatusCode.InvalidArgument, "the request names no pod (namespace and name are required)");
        }

        if (!string.IsNullOrEmpty(request.NodeName) && request.NodeName != _options.NodeName)
        {
            throw Refuse("wrong-node", StatusCode.FailedPrecondition,
                $"pod {request.Pod.Namespace}/{request.Pod.Name} is on node {request.NodeName} according to the request; this agent serves node {_options.NodeName}");
        }

        using var activity = AgentTelemetry.Source.StartActivity("checkpoint.begin");
        activity?.SetTag("migration.id", request.MigrationId);
        activity?.SetTag("k8s.pod.name", request.Pod.Name);
        activity?.SetTag("k8s.namespace.name", request.Pod.Namespace);
        ForgetCleaned();
        var gate = LockFor(request.MigrationId);
        await gate.WaitAsync(cancellationToken);
        try
        {
            if (TryGet(request.MigrationId) is { } existing)
            {
                if (existing.Namespace != request.Pod.Namespace || existing.PodName != request.Pod.Name)
                {
                    throw new CheckpointException(StatusCode.InvalidArgument,
                        $"migration {request.MigrationId} already exists on this node for pod {existing.Namespace}/{existing.PodName}");
                }

                return existing.ToStatus();
            }

            var pod = await _locator.FindAsync(request.Pod.Namespace, request.Pod.Name, cancellationToken)
                ?? throw Refuse("not-found", StatusCode.NotFound, $"pod {request.Pod.Namespace}/{request.Pod.Name} is not running on node {_options.NodeName}");
            if (!string.IsNullOrEmpty(request.Pod.Uid) && pod.Uid != request.Pod.Uid)
            {
                throw Refuse("uid-mismatch", StatusCode.FailedPrecondition,
                    $"pod {pod.Namespace}/{pod.Name} on this node has UID {pod.Uid}, not {request.Pod.Uid}: it was recreated");
            }

            if (pod.Containers.Count == 0)
            {
                throw Refuse("no-containers", StatusCode.FailedPrecondition, $"pod {pod.Namespace}/{pod.Name} has no running container to checkpoint");
            }

            var (move, addressNote) = request.KeepAddress ? AddressToKeep(pod, pod.Containers[0].Pid, request.AddressOptional) : (null, null);
            var containers = pod.Containers.Select(c => Inspect(c, move is not null)).ToList();
            long expected = transient && MemoryStagingRoot is not null ? PodImageBytes(containers) : 0;
            StagingMedium medium;
            MigrationRecord record;
            lock (_registry)
            {
                var holder = _migrations.Values.FirstOrDefault(m => m.PodUid == pod.Uid && m.HoldsPod);
                if (holder is not null)
                {
                    throw Refuse("busy", StatusCode.Aborted,
                        $"pod {pod.Namespace}/{pod.Name} is already being checkpointed by migration {holder.MigrationId} ({holder.Phase})");
                }

                // chosen and counted in one hold of the lock: two migrations begun at once cannot both spend the same room
                medium = ChooseStagingMedium(transient, expected);
                record = new MigrationRecord
                {
                    MigrationId = request.MigrationId,
                    Namespace = pod.Namespace,
                    PodName = pod.Name,
                    PodUid = pod.Uid,
                    NodeName = _options.NodeName,
                    SandboxId = pod.SandboxId,
                    StagingDirectory = Path.Combine(medium.InMemory ? MemoryStagingRoot! : StagingRoot, request.MigrationId),
                    MemoryStagedBytes = medium.InMemory ? medium.NeededBytes : 0,
                    PreCopyMethod = Method(),
                    Containers = containers,
                    AddressMove = move,
                    AddressNote = addressNote,
                    Message = $"found {containers.Count} running container(s); nothing frozen"
                        + (move is not null ? $"; its address {move.Cidr} moves with it" : addressNote is not null ? $"; it gets a new address ({addressNote})" : ""),
                };

                Directory.CreateDirectory(Path.GetDirectoryName(record.StagingDirectory)!, OwnerOnly);
                Directory.CreateDirectory(record.StagingDirectory, OwnerOnly);
                record.Save();
                _migrations[record.MigrationId] = record;
            }

            if (move is not null && _options.PrepareNetworkLock)
            {
                // its tools started now, not when the handoff is asked: they wait, idle, for the freeze
                _locksAhead[record.MigrationId] = Task.Run(() => _handover.PrepareLock(move), CancellationToken.None);
            }

            _events.Changed(record.MigrationId);
            LogReady(record.MigrationId, record.Namespace, record.PodName, containers.Count);
            if (MemoryStagingRoot is not null && transient)
            {
                LogStagingMedium(record.MigrationId, medium.InMemory ? "in memory" : "on disk", medium.Reason);
            }
            return record.ToStatus();
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>One pre-copy round of every container while the pod runs.</summary>
    /// <param name="request">Which migration, which round.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <param name="planned">Called once the round's files can be listed for sending, which for a
    /// one-container pod's first round is before its pages are read (<see cref="PreCopySession.PreDump"/>):
    /// the caller may send them meanwhile. Not called when the round was taken before.</param>
    public async Task<PreDumpResponse> PreDumpAsync(PreDumpRequest request, CancellationToken cancellationToken, Action? planned = null)
    {
        ArgumentNullException.ThrowIfNull(request);
        return await WithMigrationAsync(request.MigrationId, async record =>
        {
            if (request.Round < 1)
            {
                throw new CheckpointException(StatusCode.InvalidArgument, "pre-copy rounds count from 1");
            }

            if (record.RoundResponses.TryGetValue(request.Round, out var done))
            {
                return PreDumpResponse.Parser.ParseJson(done);
            }

            if (record.Phase is not (MigrationPhase.Prepared or MigrationPhase.PreCopying))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; pre-copy rounds come before the final dump");
            }

            if (request.Round != record.RoundCount + 1)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} has {record.RoundCount} round(s); the next is {record.RoundCount + 1}, not {request.Round}");
            }

            EnsureUnchanged(record);
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.predump");
            activity?.SetTag("migration.id", record.MigrationId);
            activity?.SetTag("podmig.round", request.Round);
            var response = new PreDumpResponse { Round = request.Round, Method = ToProto(record.PreCopyMethod) };
            var clock = Stopwatch.StartNew();
            // one container's round can be listed before it is read; several containers' only once all are
            bool streamed = planned is not null && record.Containers.Count == 1 && _options.StreamFirstRound;
            foreach (var container in record.Containers)
            {
                var round = await RunCriuAsync(() => Session(record, container, running: true).PreDump(streamed ? planned : null), cancellationToken);
                record.Rounds.Add(new RoundRecord(container.Name, round.Number, round.Method, round.Directory, round.PagesWritten, round.PagesUnchanged, round.Elapsed.TotalMilliseconds, round.Tracked));
                if (round.Tracked)
                {
                    response.Method = Agent.V1.PreCopyMethod.WriteTracking;
                }

                response.Containers.Add(new ContainerRound
                {
                    ContainerName = container.Name,
                    PagesWritten = round.PagesWritten,
                    PagesUnchanged = round.PagesUnchanged,
                    BytesWritten = (ulong)round.BytesWritten,
                    ElapsedMillis = Millis(round.Elapsed),
                });
                AgentTelemetry.PreDumpDuration.Record(round.Elapsed.TotalMilliseconds);
                AgentTelemetry.PagesWritten.Add((long)round.PagesWritten, new KeyValuePair<string, object?>("stage", "pre-dump"));
            }

            response.PagesWritten = (ulong)response.Containers.Sum(c => (long)c.PagesWritten);
            response.BytesWritten = (ulong)response.Containers.Sum(c => (long)c.BytesWritten);
            response.ElapsedMillis = Millis(clock.Elapsed);
            record.RoundResponses[request.Round] = JsonFormatter.Default.Format(response);
            record.Phase = MigrationPhase.PreCopying;
            record.Message = $"pre-copy round {request.Round} wrote {response.PagesWritten} pages in {response.ElapsedMillis} ms";
            record.Save();
            if (!streamed)
            {
                planned?.Invoke();
            }

            return response;
        }, cancellationToken);
    }

    /// <summary>
    /// Once the rounds taken so far are staged on <paramref name="target"/>: gives back on this node
    /// the bytes of the pages files of every container's rounds that nothing here reads again
    /// (<see cref="RoundRelease"/>, <see cref="ReleasedPages"/>); <paramref name="allowed"/>: the
    /// operator allows it (StartPreCopyRequest.release_sent_rounds). Returns the bytes given back (0 when none could be); a failure
    /// leaves the rounds as they are and is only logged.
    /// </summary>
    public async Task<long> ReleaseSentRoundsAsync(string migrationId, string target, bool allowed, CancellationToken cancellationToken)
    {
        return await WithMigrationAsync(migrationId, record =>
        {
            long released = 0;
            var listed = new List<(string Directory, IReadOnlyList<FileInfo> Files)>();
            foreach (var container in record.Containers)
            {
                if (RoundRelease.WhyKept(_options.ReleaseSentRounds, allowed, record.PreCopyMethod, _trackers.Tracks(record.MigrationId, container.Name)) is not null)
                {
                    continue;
                }

                foreach (var round in record.Rounds.Where(r => r.Container == container.Name))
                {
                    try
                    {
                        var files = ReleasedPages.List(round.Directory, file => Transfer.FileDigests.ToKeep(file, _options.TransferChecksum));
                        released += files.Sum(f => f.Length);
                        listed.Add((round.Directory, files));
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
                    {
                        LogReleaseFailed(record.MigrationId, round.Directory, e.Message);
                    }
                }
            }

            if (released > 0)
            {
                record.ReleasedBytes += released;
                record.Save();
                GiveBackBeside(record.MigrationId, listed, released, record.RoundCount, target, record.ReleasedBytes);
            }

            return Task.FromResult(released);
        }, cancellationToken);
    }

    /// <summary>
    /// Gives back the bytes of files listed as released, on the thread pool: the next round need not
    /// wait for it (1 GiB took 100-150 ms here, between round 1 and round 2). Nothing here reads a listed
    /// file again, and one migration's give-backs run one after another.
    /// </summary>
    private void GiveBackBeside(string migrationId, List<(string Directory, IReadOnlyList<FileInfo> Files)> listed, long bytes, int rounds, string target, long total)
    {
        lock (_givingBack)
        {
            var before = _givingBack.GetValueOrDefault(migrationId) ?? Task.CompletedTask;
            var task = GiveBackAsync(before);
            _givingBack[migrationId] = task;
            _ = task.ContinueWith(done =>
            {
                lock (_givingBack)
                {
                    if (_givingBack.TryGetValue(migrationId, out var last) && last == done)
                    {
                        _givingBack.Remove(migrationId);
                    }
                }
            }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }

        async Task GiveBackAsync(Task before)
        {
            await Task.WhenAny(before).ConfigureAwait(false);
            await Task.Yield();
            foreach (var (directory, files) in listed)
            {
                try
                {
                    ReleasedPages.GiveBack(files);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // (a file gone with its migration's directory gave its bytes back all the same)
                    LogReleaseFailed(migrationId, directory, e.Message);
                }
            }

            AgentTelemetry.BytesReleased.Add(bytes);
            LogRoundsReleased(migrationId, bytes >> 20, rounds, target, total >> 20);
        }
    }

    /// <summary>
    /// Freezes all containers, dumps each and captures file system state; the pod stays frozen.
    /// With <paramref name="lazyMemory"/>, private memory is left to a lazy restore. With
    /// <paramref name="hold"/> (a member of a group), the pod is frozen and its network locked
    /// first, outside the node's CRIU gate (other members on this node must reach their freeze
    /// too), and the dump waits for the hold to return; a hold that fails thaws the pod.
    /// With <paramref name="carryMounts"/> (a migration to a target that builds them) the agent
    /// carries the containers' small tmpfs mounts itself; else, as for a kept checkpoint, CRIU
    /// archives every tmpfs, and the images restore with any CRIU-based runtime.
    /// </summary>
    public async Task<FinalDumpResponse> FinalDumpAsync(string migrationId, CancellationToken cancellationToken, bool lazyMemory = false,
        Func<MigrationRecord, Task>? hold = null, bool postCopy = false, bool carryMounts = false)
    {
        var asked = Stopwatch.StartNew();
        return await WithMigrationAsync(migrationId, async record =>
        {
            if (record.Phase == MigrationPhase.Frozen && record.FinalDump is not null)
            {
                return FinalDumpResponse.Parser.ParseJson(record.FinalDump);
            }

            if (record.Phase is not (MigrationPhase.Prepared or MigrationPhase.PreCopying))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; there is nothing to dump");
            }

            EnsureUnchanged(record);
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.final_dump");
            activity?.SetTag("migration.id", record.MigrationId);
            var dump = new FreezeProgress(new FinalDumpResponse { PreCopyRounds = record.RoundCount }) { WaitedMillis = Millis(asked.Elapsed) };
            if (lazyMemory)
            {
                // measured while the pod runs: which containers' processes share memory a lazy restore would duplicate
                MeasureSharing(record, dump);
            }

            dump.SharingMillis = Millis(dump.Clock.Elapsed);

            FinalDumpResponse response;
            try
            {
                // CRIU started now, while the pod still runs: in the freeze only the request is sent
                StartCriuServices(record, dump, lazyMemory);
                dump.CriuStartMillis = Millis(dump.Clock.Elapsed) - dump.SharingMillis;
                // and the network lock's tools: when the peers lose the pod, only the lock's commits are left
                if (record.AddressMove is { } move && _options.PrepareNetworkLock)
                {
                    bool early = _locksAhead.TryRemove(record.MigrationId, out var ahead);
                    (dump.PreparedLock, var notReady) = early ? await ahead! : _handover.PrepareLock(move);
                    dump.LockNote = notReady is not null ? $" (not made ready ahead: {notReady})"
                        : early ? " (made ready ahead, from the checkpoint's start)" : " (made ready ahead)";
                }

                dump.LockToolsMillis = Millis(dump.Clock.Elapsed) - dump.SharingMillis - dump.CriuStartMillis;

                if (hold is not null)
                {
                    await HoldFrozenAsync(record, dump, hold);
                }

                response = await RunCriuAsync(() => DumpFrozen(record, lazyMemory, dump, postCopy, carryMounts: carryMounts && _options.CarryTmpfsMounts), cancellationToken);
            }
            finally
            {
                foreach (var service in dump.Services.Values)
                {
                    service.Dispose();
                }

                // (applied, or never: its tools read no lock, and end)
                dump.PreparedLock?.Dispose();
            }

            record.FinalDump = JsonFormatter.Default.Format(response);
            record.PostCopy = response.Containers.Any(c => c.PagesLeftOnSource > 0);
            record.Phase = MigrationPhase.Frozen;
            record.Message = $"pod frozen and dumped: {response.StagedBytes} bytes staged, frozen for {response.FrozenMillis} ms so far";
            record.Save();
            AgentTelemetry.FrozenDuration.Record(response.FrozenMillis);
            AgentTelemetry.BytesStaged.Add((long)response.StagedBytes);
            uint capture = (uint)response.Containers.Sum(c => c.MemoryCaptureMillis);
            uint criu = (uint)response.Containers.Sum(c => c.DumpMillis) + dump.CaptureOverlapMillis - capture;
            LogDumped(record.MigrationId, response.StagedBytes, response.FrozenMillis, response.FreezeMillis, response.DumpMillis, criu, dump.Prestarted, response.Containers.Count, capture,
                dump.CaptureOverlapMillis, response.FilesystemMillis, dump.FilesystemOverlapMillis, response.NetworkMillis - dump.ReleaseMillis, dump.LockNote, dump.ReleaseMillis,
                dump.WaitedMillis + dump.StoppedMillis, dump.WaitedMillis, dump.SharingMillis, dump.CriuStartMillis, dump.LockToolsMillis);
            return response;
        }, cancellationToken);
    }

    /// <summary>
    /// A group member: locks and freezes the pod, records it as frozen (an agent restarting now
    /// thaws it: nothing was committed), then waits for the hold. A failed freeze or hold thaws
    /// the pod and gives its network back before the error goes on.
    /// </summary>
    private async Task HoldFrozenAsync(MigrationRecord record, FreezeProgress dump, Func<MigrationRecord, Task> hold)
    {
        var phase = record.Phase;
        try
        {
            LockAndFreeze(record, dump);
            record.Phase = MigrationPhase.Frozen;
            record.Message = "pod frozen with its network locked; waiting for every member of its group to be frozen";
            record.Save();
            _events.Changed(record.MigrationId);
            await hold(record);
        }
        catch (Exception e)
        {
            _ = TryGiveBackNetwork(record);
            foreach (var freezer in dump.Frozen)
            {
                TryThaw(freezer);
            }

            record.Phase = phase;
            record.Handoff.Held = "";
            record.Message = $"the group hold ended while {dump.Step}; the pod was thawed";
            record.Save();
            if (e is CheckpointException or OperationCanceledException)
            {
                throw;
            }

            throw new CheckpointException(StatusCode.Internal, $"freezing pod {record.Namespace}/{record.PodName} for its group failed while {dump.Step}: {e.Message} The pod was thawed and runs on.", e);
        }
    }

    /// <summary>
    /// For each container with more than one process: the copy-on-write memory they share
    /// (<see cref="CopyOnWriteSharing"/>); a container sharing more than the threshold is dumped for
    /// a full restore, which keeps it shared, instead of a lazy one, which would not.
    /// </summary>
    private void MeasureSharing(MigrationRecord record, FreezeProgress dump)
    {
        foreach (var container in record.Containers)
        {
            long shared;
            try
            {
                shared = CopyOnWriteSharing.Measure(CgroupFreezer.FromPath(container.FreezerDirectory).Processes());
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                continue; // its processes cannot be listed now; the freeze will say why if it matters
            }

            dump.SharedBytes[container.Name] = shared;
            if (CopyOnWriteSharing.KeepsSharing(shared))
            {
                LogKeepsSharing(record.MigrationId, container.Name, shared >> 20);
            }
        }
    }

    /// <summary>
    /// Per container, a CRIU process for its final dump, started before the freeze
    /// (<see cref="AgentOptions.PrestartCriu"/>). One that cannot be started is left out: that
    /// container's dump has libcriu start CRIU, in the freeze, as it always could.
    /// </summary>
    private void StartCriuServices(MigrationRecord record, FreezeProgress dump, bool lazyMemory)
    {
        if (!_options.PrestartCriu)
        {
            return;
        }

        foreach (var container in record.Containers)
        {
            bool lazy = lazyMemory && !CopyOnWriteSharing.KeepsSharing(dump.SharedBytes.GetValueOrDefault(container.Name));
            try
            {
                dump.Services[container.Name] = CriuService.Start(_criu.ServiceBinary, lazy, record.StagingDirectory);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                LogCriuNotPrestarted(record.MigrationId, container.Name, e.Message);
            }
        }
    }

    /// <summary>How far a final dump's freeze got: what to undo if it fails, and its figures.</summary>
    private sealed class FreezeProgress(FinalDumpResponse response)
    {
        public FinalDumpResponse Response { get; } = response;

        /// <summary>Per container, the CRIU process started ahead for its dump.</summary>
        public Dictionary<string, CriuService> Services { get; } = new(StringComparer.Ordinal);

        /// <summary>How many containers' dumps went to the CRIU started ahead for them.</summary>
        public int Prestarted { get; set; }

        /// <summary>Per container, the memory its processes share copy-on-write (measured before the freeze when the memory may be lazy).</summary>
        public Dictionary<string, long> SharedBytes { get; } = new(StringComparer.Ordinal);

        public Stopwatch Clock { get; } = Stopwatch.StartNew();

        /// <summary>When (on <see cref="Clock"/>) the workload stopped: its network locked or its containers frozen, whichever came first.</summary>
        public TimeSpan? StoppedAt { get; set; }

        public List<CgroupFreezer> Frozen { get; } = [];

        public string Step { get; set; } = "freezing";

        public int InFlight { get; set; }

        /// <summary>Of the file systems' archives, the time they ran beside CRIU finishing its dump.</summary>
        public uint FilesystemOverlapMillis { get; set; }

        /// <summary>Of the containers' memory captures, the time they ran beside CRIU finishing its dump.</summary>
        public uint CaptureOverlapMillis { get; set; }

        /// <summary>The pod's network lock made ready before the freeze, when its address moves and it could be.</summary>
        public PreparedNetworkChange? PreparedLock { get; set; }

        /// <summary>For the log: whether the lock was made ready ahead, or why not.</summary>
        public string LockNote { get; set; } = "";

        /// <summary>What the address release took (frozen), of the response's network figure (the lock came before the freeze).</summary>
        public uint ReleaseMillis { get; set; }

        public bool Done { get; set; }

        /// <summary>Before the freeze, for the log: waiting for the migration (another call on it), measuring shared memory, starting CRIU, the lock's tools.</summary>
        public uint WaitedMillis { get; init; }

        public uint SharingMillis { get; set; }

        /// <summary>When the workload stopped, in milliseconds on <see cref="Clock"/> (0 before).</summary>
        public uint StoppedMillis => StoppedAt is { } at ? (uint)Math.Ceiling(at.TotalMilliseconds) : 0;

        public uint CriuStartMillis { get; set; }

        public uint LockToolsMillis { get; set; }
    }

    /// <summary>Rollback: thaws the pod where it stopped.</summary>
    public async Task<MigrationStatus> ResumeAsync(string migrationId, CancellationToken cancellationToken) =>
        await WithMigrationAsync(migrationId, async record =>
        {
            switch (record.Phase)
            {
                case MigrationPhase.Finished:
                    throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} finished: its processes on this node were ended and cannot resume");
                case MigrationPhase.Resumed or MigrationPhase.Cleaned:
                    return record.ToStatus();
            }

            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.resume");
            activity?.SetTag("migration.id", record.MigrationId);
            bool wasFrozen = record.Phase == MigrationPhase.Frozen;
            var network = TryGiveBackNetwork(record);
            var runtime = record.CriPath ? await ResumeThroughRuntimeAsync(record) : Thawed(record);
            record.Phase = MigrationPhase.Resumed;
            record.Message = (wasFrozen ? "pod thawed; it continues where it stopped" : "migration abandoned before the pod was frozen")
                + (network is null ? "" : $"; its network could not be given back: {network}")
                + (runtime is null ? "" : $"; {runtime}");
            record.Save();
            return record.ToStatus();
        }, cancellationToken);

    private static string? Thawed(MigrationRecord record)
    {
        ThawAll(record);
        return null;
    }

    /// <summary>Success: ends the frozen processes for good.</summary>
    public async Task<MigrationStatus> FinishAsync(string migrationId, CancellationToken cancellationToken) =>
        await WithMigrationAsync(migrationId, record =>
        {
            if (record.Phase == MigrationPhase.Finished)
            {
                return Task.FromResult(record.ToStatus());
            }

            if (record.Phase != MigrationPhase.Frozen)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; only a frozen pod can be finished");
            }

            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.finish");
            activity?.SetTag("migration.id", record.MigrationId);
            foreach (var container in record.Containers)
            {
                KillFrozen(CgroupFreezer.FromPath(container.FreezerDirectory));
            }

            record.Phase = MigrationPhase.Finished;
            record.Message = "frozen processes ended; the pod lives on elsewhere";
            record.Save();
            return Task.FromResult(record.ToStatus());
        }, cancellationToken);

    /// <summary>Removes the migration's staged files, thawing the pod first if it is still frozen.</summary>
    public async Task<MigrationStatus> CleanupAsync(string migrationId, CancellationToken cancellationToken)
    {
        ValidateId(migrationId);
        if (TryGet(migrationId) is null)
        {
            return new MigrationStatus { MigrationId = migrationId, NodeName = _options.NodeName, Phase = MigrationPhase.Cleaned, Message = "nothing staged for this migration" };
        }

        return await WithMigrationAsync(migrationId, async record =>
        {
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.cleanup");
            activity?.SetTag("migration.id", record.MigrationId);
            string note = "";
            if (record.Phase == MigrationPhase.Frozen)
            {
                var network = TryGiveBackNetwork(record);
                var runtime = record.CriPath ? await ResumeThroughRuntimeAsync(record) : Thawed(record);
                note = "; the pod was still frozen and was thawed first" + (network is null ? "" : $" (its network could not be given back: {network})")
                    + (runtime is null ? "" : $" ({runtime})");
            }

            // out of the staging root at once, its bytes freed in the background (a gigabyte takes the file system half a second)
            _ = DiscardedDirectories.Remove(record.StagingDirectory);

            if (record.CheckpointImages.Count > 0 && await DeletePublishedAsync(record.MigrationId, record.CheckpointImages) is { } kept)
            {
                note += "; " + kept;
            }

            record.Phase = MigrationPhase.Cleaned;
            record.CleanedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            record.Message = "staged files removed" + note;
            return record.ToStatus();
        }, cancellationToken);
    }

    /// <summary>What this node knows of a migration.</summary>
    public MigrationStatus Get(string migrationId)
    {
        ValidateId(migrationId);
        return (TryGet(migrationId) ?? throw new CheckpointException(StatusCode.NotFound, $"node {_options.NodeName} knows no migration {migrationId}")).ToStatus();
    }

    /// <summary>A lock made ready that no final dump took: its tools read an empty input and end, having changed nothing.</summary>
    private void DropLockAhead(string migrationId)
    {
        if (_locksAhead.TryRemove(migrationId, out var ahead))
        {
            _ = ahead.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully)
                {
                    t.Result.Lock?.Dispose();
                }
            }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default); // (not under the migration's lock: each tool may take a moment to end)
        }
    }

    public void Dispose()
    {
        foreach (var id in _locksAhead.Keys)
        {
            DropLockAhead(id);
        }

        _trackers.Dispose();
        _criuGate.Dispose();
        foreach (var gate in _locks.Values)
        {
            gate.Dispose();
        }
    }

    /// <summary>Locks the pod's network (when it keeps its address) and freezes every container: from here the workload's downtime runs.</summary>
    private void LockAndFreeze(MigrationRecord record, FreezeProgress dump)
    {
        var clock = dump.Clock;
        // (not from the dump's start: measuring shared memory, or waiting for this node's CRIU while another pod dumps, is not downtime)
        dump.StoppedAt ??= clock.Elapsed;
        if (record.AddressMove is { } locking)
        {
            // from here no packet reaches or leaves the pod's sockets until the target (or a rollback here)
            // lifts the lock: for its peers the downtime starts now
            dump.Step = "locking the pod's network";
            record.Handoff.FrozenUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            // queued connections the pod has not accepted yet are given a moment; any left are skipped
            var lockStart = clock.Elapsed;
            dump.InFlight = _handover.Lock(locking, record.Containers[0].Pid, record.Save, dump.PreparedLock);
            // (from the lock's start: the dump's clock also ran while shared memory was measured, before the freeze)
            dump.Response.NetworkMillis = Millis(clock.Elapsed - lockStart);
        }

        using (AgentTelemetry.Source.StartActivity("checkpoint.freeze"))
        {
            dump.Step = "freezing";
            // when the workload stops: the start of its downtime (unless the lock came first)
            var freezeStart = clock.Elapsed;
            if (record.AddressMove is null)
            {
                record.Handoff.FrozenUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            }

            record.Handoff.Step = HandoffStep.Dumping;
            _events.Changed(record.MigrationId);
            foreach (var freezer in record.Containers.Select(c => CgroupFreezer.FromPath(c.FreezerDirectory)))
            {
                dump.Frozen.Add(freezer);
                freezer.Freeze();
            }

            dump.Response.FreezeMillis = Millis(clock.Elapsed - freezeStart);
        }

        dump.Done = true;
    }

    private FinalDumpResponse DumpFrozen(MigrationRecord record, bool lazyMemory, FreezeProgress freeze, bool postCopy, bool carryMounts)
    {
        var response = freeze.Response;
        var frozen = freeze.Frozen;
        var clock = freeze.Clock;
        string step = freeze.Step;
        bool succeeded = false;
        FilesystemArchives? archives = null;
        try
        {
            if (!freeze.Done)
            {
                LockAndFreeze(record, freeze);
            }

            step = freeze.Step;
            if (freeze.InFlight > 0)
            {
                LogInFlightSkipped(record.MigrationId, freeze.InFlight);
            }

            var dumpStart = clock.Elapsed;
            // the writable layers and emptyDir volumes hold still while the pod is frozen; they are archived
            // from the last container's post-dump on (every image written, and with it the scratch
            // directories CRIU makes in a container's /tmp to read its mounts gone), beside CRIU's teardown
            archives = new FilesystemArchives(record, () => clock.Elapsed);
            var last = record.Containers[^1];
            foreach (var container in record.Containers)
            {
                step = $"dumping container {container.Name}";
                var stdio = new ContainerProcess(container.Pid).StandardDescriptors();
                using var span = AgentTelemetry.Source.StartActivity("criu.dump");
                span?.SetTag("k8s.container.name", container.Name);
                long shared = freeze.SharedBytes.GetValueOrDefault(container.Name);
                var dump = FinalDumpOf(record, container, lazyMemory && !CopyOnWriteSharing.KeepsSharing(shared), postCopy, freeze.Services.GetValueOrDefault(container.Name),
                    container == last ? archives : null, carryMounts);
                File.WriteAllText(Path.Combine(dump.Directory, "descriptors.json"), JsonSerializer.Serialize(stdio, StringListJson.Default.IReadOnlyListString));
                freeze.Prestarted += dump.Dump.Prestarted ? 1 : 0;
                freeze.CaptureOverlapMillis += Millis(dump.CaptureOverlap);
                var stats = dump.Dump.Statistics;
                response.Containers.Add(new ContainerDump
                {
                    ContainerName = container.Name,
                    PagesWritten = dump.PagesWritten,
                    PagesInParent = dump.PagesInParent,
                    DumpMillis = Millis(dump.Elapsed),
                    CriuFrozenMillis = Millis(stats?.FrozenTime ?? TimeSpan.Zero),
                    ImageBytes = (ulong)(DirectorySize(dump.Directory) + (dump.MemoryDirectory is { } memory ? DirectorySize(memory) : 0)),
                    LazyMemory = dump.MemoryDirectory is not null,
                    MemoryCaptureMillis = dump.MemoryDirectory is not null ? Millis(dump.DeduplicationTime) : 0,
                    WriteTracked = dump.Tracked,
                    SharedMemoryBytes = (ulong)shared,
                    PagesLeftOnSource = dump.PagesRemote,
                });
                AgentTelemetry.DumpDuration.Record(dump.Dump.Elapsed.TotalMilliseconds);
                AgentTelemetry.PagesWritten.Add((long)dump.PagesWritten, new KeyValuePair<string, object?>("stage", "final"));
            }

            response.DumpMillis = Millis(clock.Elapsed - dumpStart);
            if (record.AddressMove is { } releasing)
            {
                // the address leaves the source only after the dump; the target claims it after the commit
                step = "releasing the pod's address";
                var released = clock.Elapsed;
                _handover.Release(releasing, record.StagingDirectory, record.Containers.Select(c => c.Name), record.Save);
                freeze.ReleaseMillis = Millis(clock.Elapsed - released);
                response.NetworkMillis += freeze.ReleaseMillis;
            }

            step = "archiving the writable layers and emptyDir volumes";
            var archived = archives.Finish();
            foreach (var (dump, bytes) in response.Containers.Zip(archived.RootfsBytes))
            {
                dump.RootfsDiffBytes = bytes;
            }

            response.VolumeBytes = archived.VolumeBytes;
            response.FilesystemMillis = Millis(archived.Elapsed);
            freeze.FilesystemOverlapMillis = Millis(archived.Overlap);
            response.FrozenMillis = Millis(clock.Elapsed - (freeze.StoppedAt ?? TimeSpan.Zero));
            response.FinalImageBytes = (ulong)response.Containers.Sum(c => (long)c.ImageBytes);
            response.StagedBytes = (ulong)(DirectorySize(record.StagingDirectory) - new FileInfo(Path.Combine(record.StagingDirectory, StagingLayout.RecordFile)).Length);
            succeeded = true;
            return response;
        }
        catch (Exception e) when (e is CriuException or IOException or InvalidOperationException or TimeoutException or UnauthorizedAccessException)
        {
            step = freeze.Done ? step : freeze.Step;
            LogDumpFailed(e, record.MigrationId, step);
            record.Message = $"final dump failed while {step}; the pod was thawed";
            record.Save();
            var thawed = frozen.Count > 0 ? " The pod was thawed and runs on." : "";
            var reason = e is CriuException criu && CriuFailures.Explain(criu) is { } known ? known + ". " : "";
            throw new CheckpointException(StatusCode.Internal, $"final dump of pod {record.Namespace}/{record.PodName} failed while {step}: {reason}{e.Message}{thawed}", e);
        }
        finally
        {
            // whatever went wrong, a pod is never left frozen by a failed dump, nor cut off from its network
            if (!succeeded)
            {
                // (an archive begun beside the dump ends first: the failed migration's directory may go next)
                archives?.Settle();
                _ = TryGiveBackNetwork(record);
                foreach (var freezer in frozen)
                {
                    TryThaw(freezer);
                }
            }
        }
    }

    /// <summary>
    /// A container's final dump: with lazy memory when asked and this node's CRIU can, else a plain
    /// one (also when the lazy dump fails: the tree is still frozen, and a plain dump restores anywhere).
    /// The pod's last container's dump begins <paramref name="archives"/> (the file-system archives) at its post-dump.
    /// </summary>
    private PreCopyFinalDump FinalDumpOf(MigrationRecord record, ContainerRecord container, bool lazyMemory, bool postCopy, CriuService? service, FilesystemArchives? archives,
        bool carryMounts)
    {
        // the pod is frozen: its tmpfs mounts hold still while they are listed, before CRIU is told to leave them alone
        var carried = carryMounts ? CarryMounts(record, container) : new CarriedMountSet([]);
        var session = Session(record, container, running: false, service, archives is null ? null : archives.StartAt, carried);
        var dump = DumpOnce(record, container, session, lazyMemory, postCopy, archives);
        CarriedMounts.Write(dump.Directory, carried);
        return dump;
    }

    /// <summary>The container's tmpfs mounts the agent carries in place of CRIU (a mount it cannot carry is logged and left to CRIU).</summary>
    private CarriedMountSet CarryMounts(MigrationRecord record, ContainerRecord container)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            var set = TmpfsListing.Capture(container.Pid, container.ExternalMounts, CarryLimits.Default,
                (mountPoint, reason) => LogMountNotCarried(record.MigrationId, container.Name, mountPoint, reason));
            var carried = CarriedMounts.Describe(set);
            LogMountsCarried(record.MigrationId, container.Name, carried, clock.Elapsed.TotalMilliseconds);

            return set;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            LogMountNotCarried(record.MigrationId, container.Name, "(every tmpfs)", e.Message);
            return new CarriedMountSet([]);
        }
    }

    private PreCopyFinalDump DumpOnce(MigrationRecord record, ContainerRecord container, PreCopySession session, bool lazyMemory, bool postCopy, FilesystemArchives? archives)
    {
        if (lazyMemory)
        {
            try
            {
                return session.DumpLazy(leaveOnSource: postCopy);
            }
            catch (Exception e) when (e is CriuException or IOException or InvalidDataException)
            {
                // an archive begun at the failed dump's post-dump is ended before the plain dump begins its own
                archives?.Settle();
                LogLazyDumpFailed(e, record.MigrationId, container.Name);
                var memory = Path.Combine(record.StagingDirectory, StagingLayout.LazyMemoryImages(container.Name));
                if (Directory.Exists(memory))
                {
                    Directory.Delete(memory, recursive: true);
                }
            }
        }

        return session.Dump();
    }

    /// <summary>A container's pre-copy session (rebuilt for every call from the migration's record).</summary>
    /// <param name="record">The migration.</param>
    /// <param name="container">One of its containers.</param>
    /// <param name="running">The pod runs (a pre-copy round): its writes may be tracked from now on; else only a tracker armed earlier is used.</param>
    /// <param name="service">A CRIU started ahead for the final dump, if any.</param>
    /// <param name="notify">Called on each of CRIU's notifications of the dump.</param>
    /// <param name="carried">The tmpfs mounts the agent carries: external to CRIU, which leaves their contents alone.</param>
    private PreCopySession Session(MigrationRecord record, ContainerRecord container, bool running, CriuService? service = null, Func<CriuNotification, bool>? notify = null,
        CarriedMountSet? carried = null)
    {
        var options = new CriuOptions
        {
            Service = service,
            Notify = notify,
            Pid = container.Pid,
            ImagesDirectory = Path.Combine(record.StagingDirectory, StagingLayout.ContainerImages(container.Name)),
            // debug lines grow with the memory and are written in the freeze: only when asked for
            LogLevel = _options.CriuDebugLogs ? CriuLogLevel.Debug : CriuLogLevel.Info,
            Root = container.RootPath,
            ManageCgroups = true,
            CgroupMode = CriuCgroupMode.Soft,
            FreezeCgroup = container.FreezerDirectory,
            LeaveRunning = true,
            OrphanPtsMaster = true,
            FileLocks = true,
            ExternalMounts = [.. container.ExternalMounts.Select(m => new CriuExternalMount(m, m)), .. (carried?.Mounts ?? []).Select(m => new CriuExternalMount(m.MountPoint, m.Key))],
            External = [.. ExternalNamespaces(container)],
            // a pod keeping its address keeps its connections: dumped in repair mode, under the agent's own lock (CRIU's would be lifted as the dump ends)
            TcpEstablished = record.AddressMove is not null ? true : null,
            TcpSkipInFlight = record.AddressMove is not null ? true : null,
            // CRIU's own lock (iptables rules put in and taken out of the pod's namespace: about 100 ms of the
            // freeze measured here) only keeps established connections still while they are dumped; without
            // them, as for a pod moving to a new address or a kept checkpoint, no connection is dumped
            NetworkLock = CriuNetworkLock.Skip,
        };
        Directory.CreateDirectory(Path.Combine(record.StagingDirectory, "containers"), OwnerOnly);
        var rounds = record.Rounds.Where(r => r.Container == container.Name).OrderBy(r => r.Number).Select(r => r.ToRound());
        // a checkpoint taken as a delta on an earlier one has that one's chain linked in beside its own sets
        var ancestor = Path.Combine(record.StagingDirectory, StagingLayout.AncestorImages(container.Name, 1));
        return new PreCopySession(_criu, options, record.PreCopyMethod, rounds,
            record.PreCopyMethod == Criu.Incremental.PreCopyMethod.ContentComparison && Directory.Exists(ancestor) ? ancestor : null,
            running ? _trackers.ForRounds(record.MigrationId, container.Name, container.Pid) : _trackers.ForFrozen(record.MigrationId, container.Name));
    }

    /// <summary>The namespaces a container shares with its pod's sandbox, under the keys runc uses on restore.</summary>
    private static IEnumerable<string> ExternalNamespaces(ContainerRecord container)
    {
        yield return string.Create(CultureInfo.InvariantCulture, $"net[{container.NetworkNamespace}]:extRootNetNS");
        if (container.SharedPidNamespace is { } pid)
        {
            yield return string.Create(CultureInfo.InvariantCulture, $"pid[{pid}]:extRootPidNS");
        }
    }

    /// <summary>Everything about one container a dump needs, or the reason it cannot move.</summary>
    private static ContainerRecord Inspect(LocatedContainer container, bool keepAddress)
    {
        var volumes = container.Spec.Mounts.Where(m => m.IsBind).Select(PodVolumes.Classify).ToList();
        var unmovable = volumes.FirstOrDefault(v => v.Kind == MountKind.Unmovable);
        if (unmovable is not null)
        {
            throw Refuse("volume", StatusCode.FailedPrecondition, PodVolumes.Explain(unmovable, container.Name));
        }

        var network = container.Spec.Namespace("network");
        if (network is null)
        {
            throw Refuse("host-network", StatusCode.FailedPrecondition, $"container {container.Name} uses the node's network namespace (hostNetwork); such a pod cannot move");
        }

        ContainerProcess process;
        try
        {
            process = new ContainerProcess(container.Pid);
        }
        catch (InvalidOperationException e)
        {
            throw Refuse("exited", StatusCode.FailedPrecondition, $"container {container.Name} exited while it was inspected: {e.Message}");
        }

        var upper = process.UpperDirectory()
            ?? throw Refuse("rootfs", StatusCode.FailedPrecondition, $"container {container.Name} does not run on an overlayfs root, so its writable layer cannot be captured");
        var tcp = process.EstablishedTcpConnections();
        if (tcp.Count > 0 && !keepAddress)
        {
            throw Refuse("tcp", StatusCode.FailedPrecondition,
                $"container {container.Name} has {tcp.Count} established TCP connection(s) ({string.Join(", ", tcp.Take(3).Select(c => $"{c.Local} to {c.Remote}"))}); the pod's IP changes when it moves, so they cannot survive: migrate it keeping its address (keepAddress), or close them first");
        }

        var mounts = process.Mounts();
        var external = new List<string>();
        external.AddRange(volumes.Select(v => v.Destination));
        // cgroup v1 controllers are bind mounts of the host's hierarchies; runc declares them the same way
        external.AddRange(mounts.Where(m => m.FileSystemType is "cgroup" or "cgroup2").Select(m => m.MountPoint));
        // masked paths are /dev/null bound over files
        external.AddRange(mounts.Where(m => container.Spec.MaskedPaths.Contains(m.MountPoint) && m.FileSystemType != "tmpfs").Select(m => m.MountPoint));
        var pid = container.Spec.Namespace("pid");
        return new ContainerRecord(
            container.Name,
            container.Id,
            container.Image,
            container.Pid,
            CgroupFreezer.ForProcess(container.Pid).Directory,
            process.HostRootPath(),
            upper,
            process.NamespaceInode("net"),
            pid?.Path is not null ? process.NamespaceInode("pid") : null,
            [.. external.Distinct(StringComparer.Ordinal)],
            volumes);
    }

    /// <summary>
    /// The address the pod keeps, or, when keeping it is <paramref name="optional"/> and the pod has
    /// not exactly one IPv4 address, none and the reason (a required one is refused with it).
    /// </summary>
    private static (AddressMoveRecord? Move, string? Note) AddressToKeep(LocatedPod pod, int pid, bool optional)
    {
        AddressMoveRecord? move;
        string? refusal;
        try
        {
            (move, refusal) = SourceAddressHandover.Read(pid);
        }
        catch (IOException e)
        {
            throw Refuse("address", StatusCode.FailedPrecondition, $"pod {pod.Namespace}/{pod.Name} cannot keep its address: {e.Message}");
        }

        return move is not null || optional
            ? (move, refusal)
            : throw Refuse("address", StatusCode.FailedPrecondition, $"pod {pod.Namespace}/{pod.Name} cannot keep its address: {refusal}");
    }

    /// <summary>The source's part of an address handover undone (<see cref="SourceAddressHandover.GiveBack"/>), if the migration moves one.</summary>
    private void GiveBackNetwork(MigrationRecord record)
    {
        if (record.AddressMove is { } move)
        {
            _handover.GiveBack(move, record.Save);
        }
    }

    /// <summary><see cref="GiveBackNetwork"/>, saying what failed instead of throwing: the pod is thawed either way.</summary>
    private string? TryGiveBackNetwork(MigrationRecord record)
    {
        try
        {
            GiveBackNetwork(record);
            return null;
        }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception or UnauthorizedAccessException)
        {
            LogNetworkNotGivenBack(e, record.MigrationId);
            return e.Message;
        }
    }

    /// <summary>The containers must be the ones recorded: same init process in the same cgroup.</summary>
    private static void EnsureUnchanged(MigrationRecord record)
    {
        foreach (var container in record.Containers)
        {
            var freezer = CgroupFreezer.FromPath(container.FreezerDirectory);
            bool alive;
            try
            {
                alive = Directory.Exists(container.FreezerDirectory) && freezer.Processes().Contains(container.Pid);
            }
            catch (IOException)
            {
                alive = false;
            }

            if (!alive)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition,
                    $"container {container.Name} exited or restarted since the migration began; begin a new migration");
            }
        }
    }

    private static void ThawAll(MigrationRecord record)
    {
        foreach (var container in record.Containers)
        {
            var freezer = CgroupFreezer.FromPath(container.FreezerDirectory);
            if (Directory.Exists(freezer.Directory))
            {
                freezer.Thaw();
            }
        }
    }

    private void TryThaw(CgroupFreezer freezer)
    {
        try
        {
            freezer.Thaw();
        }
        catch (IOException e)
        {
            LogThawFailed(e, freezer.Directory);
        }
    }

    /// <summary>SIGKILL to every process of a frozen cgroup, then thaw: they die without running another instruction.</summary>
    private static void KillFrozen(CgroupFreezer freezer)
    {
        if (!Directory.Exists(freezer.Directory))
        {
            return;
        }

        foreach (var pid in freezer.Processes())
        {
            try
            {
                // SIGKILL on Linux; a frozen task dies as soon as it is thawed
                using var process = Process.GetProcessById(pid);
                process.Kill();
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                // already gone
            }
        }

        freezer.Thaw();
        var clock = Stopwatch.StartNew();
        while (Directory.Exists(freezer.Directory) && freezer.Processes().Count > 0 && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            Thread.Sleep(10);
        }
    }

    private async Task<T> WithMigrationAsync<T>(string migrationId, Func<MigrationRecord, Task<T>> action, CancellationToken cancellationToken)
    {
        ValidateId(migrationId);
        var gate = LockFor(migrationId);
        await gate.WaitAsync(cancellationToken);
        try
        {
            var record = TryGet(migrationId) ?? throw new CheckpointException(StatusCode.NotFound, $"node {_options.NodeName} knows no migration {migrationId}");
            try
            {
                return await action(record);
            }
            finally
            {
                if (record.Phase is not (MigrationPhase.Prepared or MigrationPhase.PreCopying or MigrationPhase.Frozen))
                {
                    // out of pre-copy and out of the freeze (finished, thawed, cleaned up): the pod's writes are no
                    // longer tracked. Not while it is frozen: closing a tracker lifts the write protection of every
                    // tracked page (50-70 ms per GiB here, on the CPU the handoff needs), and the handoff would
                    // wait for that in the downtime; nor does what follows wait for it
                    _trackers.ReleaseBeside(migrationId);
                    DropLockAhead(migrationId);
                }

                _events.Changed(migrationId);
            }
        }
        finally
        {
            gate.Release();
        }
    }

    private async Task<T> RunCriuAsync<T>(Func<T> action, CancellationToken cancellationToken)
    {
        await _criuGate.WaitAsync(cancellationToken);
        try
        {
            // libcriu calls block; CRIU itself must not be cancelled half-way
            return await Task.Run(action, CancellationToken.None);
        }
        catch (CriuException e)
        {
            throw new CheckpointException(StatusCode.Internal, e.Message, e);
        }
        finally
        {
            _criuGate.Release();
        }
    }

    private Criu.Incremental.PreCopyMethod Method()
    {
        _method ??= _criu.CheckFeatures().MemoryTracking ? Criu.Incremental.PreCopyMethod.KernelTracking : Criu.Incremental.PreCopyMethod.ContentComparison;
        return _method.Value;
    }

    /// <summary>The migration's record: in memory, or (the record on disk is the truth) loaded from its staging directory.</summary>
    private MigrationRecord? TryGet(string migrationId)
    {
        lock (_registry)
        {
            if (_migrations.TryGetValue(migrationId, out var known))
            {
                return known;
            }

            if (MigrationIdPattern().IsMatch(migrationId)
                && StagingRoots().Select(root => Path.Combine(root, migrationId)).FirstOrDefault(d => File.Exists(Path.Combine(d, StagingLayout.RecordFile))) is { } directory)
            {
                try
                {
                    if (MigrationRecord.Load(directory) is { } record && record.MigrationId == migrationId)
                    {
                        _migrations[migrationId] = record;
                        return record;
                    }
                }
                catch (JsonException e)
                {
                    LogUnreadable(e, directory);
                }
            }

            return null;
        }
    }

    /// <summary>Drops the records (and locks) of migrations cleaned more than <see cref="CleanedRecordsKept"/> ago, unless one is in use.</summary>
    private void ForgetCleaned()
    {
        lock (_registry)
        {
            foreach (var id in MigrationRecord.Forgettable(_migrations.Values, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), CleanedRecordsKept))
            {
                if (_locks.TryGetValue(id, out var gate))
                {
                    if (gate.CurrentCount == 0)
                    {
                        continue;
                    }

                    // not disposed: a caller may hold it without having waited on it yet
                    _locks.Remove(id);
                }

                _migrations.Remove(id);
            }
        }
    }

    private SemaphoreSlim LockFor(string migrationId)
    {
        lock (_registry)
        {
            if (!_locks.TryGetValue(migrationId, out var gate))
            {
                gate = new SemaphoreSlim(1, 1);
                _locks[migrationId] = gate;
            }

            return gate;
        }
    }

    /// <summary>The staging directory on disk, and the memory one when configured: where migrations' directories are.</summary>
    public IEnumerable<string> StagingRoots() => MemoryStagingRoot is { } memory ? [StagingRoot, memory] : [StagingRoot];

    /// <summary>
    /// What a dump of these containers writes, by their processes' resident memory now, and the files of
    /// their writable layers and emptyDir volumes, which are archived beside it (0: not measured).
    /// </summary>
    private static long PodImageBytes(List<ContainerRecord> containers)
    {
        try
        {
            long memory = containers.Sum(c => StagingMediumProbe.TreeMemoryBytes(new ContainerProcess(c.Pid).Tree()));
            // the layers and volumes are the runtime's paths: an agent in a container reads them through the runtime's view
            var node = HostFiles.ForContainer(containers[0].Pid);
            long files = containers.Where(c => c.UpperDirectory is not null).Sum(c => DirectorySize(node.Open(c.UpperDirectory!)))
                + containers.SelectMany(c => c.Volumes).Where(v => v.Kind == MountKind.EmptyDir).DistinctBy(v => v.VolumeName).Sum(v => DirectorySize(node.Open(v.Source)));
            return memory + files;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException or FormatException)
        {
            return 0;
        }
    }

    /// <summary>What the migrations staged in memory reckoned (the caller holds <see cref="_registry"/>).</summary>
    private long ReservedInMemory() => _migrations.Values.Where(m => m.Phase != MigrationPhase.Cleaned).Sum(m => m.MemoryStagedBytes);

    /// <summary>The same, for the metrics.</summary>
    public long MemoryReservedBytes()
    {
        lock (_registry)
        {
            return ReservedInMemory();
        }
    }

    /// <summary>
    /// Reads the node's facts and chooses where a migration's images go. Called under the registry's lock with the
    /// new record added in the same hold, so the room other migrations reserved in memory is counted: taken off the
    /// memory file system's free space, the node's available memory and the agent's headroom (all read now, before
    /// those are written in full: what is written already counts twice, on the safe side) and off
    /// <see cref="AgentOptions.MemoryStagingMaxBytes"/>.
    /// </summary>
    private StagingMedium ChooseStagingMedium(bool transient, long expected)
    {
        if (MemoryStagingRoot is not { } root || !transient || expected <= 0)
        {
            return StagingMediumDecision.Choose(new StagingMediumFacts(MemoryStagingRoot is not null, transient, expected, 0, 0, null, 0));
        }

        try
        {
            Directory.CreateDirectory(root, OwnerOnly);
            long reserved = ReservedInMemory();
            long budget = _options.MemoryStagingMaxBytes > 0 ? _options.MemoryStagingMaxBytes - reserved : long.MaxValue;
            return StagingMediumDecision.Choose(new StagingMediumFacts(true, true, expected, StagingMediumProbe.FreeBytes(root) - reserved,
                StagingMediumProbe.NodeAvailableBytes() - reserved, StagingMediumProbe.AgentHeadroomBytes() - reserved, budget));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return new StagingMedium(false, 0, $"the memory staging directory {root} is not usable: {e.Message}");
        }
    }

    private void LoadRecords()
    {
        foreach (var directory in StagingRoots().Where(Directory.Exists).SelectMany(Directory.EnumerateDirectories))
        {
            try
            {
                if (MigrationRecord.Load(directory) is { } record)
                {
                    _migrations[record.MigrationId] = record;
                    LogLoaded(record.MigrationId, record.Phase, directory);
                }
            }
            catch (JsonException e)
            {
                LogUnreadable(e, directory);
            }
        }
    }

    private static CheckpointException Refuse(string reason, StatusCode code, string message)
    {
        AgentTelemetry.Refusals.Add(1, new KeyValuePair<string, object?>("reason", reason));
        return new CheckpointException(code, message);
    }

    /// <summary>Whether a migration id is a DNS label.</summary>
    public static bool IsValidMigrationId(string migrationId) => !string.IsNullOrEmpty(migrationId) && MigrationIdPattern().IsMatch(migrationId);

    /// <summary>Refuses (INVALID_ARGUMENT) a migration id that is not a DNS label.</summary>
    public static void ValidateMigrationId(string migrationId) => ValidateId(migrationId);

    private static void ValidateId(string migrationId)
    {
        if (!IsValidMigrationId(migrationId))
        {
            throw new CheckpointException(StatusCode.InvalidArgument,
                $"migration id '{migrationId}' is not valid: use 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit");
        }
    }

    private static Agent.V1.PreCopyMethod ToProto(Criu.Incremental.PreCopyMethod method) =>
        method == Criu.Incremental.PreCopyMethod.KernelTracking ? Agent.V1.PreCopyMethod.KernelTracking : Agent.V1.PreCopyMethod.ContentComparison;

    private static uint Millis(TimeSpan elapsed) => (uint)Math.Ceiling(elapsed.TotalMilliseconds);

    /// <summary>Bytes of the regular files below a directory, not following links (an image set's parent link).</summary>
    internal static long DirectorySize(string directory) =>
        new DirectoryInfo(directory).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint })
            .Sum(f => f.Length);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: pod {Namespace}/{Pod} with {Count} container(s) ready for checkpoint")]
    private partial void LogReady(string migration, string @namespace, string pod, int count);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: images staged {Medium}: {Reason}")]
    private partial void LogStagingMedium(string migration, string medium, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: the processes of container {Container} share {MiB} MiB copy-on-write, which a lazy restore would give each of them again; its memory is restored in full, which keeps it shared")]
    private partial void LogKeepsSharing(string migration, string container, long mib);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: CRIU could not be started ahead for container {Container}'s final dump ({Reason}); libcriu starts it in the freeze instead")]
    private partial void LogCriuNotPrestarted(string migration, string container, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: final dump done, {Bytes} bytes staged, frozen {Frozen} ms (freeze {Freeze} ms, dump {Dump} ms: CRIU {Criu} ms, started ahead for {Ahead} of {Containers} container(s), and memory capture {Capture} ms, {Overlap} ms of it while CRIU finished; file systems {Filesystem} ms, {FilesystemOverlap} ms of it beside the dump's end and the address release; network lock {Lock} ms before the freeze{LockNote}, address release {Release} ms); stopped {Before} ms after it was asked (waiting for the migration {Waited} ms, shared memory measured {Sharing} ms, CRIU started {CriuStart} ms, the lock's tools {LockTools} ms)")]
    private partial void LogDumped(string migration, ulong bytes, uint frozen, uint freeze, uint dump, uint criu, int ahead, int containers, uint capture, uint overlap, uint filesystem,
        uint filesystemOverlap, uint @lock, string lockNote, uint release, uint before, uint waited, uint sharing, uint criuStart, uint lockTools);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: the lazy dump of container {Container} failed; dumping it whole instead")]
    private partial void LogLazyDumpFailed(Exception error, string migration, string container);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: final dump failed while {Step}")]
    private partial void LogDumpFailed(Exception error, string migration, string step);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration} ({Phase}) found in {Directory}")]
    private partial void LogLoaded(string migration, MigrationPhase phase, string directory);

    [LoggerMessage(Level = LogLevel.Error, Message = "Unreadable migration record in {Directory}; left alone")]
    private partial void LogUnreadable(Exception error, string directory);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: {Count} connection(s) the pod had not accepted within the drain limit are left behind (their clients see a reset)")]
    private partial void LogInFlightSkipped(string migration, int count);

    [LoggerMessage(Level = LogLevel.Error, Message = "Migration {Migration}: the pod's address or network lock could not be given back")]
    private partial void LogNetworkNotGivenBack(Exception e, string migration);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container}'s tmpfs mounts carried by the agent, not CRIU: {Mounts}, listed in {Millis:0.0} ms")]
    private partial void LogMountsCarried(string migration, string container, string mounts, double millis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container}'s tmpfs {MountPoint} is left to CRIU's archive: {Reason}")]
    private partial void LogMountNotCarried(string migration, string container, string mountPoint, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: {Mib} MiB of pre-copy rounds' pages given back on this node (rounds 1-{Rounds} are staged on {Target}; {TotalMib} MiB given back so far)")]
    private partial void LogRoundsReleased(string migration, long mib, int rounds, string target, long totalMib);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: the pages of {Directory} could not be given back (they stay): {Reason}")]
    private partial void LogReleaseFailed(string migration, string directory, string reason);

    [LoggerMessage(Level = LogLevel.Error, Message = "Could not thaw {Cgroup}")]
    private partial void LogThawFailed(Exception error, string cgroup);

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    private static partial Regex MigrationIdPattern();
}

[JsonSerializable(typeof(IReadOnlyList<string>))]
internal sealed partial class StringListJson : JsonSerializerContext;

using System.Text.Json;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Migrate.Agent.V1;
using Migrate.Criu.Lazy;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The target side of a migration after its images arrived: the commit (the source's final images
/// are staged: a waiting restore may begin), the abort (no restore may begin), and what the restore
/// runtime reports of each container. Restore and abort are decided once, by whoever comes first:
/// the decision file is created exclusively, holding "restore" (written by podmig-runc when it
/// begins) or "abort" (written here), so a source is never thawed while a restore runs.
/// </summary>
public sealed partial class IncomingMigrations : BackgroundService
{
    private const string RestoreDecision = RestoreMarkers.Restore;
    private const string AbortDecision = RestoreMarkers.Abort;

    private readonly StagingLayout _layout;
    private readonly MigrationEvents _events;
    private readonly ILogger<IncomingMigrations> _logger;
    private readonly Dictionary<string, string> _seen = new(StringComparer.Ordinal);
    private readonly HashSet<string> _reported = new(StringComparer.Ordinal);
    private readonly Networking.NamespaceStepRunner _steps = new();
    private readonly Networking.PodNetworkLock _network = new();
    private readonly SemaphoreSlim _wake = new(0);

    public IncomingMigrations(IOptions<AgentOptions> options, MigrationEvents events, ILogger<IncomingMigrations> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _layout = new StagingLayout(options.Value.StagingDirectory, options.Value.IncomingDirectory);
        _events = events;
        _logger = logger;
    }

    /// <summary>How often the restore runtime's reports are looked at.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>The migrations this node holds images of.</summary>
    public IReadOnlyList<string> MigrationIds =>
        Directory.Exists(_layout.IncomingRoot) ? [.. Directory.EnumerateDirectories(_layout.IncomingRoot).Select(Path.GetFileName).OfType<string>()] : [];

    /// <summary>What this node holds of a migration as its target, or null when nothing.</summary>
    public IncomingStatus? Status(string migrationId, bool expected)
    {
        try
        {
            return Read(migrationId, expected);
        }
        catch (DirectoryNotFoundException)
        {
            // removed while it was read (cleaned up): nothing is held
            return expected ? new IncomingStatus { Expected = true } : null;
        }
    }

    private IncomingStatus? Read(string migrationId, bool expected)
    {
        var directory = _layout.Incoming(migrationId);
        if (!Directory.Exists(directory))
        {
            return expected ? new IncomingStatus { Expected = true } : null;
        }

        var files = _layout.IncomingFiles(migrationId);
        var decision = Decision(migrationId);
        var status = new IncomingStatus
        {
            Expected = expected,
            ReceivedBytes = Directory.Exists(files) ? (ulong)Checkpointing.CheckpointEngine.DirectorySize(files) : 0,
            Staged = File.Exists(Path.Combine(directory, StagingLayout.StagedFile)),
            Committed = File.Exists(Path.Combine(directory, StagingLayout.CommittedFile)),
            Aborted = decision == AbortDecision,
            RestoreBegan = decision == RestoreDecision,
            NetworkHeld = File.Exists(Path.Combine(directory, StagingLayout.NetworkHeldFile)),
            NetworkReleased = File.Exists(Path.Combine(directory, StagingLayout.NetworkReleasedFile)),
        };
        if (status.NetworkReleased && long.TryParse(File.ReadAllText(Path.Combine(directory, StagingLayout.NetworkReleasedFile)).Trim(),
            System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var released))
        {
            status.NetworkReleasedUnixMillis = released;
        }

        status.Restores.Add(Restores(directory).ToList());
        return status;
    }

    /// <summary>A group member: its replacement's network stays locked once restored, until <see cref="ReleaseNetworkAsync"/>.</summary>
    public void HoldNetwork(string migrationId)
    {
        var directory = _layout.Incoming(migrationId);
        Directory.CreateDirectory(_layout.IncomingRoot, OwnerOnly);
        Directory.CreateDirectory(directory, OwnerOnly);
        var marker = Path.Combine(directory, StagingLayout.HoldNetworkFile);
        if (!File.Exists(marker))
        {
            File.WriteAllText(marker, "group member: the network stays locked after the restore\n");
        }
    }

    /// <summary>
    /// Lifts the lock a group member's restored replacement was held under and announces its
    /// address on the segment. Idempotent; FAILED_PRECONDITION while nothing is held.
    /// </summary>
    public async Task ReleaseNetworkAsync(string migrationId, CancellationToken cancellationToken)
    {
        var directory = _layout.Incoming(migrationId);
        var released = Path.Combine(directory, StagingLayout.NetworkReleasedFile);
        if (File.Exists(released))
        {
            return;
        }

        var held = Path.Combine(directory, StagingLayout.NetworkHeldFile);
        if (!File.Exists(held))
        {
            throw new TransferRejectedException(StatusCode.FailedPrecondition, "not-held", $"migration {migrationId} has no restored replacement held on this node (its restore has not finished, or it holds no network)");
        }

        var namespacePath = File.ReadAllText(held).Trim();
        var move = Networking.AddressMove.Read(Path.Combine(_layout.IncomingFiles(migrationId), Networking.AddressMove.FileName))
            ?? throw new TransferRejectedException(StatusCode.FailedPrecondition, "no-address", $"migration {migrationId} moved no address; there is no held network to release");
        await Task.Run(() =>
        {
            _network.Unlock(namespacePath);
            File.WriteAllText(released, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture));
        }, cancellationToken);
        LogNetworkReleased(migrationId, move.Cidr);
        _events.Changed(migrationId);
        // the segment learns where the address is now; a lost announcement costs only the peers' next ARP
        _ = Task.Run(() =>
        {
            try
            {
                _steps.Run(namespacePath, Networking.AddressHandover.Announce(move.ToAddress()).Select(s => s with { MayFail = true }), $"announce {move.Cidr}");
            }
            catch (IOException)
            {
                // best effort
            }
        }, CancellationToken.None);
    }

    /// <summary>The source's final images are staged here: a waiting restore may begin.</summary>
    public TransferDecisionReply Commit(string migrationId)
    {
        var directory = _layout.Incoming(migrationId);
        if (!File.Exists(Path.Combine(directory, StagingLayout.StagedFile)))
        {
            throw new TransferRejectedException(StatusCode.FailedPrecondition, "not-staged", $"migration {migrationId} has no complete, verified images on this node to commit");
        }

        if (Decision(migrationId) == AbortDecision)
        {
            throw new TransferRejectedException(StatusCode.Aborted, "aborted", $"migration {migrationId} was aborted on this node; its images are not restored");
        }

        var committed = Path.Combine(directory, StagingLayout.CommittedFile);
        if (!File.Exists(committed))
        {
            File.WriteAllText(committed, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture));
            LogCommitted(migrationId);
        }

        _events.Changed(migrationId);
        var decision = Decision(migrationId);
        return new TransferDecisionReply { Committed = true, RestoreBegan = decision == RestoreDecision, Aborted = decision == AbortDecision };
    }

    /// <summary>No restore of the migration may begin from now on; says whether one already had.</summary>
    public TransferDecisionReply Abort(string migrationId)
    {
        var directory = _layout.Incoming(migrationId);
        Directory.CreateDirectory(_layout.IncomingRoot, OwnerOnly);
        Directory.CreateDirectory(directory, OwnerOnly);
        var decision = RestoreMarkers.Claim(Path.Combine(directory, StagingLayout.DecisionFile), AbortDecision);
        if (decision == AbortDecision)
        {
            LogAborted(migrationId);
        }

        _events.Changed(migrationId);
        return new TransferDecisionReply
        {
            Committed = File.Exists(Path.Combine(directory, StagingLayout.CommittedFile)),
            Aborted = decision == AbortDecision,
            RestoreBegan = decision == RestoreDecision,
        };
    }

    /// <summary>"restore", "abort" or null: what was decided for the migration on this node.</summary>
    public string? Decision(string migrationId)
    {
        var path = Path.Combine(_layout.Incoming(migrationId), StagingLayout.DecisionFile);
        return RestoreMarkers.Read(path);
    }

    /// <summary>
    /// Watches the restore runtime's reports and tells watchers when one changes: at once when a
    /// report file appears, goes or is renamed in place (inotify, through <see cref="FileSystemWatcher"/>),
    /// and at least every <see cref="PollInterval"/> (a report's content growing, an event lost).
    /// </summary>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var watcher = WatchReports();
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                foreach (var id in MigrationIds)
                {
                    var signature = Signature(_layout.Incoming(id));
                    if (!_seen.TryGetValue(id, out var last) || last != signature)
                    {
                        _seen[id] = signature;
                        _events.Changed(id);
                        ReportRestores(id);
                    }
                }

                await WakeOrPollAsync(stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (IOException)
            {
                // a directory went away while it was read; the next round sees the rest
            }
        }
    }

    /// <summary>
    /// Whether a file event under the incoming root (its path relative to it) concerns what the
    /// restore runtime reports: a file at a migration's top (restore-&lt;container&gt;.waiting, .done,
    /// .failed, the decision) or in a restore's work directory (the lazy restore's page server log),
    /// not the images a transfer writes under files/.
    /// </summary>
    public static bool IsReport(string? relativePath)
    {
        if (string.IsNullOrEmpty(relativePath))
        {
            return false;
        }

        var parts = relativePath.Split('/');
        return parts.Length == 2 || (parts.Length == 3 && parts[1].StartsWith("restore-", StringComparison.Ordinal));
    }

    /// <summary>An inotify watch over the incoming root that wakes the loop for a report; null where it cannot be set (the poll alone then sees them).</summary>
    private FileSystemWatcher? WatchReports()
    {
        try
        {
            Directory.CreateDirectory(_layout.IncomingRoot, OwnerOnly);
            var watcher = new FileSystemWatcher(_layout.IncomingRoot)
            {
                IncludeSubdirectories = true,
                NotifyFilter = NotifyFilters.FileName,
            };
            FileSystemEventHandler changed = (_, e) =>
            {
                if (IsReport(e.Name))
                {
                    _wake.Release();
                }
            };
            watcher.Created += changed;
            watcher.Deleted += changed;
            watcher.Renamed += (sender, e) => changed(sender, e);
            watcher.Error += (_, _) => _wake.Release();
            watcher.EnableRaisingEvents = true;
            return watcher;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or PlatformNotSupportedException)
        {
            LogNoWatch(_layout.IncomingRoot, e.Message);
            return null;
        }
    }

    private async Task WakeOrPollAsync(CancellationToken stoppingToken)
    {
        await _wake.WaitAsync(PollInterval, stoppingToken);
        // events that came together are one look
        while (_wake.CurrentCount > 0 && _wake.Wait(0, CancellationToken.None))
        {
        }
    }

    /// <summary>Logs, once each, the restores the runtime finished for a migration, with where their time went.</summary>
    private void ReportRestores(string migrationId)
    {
        var directory = _layout.Incoming(migrationId);
        foreach (var file in Directory.EnumerateFiles(directory, "restore-*.waiting"))
        {
            if (_reported.Add(file))
            {
                // when the replacement became ready: the source's handoff may begin from here
                LogWaiting(migrationId, Path.GetFileName(file)[8..^8]);
            }
        }

        foreach (var file in Directory.EnumerateFiles(directory, "restore-*.done"))
        {
            if (_reported.Add(file))
            {
                try
                {
                    var report = JsonSerializer.Deserialize(File.ReadAllText(file), RestoreReportJson.Default.RestoreReport);
                    LogRestored(migrationId, Path.GetFileName(file)[8..^5], report?.RestoreMillis ?? 0, report?.Steps ?? "no steps reported");
                }
                catch (Exception e) when (e is IOException or JsonException)
                {
                    _reported.Remove(file); // being written: read again on the next change
                }
            }
        }

        // a lazy restore's page server writes one last line as it ends: how its memory came (requests, pages, time)
        foreach (var work in Directory.EnumerateDirectories(directory, "restore-*"))
        {
            var log = Path.Combine(work, LazyRestoreHelpers.PageServerLog);
            if (!_reported.Contains(log) && LazyMemoryFill.LastLine(ReadIfThere(log)) is { } line)
            {
                _reported.Add(log);
                LogMemoryCame(migrationId, Path.GetFileName(work)[8..], line);
            }
        }

        _reported.RemoveWhere(f => !File.Exists(f));
    }

    private static string? ReadIfThere(string path)
    {
        try
        {
            return File.Exists(path) ? File.ReadAllText(path) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    public override void Dispose()
    {
        base.Dispose();
        _wake.Dispose();
    }

    private static IEnumerable<RestoreState> Restores(string directory)
    {
        var states = new SortedDictionary<string, RestoreState>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(directory, "restore-*"))
        {
            var name = Path.GetFileName(file);
            var (container, kind) = name.EndsWith(".waiting", StringComparison.Ordinal) ? (name[8..^8], "waiting")
                : name.EndsWith(".done", StringComparison.Ordinal) ? (name[8..^5], "done")
                : name.EndsWith(".failed", StringComparison.Ordinal) ? (name[8..^7], "failed")
                : (null, null);
            if (container is null)
            {
                continue;
            }

            if (!states.TryGetValue(container, out var state))
            {
                state = new RestoreState { Container = container };
                states[container] = state;
            }

            try
            {
                switch (kind)
                {
                    case "waiting":
                        state.Waiting = true;
                        break;
                    case "done":
                        var report = JsonSerializer.Deserialize(File.ReadAllText(file), RestoreReportJson.Default.RestoreReport);
                        state.Restored = true;
                        state.Waiting = false;
                        state.RestoredUnixMillis = report?.RestoredUnixMillis ?? 0;
                        state.RestoreMillis = (uint)(report?.RestoreMillis ?? 0);
                        state.LazyMemory = report?.LazyMemory ?? false;
                        break;
                    case "failed":
                        state.Error = File.ReadAllText(file).Trim();
                        break;
                }
            }
            catch (Exception e) when (e is IOException or JsonException)
            {
                // being written: read again on the next look
            }
        }

        foreach (var state in states.Values)
        {
            if (state.Restored)
            {
                state.Waiting = false;
            }

            var workDirectory = Path.Combine(directory, StagingLayout.RestoreWorkDirectory(state.Container));
            if (state.Error.Length > 0 && !state.Restored && Directory.Exists(workDirectory))
            {
                // a lazy restore that failed because its memory could not come: say why
                state.Error = LazyMemoryFill.ExplainRestoreFailure(state.Error, LazyMemoryFill.Observe(workDirectory));
            }

            if (state.LazyMemory)
            {
                var fill = LazyMemoryFill.Observe(workDirectory);
                state.MemoryFilled = fill.State == LazyMemoryState.Filled;
                state.MemoryError = fill.Error ?? "";
                state.MemoryFillMillis = (uint)Math.Clamp(fill.FillMillis, 0, uint.MaxValue);
            }

            yield return state;
        }
    }

    /// <summary>The names and sizes of the restore runtime's reports and of the page servers' logs (a lazy restore's memory filling in).</summary>
    private static string Signature(string directory) =>
        Directory.Exists(directory)
            ? string.Join('|', Directory.EnumerateFiles(directory)
                .Concat(Directory.EnumerateDirectories(directory, "restore-*").Select(d => Path.Combine(d, LazyRestoreHelpers.PageServerLog)).Where(File.Exists))
                .Select(f => Path.GetRelativePath(directory, f) + ":" + new FileInfo(f).Length).Order(StringComparer.Ordinal))
            : "";

    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container} restored in {Millis} ms after the commit ({Steps})")]
    private partial void LogRestored(string migration, string container, long millis, string steps);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container}'s lazy memory: {PageServer}")]
    private partial void LogMemoryCame(string migration, string container, string pageServer);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container}'s replacement is ready and waits for its images")]
    private partial void LogWaiting(string migration, string container);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: the final images were committed; a waiting restore may begin")]
    private partial void LogCommitted(string migration);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: the group released the restored replacement's network; {Address} is announced")]
    private partial void LogNetworkReleased(string migration, string address);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The restore runtime's reports under {Directory} cannot be watched ({Error}); they are looked at every poll only")]
    private partial void LogNoWatch(string directory, string error);

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: aborted on this node; no restore may begin")]
    private partial void LogAborted(string migration);
}

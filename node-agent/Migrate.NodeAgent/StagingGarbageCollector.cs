using Microsoft.Extensions.Options;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent;

/// <summary>
/// Removes checkpoint images nobody came back for: a migration's staging (source) or incoming
/// (target) directory untouched for longer than <see cref="AgentOptions.StagingTtlMinutes"/>, as
/// when the operator lost track of it (the request was deleted while this agent was down). Never
/// the images of a pod still frozen on this node (they are its checkpoint; the pod itself is
/// thawed or ended by the operator or by the agent's restart rule), never a migration whose
/// background work runs. Runs at start and then every few minutes.
/// </summary>
public sealed partial class StagingGarbageCollector(CheckpointEngine engine, ImageReceiver receiver, IOptions<AgentOptions> options, MigrationEvents events,
    ILogger<StagingGarbageCollector> logger, TimeProvider time) : BackgroundService
{
    private readonly AgentOptions _options = options.Value;

    public TimeSpan Interval { get; init; } = TimeSpan.FromMinutes(5);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await CollectAsync(stoppingToken);
                await Task.Delay(Interval, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>One round: removes what expired; returns the migrations removed.</summary>
    public async Task<IReadOnlyList<string>> CollectAsync(CancellationToken cancellationToken)
    {
        // what removals left when an agent ended before they were done (DiscardedDirectories)
        foreach (var root in engine.StagingRoots())
        {
            DiscardedDirectories.Sweep(root);
        }

        DiscardedDirectories.Sweep(_options.IncomingDirectory);
        var removed = new List<string>();
        var expiry = time.GetUtcNow().UtcDateTime - TimeSpan.FromMinutes(_options.StagingTtlMinutes);
        foreach (var directory in engine.StagingRoots().SelectMany(Children))
        {
            var id = Path.GetFileName(directory);
            var record = engine.Find(id);
            if (DirectoryTimes.LastChange(directory) > expiry || record?.Phase == MigrationPhase.Frozen || record?.Operation?.State == OperationState.Running)
            {
                continue;
            }

            try
            {
                await engine.CleanupAsync(id, cancellationToken);
                if (Directory.Exists(directory))
                {
                    Directory.Delete(directory, recursive: true);
                }

                removed.Add(id);
                LogRemoved(id, "staging", directory);
            }
            catch (Exception e) when (e is CheckpointException or IOException or UnauthorizedAccessException)
            {
                LogNotRemoved(id, e.Message);
            }
        }

        foreach (var directory in Children(_options.IncomingDirectory))
        {
            var id = Path.GetFileName(directory);
            if (DirectoryTimes.LastChange(directory) > expiry)
            {
                continue;
            }

            try
            {
                receiver.Remove(id);
                removed.Add(id);
                LogRemoved(id, "incoming", directory);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                LogNotRemoved(id, e.Message);
            }
        }

        foreach (var id in removed)
        {
            events.Changed(id);
        }

        // exports an agent died writing (any node's: the archive storage is shared), after the same time to live
        if (_options.ArchiveDirectory is { Length: > 0 } archive)
        {
            try
            {
                foreach (var path in Checkpointing.CheckpointArchive.RemoveAbandoned(archive, expiry))
                {
                    LogExportRemoved(path);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                LogNotRemoved("-", e.Message);
            }
        }

        return removed;
    }

    private static List<string> Children(string root) => Directory.Exists(root) ? [.. Directory.EnumerateDirectories(root)] : [];

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: its {Kind} images were untouched past their time to live and were removed ({Directory})")]
    private partial void LogRemoved(string migration, string kind, string directory);

    [LoggerMessage(Level = LogLevel.Information, Message = "A half-written export in the archive storage was untouched past its time to live and was removed ({Directory})")]
    private partial void LogExportRemoved(string directory);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: expired images could not be removed: {Message}")]
    private partial void LogNotRemoved(string migration, string message);
}

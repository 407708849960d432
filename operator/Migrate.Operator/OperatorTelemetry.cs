using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Migrate.Operator;

/// <summary>The operator's spans and metrics (OpenTelemetry picks them up by name).</summary>
public static class OperatorTelemetry
{
    public const string Name = "Migrate.Operator";

    public static readonly ActivitySource Source = new(Name);

    private static readonly Meter Meter = new(Name);

    /// <summary>Requests that reached a final phase, tagged by outcome (Succeeded, Failed, RolledBack) and reason.</summary>
    public static readonly Counter<long> Outcomes = Meter.CreateCounter<long>("podmig.operator.migrations", "{migration}", "MigrationRequests that reached a final phase");

    /// <summary>Time from freezing the source to the replacement running.</summary>
    public static readonly Histogram<double> Downtime = Meter.CreateHistogram<double>("podmig.operator.downtime", "ms", "Downtime of successful migrations");

    /// <summary>Time of each phase, tagged by phase.</summary>
    public static readonly Histogram<double> PhaseDuration = Meter.CreateHistogram<double>("podmig.operator.phase.duration", "ms", "Time spent in each phase");

    /// <summary>Time from a request's start to its final phase, tagged by outcome.</summary>
    public static readonly Histogram<double> MigrationDuration = Meter.CreateHistogram<double>("podmig.operator.migration.duration", "ms", "Time from a migration's start to its end");

    private static int _inFlight;

    /// <summary>Migrations between admission and a final phase, as of the controller's last pass.</summary>
    public static readonly ObservableGauge<int> InFlight = Meter.CreateObservableGauge("podmig.operator.migrations.in_flight", () => Volatile.Read(ref _inFlight),
        "{migration}", "Migrations under way (checkpointing, transferring, restoring or cutting over)");

    private static double _oldestSeconds;

    /// <summary>How long the oldest migration under way has been, as of the controller's last pass (alerts on a migration stuck in a phase).</summary>
    public static readonly ObservableGauge<double> OldestInFlight = Meter.CreateObservableGauge("podmig.operator.migrations.oldest", () => Volatile.Read(ref _oldestSeconds),
        "s", "Age of the oldest migration under way (0: none)");

    public static void SetInFlight(int count, double oldestSeconds = 0)
    {
        Volatile.Write(ref _inFlight, count);
        Volatile.Write(ref _oldestSeconds, Math.Max(0, oldestSeconds));
    }

    /// <summary>Checkpoints that reached Ready or Failed, tagged by outcome and reason.</summary>
    public static readonly Counter<long> Checkpoints = Meter.CreateCounter<long>("podmig.operator.checkpoints", "{checkpoint}", "Checkpoints that reached Ready or Failed");

    /// <summary>How long each kept checkpoint froze its pod.</summary>
    public static readonly Histogram<double> CheckpointFreeze = Meter.CreateHistogram<double>("podmig.operator.checkpoint.freeze", "ms", "Time a checkpoint froze its pod");

    /// <summary>Bytes each kept checkpoint holds.</summary>
    public static readonly Histogram<double> CheckpointSize = Meter.CreateHistogram<double>("podmig.operator.checkpoint.size", "By", "Bytes a checkpoint keeps on its node");

    private static long _checkpointBytes;

    /// <summary>Bytes all Ready checkpoints keep on the nodes, as of the checkpoint controller's last pass.</summary>
    public static readonly ObservableGauge<long> CheckpointStorage = Meter.CreateObservableGauge("podmig.operator.checkpoint.storage", () => Interlocked.Read(ref _checkpointBytes),
        "By", "Bytes kept by Ready checkpoints on the nodes");

    public static void SetCheckpointStorage(long bytes) => Interlocked.Exchange(ref _checkpointBytes, bytes);

    /// <summary>A checkpoint reached Ready or Failed: counted, and (kept) its freeze and size recorded.</summary>
    public static void CheckpointEnded(string phase, string? reason, long? freezeMillis, long? sizeBytes)
    {
        Checkpoints.Add(1, new KeyValuePair<string, object?>("outcome", phase), new KeyValuePair<string, object?>("reason", reason));
        if (freezeMillis is { } freeze)
        {
            CheckpointFreeze.Record(freeze);
        }

        if (sizeBytes is { } size)
        {
            CheckpointSize.Record(size);
        }
    }

    /// <summary>A request reached a final phase: its outcome and reason counted, its duration (and downtime, if it moved) recorded.</summary>
    public static void Ended(string outcome, string? reason, DateTime? start, DateTime? end, long? downtimeMillis = null)
    {
        var outcomeTag = new KeyValuePair<string, object?>("outcome", outcome);
        Outcomes.Add(1, outcomeTag, new KeyValuePair<string, object?>("reason", reason));
        if (start is { } began && end is { } ended)
        {
            MigrationDuration.Record((ended - began).TotalMilliseconds, outcomeTag);
        }

        if (downtimeMillis is { } downtime)
        {
            Downtime.Record(downtime);
        }
    }
}

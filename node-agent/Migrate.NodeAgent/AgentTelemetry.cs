using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Migrate.NodeAgent;

/// <summary>The agent's spans and metrics (OpenTelemetry picks them up by name).</summary>
public static class AgentTelemetry
{
    public const string Name = "Migrate.NodeAgent";

    public static readonly ActivitySource Source = new(Name);

    private static readonly Meter Meter = new(Name);

    /// <summary>Time CRIU took to dump one container, in milliseconds.</summary>
    public static readonly Histogram<double> DumpDuration = Meter.CreateHistogram<double>("podmig.agent.dump.duration", "ms", "Time to dump one container with CRIU");

    /// <summary>How long a pod stayed frozen during its final dump on this node, in milliseconds.</summary>
    public static readonly Histogram<double> FrozenDuration = Meter.CreateHistogram<double>("podmig.agent.frozen.duration", "ms", "Time from freezing a pod to its last byte of state written");

    /// <summary>Time of one pre-copy round for one container, in milliseconds.</summary>
    public static readonly Histogram<double> PreDumpDuration = Meter.CreateHistogram<double>("podmig.agent.predump.duration", "ms", "Time of one pre-copy round of one container");

    /// <summary>Memory pages written, tagged by stage (pre-dump or final).</summary>
    public static readonly Counter<long> PagesWritten = Meter.CreateCounter<long>("podmig.agent.pages.written", "{page}", "Memory pages written into checkpoint images");

    /// <summary>Bytes staged for transfer (images and file system state), tagged by kind.</summary>
    public static readonly Counter<long> BytesStaged = Meter.CreateCounter<long>("podmig.agent.bytes.staged", "By", "Bytes of checkpoint state staged on this node");

    /// <summary>Bytes of pre-copy rounds' pages given back on the source once the target staged them (Agent:ReleaseSentRounds).</summary>
    public static readonly Counter<long> BytesReleased = Meter.CreateCounter<long>("podmig.agent.released.bytes", "By", "Bytes of pre-copy rounds given back on the source once the target staged them");

    /// <summary>Image bytes moved between agents, tagged by direction (in, out).</summary>
    public static readonly Counter<long> TransferBytes = Meter.CreateCounter<long>("podmig.agent.transfer.bytes", "By", "Checkpoint image bytes transferred between agents");

    /// <summary>Image streams refused, tagged by reason.</summary>
    public static readonly Counter<long> TransferRejections = Meter.CreateCounter<long>("podmig.agent.transfer.rejections", "{stream}", "Incoming image streams refused");

    /// <summary>Outgoing image streams retried after a failure.</summary>
    public static readonly Counter<long> TransferRetries = Meter.CreateCounter<long>("podmig.agent.transfer.retries", "{retry}", "Image streams resumed after a failure");

    /// <summary>Throughput of a completed outgoing transfer, in MB/s.</summary>
    public static readonly Histogram<double> TransferThroughput = Meter.CreateHistogram<double>("podmig.agent.transfer.throughput", "MBy/s", "Throughput of completed image transfers");

    /// <summary>Checkpoints refused before anything was frozen, tagged by reason.</summary>
    public static readonly Counter<long> Refusals = Meter.CreateCounter<long>("podmig.agent.checkpoint.refusals", "{refusal}", "Checkpoint requests refused");

    private static Func<int> _staged = () => 0;

    /// <summary>Migrations with images staged for sending or being received on this node.</summary>
    public static readonly ObservableGauge<int> MigrationsStaged = Meter.CreateObservableGauge("podmig.agent.migrations.staged", () => _staged(),
        "{migration}", "Migrations with checkpoint images staged or arriving on this node");

    public static void CountStagedWith(Func<int> count) => _staged = count;

    private static Func<(long Available, long Capacity)> _stagingSpace = () => (0, 0);

    /// <summary>Free bytes of the file system the staging directory is on (alerts on a filling disk).</summary>
    public static readonly ObservableGauge<long> StagingAvailable = Meter.CreateObservableGauge("podmig.agent.staging.available", () => _stagingSpace().Available,
        "By", "Bytes available on the file system of the staging directory");

    /// <summary>Size of the file system the staging directory is on.</summary>
    public static readonly ObservableGauge<long> StagingCapacity = Meter.CreateObservableGauge("podmig.agent.staging.capacity", () => _stagingSpace().Capacity,
        "By", "Size of the file system of the staging directory");

    /// <summary>Reports the staging directory's file system (statvfs, through DriveInfo).</summary>
    public static void MeasureStagingIn(string directory) => _stagingSpace = () => SpaceOf(directory);

    private static (long Available, long Capacity) SpaceOf(string directory)
    {
        try
        {
            // a directory not made yet (no migration staged there so far): the file system it will be made on
            var existing = Path.GetFullPath(directory);
            while (!Directory.Exists(existing))
            {
                existing = Path.GetDirectoryName(existing) ?? "/";
            }

            var drive = new DriveInfo(existing);
            return (drive.AvailableFreeSpace, drive.TotalSize);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return (0, 0);
        }
    }

    private static string? _memoryStaging;
    private static Func<long> _memoryReserved = () => 0;

    /// <summary>Free bytes of the memory staging directory's file system (Agent:MemoryStagingDirectory); no series when none is set.</summary>
    public static readonly ObservableGauge<long> MemoryStagingAvailable = Meter.CreateObservableGauge("podmig.agent.memory_staging.available",
        () => _memoryStaging is { } directory ? [new Measurement<long>(SpaceOf(directory).Available)] : Array.Empty<Measurement<long>>(),
        "By", "Bytes available on the file system of the memory staging directory");

    /// <summary>What the migrations staged in memory on this node reckoned they need (the room taken off for the next one); no series when no memory staging directory is set.</summary>
    public static readonly ObservableGauge<long> MemoryStagingReserved = Meter.CreateObservableGauge("podmig.agent.memory_staging.reserved",
        () => _memoryStaging is not null ? [new Measurement<long>(_memoryReserved())] : Array.Empty<Measurement<long>>(),
        "By", "Bytes reckoned by the migrations staged in memory on this node");

    /// <summary>Reports the memory staging directory (null or empty: none) and what its migrations reserved.</summary>
    public static void MeasureMemoryStagingIn(string? directory, Func<long> reserved)
    {
        _memoryStaging = string.IsNullOrEmpty(directory) ? null : directory;
        _memoryReserved = reserved;
    }
}

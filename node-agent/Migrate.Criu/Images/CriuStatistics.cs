using Migrate.Criu.Images.Proto;

namespace Migrate.Criu.Images;

/// <summary>What CRIU measured during a dump or pre-dump (its <c>stats-dump</c> file).</summary>
/// <param name="FreezingTime">Time to freeze the tree.</param>
/// <param name="FrozenTime">Time the tree stayed frozen.</param>
/// <param name="MemoryDumpTime">Time to collect the pages.</param>
/// <param name="MemoryWriteTime">Time to write the pages out.</param>
/// <param name="PagesScanned">Pages CRIU looked at.</param>
/// <param name="PagesSkippedParent">Pages left out because the parent image set has them unchanged.</param>
/// <param name="PagesWritten">Pages written into this image set.</param>
/// <param name="PagesLazy">Pages left for lazy (post-copy) restore.</param>
public sealed record CriuDumpStatistics(
    TimeSpan FreezingTime,
    TimeSpan FrozenTime,
    TimeSpan MemoryDumpTime,
    TimeSpan MemoryWriteTime,
    ulong PagesScanned,
    ulong PagesSkippedParent,
    ulong PagesWritten,
    ulong PagesLazy);

/// <summary>What CRIU measured during a restore (its <c>stats-restore</c> file).</summary>
public sealed record CriuRestoreStatistics(
    ulong PagesCompared,
    ulong PagesSkippedCow,
    TimeSpan ForkingTime,
    TimeSpan RestoreTime,
    ulong PagesRestored);

/// <summary>Reads CRIU's statistics files.</summary>
public static class CriuStatisticsReader
{
    public const string DumpFileName = "stats-dump";
    public const string RestoreFileName = "stats-restore";

    /// <summary>The dump statistics of an image directory, or null if CRIU wrote none.</summary>
    public static CriuDumpStatistics? ReadDump(string imagesDirectory)
    {
        var entry = ReadEntry(Path.Combine(imagesDirectory, DumpFileName));
        if (entry?.Dump is not { } d)
        {
            return null;
        }

        return new CriuDumpStatistics(
            Micros(d.FreezingTime), Micros(d.FrozenTime), Micros(d.MemdumpTime), Micros(d.MemwriteTime),
            d.PagesScanned, d.PagesSkippedParent, d.PagesWritten, d.PagesLazy);
    }

    /// <summary>The restore statistics of an image directory, or null if CRIU wrote none.</summary>
    public static CriuRestoreStatistics? ReadRestore(string imagesDirectory)
    {
        var entry = ReadEntry(Path.Combine(imagesDirectory, RestoreFileName));
        if (entry?.Restore is not { } r)
        {
            return null;
        }

        return new CriuRestoreStatistics(
            r.PagesCompared, r.PagesSkippedCow, Micros(r.ForkingTime), Micros(r.RestoreTime), r.PagesRestored);
    }

    /// <summary>
    /// How long the CRIU run that wrote <paramref name="logPath"/> took by its own clock: the stamp
    /// of its last stamped line (CRIU stamps each line "(seconds.micros)" from its start). Null when
    /// the log is missing or has no stamped line.
    /// </summary>
    public static TimeSpan? LogSpan(string logPath)
    {
        if (!File.Exists(logPath))
        {
            return null;
        }

        TimeSpan? last = null;
        foreach (var line in File.ReadLines(logPath))
        {
            if (LineStamp(line) is { } stamp)
            {
                last = stamp;
            }
        }

        return last;
    }

    /// <summary>The "(seconds.micros)" stamp a CRIU log line starts with, or null when it has none.</summary>
    public static TimeSpan? LineStamp(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        if (line.Length < 3 || line[0] != '(' || line.IndexOf(')', StringComparison.Ordinal) is not (> 1 and var close))
        {
            return null;
        }

        var digits = line.AsSpan(1, close - 1).Trim();
        return decimal.TryParse(digits, System.Globalization.NumberStyles.AllowDecimalPoint, System.Globalization.CultureInfo.InvariantCulture, out var seconds)
            ? TimeSpan.FromTicks((long)(seconds * TimeSpan.TicksPerSecond))
            : null;
    }

    private static StatsEntry? ReadEntry(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        var (magic, records) = CriuImageFile.Read(path);
        if (magic != CriuImageFile.StatsMagic || records.Count == 0)
        {
            throw new InvalidDataException($"{path} is not a CRIU statistics image (magic 0x{magic:x8})");
        }

        return StatsEntry.Parser.ParseFrom(records[0]);
    }

    private static TimeSpan Micros(uint value) => TimeSpan.FromMicroseconds(value);
}

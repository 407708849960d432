using System.Globalization;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>
/// Page cache made while the tree still runs for the pages files a frozen capture will write
/// (<see cref="MemorySnapshot.CaptureLazy"/>): one file of zeros per task, about as large as what
/// the last round found written, which the capture then writes over (<see cref="PagemapBuilder"/>).
/// A page of a new file costs the kernel a page of free memory; on a virtual machine that hands
/// free memory back to its host (free page reporting, as here) the first touch of such a page
/// costs several microseconds more, and while the pod is frozen that is downtime. The files end
/// in <c>.tmp</c>, which a transfer never sends; whatever the capture did not take is removed.
/// </summary>
public static class CaptureSpares
{
    /// <summary>Room beyond the last round's pages: the final delta of a steady writer is about the same as its last round's.</summary>
    public const int MarginPercent = 25;

    /// <summary>At least this much per task (a round that found almost nothing).</summary>
    public const long MinimumBytes = 1L << 20;

    /// <summary>A spare never grows past this per migration container: beyond it the writer is too fast for pre-copy to matter.</summary>
    public const long MaximumTotalBytes = 512L << 20;

    /// <summary>The spare of task <paramref name="taskId"/> beside the session's image sets.</summary>
    public static string PathFor(string baseDirectory, int taskId) =>
        Path.Combine(baseDirectory, string.Create(CultureInfo.InvariantCulture, $"capture-spare-{taskId}.pages.tmp"));

    /// <summary>
    /// The size of each task's spare, from the pages the last round found written per task: that
    /// much plus a margin, at least <see cref="MinimumBytes"/>, all of them scaled down together to
    /// fit <see cref="MaximumTotalBytes"/>. Whole pages.
    /// </summary>
    public static IReadOnlyDictionary<int, long> Sizes(IReadOnlyDictionary<int, ulong> lastRoundPages)
    {
        ArgumentNullException.ThrowIfNull(lastRoundPages);
        var wanted = lastRoundPages.ToDictionary(p => p.Key, p => Math.Max(MinimumBytes, (long)Math.Min(p.Value, (ulong)(MaximumTotalBytes / PagemapEntry.PageSize)) * PagemapEntry.PageSize * (100 + MarginPercent) / 100));
        long total = wanted.Values.Sum();
        return total <= MaximumTotalBytes
            ? wanted
            : wanted.ToDictionary(w => w.Key, w => w.Value * MaximumTotalBytes / total / PagemapEntry.PageSize * PagemapEntry.PageSize);
    }

    /// <summary>Writes the spares of a session whose last round is <paramref name="lastRound"/>; returns the bytes written.</summary>
    public static long Prepare(string baseDirectory, string lastRound)
    {
        var pages = CriuPagemap.ReadAll(lastRound).GroupBy(m => m.Id).ToDictionary(g => g.Key, g => g.Aggregate(0UL, (sum, m) => sum + m.PresentPages));
        long written = 0;
        var zeros = new byte[1 << 20];
        foreach (var (task, size) in Sizes(pages))
        {
            var path = PathFor(baseDirectory, task);
            using var file = File.OpenHandle(path, FileMode.Create, FileAccess.Write);
            for (long at = 0; at < size; at += zeros.Length)
            {
                RandomAccess.Write(file, zeros.AsSpan(0, (int)Math.Min(zeros.Length, size - at)), at);
            }

            written += size;
        }

        return written;
    }

    /// <summary>Removes the spares left beside a session's image sets.</summary>
    public static void Remove(string baseDirectory)
    {
        if (Directory.Exists(baseDirectory))
        {
            foreach (var spare in Directory.EnumerateFiles(baseDirectory, "capture-spare-*.pages.tmp"))
            {
                File.Delete(spare);
            }
        }
    }
}

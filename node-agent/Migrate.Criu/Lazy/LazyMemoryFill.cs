using Migrate.Criu.Images;
using System.Globalization;
using System.Text.RegularExpressions;

namespace Migrate.Criu.Lazy;

/// <summary>Where a lazy restore's memory stands.</summary>
public enum LazyMemoryState
{
    /// <summary>The helpers still run: pages are still arriving.</summary>
    Filling,

    /// <summary>Every page is in place: the daemon closed the session without an error.</summary>
    Filled,

    /// <summary>A helper ended before every page was in place: the restored processes may read zeros.</summary>
    Failed,
}

/// <summary>
/// Whether the memory of a lazily restored process tree is all in place, judged from what its
/// helpers leave behind: the page server's last line (written once, as it ends), whether it still
/// runs, and CRIU's lazy-pages daemon's log. The daemon closes the session after an error too, so
/// "closed by the daemon" is only a success when the daemon logged no error.
/// </summary>
public sealed partial record LazyMemoryFill(LazyMemoryState State, string? Error = null, long FillMillis = 0)
{
    private const string ReportPrefix = "page server: ";
    private const string FailurePrefix = "page server failed: ";
    private const string ClosedSuffix = "; closed by the daemon";
    private const string GoneSuffix = "; the daemon went away";

    private const string PageServerFailed = "the page server failed: ";

    private const string FillerPrefix = "memory filler: ";
    private const string FillerFailurePrefix = "memory filler failed: ";
    private const string FillerFailed = "the memory filler failed: ";
    private const string FilledSuffix = "; every page in place";

    public static LazyMemoryFill Filling { get; } = new(LazyMemoryState.Filling);

    /// <summary>The page server's last line for a session that ended (see <see cref="Judge"/>).</summary>
    public static string ReportLine(PageServerReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        return string.Create(CultureInfo.InvariantCulture,
            $"{ReportPrefix}{report.Requests} requests ({report.SinglePageRequests} of one page), {report.PagesServed} pages ({report.BytesServed} bytes{(report.PagesFromSource > 0 ? $", {report.PagesFromSource} pages from the source, {report.PagesFetched} fetched, {report.PagesPrefetched} of them ahead of the daemon" : "")}) in {report.Elapsed.TotalMilliseconds:0} ms, {report.Answering.TotalMilliseconds:0} ms of it answering{(report.ClosedByDaemon ? ClosedSuffix : GoneSuffix)}");
    }

    /// <summary>The memory filler's last line once every page is in place (see <see cref="Judge"/>).</summary>
    public static string FillerLine(MemoryFillerReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        return string.Create(CultureInfo.InvariantCulture,
            $"{FillerPrefix}{report.Faults} faults (answered in {report.Answering.TotalMilliseconds:0} ms in all, {report.LongestAnswer.TotalMilliseconds:0.0} ms at most), {report.Pieces} pieces, {report.Pages} pages ({report.Pages * PagemapEntry.PageSize} bytes{(report.Source is { } source ? $", {source.Pages} pages from the source, {source.Fetched} fetched, {source.Prefetched} of them streamed{(source.PrefetchFailure is { } failure ? $" until the stream failed: {failure}" : "")}" : "")}) in {report.Elapsed.TotalMilliseconds:0} ms: reading {report.Reading.TotalMilliseconds:0} ms, copying into the processes {report.Copying.TotalMilliseconds:0} ms ({report.Mapped} copies straight from the staged files, {report.Beside} pieces copied beside another on a second thread){FilledSuffix}");
    }

    /// <summary>
    /// A failed lazy restore's error, followed by why its memory could not come when its page server
    /// failed (a page refused for its checksum, the source unreachable): CRIU itself says only that
    /// it killed the restored processes. Any other verdict leaves the error as it is.
    /// </summary>
    public static string ExplainRestoreFailure(string restoreError, LazyMemoryFill fill)
    {
        ArgumentNullException.ThrowIfNull(fill);
        return fill is { State: LazyMemoryState.Failed, Error: { } why } && (why.StartsWith(PageServerFailed, StringComparison.Ordinal) || why.StartsWith(FillerFailed, StringComparison.Ordinal))
            ? $"{restoreError}; {why}"
            : restoreError;
    }

    /// <summary>The page server's last line when it could not serve.</summary>
    public static string FailureLine(string why) => FailurePrefix + why;

    /// <summary>The memory filler's last line when it could not fill.</summary>
    public static string FillerFailureLine(string why) => FillerFailurePrefix + why;

    /// <summary>
    /// The verdict from the page server's log (null: none yet), whether the page server still
    /// runs, and the daemon's log (null: none). A line counts only once it ends with a newline.
    /// </summary>
    public static LazyMemoryFill Judge(string? pageServerLog, bool pageServerAlive, string? daemonLog)
    {
        var last = LastLine(pageServerLog);
        if (last is null)
        {
            return pageServerAlive ? Filling
                : new LazyMemoryFill(LazyMemoryState.Failed, "the lazy-memory helper (page server or memory filler) ended without reporting (was it killed?) before every page was in place" + DaemonErrors(daemonLog));
        }

        if (last.StartsWith(FailurePrefix, StringComparison.Ordinal))
        {
            return new LazyMemoryFill(LazyMemoryState.Failed, PageServerFailed + last[FailurePrefix.Length..] + DaemonErrors(daemonLog));
        }

        if (last.StartsWith(FillerFailurePrefix, StringComparison.Ordinal))
        {
            return new LazyMemoryFill(LazyMemoryState.Failed, FillerFailed + last[FillerFailurePrefix.Length..]);
        }

        if (last.StartsWith(FillerPrefix, StringComparison.Ordinal))
        {
            return last.EndsWith(FilledSuffix, StringComparison.Ordinal)
                ? new LazyMemoryFill(LazyMemoryState.Filled, null, ElapsedMillis(last))
                : new LazyMemoryFill(LazyMemoryState.Failed, "the memory filler's last line is not one it writes: " + last);
        }

        if (last.EndsWith(GoneSuffix, StringComparison.Ordinal))
        {
            return new LazyMemoryFill(LazyMemoryState.Failed, "CRIU's lazy-pages daemon went away before every page was in place" + DaemonErrors(daemonLog));
        }

        if (!last.EndsWith(ClosedSuffix, StringComparison.Ordinal))
        {
            return new LazyMemoryFill(LazyMemoryState.Failed, "the page server's last line is not one it writes: " + last);
        }

        if (ErrorLines(daemonLog).Count > 0)
        {
            return new LazyMemoryFill(LazyMemoryState.Failed, "CRIU's lazy-pages daemon ended the session after an error" + DaemonErrors(daemonLog));
        }

        return new LazyMemoryFill(LazyMemoryState.Filled, null, ElapsedMillis(last));
    }

    private static long ElapsedMillis(string line) =>
        Elapsed().Match(line) is { Success: true } m ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;

    /// <summary>The page server's last line (its report or why it failed), once it is written whole; null before.</summary>
    public static string? LastLine(string? pageServerLog) =>
        CompleteLines(pageServerLog).LastOrDefault(l => l.StartsWith(ReportPrefix, StringComparison.Ordinal) || l.StartsWith(FailurePrefix, StringComparison.Ordinal)
            || l.StartsWith(FillerPrefix, StringComparison.Ordinal) || l.StartsWith(FillerFailurePrefix, StringComparison.Ordinal));

    /// <summary>The verdict for the helpers recorded in a restore's work directory.</summary>
    public static LazyMemoryFill Observe(string workDirectory)
    {
        var serverLog = Path.Combine(workDirectory, LazyRestoreHelpers.PageServerLog);
        var daemonLog = Path.Combine(workDirectory, LazyPagesDaemon.LogName);
        var server = Read(serverLog);
        bool alive = true;
        if (Judge(server, pageServerAlive: true, null).State == LazyMemoryState.Filling)
        {
            alive = LazyRestoreHelpers.RecordedPageServer(workDirectory) is { } pid && LazyRestoreHelpers.IsHelper(pid);
            if (!alive)
            {
                server = Read(serverLog); // it ended: it may have written its last line just now
            }
        }

        return Judge(server, alive, Read(daemonLog));
    }

    private static string? Read(string path)
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

    private static IEnumerable<string> CompleteLines(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return [];
        }

        int end = text.LastIndexOf('\n');
        return end < 0 ? [] : text[..end].Split('\n').Select(l => l.TrimEnd('\r'));
    }

    private static List<string> ErrorLines(string? daemonLog) =>
        CompleteLines(daemonLog).Where(l => CriuError().IsMatch(l)).ToList();

    private static string DaemonErrors(string? daemonLog) =>
        ErrorLines(daemonLog) is { Count: > 0 } errors ? " (the daemon's log: " + string.Join(" | ", errors.TakeLast(3).Select(e => e.Trim())) + ")" : "";

    [GeneratedRegex(@"\bError \(")]
    private static partial Regex CriuError();

    [GeneratedRegex(@" in (\d+) ms[;,:]")]
    private static partial Regex Elapsed();
}

using Migrate.Criu.Lazy;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>
/// When a lazy restore's memory counts as all in place: only when the page server wrote that the
/// daemon closed the session and the daemon logged no error. Everything else is still filling (the
/// page server runs) or a failure naming why (the source must not be let go).
/// </summary>
public sealed class LazyMemoryFillTests
{
    private static readonly string Closed = LazyMemoryFill.ReportLine(new PageServerReport(12, 16384, true, TimeSpan.FromMilliseconds(431))) + "\n";
    private static readonly string Gone = LazyMemoryFill.ReportLine(new PageServerReport(3, 40, false, TimeSpan.FromMilliseconds(20))) + "\n";
    private static readonly string Filled = LazyMemoryFill.FillerLine(new MemoryFillerReport(3, 64, 16384, TimeSpan.FromMilliseconds(212), TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(150))) + "\n";
    private const string QuietDaemon = "(00.000100) Version: 4.1.1\n(00.431000) uffd: 12: UFFD transferred pages: (16384/16384)\n";
    private const string FailedDaemon = "(00.000100) Version: 4.1.1\n(00.120000) Error (criu/uffd.c:1010): uffd: 12: UFFDIO_COPY failed: Bad address\n";

    public static TheoryData<string, string?, bool, string?, LazyMemoryState, string?> Cases() => new()
    {
        { "no line yet, the server runs", null, true, null, LazyMemoryState.Filling, null },
        { "a line still being written", Closed.TrimEnd('\n'), true, QuietDaemon, LazyMemoryState.Filling, null },
        { "closed by the daemon, no error", Closed, true, QuietDaemon, LazyMemoryState.Filled, null },
        { "closed by the daemon, the server since gone", Closed, false, QuietDaemon, LazyMemoryState.Filled, null },
        { "closed by the daemon after an error", Closed, false, FailedDaemon, LazyMemoryState.Failed, "ended the session after an error (the daemon's log: (00.120000) Error (criu/uffd.c:1010)" },
        { "the daemon went away", Gone, false, QuietDaemon, LazyMemoryState.Failed, "CRIU's lazy-pages daemon went away before every page was in place" },
        { "the server could not serve", "starting\n" + LazyMemoryFill.FailureLine("page 0x7f00 of pid 12 is in no image") + "\n", false, null, LazyMemoryState.Failed, "the page server failed: page 0x7f00 of pid 12 is in no image" },
        { "the server killed without a word", null, false, FailedDaemon, LazyMemoryState.Failed, "the lazy-memory helper (page server or memory filler) ended without reporting (was it killed?)" },
        { "killed mid-line", Closed.TrimEnd('\n'), false, null, LazyMemoryState.Failed, "ended without reporting" },
        { "a line it never writes", "page server: whatever\n", false, null, LazyMemoryState.Failed, "not one it writes" },
        { "the memory filler put every page in place", Filled, false, null, LazyMemoryState.Filled, null },
        { "the memory filler still writing its line", Filled.TrimEnd('\n'), true, null, LazyMemoryState.Filling, null },
        { "the memory filler killed mid-line", Filled.TrimEnd('\n'), false, null, LazyMemoryState.Failed, "ended without reporting" },
        { "a filler line it never writes", "memory filler: whatever\n", false, null, LazyMemoryState.Failed, "the memory filler's last line is not one it writes" },
        { "the memory filler could not fill", "memory filler: 3 faults\n" + LazyMemoryFill.FillerFailureLine("no restore connected within 300 s") + "\n", false, null, LazyMemoryState.Failed,
            "the memory filler failed: no restore connected within 300 s" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Judges_the_helpers_traces(string _, string? serverLog, bool serverAlive, string? daemonLog, LazyMemoryState expected, string? errorPart)
    {
        var fill = LazyMemoryFill.Judge(serverLog, serverAlive, daemonLog);
        Assert.Equal(expected, fill.State);
        if (errorPart is null)
        {
            Assert.Null(fill.Error);
        }
        else
        {
            Assert.Contains(errorPart, fill.Error, StringComparison.Ordinal);
        }
    }

    /// <summary>The line the agent logs once a page server ended: its last whole line, report or failure.</summary>
    public static TheoryData<string, string?, string?> LastLines() => new()
    {
        { "none yet", null, null },
        { "a report still being written", Closed.TrimEnd('\n'), null },
        { "the report", "starting\n" + Closed, Closed.TrimEnd('\n') },
        { "a failure after other lines", "starting\n" + LazyMemoryFill.FailureLine("no page at 0x7f00") + "\n", LazyMemoryFill.FailureLine("no page at 0x7f00") },
        { "the filler's failure", "memory filler: listening\n" + LazyMemoryFill.FillerFailureLine("the restore went away") + "\n", LazyMemoryFill.FillerFailureLine("the restore went away") },
        { "only lines it does not end with", "starting\nserving\n", null },
    };

    [Theory]
    [MemberData(nameof(LastLines))]
    public void Finds_the_page_servers_last_line(string _, string? serverLog, string? expected) =>
        Assert.Equal(expected, LazyMemoryFill.LastLine(serverLog));

    private const string CriuKilled = "Killing processes because of failure on restore";

    /// <summary>A failed restore's error, and what is added to it, for the helpers' traces.</summary>
    public static TheoryData<string, string?, bool, string> RestoreFailures() => new()
    {
        { "a page refused: the page server says so", LazyMemoryFill.FailureLine("4 pages from the source do not match their checksum: refused") + "\n", false,
            CriuKilled + "; the page server failed: 4 pages from the source do not match their checksum: refused" },
        { "the memory filler could not copy: it says so", LazyMemoryFill.FillerFailureLine("UFFDIO_COPY at 0x7f00 failed: EINVAL") + "\n", false,
            CriuKilled + "; the memory filler failed: UFFDIO_COPY at 0x7f00 failed: EINVAL" },
        { "the page server still runs: nothing to add yet", null, true, CriuKilled },
        { "the daemon went away with the restore: nothing the restore did not say", Gone, false, CriuKilled },
        { "the page server killed: not its reason", null, false, CriuKilled },
        { "the memory all came: the restore failed for its own reason", Closed, false, CriuKilled },
    };

    [Theory]
    [MemberData(nameof(RestoreFailures))]
    public void A_failed_lazy_restore_names_a_page_server_failure_after_CRIUs_words(string _, string? serverLog, bool serverAlive, string expected)
    {
        Assert.Equal(expected, LazyMemoryFill.ExplainRestoreFailure(CriuKilled, LazyMemoryFill.Judge(serverLog, serverAlive, QuietDaemon)));
    }

    [Fact]
    public void A_filled_session_says_how_long_the_pages_took()
    {
        Assert.Equal(431, LazyMemoryFill.Judge(Closed, false, QuietDaemon).FillMillis);
        Assert.Equal(212, LazyMemoryFill.Judge(Filled, false, null).FillMillis);
    }
}

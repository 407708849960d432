using System.Diagnostics;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Write tracking without soft-dirty (userfaultfd write-protection and PAGEMAP_SCAN) on real
/// processes of this kernel: what the scans report, what the traced processes notice (nothing),
/// and the decisions as tables. Restores through it are in <see cref="LazyRestoreTests"/>.
/// </summary>
public sealed class WriteTrackingTests(ITestOutputHelper output)
{
    private const ulong Seed = 53;
    private const ulong Page = PagemapEntry.PageSize;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);

    [Fact]
    public void This_machine_can_track_writes()
    {
        // the CI machines run kernel 6.18 on x86_64: tracking must work there, and say what is missing if not
        Assert.Null(WriteTracker.WhyUnsupported());
    }

    [Fact]
    public void An_idle_tree_armed_before_a_round_is_read_again_only_where_it_wrote_and_keeps_running_without_a_trace_of_it()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 0));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var tracker = WriteTracker.Arm(tree.RootPid, beforeRound: 1);
        Assert.Empty(tracker.Notes);
        Assert.Equal(1 + IsolatedProcessTree.Descendants(tree.RootPid).Count, tracker.ArmedTasks);
        Assert.DoesNotContain(Descriptors(tree.RootPid), d => d.Contains("userfaultfd", StringComparison.Ordinal));

        var first = MemorySnapshot.Write(tree.RootPid, Path.Combine(tree.Directory, "round-1"), null);
        long afterFirst = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterFirst + 3, TickTimeout, "ticks after the first round");
        var changes = tracker.Scan();
        var second = MemorySnapshot.Write(tree.RootPid, Path.Combine(tree.Directory, "round-2"), first.Directory, changes);
        var again = tracker.Scan();
        output.WriteLine($"round 1 read {first.PagesRead} of {first.PagesScanned} pages; the scan found {changes.WrittenPages} written; " +
                         $"round 2 read {second.PagesRead} of {second.PagesScanned} ({second.PagesWritten} changed) in {second.Elapsed.TotalMilliseconds:0} ms " +
                         $"against {first.Elapsed.TotalMilliseconds:0} ms; right after: {again.WrittenPages} written");

        Assert.True(first.PagesRead >= (ulong)mib * 256, $"the first round must read the {mib} MiB buffer, it read {first.PagesRead} pages");
        Assert.Equal(first.PagesScanned, first.PagesRead);
        Assert.True(changes.WrittenPages > 0, "a ticking process writes its counters and stack");
        Assert.True(second.PagesRead * 20 < first.PagesRead, $"round 2 must read only what was written: {second.PagesRead} of {second.PagesScanned} pages");
        Assert.True(second.PagesRead >= second.PagesWritten, "every page written into round 2 was read");
        Assert.Equal(second.PagesScanned, second.PagesWritten + second.PagesUnchanged);

        // nothing of the tracking is visible to the process: it ticks on, its buffer intact
        long afterSecond = tree.ReadTicks()[^1].Tick;
        var next = tree.WaitForTick(t => t.Tick >= afterSecond + 2, TickTimeout, "ticks after the second round");
        Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "the buffer checks out while tracked");
        Assert.DoesNotContain(Descriptors(tree.RootPid), d => d.Contains("userfaultfd", StringComparison.Ordinal));
        Assert.True(next.Tick >= afterSecond + 2);
    }

    [Fact]
    public async Task A_process_stopped_inside_a_blocking_read_goes_on_reading_after_it_was_armed()
    {
        // cat blocks in read(2) on its pipe; the trace interrupts that call, which must be restarted, not fail with EINTR.
        // It runs under a shell, as a workload is never the agent's own child (whose stops .NET's child reaping would see).
        var start = new ProcessStartInfo("sh", ["-c", "cat; echo cat exited $?"]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        using var cat = Process.Start(start)!;
        try
        {
            int catPid = await FirstChildAsync(cat.Id);
            using (var tracker = WriteTracker.Arm(catPid, beforeRound: 1))
            {
                Assert.Equal(1, tracker.ArmedTasks);
                await Task.Delay(100);
                Assert.False(cat.HasExited, "cat must still be waiting for input");
                await cat.StandardInput.WriteLineAsync("after the trace");
                await cat.StandardInput.FlushAsync();
                Assert.Equal("after the trace", await cat.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10)));
            }

            cat.StandardInput.Close();
            Assert.Equal("cat exited 0", await cat.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10)));
            await cat.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal("", await cat.StandardError.ReadToEndAsync());
        }
        finally
        {
            if (!cat.HasExited)
            {
                cat.Kill();
            }
        }
    }

    [Fact]
    public async Task A_process_that_execs_after_it_was_armed_has_nothing_tracked_any_more()
    {
        // same PID, new memory: no page of the new program may pass as unchanged
        var start = new ProcessStartInfo("sh", ["-c", "sh -c 'read line; exec sleep 60'"]) { RedirectStandardInput = true, UseShellExecute = false };
        using var outer = Process.Start(start)!;
        try
        {
            int pid = await FirstChildAsync(outer.Id);
            using var tracker = WriteTracker.Arm(pid, beforeRound: 1);
            var before = tracker.Scan().For(pid);
            Assert.NotNull(before);
            Assert.NotEmpty(before.Tracked);

            await outer.StandardInput.WriteLineAsync("go");
            await outer.StandardInput.FlushAsync();
            for (int i = 0; i < 100 && !File.ReadAllText($"/proc/{pid}/cmdline").StartsWith("sleep", StringComparison.Ordinal); i++)
            {
                await Task.Delay(20);
            }

            Assert.StartsWith("sleep", File.ReadAllText($"/proc/{pid}/cmdline"), StringComparison.Ordinal);
            var after = tracker.Scan().For(pid);
            Assert.NotNull(after);
            Assert.Empty(after.Tracked);
            Assert.False(after.IsUnchanged(before.Tracked[0].Start));
        }
        finally
        {
            foreach (var pid in IsolatedProcessTree.Descendants(outer.Id))
            {
                _ = Migrate.Criu.Lazy.DetachedProcess.Kill(pid);
            }

            outer.Kill();
            await outer.WaitForExitAsync();
        }
    }

    [Fact]
    public void Trackers_released_beside_a_handoff_are_gone_for_their_owner_at_once_and_closed_soon_after_with_the_process_untouched()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 0));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var trackers = new WriteTrackers(enabled: true, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        int Held() => Descriptors(Environment.ProcessId).Count(d => d.Contains("userfaultfd", StringComparison.Ordinal));
        int before = Held();
        var tracker = trackers.ForRounds("m", "main", tree.RootPid)(1);
        Assert.NotNull(tracker);
        Assert.Equal(before + tracker.ArmedTasks, Held());

        var clock = System.Diagnostics.Stopwatch.StartNew();
        trackers.ReleaseBeside("m");
        var returned = clock.Elapsed;
        // from the return on, the owner has no tracker (a frozen capture would compare its pages)...
        Assert.Null(trackers.ForFrozen("m", "main")(2));
        // ...and its descriptors are closed on another thread
        while (Held() > before && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            Thread.Sleep(5);
        }

        output.WriteLine($"released beside: returned after {returned.TotalMilliseconds:0.0} ms, descriptors closed after {clock.Elapsed.TotalMilliseconds:0} ms");
        Assert.Equal(before, Held());
        long after = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= after + 2, TickTimeout, "ticks after the release");
        Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "the buffer checks out after the release");
        trackers.Release("m"); // nothing left: changes nothing
        Assert.Equal(before, Held());
    }

    [Fact]
    public void Arming_a_tree_that_is_gone_fails_naming_it_and_agents_told_not_to_track_make_no_tracker()
    {
        var error = Assert.Throws<ArgumentException>(() => WriteTracker.Arm(int.MaxValue - 7, beforeRound: 1));
        Assert.Contains($"process {int.MaxValue - 7} does not exist", error.Message, StringComparison.Ordinal);

        using var trackers = new WriteTrackers(enabled: false, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        Assert.Equal("turned off (Agent:WriteTracking=false)", trackers.WhyNot);
        Assert.Null(trackers.ForRounds("m1", "app", Environment.ProcessId)(1));
        Assert.Null(trackers.ForFrozen("m1", "app")(2));
    }

    public static TheoryData<string, ulong, bool> UnchangedPages => new()
    {
        { "inside a tracked range, not written", 0x11000, true },
        { "first page of a tracked range", 0x10000, true },
        { "last page of a tracked range", 0x1f000, true },
        { "just past a tracked range", 0x20000, false },
        { "below every range", 0x0f000, false },
        { "written", 0x14000, false },
        { "last written page", 0x15000, false },
        { "after the written run", 0x16000, true },
        { "second tracked range, touching runs merged", 0x30000, true },
        { "written in the second range", 0x38000, false },
        { "between the ranges (mapped after arming)", 0x25000, false },
    };

    [Theory]
    [MemberData(nameof(UnchangedPages))]
    public void A_page_is_unchanged_only_where_it_is_tracked_and_was_not_written(string why, ulong address, bool unchanged)
    {
        var pages = new TrackedPages(
            [new PageRange(0x30000, 0x38000), new PageRange(0x10000, 0x20000), new PageRange(0x38000, 0x40000)],
            [new PageRange(0x38000, 0x39000), new PageRange(0x14000, 0x16000), new PageRange(0x22000, 0x23000)]);
        Assert.True(unchanged == pages.IsUnchanged(address), why);
        Assert.Equal([new PageRange(0x10000, 0x20000), new PageRange(0x30000, 0x40000)], pages.Tracked);
        Assert.Equal(4UL, pages.WrittenPages);
    }

    public static TheoryData<string, ulong, int, int> UnchangedRuns => new()
    {
        { "from a tracked range's start to the first written page", 0x10000, 100, 4 },
        { "capped by the pages asked for", 0x10000, 2, 2 },
        { "from after the written run to the range's end", 0x16000, 100, 10 },
        { "a written page: none", 0x14000, 100, 0 },
        { "outside every tracked range: none", 0x25000, 100, 0 },
        { "up to a written page inside the second range", 0x30000, 100, 8 },
        { "after it, to the merged range's end", 0x39000, 100, 7 },
        { "none asked for", 0x10000, 0, 0 },
    };

    [Theory]
    [MemberData(nameof(UnchangedRuns))]
    public void Unchanged_pages_are_counted_in_runs_that_stop_at_the_first_written_or_untracked_page(string why, ulong address, int maxPages, int run)
    {
        var pages = new TrackedPages(
            [new PageRange(0x30000, 0x38000), new PageRange(0x10000, 0x20000), new PageRange(0x38000, 0x40000)],
            [new PageRange(0x38000, 0x39000), new PageRange(0x14000, 0x16000), new PageRange(0x22000, 0x23000)]);
        Assert.True(run == pages.UnchangedRun(address, maxPages), $"{why}: {pages.UnchangedRun(address, maxPages)} pages, expected {run}");
    }

    public static TheoryData<string, long, long, long, long, long> Restarts => new()
    {
        // why, orig_rax, rax, expected rax, expected rip change, expected orig_rax
        { "read interrupted (ERESTARTSYS): called again", 0, -512, 0, -2, -1 },
        { "ERESTARTNOINTR: called again", 7, -513, 7, -2, -1 },
        { "ERESTARTNOHAND with no handler: called again", 23, -514, 23, -2, -1 },
        { "nanosleep (ERESTART_RESTARTBLOCK): restart_syscall", 230, -516, 219, -2, -1 },
        { "a call that returned: left as it is", 1, 5, 5, 0, -1 },
        { "a call that failed with EINTR: left as it is", 0, -4, -4, 0, -1 },
        { "stopped outside any call: left as it is", -1, 42, 42, 0, -1 },
    };

    [Theory]
    [MemberData(nameof(Restarts))]
    public void A_call_the_stop_interrupted_is_restarted_as_the_kernel_would(string why, long origRax, long rax, long expectedRax, long ripChange, long expectedOrigRax)
    {
        var saved = new ulong[27];
        saved[15] = (ulong)origRax;
        saved[10] = (ulong)rax;
        saved[16] = 0x7000_1002;
        var after = SyscallInjection.AfterStop(saved);
        Assert.True((ulong)expectedRax == after[10], why);
        Assert.Equal((ulong)(0x7000_1002 + ripChange), after[16]);
        Assert.Equal((ulong)expectedOrigRax, after[15]);
        Assert.Equal((ulong)rax, saved[10]); // the saved copy is left alone
    }

    /// <summary>The first process started under <paramref name="parent"/>, given a moment to reach its blocking call.</summary>
    private static async Task<int> FirstChildAsync(int parent)
    {
        int child = 0;
        for (int i = 0; i < 100 && child == 0; i++)
        {
            await Task.Delay(20);
            child = IsolatedProcessTree.Descendants(parent) is [var first, ..] ? first : 0;
        }

        Assert.NotEqual(0, child);
        await Task.Delay(100);
        return child;
    }

    private static string[] Descriptors(int pid) =>
        [.. Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Select(f => new FileInfo(f).LinkTarget ?? "")];
}

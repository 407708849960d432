using System.Globalization;
using System.Diagnostics;
using System.Net.Sockets;
using Migrate.Criu;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.Criu.Lazy;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The lazy data path on real process trees with real CRIU: a final dump that writes no memory
/// (its pages are read from the frozen tree into a child of the last pre-copy round), restored by
/// CRIU before its memory is in place, the pages served by our page server to CRIU's lazy-pages daemon.
/// </summary>
public sealed class LazyRestoreTests(ITestOutputHelper output)
{
    private const ulong Seed = 91;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);
    private readonly CriuClient _criu = new();

    [Fact]
    public async Task A_lazily_dumped_tree_restores_before_its_memory_arrives_and_every_page_comes_from_the_staged_rounds()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        var session = new PreCopySession(_criu, new CriuOptions
        {
            Pid = tree.RootPid,
            ImagesDirectory = Path.Combine(tree.Directory, "images"),
            LeaveRunning = true,
            FreezeCgroup = cgroup.Freezer.Directory,
        });
        var round = session.PreDump();
        long afterRound = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterRound + 5, TickTimeout, "half a second of rewriting after the round");

        cgroup.Freezer.Freeze();
        var final = session.DumpLazy();
        var last = tree.ReadTicks()[^1];
        Assert.True(cgroup.Freezer.IsFrozen, "the tree must stay frozen through the dump and the capture");
        var maps = CriuPagemap.ReadAll(final.Directory);
        ulong written = maps.Aggregate(0UL, (s, m) => s + m.PresentPages);
        ulong lazy = maps.Aggregate(0UL, (s, m) => s + m.Entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0).Aggregate(0UL, (t, e) => t + e.PageCount));
        output.WriteLine($"round 1: {round.PagesWritten} pages; final: CRIU wrote {written} pages, {lazy} lazy; memory: {final.PagesWritten} changed, " +
                         $"{final.PagesInParent} from the round (capture {final.DeduplicationTime.TotalMilliseconds:0} ms, CRIU {final.Dump.Elapsed.TotalMilliseconds:0} ms)");
        Assert.True(lazy >= (ulong)mib * 256, $"the {mib} MiB buffer must be lazy in CRIU's dump, {lazy} pages were");
        Assert.True(written < lazy / 20, $"CRIU must not write the lazy memory: it wrote {written} pages");
        Assert.Equal(lazy, final.PagesWritten + final.PagesInParent);
        Assert.True(final.PagesInParent > final.PagesWritten, "most pages must come from the round");
        Assert.True(final.PagesWritten > 0, "the pages rewritten since the round must be captured");

        cgroup.KillFrozenTree(tree.RootPid);
        var (serverEnd, daemonEnd) = DetachedProcess.SocketPair();
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        int daemon = LazyPagesDaemon.Start("criu", final.Directory, work, daemonEnd, TimeSpan.FromSeconds(10));
        daemonEnd.Dispose();
        using var server = new PageServer(final.MemoryDirectory!, PageServerProtocol.For(_criu.GetVersion()));
        var serving = Task.Run(() =>
        {
            using var stream = new NetworkStream(serverEnd, ownsSocket: true);
            return server.Serve(stream);
        });
        try
        {
            var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, WorkDirectory = work, Root = tree.RootFilesystem, LazyPages = true }, asChild: true);
            tree.AdoptRestoredRoot(restore.Pid);
            var firstAfter = tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the lazy restore");
            Assert.Equal(last.Tick + 1, firstAfter.Tick);
            var verified = tree.RequestVerification(TickTimeout);
            Assert.True(verified.VerifiedOk, $"buffer check after the lazy restore: {verified.Verified}");

            var report = await serving.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"restore {restore.Elapsed.TotalMilliseconds:0} ms; page server: {report.Requests} requests, {report.PagesServed} pages in {report.Elapsed.TotalMilliseconds:0} ms");
            Assert.True(report.ClosedByDaemon, "the daemon must close the session when it has every page");
            Assert.Equal((long)lazy, report.PagesServed);
            Assert.Equal(0, WaitForExit(daemon, TimeSpan.FromSeconds(10)));
            Figures.Record(nameof(LazyRestoreTests), "lazy_restore_ms_64mib", restore.Elapsed.TotalMilliseconds, "ms");
        }
        finally
        {
            DetachedProcess.Kill(daemon);
            WaitForExit(daemon, TimeSpan.FromSeconds(5));
            serverEnd.Dispose();
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void The_restore_runtime_serves_the_pages_as_a_detached_helper_which_ends_when_every_page_is_in(bool criuDaemon)
    {
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        var (final, last, lazy) = DumpLazily(tree, cgroup);
        cgroup.KillFrozenTree(tree.RootPid);
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;

        Assert.True(LazyRestoreHelpers.Needed(final.Directory));
        var helpers = LazyRestoreHelpers.Start("criu", _criu.GetVersion(), RepositoryLayout.RestoreRuntime, final.Directory, final.MemoryDirectory!, work, TimeSpan.FromSeconds(10), criuDaemon);
        try
        {
            Assert.True(LazyRestoreHelpers.IsHelper(helpers.DaemonPid), "the daemon runs CRIU's lazy-pages, or podmig-runc's filling mode");
            Assert.True(LazyRestoreHelpers.IsHelper(helpers.PageServerPid), "the page server runs podmig-runc's serving mode, or its filling mode");
            Assert.Equal(criuDaemon, helpers.DaemonPid != helpers.PageServerPid); // memory all here: one helper fills it unless CRIU's daemon is asked for
            CriuRestoreResult restore;
            try
            {
                restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, WorkDirectory = work, Root = tree.RootFilesystem, LazyPages = true }, asChild: true);
            }
            catch (CriuException)
            {
                output.WriteLine("lazy-pages daemon: " + LazyPagesDaemon.LogTail(work));
                foreach (var file in Directory.EnumerateFiles(work, "*.log"))
                {
                    output.WriteLine(file + ":\n" + string.Join("\n", File.ReadLines(file).TakeLast(40)));
                }

                output.WriteLine("page server: " + (File.Exists(Path.Combine(work, LazyRestoreHelpers.PageServerLog)) ? File.ReadAllText(Path.Combine(work, LazyRestoreHelpers.PageServerLog)) : "no log"));
                throw;
            }

            tree.AdoptRestoredRoot(restore.Pid);
            Assert.Equal(last.Tick + 1, tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the lazy restore").Tick);
            Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "buffer check after the lazy restore");

            Assert.Equal(0, WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(30)));
            if (criuDaemon)
            {
                Assert.Equal(0, WaitForExit(helpers.PageServerPid, TimeSpan.FromSeconds(10)));
            }

            var log = File.ReadAllText(Path.Combine(work, LazyRestoreHelpers.PageServerLog));
            output.WriteLine(log.Trim());
            Assert.Contains($" {lazy} pages", log, StringComparison.Ordinal);
            Assert.Contains(criuDaemon ? "closed by the daemon" : "every page in place", log, StringComparison.Ordinal);
            if (!criuDaemon)
            {
                // the kernel copied from the staged files' mappings, not from a read of them (the buffer check above says the pages were right)
                var mapped = System.Text.RegularExpressions.Regex.Match(log, @"\((\d+) copies straight from the staged files, (\d+) pieces copied beside another on a second thread\)");
                Assert.True(mapped.Success && long.Parse(mapped.Groups[1].Value, CultureInfo.InvariantCulture) > 0, $"the filler copied from the staged files' mappings: {log.Trim()}");
                // two cores: pieces were copied two at a time (one core: never)
                long beside = long.Parse(mapped.Groups[2].Value, CultureInfo.InvariantCulture);
                Assert.True(Environment.ProcessorCount > 1 ? beside > 0 : beside == 0, $"the filler's pieces copied on its second thread on {Environment.ProcessorCount} core(s): {log.Trim()}");
            }

            Assert.Equal(0, LazyRestoreHelpers.StopRecorded(work)); // both ended: nothing to stop
        }
        finally
        {
            LazyRestoreHelpers.StopRecorded(work);
            WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(1));
            WaitForExit(helpers.PageServerPid, TimeSpan.FromSeconds(1));
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_process_forking_and_discarding_memory_while_it_fills_gets_every_page_and_its_zeros(bool criuDaemon)
    {
        // memory comes at 6 MB/s: a check asked for right after the restore forks a child while most
        // pages are still missing; the child reads all of them (its own faults, its own fill), discards
        // a range and must read zeros there, and the parent checks its own copy after it
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10) + " --verify-on-resume 0 --fork-verify-on-resume 1");
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        var (final, last, _) = DumpLazily(tree, cgroup);
        cgroup.KillFrozenTree(tree.RootPid);
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        var helpers = LazyRestoreHelpers.Start("criu", _criu.GetVersion(), RepositoryLayout.RestoreRuntime, final.Directory, final.MemoryDirectory!, work, TimeSpan.FromSeconds(10),
            criuDaemon, pagesBytesPerSecond: 6_000_000);
        try
        {
            var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, WorkDirectory = work, Root = tree.RootFilesystem, LazyPages = true }, asChild: true);
            tree.AdoptRestoredRoot(restore.Pid);
            Assert.Equal(last.Tick + 1, tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the lazy restore").Tick);
            // asked while the memory still fills (32 MiB at 6 MB/s, over 5 s): the check forks the child then.
            // (The first tick after the restore forks none: checks on resume are off. When it forked one, a
            // pause long enough to count as a resume made that tick wait for the whole fill.)
            // (The page server behind CRIU's daemon paces the faults too, so there the first tick comes
            // only once most of the memory is in: that run checks the fork and the discard, not their timing.)
            if (!criuDaemon)
            {
                Assert.Equal(LazyMemoryState.Filling, LazyMemoryFill.Observe(work).State);
            }

            var checkedTick = tree.RequestVerification(TickTimeout);
            Assert.True(checkedTick.VerifiedOk, $"the child's and the parent's checks while the memory fills, verified={checkedTick.Verified}");
            Assert.Equal(0, WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(30)));
            var log = File.ReadAllText(Path.Combine(work, LazyRestoreHelpers.PageServerLog)).Trim();
            output.WriteLine(log);
            Assert.True(LazyMemoryFill.Judge(log + "\n", false, null).State == LazyMemoryState.Filled, log);
            Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "buffer check once every page is in");
        }
        finally
        {
            LazyRestoreHelpers.StopRecorded(work);
            WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(1));
            WaitForExit(helpers.PageServerPid, TimeSpan.FromSeconds(1));
        }
    }

    [Fact]
    public void A_tree_rewriting_its_memory_pre_copied_with_write_tracking_reads_only_written_pages_and_restores_exactly()
    {
        // rounds and the frozen capture read only what the kernel saw written; one page missed would fail the buffer check
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 20));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        using var trackers = new WriteTrackers(enabled: true, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var rounds = new List<PreCopyRound>();
        PreCopySession Session(bool running) => TrackedSession(tree, cgroup, trackers, rounds, running);
        for (int number = 1; number <= 2; number++)
        {
            rounds.Add(Session(running: true).PreDump());
            long after = tree.ReadTicks()[^1].Tick;
            tree.WaitForTick(t => t.Tick >= after + 5, TickTimeout, $"half a second of rewriting after round {number}");
        }

        cgroup.Freezer.Freeze();
        var final = Session(running: false).DumpLazy();
        var last = tree.ReadTicks()[^1];
        trackers.Release("m");
        ulong lazy = CriuPagemap.ReadAll(final.Directory).Aggregate(0UL, (s, m) => s + m.Entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0).Aggregate(0UL, (t, e) => t + e.PageCount));
        output.WriteLine(string.Join("; ", rounds.Select(r => $"round {r.Number}: tracked {r.Tracked}, read {r.PagesRead}, wrote {r.PagesWritten}, unchanged {r.PagesUnchanged}, {r.Elapsed.TotalMilliseconds:0} ms")) +
                         $"; final: tracked {final.Tracked}, read {final.PagesRead} of {lazy} lazy pages, {final.PagesWritten} changed, capture {final.DeduplicationTime.TotalMilliseconds:0} ms; workload rewrote {last.Dirtied} pages");
        Assert.False(rounds[0].Tracked, "the first round reads everything (it is read right after arming)");
        Assert.True(rounds[1].Tracked && final.Tracked, "the second round and the frozen capture must use the scans");
        Assert.True(rounds[1].PagesRead * 2 < rounds[0].PagesRead, $"round 2 must read only what was rewritten: {rounds[1].PagesRead} against {rounds[0].PagesRead}");
        Assert.True(final.PagesRead * 2 < lazy, $"the capture must read only what was rewritten: {final.PagesRead} of {lazy}");
        Assert.True(final.PagesWritten > 0 && final.PagesRead >= final.PagesWritten, "the rewritten pages are captured");
        Assert.Equal(lazy, final.PagesWritten + final.PagesInParent);

        cgroup.KillFrozenTree(tree.RootPid);
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        var helpers = LazyRestoreHelpers.Start("criu", _criu.GetVersion(), RepositoryLayout.RestoreRuntime, final.Directory, final.MemoryDirectory!, work, TimeSpan.FromSeconds(10));
        try
        {
            var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, WorkDirectory = work, Root = tree.RootFilesystem, LazyPages = true }, asChild: true);
            tree.AdoptRestoredRoot(restore.Pid);
            Assert.Equal(last.Tick + 1, tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the lazy restore").Tick);
            var verified = tree.RequestVerification(TickTimeout);
            Assert.True(verified.VerifiedOk, $"buffer check after the tracked pre-copy and lazy restore: {verified.Verified}");
            Assert.Equal(0, WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(30)));
        }
        finally
        {
            LazyRestoreHelpers.StopRecorded(work);
            WaitForExit(helpers.DaemonPid, TimeSpan.FromSeconds(1));
            WaitForExit(helpers.PageServerPid, TimeSpan.FromSeconds(1));
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Helpers_of_a_restore_given_up_on_are_stopped_by_PID_and_a_recorded_PID_that_is_no_helper_is_left_alone(bool criuDaemon)
    {
        const int mib = 8;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 0));
        tree.WaitForTick(t => t.Tick >= 2, TickTimeout, "two ticks");
        using var cgroup = TestFreezer.Create(tree);
        var (final, _, _) = DumpLazily(tree, cgroup);
        cgroup.KillFrozenTree(tree.RootPid);
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        var helpers = LazyRestoreHelpers.Start("criu", _criu.GetVersion(), RepositoryLayout.RestoreRuntime, final.Directory, final.MemoryDirectory!, work, TimeSpan.FromSeconds(10), criuDaemon);
        int bystander = DetachedProcess.Spawn("sleep", ["60"]);
        try
        {
            File.AppendAllText(Path.Combine(work, LazyRestoreHelpers.PidsFile), $"{bystander}\n");

            // the memory filler is recorded as both helpers: killed once
            Assert.Equal(criuDaemon ? 2 : 1, LazyRestoreHelpers.StopRecorded(work));
            AssertKilled(helpers.DaemonPid);
            if (criuDaemon)
            {
                AssertKilled(helpers.PageServerPid);
            }

            Assert.Null(DetachedProcess.TryReap(bystander)); // still running
            Assert.False(LazyRestoreHelpers.IsHelper(bystander));
        }
        finally
        {
            DetachedProcess.Kill(bystander);
            WaitForExit(bystander, TimeSpan.FromSeconds(5));
            LazyRestoreHelpers.StopRecorded(work);
        }
    }

    [Fact]
    public void Helpers_begun_for_an_image_set_without_a_process_tree_fail_when_awaited_with_CRIUs_reason_and_leave_nothing_running()
    {
        var root = Directory.CreateTempSubdirectory("podmig-lazy-begin-").FullName;
        try
        {
            var images = Directory.CreateDirectory(Path.Combine(root, "images")).FullName;
            var memory = Directory.CreateDirectory(Path.Combine(root, "memory")).FullName;
            var work = Directory.CreateDirectory(Path.Combine(root, "work")).FullName;

            // Begin returns at once (the daemon has not listened yet), and records both helpers by PID
            var helpers = LazyRestoreHelpers.Begin("criu", _criu.GetVersion(), RepositoryLayout.RestoreRuntime, images, memory, work, criuDaemon: true);
            Assert.Equal([helpers.DaemonPid.ToString(System.Globalization.CultureInfo.InvariantCulture), helpers.PageServerPid.ToString(System.Globalization.CultureInfo.InvariantCulture)],
                File.ReadAllLines(Path.Combine(work, LazyRestoreHelpers.PidsFile)));

            var error = Assert.Throws<IOException>(() => helpers.WaitReady(TimeSpan.FromSeconds(10)));
            Assert.Contains("exited", error.Message, StringComparison.Ordinal);
            Assert.Contains("before it listened", error.Message, StringComparison.Ordinal);
            Assert.False(Directory.Exists($"/proc/{helpers.DaemonPid}"), "the daemon still runs");
            WaitForExit(helpers.PageServerPid, TimeSpan.FromSeconds(5));
            Assert.False(Directory.Exists($"/proc/{helpers.PageServerPid}"), "the page server still runs");
            Assert.False(File.Exists(Path.Combine(work, LazyPagesDaemon.SocketName)));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void The_page_server_and_filling_modes_refuse_a_bad_command_line()
    {
        using var log = new StringWriter();
        Assert.Equal(2, LazyRestoreHelpers.Serve([LazyRestoreHelpers.ServeArgument, "/nonexistent"], log));
        Assert.Equal(2, LazyRestoreHelpers.Serve([LazyRestoreHelpers.ServeArgument, "/nonexistent", "four"], log));
        Assert.Contains("usage: --podmig-serve-pages MEMORY-DIRECTORY CRIU-VERSION", log.ToString(), StringComparison.Ordinal);
        Assert.Equal(2, LazyRestoreHelpers.Fill([LazyRestoreHelpers.FillArgument, "/nonexistent"], log));
        Assert.Contains("usage: --podmig-fill-pages IMAGES-DIRECTORY MEMORY-DIRECTORY WORK-DIRECTORY", log.ToString(), StringComparison.Ordinal);
    }

    /// <summary>One pre-copy round, a moment of running, then freeze and a lazy final dump; the tree stays frozen.</summary>
    /// <summary>A pre-copy session of a test tree with write tracking: armed by the rounds (<paramref name="running"/>), read once frozen.</summary>
    private PreCopySession TrackedSession(IsolatedProcessTree tree, TestFreezer cgroup, WriteTrackers trackers, List<PreCopyRound> rounds, bool running) =>
        new(_criu, new CriuOptions
            {
                Pid = tree.RootPid,
                ImagesDirectory = Path.Combine(tree.Directory, "images"),
                LeaveRunning = true,
                FreezeCgroup = cgroup.Freezer.Directory,
            }, PreCopyMethod.ContentComparison, rounds,
            tracker: running ? trackers.ForRounds("m", "c", tree.RootPid) : trackers.ForFrozen("m", "c"));

    private (PreCopyFinalDump Final, MemcounterTick Last, ulong LazyPages) DumpLazily(IsolatedProcessTree tree, TestFreezer cgroup)
    {
        var session = new PreCopySession(_criu, new CriuOptions
        {
            Pid = tree.RootPid,
            ImagesDirectory = Path.Combine(tree.Directory, "images"),
            LeaveRunning = true,
            FreezeCgroup = cgroup.Freezer.Directory,
        });
        session.PreDump();
        long afterRound = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterRound + 2, TickTimeout, "a moment of running after the round");
        cgroup.Freezer.Freeze();
        var final = session.DumpLazy();
        var maps = CriuPagemap.ReadAll(final.Directory);
        ulong lazy = maps.Aggregate(0UL, (s, m) => s + m.Entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0).Aggregate(0UL, (t, e) => t + e.PageCount));
        return (final, tree.ReadTicks()[^1], lazy);
    }

    [Fact]
    public void The_page_server_refuses_a_page_it_does_not_hold_and_a_command_it_does_not_take()
    {
        var directory = Directory.CreateTempSubdirectory("migrate-pages-").FullName;
        try
        {
            var set = Path.Combine(directory, "memory");
            Directory.CreateDirectory(set);
            File.WriteAllBytes(Path.Combine(set, CriuPagemap.PagesFileName(1)), [.. Enumerable.Repeat((byte)7, 2 * PagemapEntry.PageSize)]);
            new CriuPagemap(1, 1, [new PagemapEntry(0x10000, 2, PagemapFlags.Present)]).Write(set);
            var protocol = PageServerProtocol.Narrow;
            using var server = new PageServer(set, protocol);

            // asked for three pages of which two exist: two come back, in one reply
            var (reply, report) = Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 3, 0x10000, 1), close: true);
            var header = protocol.Decode(reply);
            Assert.Equal((uint)PageServerCommand.AddWithFlags, header.Command);
            Assert.Equal(PageServerProtocol.PresentFlag, header.Flags);
            Assert.Equal(2UL, header.Pages);
            Assert.All(reply.AsSpan(protocol.HeaderSize, 2 * PagemapEntry.PageSize).ToArray(), b => Assert.Equal(7, b));
            Assert.Equal(protocol.HeaderSize + (2 * PagemapEntry.PageSize) + 4, reply.Length);
            Assert.True(report!.ClosedByDaemon);

            var missing = Assert.Throws<PageServerException>(() => Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x20000, 1), close: false));
            Assert.Contains("no page at 0x20000", missing.Message, StringComparison.Ordinal);
            var unknownTask = Assert.Throws<PageServerException>(() => Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x10000, 9), close: false));
            Assert.Contains("task 9", unknownTask.Message, StringComparison.Ordinal);
            var add = Assert.Throws<PageServerException>(() => Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.AddWithFlags, 4, 1, 0x10000, 1), close: false));
            Assert.Contains("0x6", add.Message, StringComparison.Ordinal);
            var unaligned = Assert.Throws<PageServerException>(() => Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x10001, 1), close: false));
            Assert.Contains("malformed", unaligned.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Theory]
    [InlineData(false, true, false)]
    [InlineData(true, false, false)]
    [InlineData(false, true, true)]
    [InlineData(true, false, true)]
    [InlineData(true, true, true)]
    public async Task A_tree_dumped_post_copy_restores_at_once_and_its_pages_come_from_the_frozen_source(bool afterRound, bool prefetch, bool filler)
    {
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        using var trackers = new WriteTrackers(enabled: true, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var rounds = new List<PreCopyRound>();
        PreCopySession Session(bool running) => TrackedSession(tree, cgroup, trackers, rounds, running);
        for (int number = 1; afterRound && number <= 2; number++)
        {
            // write tracking armed in round 1 shows, when frozen, what was written since round 2
            rounds.Add(Session(running: true).PreDump());
            long after = tree.ReadTicks()[^1].Tick;
            tree.WaitForTick(t => t.Tick >= after + 3, TickTimeout, $"a moment of rewriting after round {number}");
        }

        cgroup.Freezer.Freeze();
        var final = Session(running: false).DumpLazy(leaveOnSource: true);
        var last = tree.ReadTicks()[^1];
        ulong lazy = CriuPagemap.ReadAll(final.Directory)
            .Aggregate(0UL, (s, m) => s + m.Entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0).Aggregate(0UL, (t, e) => t + e.PageCount));
        output.WriteLine($"after a round: {afterRound}; {lazy} lazy pages: {final.PagesRemote} left on the source, {final.PagesInParent} in the round, {final.PagesWritten} read");
        // nothing is read while frozen: what the round does not hold stays on the source
        Assert.Equal(0UL, final.PagesWritten);
        Assert.Equal(lazy, final.PagesRemote + final.PagesInParent);
        Assert.True(afterRound ? final.PagesInParent > final.PagesRemote && final.PagesRemote > 0 : final.PagesRemote == lazy,
            $"{final.PagesRemote} pages left on the source, {final.PagesInParent} in the round");

        // the source stays frozen, alive, and serves its pages; the copy runs beside it
        using var source = LivePages.Open(tree.RootPid, final.MemoryDirectory!);
        Assert.Equal(final.PagesRemote, source.RemotePages);
        if (filler)
        {
            await FillFromSourceAsync(tree, cgroup, final, last, lazy, source, prefetch, afterRound);
            return;
        }

        var (serverEnd, daemonEnd) = DetachedProcess.SocketPair();
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        int daemon = LazyPagesDaemon.Start("criu", final.Directory, work, daemonEnd, TimeSpan.FromSeconds(10));
        daemonEnd.Dispose();
        var counting = new CountingSource(source);
        using var server = new PageServer(final.MemoryDirectory!, PageServerProtocol.For(_criu.GetVersion()), counting);
        if (prefetch)
        {
            server.StartPrefetch(() => new InProcessPipeline(source));
        }

        var serving = ServeOn(server, serverEnd);
        try
        {
            var restore = RestoreCopy(tree, final.Directory, work);
            Assert.True(cgroup.Freezer.IsFrozen, "the source must stay frozen while its pages are fetched");
            Assert.Equal(last.Tick + 1, tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the post-copy restore").Tick);
            var verified = tree.RequestVerification(TickTimeout);
            Assert.True(verified.VerifiedOk, $"buffer check after the post-copy restore: {verified.Verified}");

            var report = await serving.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"restore {restore.Elapsed.TotalMilliseconds:0} ms; {LazyMemoryFill.ReportLine(report)}");
            Assert.True(report.ClosedByDaemon);
            Assert.Equal((long)lazy, report.PagesServed);
            Assert.Equal((long)final.PagesRemote, report.PagesFromSource);
            // every page fetched exactly once, whether the daemon asked first or the background fetching got there first
            Assert.Equal(report.PagesFromSource, report.PagesFetched);
            Assert.Equal(counting.Pages, report.PagesFetched - report.PagesPrefetched);
            Assert.True(prefetch ? report.PagesPrefetched > 0 : report.PagesPrefetched == 0, $"{report.PagesPrefetched} pages fetched in the background");
            Assert.Equal(0, WaitForExit(daemon, TimeSpan.FromSeconds(10)));
            Figures.Record(nameof(LazyRestoreTests), $"post_copy_restore_ms_32mib{(afterRound ? "_after_round" : "")}{(prefetch ? "_prefetch" : "")}", restore.Elapsed.TotalMilliseconds, "ms");
        }
        finally
        {
            DetachedProcess.Kill(daemon);
            WaitForExit(daemon, TimeSpan.FromSeconds(5));
            serverEnd.Dispose();
            cgroup.KillFrozenTree(tree.RootPid);
        }
    }

    /// <summary>
    /// The post-copy restore above with our memory filler in place of CRIU's daemon and the page
    /// server: the pages left on the source come through the same source (streamed when
    /// <paramref name="prefetch"/>, else each fetched when a fault or a piece needs it), each once.
    /// </summary>
    private async Task FillFromSourceAsync(IsolatedProcessTree tree, TestFreezer cgroup, PreCopyFinalDump final, MemcounterTick last, ulong lazy, LivePages source,
        bool prefetch, bool afterRound)
    {
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        var counting = new CountingSource(source);
        using var filler = new MemoryFiller(final.Directory, final.MemoryDirectory!, counting);
        if (prefetch)
        {
            filler.StartPrefetch(() => new InProcessPipeline(source));
        }

        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        UnixSocketPath.Use(Path.Combine(work, LazyPagesDaemon.SocketName), path => listener.Bind(new UnixDomainSocketEndPoint(path)));
        listener.Listen(1);
        using var stop = new CancellationTokenSource();
        var filling = Task.Run(() => filler.Run(listener, stop.Token));
        try
        {
            var restore = RestoreCopy(tree, final.Directory, work);
            Assert.True(cgroup.Freezer.IsFrozen, "the source must stay frozen while its pages are fetched");
            Assert.Equal(last.Tick + 1, tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the post-copy restore").Tick);
            var verified = tree.RequestVerification(TickTimeout);
            Assert.True(verified.VerifiedOk, $"buffer check after the post-copy restore: {verified.Verified}");

            var report = await filling.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"restore {restore.Elapsed.TotalMilliseconds:0} ms; {LazyMemoryFill.FillerLine(report)}");
            Assert.Equal((long)lazy, report.Pages);
            var fromSource = Assert.IsType<SourcePagesReport>(report.Source);
            Assert.Equal((long)final.PagesRemote, fromSource.Pages);
            // every page fetched exactly once, whether a fault, a piece or the stream got there first
            Assert.Equal(fromSource.Pages, fromSource.Fetched);
            Assert.Equal(counting.Pages, fromSource.Fetched - fromSource.Prefetched);
            Assert.True(prefetch ? fromSource.Prefetched > 0 : fromSource.Prefetched == 0, $"{fromSource.Prefetched} pages fetched in the background");
            Assert.Null(fromSource.PrefetchFailure);
            // the tree's first ticks touched pages not there yet: the time their faults took is counted
            Assert.True(report.Faults > 0, "the restored tree ran before its memory was in place: it must have faulted");
            Assert.True(report.Answering > TimeSpan.Zero && report.LongestAnswer > TimeSpan.Zero && report.LongestAnswer <= report.Answering && report.Answering <= report.Elapsed,
                $"faults answered in {report.Answering.TotalMilliseconds} ms, at most {report.LongestAnswer.TotalMilliseconds} ms, of {report.Elapsed.TotalMilliseconds} ms");
            Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "buffer check once every page is in");
            Figures.Record(nameof(LazyRestoreTests), $"post_copy_fill_ms_32mib{(afterRound ? "_after_round" : "")}{(prefetch ? "_prefetch" : "")}", report.Elapsed.TotalMilliseconds, "ms");
        }
        finally
        {
            // the filler's loop ends before it is disposed (it copies from memory the disposal frees)
            await stop.CancelAsync();
            listener.Dispose();
            await Task.WhenAny(filling, Task.Delay(TimeSpan.FromSeconds(10)));
            cgroup.KillFrozenTree(tree.RootPid);
        }
    }

    [Fact]
    public void Pages_left_on_the_source_are_fetched_from_it_never_read_from_an_older_round_and_a_failed_fetch_sends_no_reply()
    {
        var directory = Directory.CreateTempSubdirectory("migrate-pages-").FullName;
        try
        {
            // the round holds pages 0x10000-0x13fff (all 7s); the final set takes 0x10000 from it and leaves 0x11000-0x12fff on the source
            var round = Path.Combine(directory, "round-1");
            Directory.CreateDirectory(round);
            File.WriteAllBytes(Path.Combine(round, CriuPagemap.PagesFileName(1)), [.. Enumerable.Repeat((byte)7, 4 * PagemapEntry.PageSize)]);
            new CriuPagemap(1, 1, [new PagemapEntry(0x10000, 4, PagemapFlags.Present)]).Write(round);
            var set = Path.Combine(directory, "memory");
            Directory.CreateDirectory(set);
            Directory.CreateSymbolicLink(Path.Combine(set, "parent"), "../round-1");
            File.WriteAllBytes(Path.Combine(set, CriuPagemap.PagesFileName(1)), []);
            new CriuPagemap(1, 1, [new PagemapEntry(0x10000, 1, PagemapFlags.Parent), new PagemapEntry(0x11000, 2, PagemapFlags.Lazy),
                new PagemapEntry(0x13000, 1, PagemapFlags.Parent)]).Write(set);
            var protocol = PageServerProtocol.Wide;
            var source = new FakeSource(9);
            using var server = new PageServer(set, protocol, source);

            // asked for all four: the first comes from the round alone (a reply stops where the source's pages begin)
            var (reply, report) = Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 4, 0x10000, 1), close: true);
            Assert.Equal(1UL, protocol.Decode(reply).Pages);
            Assert.Equal(protocol.HeaderSize + PagemapEntry.PageSize + 4, reply.Length);
            Assert.All(reply.AsSpan(protocol.HeaderSize, PagemapEntry.PageSize).ToArray(), b => Assert.Equal(7, b));
            Assert.Equal(0, report!.PagesFromSource);

            // then the two left on the source come from it, though the round holds older copies of them
            (reply, report) = Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 3, 0x11000, 1), close: true);
            Assert.Equal(2UL, protocol.Decode(reply).Pages);
            Assert.Equal(protocol.HeaderSize + (2 * PagemapEntry.PageSize) + 4, reply.Length);
            Assert.All(reply.AsSpan(protocol.HeaderSize, 2 * PagemapEntry.PageSize).ToArray(), b => Assert.Equal(9, b));
            Assert.Equal([(1, 0x11000UL, 2)], source.Asked);
            Assert.Equal(2, report!.PagesFromSource);

            // the second of them again: from what that fetch brought here, not from the source once more
            (reply, _) = Exchange(server, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x12000, 1), close: true);
            Assert.All(reply.AsSpan(protocol.HeaderSize, PagemapEntry.PageSize).ToArray(), b => Assert.Equal(9, b));
            Assert.Single(source.Asked);

            // a fetch that fails ends the session before any reply: the daemon never reads a header without its pages
            using var failing = new PageServer(set, protocol, new FakeSource(9) { Fail = true });
            var (failed, bytes) = ExchangeFailing(failing, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x12000, 1));
            Assert.Contains("link down", failed.Message, StringComparison.Ordinal);
            Assert.Equal(0, bytes);

            // with nowhere to fetch them from, such pages are refused, never served from the round
            using var alone = new PageServer(set, protocol);
            var refused = Assert.Throws<PageServerException>(() => Exchange(alone, protocol, new PageServerHeader((uint)PageServerCommand.Get, 0, 1, 0x11000, 1), close: false));
            Assert.Contains("left on the source", refused.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task The_memory_filler_streams_the_pages_left_on_the_source_only_once_the_restore_finished()
    {
        var directory = Directory.CreateTempSubdirectory("migrate-filler-stream-").FullName;
        try
        {
            var set = Path.Combine(directory, "memory");
            Directory.CreateDirectory(set);
            File.WriteAllBytes(Path.Combine(set, CriuPagemap.PagesFileName(1)), []);
            new CriuPagemap(1, 1, [new PagemapEntry(0x11000, 2, PagemapFlags.Lazy)]).Write(set);
            using var filler = new MemoryFiller(set, set, new FakeSource(9));
            using var opened = new ManualResetEventSlim();
            filler.StartPrefetch(() =>
            {
                opened.Set();
                return new InProcessPipeline(new FakeSource(9));
            });
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            var path = Path.Combine(directory, LazyPagesDaemon.SocketName);
            UnixSocketPath.Use(path, p => listener.Bind(new UnixDomainSocketEndPoint(p)));
            listener.Listen(1);
            var filling = Task.Run(() => filler.Run(listener));
            using var restore = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            UnixSocketPath.Use(path, p => restore.Connect(new UnixDomainSocketEndPoint(p)));

            // while CRIU restores, the restorer's faults fetch what they touch; nothing else competes with them
            Assert.False(opened.Wait(TimeSpan.FromMilliseconds(500)), "the stream from the source was opened while the restore was still going on");
            var finished = new byte[4];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(finished, MemoryFiller.RestoreFinished);
            restore.Send(finished);

            Assert.True(opened.Wait(TimeSpan.FromSeconds(10)), "the stream from the source was not opened once the restore finished");
            var report = await filling.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(0, report.Faults);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void The_frozen_source_gives_only_the_pages_it_left_and_says_which_were_asked()
    {
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(8, Seed, dirtyPercentPerSecond: 0));
        tree.WaitForTick(t => t.Tick >= 2, TickTimeout, "two ticks");
        using var cgroup = TestFreezer.Create(tree);
        try
        {
            var session = new PreCopySession(_criu, new CriuOptions
            {
                Pid = tree.RootPid,
                ImagesDirectory = Path.Combine(tree.Directory, "images"),
                LeaveRunning = true,
                FreezeCgroup = cgroup.Freezer.Directory,
            });
            cgroup.Freezer.Freeze();
            var final = session.DumpLazy(leaveOnSource: true);
            var map = CriuPagemap.ReadAll(final.MemoryDirectory!).MaxBy(m => m.Entries.Where(e => e.IsLeftLazy).Sum(e => e.PageCount))!;
            var entry = map.Entries.Where(e => e.IsLeftLazy).MaxBy(e => e.PageCount);
            using var source = LivePages.Open(tree.RootPid, final.MemoryDirectory!);
            var buffer = new byte[2 * PagemapEntry.PageSize];

            // the same bytes the frozen process holds
            source.Read(map.Id, entry.Address, 2, buffer);
            int hostPid = new[] { tree.RootPid }.Concat(IsolatedProcessTree.Descendants(tree.RootPid)).Single(p => IsolatedProcessTree.NamespacePids(p)[^1] == map.Id);
            using (var memory = File.OpenHandle($"/proc/{hostPid}/mem", FileMode.Open, FileAccess.Read))
            {
                var direct = new byte[buffer.Length];
                RandomAccess.Read(memory, direct, (long)entry.Address);
                Assert.Equal(direct, buffer);
            }

            var outside = Assert.Throws<PageServerException>(() => source.Read(map.Id, entry.End, 1, buffer));
            Assert.Contains("not among those left on the source", outside.Message, StringComparison.Ordinal);
            var across = Assert.Throws<PageServerException>(() => source.Read(map.Id, entry.End - PagemapEntry.PageSize, 2, buffer));
            Assert.Contains("not among those left on the source", across.Message, StringComparison.Ordinal);
            var other = Assert.Throws<PageServerException>(() => source.Read(map.Id + 1000, entry.Address, 1, buffer));
            Assert.Contains("left no pages", other.Message, StringComparison.Ordinal);
            var unaligned = Assert.Throws<PageServerException>(() => source.Read(map.Id, entry.Address + 1, 1, buffer));
            Assert.Contains("malformed", unaligned.Message, StringComparison.Ordinal);
            var wrapping = Assert.Throws<PageServerException>(() => source.Read(map.Id, ulong.MaxValue - PagemapEntry.PageSize + 1, 2, buffer));
            Assert.Contains("not among those left on the source", wrapping.Message, StringComparison.Ordinal);
        }
        finally
        {
            cgroup.KillFrozenTree(tree.RootPid);
        }
    }

    /// <summary>
    /// CRIU 4.1's lazy-pages daemon polls without sleeping while it waits for the page server once the
    /// restore is over. Run with the wait library (Native/lazywait.c) it sleeps instead: while every
    /// page is held back, it uses almost no CPU. (That the pages then all arrive is what every other
    /// lazy restore here shows, with the library; after a hold of seconds it did not in one run of
    /// two, not yet understood, so this test ends the copy instead.)
    /// </summary>
    [Fact]
    public async Task The_lazy_pages_daemon_waiting_for_held_back_pages_sleeps_rather_than_spins()
    {
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        using var trackers = new WriteTrackers(enabled: true, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        cgroup.Freezer.Freeze();
        var final = TrackedSession(tree, cgroup, trackers, [], running: false).DumpLazy(leaveOnSource: true);
        using var source = LivePages.Open(tree.RootPid, final.MemoryDirectory!);
        var (serverEnd, daemonEnd) = DetachedProcess.SocketPair();
        var work = Directory.CreateDirectory(Path.Combine(tree.Directory, "restore-work")).FullName;
        int daemon = LazyPagesDaemon.Start("criu", final.Directory, work, daemonEnd, TimeSpan.FromSeconds(10));
        daemonEnd.Dispose();
        using var held = new HeldSource(source);
        using var server = new PageServer(final.MemoryDirectory!, PageServerProtocol.For(_criu.GetVersion()), held);
        var serving = ServeOn(server, serverEnd);
        try
        {
            RestoreCopy(tree, final.Directory, work);
            // from here (the restore over: the daemon fills in the background) every read waits
            held.Hold();
            Assert.True(held.Asked.Wait(TimeSpan.FromSeconds(10)), "the daemon must ask the page server for pages once the restore is over");

            // the daemon's own CPU time over a stretch in which it can do nothing but wait for the page server
            await Task.Delay(300);
            var (cpu, wall) = (CpuMillis(daemon), Stopwatch.StartNew());
            await Task.Delay(1500);
            double used = (CpuMillis(daemon) - cpu) / wall.Elapsed.TotalMilliseconds;
            output.WriteLine($"the daemon used {used:P1} of a core while every page was held back");
            Assert.True(used < 0.2, $"the daemon used {used:P1} of a core waiting for pages: it spins");

            // the library it ran with is in its work directory, beside its log
            Assert.True(File.Exists(Path.Combine(work, LazyPagesDaemon.WaitLibraryName)));
        }
        finally
        {
            // the copy is ended with its daemon; the page server, released, ends when its connection does
            DetachedProcess.Kill(daemon);
            WaitForExit(daemon, TimeSpan.FromSeconds(5));
            held.Release();
            serverEnd.Dispose();
            await Task.WhenAny(serving, Task.Delay(TimeSpan.FromSeconds(10)));
            cgroup.KillFrozenTree(tree.RootPid);
        }
    }

    /// <summary>The page server serving its daemon over <paramref name="serverEnd"/>, on a thread of its own.</summary>
    private static Task<PageServerReport> ServeOn(PageServer server, Socket serverEnd) => Task.Run(() =>
    {
        using var stream = new NetworkStream(serverEnd, ownsSocket: true);
        return server.Serve(stream);
    });

    /// <summary>
    /// Restores the lazily dumped tree beside its frozen source (not into the source's cgroup, which is
    /// frozen: the copy runs beside it, as on another node) and adopts the copy.
    /// </summary>
    private CriuRestoreResult RestoreCopy(IsolatedProcessTree tree, string imagesDirectory, string workDirectory)
    {
        var restore = _criu.Restore(new CriuOptions
        {
            ImagesDirectory = imagesDirectory, WorkDirectory = workDirectory, Root = tree.RootFilesystem, LazyPages = true,
            ManageCgroups = true, CgroupMode = CriuCgroupMode.Ignore,
        }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        return restore;
    }

    /// <summary>A process's user and system CPU time so far, in milliseconds (/proc/PID/stat, clock ticks of 10 ms).</summary>
    private static double CpuMillis(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid.ToString(System.Globalization.CultureInfo.InvariantCulture)}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // after the command: state is field 3, utime 14 and stime 15 (1-based over the whole line)
        return (long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture)) * 10.0;
    }

    /// <summary>Once told to hold, holds every read back until released, and says when the first was asked for.</summary>
    private sealed class HeldSource(IPageSource inner) : IPageSource, IDisposable
    {
        private readonly ManualResetEventSlim _released = new(initialState: true);

        public ManualResetEventSlim Asked { get; } = new();

        public void Hold() => _released.Reset();

        public void Release() => _released.Set();

        public void Read(int taskId, ulong address, int pages, Span<byte> destination)
        {
            if (!_released.IsSet)
            {
                Asked.Set();
                _released.Wait();
            }

            inner.Read(taskId, address, pages, destination);
        }

        public void Dispose()
        {
            _released.Dispose();
            Asked.Dispose();
        }
    }

    private sealed class FakeSource(byte fill) : IPageSource
    {
        public List<(int Task, ulong Address, int Pages)> Asked { get; } = [];

        public bool Fail { get; set; }

        public void Read(int taskId, ulong address, int pages, Span<byte> destination)
        {
            if (Fail)
            {
                throw new PageServerException("link down");
            }

            Asked.Add((taskId, address, pages));
            destination[..(pages * PagemapEntry.PageSize)].Fill(fill);
        }
    }

    private sealed class CountingSource(IPageSource inner) : IPageSource
    {
        public long Pages { get; private set; }

        public void Read(int taskId, ulong address, int pages, Span<byte> destination)
        {
            inner.Read(taskId, address, pages, destination);
            Pages += pages;
        }
    }

    [Theory]
    [InlineData(4, 1, 0, 24)]
    [InlineData(4, 1, 1, 24)]
    [InlineData(4, 2, 0, 32)]
    [InlineData(4, 2, 1, 32)]
    [InlineData(5, 0, 0, 32)]
    public void The_header_size_follows_the_CRIU_version(int major, int minor, int sublevel, int size)
    {
        var protocol = PageServerProtocol.For(new CriuVersion(major, minor, sublevel));
        Assert.Equal(size, protocol.HeaderSize);
        var header = new PageServerHeader((uint)PageServerCommand.Get, 0, 17, 0x7f00_0000_1000, 42);
        var bytes = new byte[size];
        protocol.Encode(header, bytes);
        Assert.Equal(header, protocol.Decode(bytes));
        Assert.Equal(7, bytes[0]);
        Assert.Equal(17, size == 24 ? bytes[4] : bytes[8]);
    }

    /// <summary>A request the server fails on: its error, and how many bytes it had written back before.</summary>
    private static (PageServerException Error, int Written) ExchangeFailing(PageServer server, PageServerProtocol protocol, PageServerHeader request)
    {
        var (ours, theirs) = DetachedProcess.SocketPair();
        using var client = new NetworkStream(ours, ownsSocket: true);
        var bytes = new byte[protocol.HeaderSize];
        protocol.Encode(request, bytes);
        client.Write(bytes);
        PageServerException? error = null;
        using (var stream = new NetworkStream(theirs, ownsSocket: true))
        {
            error = Assert.Throws<PageServerException>(() => server.Serve(stream));
        }

        using var reply = new MemoryStream();
        client.CopyTo(reply);
        return (error, (int)reply.Length);
    }

    private static (byte[] Reply, PageServerReport? Report) Exchange(PageServer server, PageServerProtocol protocol, PageServerHeader request, bool close)
    {
        var (ours, theirs) = DetachedProcess.SocketPair();
        using var client = new NetworkStream(ours, ownsSocket: true);
        var serving = Task.Run(() =>
        {
            using var stream = new NetworkStream(theirs, ownsSocket: true);
            return server.Serve(stream);
        });
        var bytes = new byte[protocol.HeaderSize];
        protocol.Encode(request, bytes);
        client.Write(bytes);
        if (close)
        {
            protocol.Encode(new PageServerHeader((uint)PageServerCommand.ForceClose, 0, 0, 0, 0), bytes);
            client.Write(bytes);
        }

        try
        {
            var report = serving.GetAwaiter().GetResult();
            ours.Shutdown(SocketShutdown.Send);
            using var reply = new MemoryStream();
            client.CopyTo(reply);
            return (reply.ToArray(), report);
        }
        finally
        {
            ours.Dispose();
        }
    }

    /// <summary>The process died of SIGKILL (reaped here, or already by whoever killed it) and is gone.</summary>
    private static void AssertKilled(int pid)
    {
        var code = WaitForExit(pid, TimeSpan.FromSeconds(5));
        Assert.True(code is null or 137, $"process {pid} ended with {code}, not SIGKILL");
        Assert.False(Directory.Exists($"/proc/{pid}"), $"process {pid} still runs");
    }

    private static int? WaitForExit(int pid, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            if (DetachedProcess.TryReap(pid) is int code)
            {
                return code;
            }

            Thread.Sleep(20);
        }

        return null;
    }
}

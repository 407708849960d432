using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Criu.Tests;

/// <summary>Pre-dump rounds followed by a final dump, on real process trees, restored by real CRIU.</summary>
public sealed class PreCopyTests(ITestOutputHelper output)
{
    private const ulong Seed = 77;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);

    private readonly CriuClient _criu = new();

    [Fact]
    public void A_final_dump_after_a_pre_dump_writes_far_fewer_pages_than_a_plain_dump_and_restores()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");

        // The plain dump of the same process, which CRIU leaves running.
        var plain = _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "plain"), LeaveRunning = true });
        ulong plainPages = plain.Statistics?.PagesWritten ?? throw new InvalidOperationException("CRIU wrote no stats-dump");
        Assert.Equal(plainPages, CriuPagemap.ReadAll(plain.ImagesDirectory).Aggregate(0UL, (s, m) => s + m.PresentPages));
        long afterPlain = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterPlain + 2, TickTimeout, "ticks after the plain dump");

        var session = new PreCopySession(_criu, new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "precopy") });
        var round = session.PreDump();
        long afterRound = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterRound + 3, TickTimeout, "ticks after the pre-dump round");
        var final = session.Dump();
        var lastBeforeDump = tree.ReadTicks()[^1];

        output.WriteLine($"method {session.Method}; plain dump {plainPages} pages; round 1 wrote {round.PagesWritten} pages in " +
                         $"{round.Elapsed.TotalMilliseconds:0} ms; final dump kept {final.PagesWritten} pages, {final.PagesInParent} from round 1 " +
                         $"(CRIU {final.Dump.Elapsed.TotalMilliseconds:0} ms, comparison {final.DeduplicationTime.TotalMilliseconds:0} ms)");
        var finalMaps = CriuPagemap.ReadAll(final.Directory);
        Assert.Equal(final.PagesWritten, finalMaps.Aggregate(0UL, (s, m) => s + m.PresentPages));
        Assert.True(round.PagesWritten >= (ulong)mib * 256, $"the first round must hold the {mib} MiB buffer, it wrote {round.PagesWritten} pages");
        Assert.True(final.PagesWritten * 20 < plainPages,
            $"the final dump wrote {final.PagesWritten} pages, not far fewer than the plain dump's {plainPages}");
        Assert.True(final.PagesInParent >= (ulong)mib * 256, $"the buffer's pages must come from the parent, only {final.PagesInParent} did");

        // CRIU restores the chain (final -> round-1) to the same state.
        var (restore, verified) = RestoreAndVerify(tree, final, lastBeforeDump.Tick);
        Assert.Equal(Memcounter.InitialChecksum(mib, Seed), verified.Checksum);

        Figures.Record(nameof(PreCopyTests), "plain_dump_pages", plainPages, "pages");
        Figures.Record(nameof(PreCopyTests), "final_dump_pages_after_precopy", final.PagesWritten, "pages");
        Figures.Record(nameof(PreCopyTests), "precopy_round_ms", round.Elapsed.TotalMilliseconds, "ms");
        Figures.Record(nameof(PreCopyTests), "final_dump_ms", final.Dump.Elapsed.TotalMilliseconds, "ms");
        Figures.Record(nameof(PreCopyTests), "final_dedup_ms", final.DeduplicationTime.TotalMilliseconds, "ms");
        Figures.Record(nameof(PreCopyTests), "incremental_restore_ms", restore.Elapsed.TotalMilliseconds, "ms");
    }

    [Fact]
    public void Pages_rewritten_between_rounds_are_written_again_and_restore_with_their_new_content()
    {
        // 16 MiB rewriting 20% of its pages per second: the final dump must carry the changed pages.
        const int mib = 16;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 20));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        var session = new PreCopySession(_criu, new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "precopy") });

        var first = session.PreDump();
        long afterFirst = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterFirst + 5, TickTimeout, "half a second of rewriting");
        var second = session.PreDump();
        long afterSecond = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterSecond + 5, TickTimeout, "half a second more");
        var final = session.Dump();
        var lastBeforeDump = tree.ReadTicks()[^1];

        output.WriteLine($"round 1: {first.PagesWritten} written; round 2: {second.PagesWritten} written, {second.PagesUnchanged} unchanged; " +
                         $"final: {final.PagesWritten} written, {final.PagesInParent} in parent; workload rewrote {lastBeforeDump.Dirtied} pages");
        Assert.True(second.PagesUnchanged > 0 && second.PagesWritten > 0, "round 2 must both reuse and rewrite pages");
        Assert.True(final.PagesWritten > 0, "pages rewritten after round 2 must be in the final dump");

        // The running checksum follows every rewrite; a full re-scan must agree with it.
        RestoreAndVerify(tree, final, lastBeforeDump.Tick);
    }

    [Fact]
    public void Rounds_given_back_once_sent_still_spare_a_tracked_round_and_a_plain_final_dump_without_them_restores()
    {
        // 32 MiB rewriting 20% of its pages per second, its writes tracked from before round 1
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, intervalMs: 20, dirtyPercentPerSecond: 20));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var tracker = WriteTracker.Arm(tree.RootPid, beforeRound: 1);
        var session = new PreCopySession(_criu, new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "precopy") },
            tracker: _ => tracker);
        static IReadOnlyDictionary<string, string> Digest(FileInfo file) =>
            new Dictionary<string, string> { ["Sha256"] = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file.FullName))) };

        var first = session.PreDump();
        long releasedFirst = ReleasedPages.Release(first.Directory, Digest);
        long afterFirst = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterFirst + 10, TickTimeout, "rewriting after round 1");
        var second = session.PreDump();
        long releasedSecond = ReleasedPages.Release(second.Directory, Digest);
        long afterSecond = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterSecond + 10, TickTimeout, "rewriting after round 2");
        var final = session.Dump();
        var lastBeforeDump = tree.ReadTicks()[^1];

        output.WriteLine($"round 1: {first.PagesWritten} pages, {releasedFirst} bytes given back; round 2: {second.PagesWritten} written, {second.PagesUnchanged} in parent, " +
                         $"{releasedSecond} bytes given back; final: {final.PagesWritten} written, {final.PagesInParent} in parent");
        Assert.Equal((long)first.PagesWritten * PagemapEntry.PageSize, releasedFirst);
        Assert.Equal((long)second.PagesWritten * PagemapEntry.PageSize, releasedSecond);
        // the tracked round still leaves to round 1 what round 1 held, though its bytes are gone here
        Assert.True(second.Tracked, "round 2 went by the write tracking");
        Assert.True(second.PagesUnchanged >= (ulong)mib * 256 / 2, $"most of the buffer is left to round 1: {second.PagesUnchanged} pages");
        Assert.True(second.PagesWritten * 4 < first.PagesWritten, $"round 2 holds what was written since round 1: {second.PagesWritten} of {first.PagesWritten}");
        // the plain final dump compares contents: nothing matches what was given back (no page taken for zeros)
        Assert.Equal(0UL, final.PagesInParent);
        Assert.True(final.PagesWritten >= (ulong)mib * 256, $"the final dump holds the whole buffer itself: {final.PagesWritten} pages");

        RestoreAndVerify(tree, final, lastBeforeDump.Tick);
    }

    /// <summary>Restores the final dump's chain with CRIU: the count goes on from the tick after <paramref name="lastTick"/> and a full check of the buffer agrees.</summary>
    private (CriuRestoreResult Restore, MemcounterTick Verified) RestoreAndVerify(IsolatedProcessTree tree, PreCopyFinalDump final, long lastTick)
    {
        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var firstAfter = tree.WaitForTick(t => t.Tick > lastTick, TickTimeout, "a tick after restore");
        var verified = tree.RequestVerification(TickTimeout);
        Assert.Equal(lastTick + 1, firstAfter.Tick);
        Assert.True(verified.VerifiedOk, $"buffer check after restore: {verified.Verified}");
        return (restore, verified);
    }

    [Fact]
    public async Task A_tracked_round_is_laid_out_before_it_is_read_and_with_its_parent_holds_every_page_of_the_stopped_tree()
    {
        // 64 MiB rewriting 20% of its pages per second, its writes tracked from before round 1
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, intervalMs: 20, dirtyPercentPerSecond: 20));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var tracker = WriteTracker.Arm(tree.RootPid, beforeRound: 1);
        var session = new PreCopySession(_criu, new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "precopy") },
            tracker: _ => tracker);
        var first = session.PreDump(() => { });
        long afterFirst = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterFirst + 10, TickTimeout, "rewriting after round 1");

        // stopped (every task of it), so that what round 2 reads is what the tree holds when it is compared below
        var tasks = LiveProcessTree.Enumerate(tree.RootPid).ToDictionary(t => t.ImageId, t => t.HostPid);
        string[] pids = [.. tasks.Values.Select(p => p.ToString(System.Globalization.CultureInfo.InvariantCulture))];
        Prerequisites.Run("kill", ["-STOP", .. pids]);
        try
        {
            string round2 = Path.Combine(tree.Directory, "precopy", PreCopySession.RoundName(2));
            var followed = new Dictionary<string, Task<byte[]>>();
            int laidOut = 0;
            var second = session.PreDump(() =>
            {
                // called before a page is read: every file is listed at its final size, and its bytes follow as they are read
                laidOut++;
                foreach (var map in CriuPagemap.ReadAll(round2))
                {
                    var pages = Path.Combine(round2, CriuPagemap.PagesFileName(map.PagesId));
                    var growing = GrowingFiles.Find(pages) ?? throw new InvalidOperationException($"{pages} was not announced before it was read");
                    Assert.Equal((long)map.PresentPages * PagemapEntry.PageSize, growing.Size);
                    followed[pages] = Task.Run(() => GrowingFileReader.FollowAsync(growing));
                }
            });

            Assert.Equal(1, laidOut);
            Assert.True(second.Tracked, "round 2 went by the write tracking");
            foreach (var (pages, reading) in followed)
            {
                var bytes = await reading.WaitAsync(TickTimeout);
                Assert.True(File.ReadAllBytes(pages).AsSpan().SequenceEqual(bytes), $"the reader of {pages} saw the bytes the file holds");
            }

            var maps = CriuPagemap.ReadAll(round2);
            ulong present = maps.Aggregate(0UL, (sum, m) => sum + m.PresentPages);
            ulong inParent = maps.Aggregate(0UL, (sum, m) => sum + m.Entries.Where(e => e.Flags.HasFlag(PagemapFlags.Parent)).Aggregate(0UL, (s, e) => s + e.PageCount));
            output.WriteLine($"round 1: {first.PagesWritten} pages; round 2: {second.PagesWritten} read and written, {second.PagesUnchanged} in parent, in {second.Elapsed.TotalMilliseconds:0} ms");
            Assert.Equal(second.PagesWritten, present);
            Assert.Equal(second.PagesUnchanged, inParent);
            Assert.Equal(second.PagesWritten, second.PagesRead);
            Assert.True(second.PagesWritten > 0 && second.PagesWritten * 4 < first.PagesWritten, $"round 2 reads what was written since round 1, not the buffer: {second.PagesWritten} of {first.PagesWritten}");
            Assert.True(inParent >= (ulong)mib * 256 / 2, $"most of the buffer is left to round 1: {inParent} pages");

            // every page round 2 lists, read through the chain (round 2, then round 1), is the stopped tree's page
            using var chain = ImageChain.Open(round2);
            var expected = new byte[PagemapEntry.PageSize];
            var actual = new byte[PagemapEntry.PageSize];
            var found = new bool[1];
            ulong compared = 0;
            foreach (var map in maps)
            {
                using var memory = File.OpenHandle($"/proc/{tasks[map.Id]}/mem", FileMode.Open, FileAccess.Read);
                foreach (var entry in map.Entries.Where(e => e.Flags.HasFlag(PagemapFlags.Present) || e.Flags.HasFlag(PagemapFlags.Parent)))
                {
                    for (uint i = 0; i < entry.PageCount; i++)
                    {
                        ulong address = entry.Address + ((ulong)i * PagemapEntry.PageSize);
                        Assert.Equal(PagemapEntry.PageSize, RandomAccess.Read(memory, expected, (long)address));
                        chain.Read(map.Id, address, 1, actual, found);
                        Assert.True(found[0], $"the chain holds page 0x{address:x}");
                        Assert.True(expected.AsSpan().SequenceEqual(actual), $"page 0x{address:x} of task {map.Id} ({entry.Flags}) through the chain is the tree's");
                        compared++;
                    }
                }
            }

            Assert.True(compared >= (ulong)mib * 256, $"the whole buffer was compared: {compared} pages");
        }
        finally
        {
            Prerequisites.Run("kill", ["-CONT", .. pids]);
        }
    }

    [Fact]
    public void CRIU_pre_dump_is_refused_up_front_when_the_kernel_cannot_track_memory_and_the_tree_keeps_running()
    {
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(16, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        var images = Path.Combine(tree.Directory, "pre");
        bool tracking = _criu.CheckFeatures().MemoryTracking;

        if (tracking)
        {
            var result = _criu.PreDump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images });
            Assert.True(result.Statistics!.PagesWritten > 0);
        }
        else
        {
            var error = Assert.Throws<CriuException>(() => _criu.PreDump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images }));
            output.WriteLine(error.Message);
            Assert.Contains("CONFIG_MEM_SOFT_DIRTY", error.Message, StringComparison.Ordinal);
            Assert.False(Directory.Exists(images) && Directory.EnumerateFileSystemEntries(images).Any(), "nothing may be written");
        }

        long before = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= before + 3, TickTimeout, "the counter to keep going");
    }
}

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
        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var firstAfter = tree.WaitForTick(t => t.Tick > lastBeforeDump.Tick, TickTimeout, "a tick after restoring the incremental dump");
        var verified = tree.RequestVerification(TickTimeout);
        Assert.Equal(lastBeforeDump.Tick + 1, firstAfter.Tick);
        Assert.True(verified.VerifiedOk, $"buffer check after restore: {verified.Verified}");
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

        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = final.Directory, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var firstAfter = tree.WaitForTick(t => t.Tick > lastBeforeDump.Tick, TickTimeout, "a tick after restore");
        var verified = tree.RequestVerification(TickTimeout);
        Assert.Equal(lastBeforeDump.Tick + 1, firstAfter.Tick);
        // The running checksum follows every rewrite; a full re-scan must agree with it.
        Assert.True(verified.VerifiedOk, $"buffer check after restore: {verified.Verified}");
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

using Migrate.Criu;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// CRIU started ahead of a dump (<see cref="CriuService"/>), with real CRIU on real process trees:
/// the dump's request goes to it, the images are what libcriu's own CRIU writes, and the process
/// never outlives its use, whether it served, died first, or was never asked.
/// </summary>
public sealed class CriuServiceTests(ITestOutputHelper output)
{
    private const ulong Seed = 4711;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);
    private readonly CriuClient _criu = new();

    [Fact]
    public void A_dump_sent_to_a_CRIU_started_ahead_restores_the_counter_and_that_CRIU_is_reaped()
    {
        Prerequisites.RequireRoot();
        const int mib = 16;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        var images = Path.Combine(tree.Directory, "images");
        var service = CriuService.Start(null, lazyDump: false, tree.Directory);
        Assert.True(ProcessExists(service.Pid), "criu swrk runs, waiting for the request");

        var dump = _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images, Service = service });
        service.Dispose();

        Assert.True(dump.Prestarted, "the request went to the CRIU started ahead");
        Assert.False(service.TryTake(out _), "a CRIU serves one call");
        var last = tree.ReadTicks()[^1];
        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = images, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var next = tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after the restore");
        Assert.Equal(last.Tick + 1, next.Tick);
        Assert.True(WaitGone(service.Pid), $"CRIU's process {service.Pid} is gone (reaped) after its call");
        output.WriteLine($"dump {dump.Elapsed.TotalMilliseconds:0} ms through the CRIU started ahead");
    }

    [Fact]
    public void A_lazy_final_dump_through_a_CRIU_started_ahead_leaves_the_memory_lazy_and_captures_it()
    {
        Prerequisites.RequireRoot();
        const int mib = 32;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        using var service = CriuService.Start(null, lazyDump: true, tree.Directory);
        var config = Directory.GetFiles(tree.Directory, ".criu-service-*.conf.tmp").Single();
        Assert.Equal(CriuService.LazyDumpConfiguration, File.ReadAllText(config));
        var session = new PreCopySession(_criu, FrozenTree(tree, cgroup, Path.Combine(tree.Directory, "images")) with { Service = service });
        session.PreDump();
        cgroup.Freezer.Freeze();

        var final = session.DumpLazy();

        Assert.True(final.Dump.Prestarted, "the lazy dump's request went to the CRIU started ahead");
        output.WriteLine($"CRIU {final.Dump.Elapsed.TotalMilliseconds:0} ms, capture {final.DeduplicationTime.TotalMilliseconds:0} ms, " +
                         $"{final.CaptureOverlap.TotalMilliseconds:0.0} ms of it before CRIU returned; {final.Elapsed.TotalMilliseconds:0} ms in all");
        Assert.True(final.CaptureOverlap > TimeSpan.Zero, "the capture begins at CRIU's post-dump notification, while CRIU still finishes");
        Assert.True(final.Elapsed < final.Dump.Elapsed + final.DeduplicationTime, "the dump's wall time counts the overlap once");
        Assert.True(cgroup.Freezer.IsFrozen, "the tree stays frozen through the dump");
        var maps = CriuPagemap.ReadAll(final.Directory);
        ulong written = maps.Aggregate(0UL, (s, m) => s + m.PresentPages);
        ulong lazy = maps.Aggregate(0UL, (s, m) => s + m.Entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0).Aggregate(0UL, (t, e) => t + e.PageCount));
        Assert.True(lazy >= (ulong)mib * 256, $"the {mib} MiB buffer must be lazy in CRIU's dump, {lazy} pages were");
        Assert.True(written < lazy / 20, $"CRIU must not write the lazy memory: it wrote {written} pages");
        Assert.Equal(lazy, final.PagesWritten + final.PagesInParent);
        service.Dispose();
        Assert.False(File.Exists(config), "the configuration goes with the service");
        Assert.True(WaitGone(service.Pid), $"CRIU's process {service.Pid} is gone (reaped) after its call");
        cgroup.KillFrozenTree(tree.RootPid);
    }

    [Fact]
    public void A_lazy_dump_that_fails_after_its_capture_began_reports_the_failure_once_the_capture_is_done_and_a_plain_dump_follows()
    {
        Prerequisites.RequireRoot();
        const int mib = 16;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 10));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var cgroup = TestFreezer.Create(tree);
        var images = Path.Combine(tree.Directory, "images");
        var refused = new List<string>();
        var session = new PreCopySession(_criu, FrozenTree(tree, cgroup, images) with
        {
            // the caller's own handler refuses the end of the dump: CRIU fails it after every image was written
            Notify = n =>
            {
                refused.Add(n.Action);
                return n.Action != PreCopySession.PostDumpAction;
            },
        });
        cgroup.Freezer.Freeze();
        long frozenAt = tree.ReadTicks()[^1].Tick;

        var error = Assert.Throws<CriuException>(() => session.DumpLazy());

        output.WriteLine(error.Message);
        Assert.Contains(PreCopySession.PostDumpAction, refused);
        Assert.True(cgroup.Freezer.IsFrozen, "the tree stays frozen after the failed dump");
        // the capture begun at post-dump had ended before the failure was thrown: its set is whole
        var memory = CriuPagemap.ReadAll(Path.Combine(images, PreCopySession.MemoryDirectoryName));
        Assert.True(memory.Sum(m => (long)m.PresentPages) >= mib * 256L, $"the capture read the {mib} MiB buffer before the failure was reported");

        var plain = new PreCopySession(_criu, FrozenTree(tree, cgroup, images)).Dump();
        Assert.True(plain.PagesWritten >= mib * 256UL, $"the plain dump after it holds the buffer: {plain.PagesWritten} pages");
        cgroup.Freezer.Thaw();
        tree.WaitForTick(t => t.Tick >= frozenAt + 2, TickTimeout, "the counter going on after the thaw");
    }

    /// <summary>A final dump's options for a tree frozen in its own cgroup, left running (frozen) after the dump.</summary>
    private static CriuOptions FrozenTree(IsolatedProcessTree tree, TestFreezer cgroup, string images) => new()
    {
        Pid = tree.RootPid,
        ImagesDirectory = images,
        LeaveRunning = true,
        FreezeCgroup = cgroup.Freezer.Directory,
    };

    [Fact]
    public void A_CRIU_started_ahead_that_died_or_is_of_the_other_kind_is_passed_over_and_the_dump_starts_its_own()
    {
        Prerequisites.RequireRoot();
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(8, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var dead = CriuService.Start(null, lazyDump: false, tree.Directory);
        Assert.True(Migrate.Criu.Lazy.DetachedProcess.Kill(dead.Pid));
        Assert.True(SpinWait.SpinUntil(() => ProcessState(dead.Pid) is null or 'Z', TimeSpan.FromSeconds(10)), "the killed CRIU has exited");
        using var lazyKind = CriuService.Start(null, lazyDump: true, tree.Directory);

        var first = _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "a"), LeaveRunning = true, Service = dead });
        var second = _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = Path.Combine(tree.Directory, "b"), LeaveRunning = true, Service = lazyKind });

        Assert.False(first.Prestarted, "a dead CRIU is not asked");
        Assert.False(second.Prestarted, "a CRIU started for a lazy dump does not serve a plain one");
        Assert.True(lazyKind.TryTake(out int socket), "it is still there for a call of its kind");
        new Microsoft.Win32.SafeHandles.SafeFileHandle(socket, ownsHandle: true).Dispose();
        Assert.True(File.Exists(Path.Combine(tree.Directory, "a", "core-1.img")) && File.Exists(Path.Combine(tree.Directory, "b", "core-1.img")), "both dumps wrote their images");
        long after = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick > after, TickTimeout, "the tree runs on after dumps that leave it running");
    }

    [Fact]
    public void A_CRIU_started_ahead_and_never_asked_exits_when_disposed()
    {
        Prerequisites.RequireRoot();
        var directory = Directory.CreateTempSubdirectory("migrate-criu-service-").FullName;
        try
        {
            var service = CriuService.Start(null, lazyDump: true, directory);
            Assert.True(ProcessExists(service.Pid));

            service.Dispose();

            Assert.True(WaitGone(service.Pid), $"CRIU's process {service.Pid} exits and is reaped once its socket is closed");
            Assert.Empty(Directory.GetFileSystemEntries(directory));
            Assert.False(service.TryTake(out _), "a disposed service hands nothing over");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void Starting_a_CRIU_that_is_not_there_fails_naming_it_and_leaves_nothing()
    {
        var directory = Directory.CreateTempSubdirectory("migrate-criu-service-").FullName;
        try
        {
            var e = Assert.ThrowsAny<IOException>(() => CriuService.Start(Path.Combine(directory, "no-criu"), lazyDump: true, directory));

            Assert.Contains("no-criu", e.Message, StringComparison.Ordinal);
            Assert.Empty(Directory.GetFileSystemEntries(directory));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static bool ProcessExists(int pid) => ProcessState(pid) is { } state && state != 'Z';

    private static char? ProcessState(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[stat.LastIndexOf(')') + 2];
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Whether the PID has no process at all (not even a zombie) within a few seconds.</summary>
    private static bool WaitGone(int pid) => SpinWait.SpinUntil(() => ProcessState(pid) is null, TimeSpan.FromSeconds(15));
}

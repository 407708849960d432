using System.IO.Compression;
using Migrate.Criu.Images;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Criu.Tests;

/// <summary>Real CRIU, through libcriu, on real namespaced process trees.</summary>
public sealed class CriuClientTests(ITestOutputHelper output)
{
    private const ulong Seed = 20261124;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);

    private readonly CriuClient _criu = new();

    [Fact]
    public void Version_is_at_least_4_1_and_check_passes()
    {
        Prerequisites.RequireRoot();

        var version = _criu.GetVersion();
        _criu.Check();

        output.WriteLine($"CRIU {version} from {Interop.Libraries.Criu} in {NativeLibraryResolver.LibraryDirectory ?? "(system path)"}");
        Assert.True(version >= CriuVersion.Minimum, $"CRIU {version} is older than {CriuVersion.Minimum}");
    }

    [Fact]
    public void Feature_check_matches_the_kernel_configuration()
    {
        Prerequisites.RequireRoot();

        var features = _criu.CheckFeatures();

        output.WriteLine($"features: {features}");
        var config = ReadKernelConfig()
            ?? throw new InvalidOperationException("/proc/config.gz is not available: cannot tell which features the kernel has");
        Assert.Equal(config.Contains("CONFIG_MEM_SOFT_DIRTY=y", StringComparison.Ordinal), features.MemoryTracking);
        Assert.Equal(config.Contains("CONFIG_USERFAULTFD=y", StringComparison.Ordinal), features.LazyPages);
    }

    [Fact]
    public void Dump_then_restore_continues_the_counter_with_memory_and_pids_intact()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed));
        var running = tree.WaitForTick(t => t.Tick >= 5, TickTimeout, "five ticks");
        int workloadHostPid = IsolatedProcessTree.Descendants(tree.RootPid).Single();
        var images = Path.Combine(tree.Directory, "images");

        var dump = _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images });

        Assert.Null(IsolatedProcessTree.ProcessState(workloadHostPid)); // CRIU killed the tree after dumping it
        var lastBeforeDump = tree.ReadTicks()[^1];
        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = images, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var firstAfter = tree.WaitForTick(t => t.Tick > lastBeforeDump.Tick, TickTimeout, "a tick after the restore");

        var verified = tree.RequestVerification(TickTimeout);

        // The counter continues where it stopped, not from zero.
        Assert.Equal(lastBeforeDump.Tick + 1, firstAfter.Tick);
        // A full re-scan of the restored buffer matches the running checksum, which is the checksum
        // of the content the workload was started with.
        Assert.True(verified.VerifiedOk, $"buffer check after restore: {verified.Verified}");
        Assert.Equal(Memcounter.InitialChecksum(mib, Seed), verified.Checksum);
        Assert.Equal(running.Checksum, firstAfter.Checksum);
        // Same PIDs inside the namespace; the root is its namespace's init again.
        Assert.Equal(running.Pid, firstAfter.Pid);
        Assert.Equal(1, firstAfter.ParentPid);
        Assert.Equal(1, IsolatedProcessTree.NamespacePids(restore.Pid)[^1]);

        var stats = dump.Statistics ?? throw new InvalidOperationException("CRIU wrote no stats-dump");
        Assert.True(stats.PagesWritten >= (ulong)mib * 256, $"a {mib} MiB buffer needs at least {mib * 256} pages, CRIU wrote {stats.PagesWritten}");
        long imageBytes = new DirectoryInfo(images).EnumerateFiles().Sum(f => f.Length);
        Record("dump_ms", dump.Elapsed.TotalMilliseconds, "ms");
        Record("dump_frozen_ms", stats.FrozenTime.TotalMilliseconds, "ms");
        Record("restore_ms", restore.Elapsed.TotalMilliseconds, "ms");
        Record("image_mib", imageBytes / 1048576.0, "MiB");
        output.WriteLine($"dump {dump.Elapsed.TotalMilliseconds:0} ms (frozen {stats.FrozenTime.TotalMilliseconds:0} ms, {stats.PagesWritten} pages), " +
                         $"restore {restore.Elapsed.TotalMilliseconds:0} ms, images {imageBytes / 1048576.0:0.0} MiB");
    }

    [Theory]
    [InlineData(true, null, true, "second absent: the first decides")]
    [InlineData(false, null, false, "second absent: the first decides")]
    [InlineData(true, true, true, "both let it go on")]
    [InlineData(true, false, false, "the second refuses")]
    [InlineData(false, true, false, "the first refuses, the second is not asked")]
    public void Two_notification_handlers_run_in_order_and_either_may_refuse(bool first, bool? second, bool expected, string why)
    {
        var calls = new List<string>();
        var handler = CriuNotification.Then(
            n =>
            {
                calls.Add("first " + n.Action);
                return first;
            },
            second is { } answer
                ? n =>
                {
                    calls.Add("second " + n.Action);
                    return answer;
                }
                : null);

        Assert.True(expected == handler(new CriuNotification("post-dump", 7)), why);
        string[] wanted = first && second is not null ? ["first post-dump", "second post-dump"] : ["first post-dump"];
        Assert.Equal(wanted, calls);
    }

    [Fact]
    public void Notifications_reach_the_handler_and_refusing_one_aborts_the_dump_with_the_tree_running()
    {
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(16, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        var refused = new List<CriuNotification>();

        var error = Assert.Throws<CriuException>(() => _criu.Dump(new CriuOptions
        {
            Pid = tree.RootPid,
            ImagesDirectory = Path.Combine(tree.Directory, "refused"),
            Notify = n =>
            {
                refused.Add(n);
                return n.Action != "pre-dump";
            },
        }));

        output.WriteLine(error.Message);
        Assert.Equal("pre-dump", Assert.Single(refused).Action);
        long before = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= before + 2, TickTimeout, "the counter to keep going after the refused dump");

        var seen = new List<string>();
        _criu.Dump(new CriuOptions
        {
            Pid = tree.RootPid,
            ImagesDirectory = Path.Combine(tree.Directory, "accepted"),
            LeaveRunning = true,
            Notify = n =>
            {
                seen.Add(n.Action);
                return true;
            },
        });

        output.WriteLine(string.Join(", ", seen));
        Assert.Contains("pre-dump", seen);
        Assert.Contains("post-dump", seen);
        Assert.True(seen.IndexOf("pre-dump") < seen.IndexOf("post-dump"));
    }

    [Fact]
    public void An_exception_in_a_notification_handler_aborts_the_dump_and_is_rethrown()
    {
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(16, Seed));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");

        var error = Assert.Throws<InvalidOperationException>(() => _criu.Dump(new CriuOptions
        {
            Pid = tree.RootPid,
            ImagesDirectory = Path.Combine(tree.Directory, "images"),
            Notify = _ => throw new TimeoutException("handler gave up"),
        }));

        Assert.IsType<TimeoutException>(error.InnerException);
        long before = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= before + 2, TickTimeout, "the counter to keep going");
    }

    [Fact]
    public void Dump_of_a_pid_that_does_not_exist_fails_clearly()
    {
        Prerequisites.RequireRoot();
        int missing = UnusedPid();
        var images = Directory.CreateTempSubdirectory("migrate-missing-").FullName;
        try
        {
            var error = Assert.Throws<CriuException>(() => _criu.Dump(new CriuOptions { Pid = missing, ImagesDirectory = images }));

            output.WriteLine(error.Message);
            Assert.Equal(CriuOperation.Dump, error.Operation);
            Assert.Equal(-52, error.ReturnCode); // EBADE: CRIU ran and reported failure
            Assert.Contains($"process {missing} does not exist", error.Message, StringComparison.Ordinal);
            Assert.NotNull(error.LoggedError);
            Assert.Contains(missing.ToString(System.Globalization.CultureInfo.InvariantCulture), error.LoggedError, StringComparison.Ordinal);
            Assert.Empty(CriuPagemap.ReadAll(images));
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }

    [Fact]
    public void A_dump_that_fails_after_freezing_leaves_the_tree_running_not_frozen()
    {
        // PID 1 holds a descriptor of a file outside the tree's root: CRIU freezes the tree, finds it
        // cannot dump that descriptor, and must let the tree go.
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(16, Seed), holdHostFile: true);
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        var images = Path.Combine(tree.Directory, "images");

        var error = Assert.Throws<CriuException>(() => _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images }));

        output.WriteLine(error.Message);
        Assert.Contains("host-file", string.Join('\n', error.LogTail), StringComparison.Ordinal);
        int workload = IsolatedProcessTree.Descendants(tree.RootPid).Single();
        foreach (var pid in new[] { tree.RootPid, workload })
        {
            var state = IsolatedProcessTree.ProcessState(pid);
            Assert.True(state is 'S' or 'R', $"process {pid} is in state {state}, expected running or sleeping");
            Assert.Equal("0", File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("TracerPid:", StringComparison.Ordinal)).Split('\t')[^1].Trim());
        }

        long before = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= before + 3, TickTimeout, "the counter to keep going after the failed dump");
    }

    [Fact]
    public void Restore_refuses_a_truncated_pages_file_before_starting_criu()
    {
        // CRIU's restorer loops forever on a short pages file instead of failing, so the set is
        // checked first.
        var (tree, images) = StartAndDump();
        using var _ = tree;
        var map = CriuPagemap.ReadAll(images).First(m => m.PresentPages > 0);
        var pages = Path.Combine(images, CriuPagemap.PagesFileName(map.PagesId));
        using (var stream = new FileStream(pages, FileMode.Open))
        {
            stream.SetLength(stream.Length / 2);
        }

        var error = Assert.Throws<CriuException>(() =>
            _criu.Restore(new CriuOptions { ImagesDirectory = images, Root = tree.RootFilesystem }, asChild: true));

        output.WriteLine(error.Message);
        Assert.Equal(CriuOperation.Restore, error.Operation);
        Assert.Contains(CriuPagemap.PagesFileName(map.PagesId), error.Message, StringComparison.Ordinal);
        Assert.Contains("not handed to CRIU", error.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(images, "restore.log")), "CRIU must not have been started");
    }

    [Fact]
    public void Restore_with_a_missing_image_fails_with_criu_log_and_leaves_nothing_running()
    {
        var (tree, images) = StartAndDump();
        using var _ = tree;
        var workloadCore = Directory.EnumerateFiles(images, "core-*.img").First(p => !p.EndsWith("core-1.img", StringComparison.Ordinal));
        File.Delete(workloadCore);

        var childrenBefore = IsolatedProcessTree.Descendants(Environment.ProcessId).ToHashSet();
        var error = Assert.Throws<CriuException>(() =>
            _criu.Restore(new CriuOptions { ImagesDirectory = images, Root = tree.RootFilesystem }, asChild: true));

        output.WriteLine(error.Message);
        Assert.Equal(CriuOperation.Restore, error.Operation);
        Assert.Equal(-52, error.ReturnCode);
        Assert.NotNull(error.LoggedError);
        Assert.Contains(Path.GetFileName(workloadCore), string.Join('\n', error.LogTail), StringComparison.Ordinal);
        Thread.Sleep(200);
        var leftovers = IsolatedProcessTree.Descendants(Environment.ProcessId)
            .Where(p => !childrenBefore.Contains(p) && IsolatedProcessTree.ProcessState(p) is not (null or 'Z'))
            .ToList();
        Assert.Empty(leftovers);
    }

    /// <summary>A 16 MiB counter tree, dumped (and so ended) after three ticks.</summary>
    private (IsolatedProcessTree Tree, string Images) StartAndDump()
    {
        var tree = IsolatedProcessTree.Start(Memcounter.Command(16, Seed));
        try
        {
            tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
            var images = Path.Combine(tree.Directory, "images");
            _criu.Dump(new CriuOptions { Pid = tree.RootPid, ImagesDirectory = images });
            return (tree, images);
        }
        catch
        {
            tree.Dispose();
            throw;
        }
    }

    private void Record(string name, double value, string unit) =>
        Figures.Record(nameof(CriuClientTests), name, value, unit);

    private static int UnusedPid()
    {
        int max = int.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim(), System.Globalization.CultureInfo.InvariantCulture);
        for (int pid = max - 1; pid > max - 1000; pid--)
        {
            if (!Directory.Exists($"/proc/{pid}"))
            {
                return pid;
            }
        }

        throw new InvalidOperationException("no unused PID near pid_max");
    }

    private static string? ReadKernelConfig()
    {
        if (!File.Exists("/proc/config.gz"))
        {
            return null;
        }

        using var file = File.OpenRead("/proc/config.gz");
        using var gzip = new GZipStream(file, CompressionMode.Decompress);
        using var reader = new StreamReader(gzip);
        return reader.ReadToEnd();
    }
}

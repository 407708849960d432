using System.Diagnostics;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>When a container's processes share enough copy-on-write memory that its restore must keep it shared: read from smaps_rollup, as a table, and measured on real processes.</summary>
public sealed class CopyOnWriteSharingTests
{
    private const string Rollup = """
        55d4c7a4e000-7ffd0b1f9000 ---p 00000000 00:00 0                          [rollup]
        Rss:              262980 kB
        Pss:              131552 kB
        Pss_Dirty:        131552 kB
        Pss_Anon:         131150 kB
        Pss_File:            402 kB
        Pss_Shmem:             0 kB
        Shared_Clean:        804 kB
        Shared_Dirty:     262148 kB
        Private_Clean:         0 kB
        Private_Dirty:        28 kB
        Referenced:       262980 kB
        Anonymous:        262176 kB
        KSM:                   0 kB
        """;

    [Fact]
    public void A_rollup_gives_the_anonymous_memory_and_its_proportional_share()
    {
        Assert.Equal(new CopyOnWriteSharing.AnonymousMemory(262176L * 1024, 131150L * 1024), CopyOnWriteSharing.Parse(Rollup));
        Assert.Null(CopyOnWriteSharing.Parse(Rollup.Replace("Pss_Anon:", "Pss_Other:", StringComparison.Ordinal)));
        Assert.Null(CopyOnWriteSharing.Parse(""));
    }

    [Theory]
    [InlineData(new long[] { }, 0L)]
    [InlineData(new long[] { 100, 100 }, 0L)] // one process, nothing shared
    [InlineData(new long[] { 256, 128, 256, 128 }, 256L)] // a parent and a child sharing 256
    [InlineData(new long[] { 255, 85, 255, 85, 255, 85 }, 510L)] // three sharing one buffer: two more copies
    [InlineData(new long[] { 10, 20 }, 0L)] // a share above its total (never negative)
    public void What_a_restore_that_unshares_would_add_is_each_process_memory_less_its_share(long[] pairs, long duplicated) =>
        Assert.Equal(duplicated, CopyOnWriteSharing.Duplicated(pairs.Chunk(2).Select(p => new CopyOnWriteSharing.AnonymousMemory(p[0], p[1]))));

    [Theory]
    [InlineData(0L, false)]
    [InlineData(16L << 20, false)]
    [InlineData((16L << 20) + 1, true)]
    [InlineData(256L << 20, true)]
    public void Above_16_MiB_shared_the_memory_is_restored_in_full(long duplicated, bool keeps) =>
        Assert.Equal(keeps, CopyOnWriteSharing.KeepsSharing(duplicated));

    [Fact]
    public async Task A_forked_child_and_its_parent_are_measured_sharing_their_buffer_and_a_lone_process_shares_nothing()
    {
        using var forked = Process.Start(new ProcessStartInfo(Memcounter.BinaryPath(), ["--mib", "32", "--interval-ms", "50", "--verify-every", "0", "--children", "1"])
        {
            RedirectStandardOutput = true,
        })!;
        try
        {
            // both print a tick once the buffer is filled and the child forked
            var lines = new List<string>();
            var clock = Stopwatch.StartNew();
            while (lines.Count(l => l.StartsWith(Memcounter.ChildPrefix, StringComparison.Ordinal)) < 2 && clock.Elapsed < TimeSpan.FromSeconds(20))
            {
                lines.Add(await forked.StandardOutput.ReadLineAsync() ?? throw new InvalidOperationException("memcounter ended: " + string.Join('\n', lines)));
            }

            int child = Memcounter.Parse(lines, children: true)[^1].Pid;
            long shared = CopyOnWriteSharing.Measure([forked.Id, child]);

            Assert.True(shared >= 30L << 20, $"the parent and its child share {shared} bytes of a 32 MiB buffer");
            Assert.True(CopyOnWriteSharing.KeepsSharing(shared));
            Assert.Equal(0, CopyOnWriteSharing.Measure([forked.Id]));
            Assert.Equal(0, CopyOnWriteSharing.Measure([int.MaxValue - 1, int.MaxValue]));

            // what a first pre-copy round would copy: the shared buffer once, not twice
            long once = CopyOnWriteSharing.Once([forked.Id, child]);
            Assert.InRange(once, 32L << 20, (32L << 20) + shared / 4);
            Assert.Equal(0, CopyOnWriteSharing.Once([int.MaxValue - 1, int.MaxValue]));
        }
        finally
        {
            // the child ends with its parent (PR_SET_PDEATHSIG)
            forked.Kill();
            await forked.WaitForExitAsync();
        }
    }
}

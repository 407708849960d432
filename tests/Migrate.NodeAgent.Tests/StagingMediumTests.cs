using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

public sealed class StagingMediumTests
{
    private const long Mib = 1L << 20;
    private const long Gib = 1L << 30;

    // a 1 GiB pod needs 1.5 GiB + 64 MiB = 1600 MiB; a 64 MiB one 160 MiB; NeededBytes is 0 where staging in memory was not considered
    public static TheoryData<string, StagingMediumFacts, bool, long, string> Rows => new()
    {
        { "fits everywhere", new(true, true, Gib, 12 * Gib, 20 * Gib, null, long.MaxValue), true, 1600 * Mib, "needs about 1600 MiB: staged in memory (12288 MiB free there)" },
        { "not configured", new(false, true, Gib, 12 * Gib, 20 * Gib, null, long.MaxValue), false, 0, "no memory staging directory is configured" },
        { "a kept checkpoint", new(true, false, Gib, 12 * Gib, 20 * Gib, null, long.MaxValue), false, 0, "a checkpoint kept on this node stays on disk" },
        { "memory not measured", new(true, true, 0, 12 * Gib, 20 * Gib, null, long.MaxValue), false, 0, "could not be measured" },
        { "memory file system too small", new(true, true, Gib, 1599 * Mib, 20 * Gib, null, long.MaxValue), false, 1600 * Mib, "the memory file system has 1599 MiB free" },
        { "memory file system just enough", new(true, true, Gib, 1600 * Mib, 20 * Gib, null, long.MaxValue), true, 1600 * Mib, "staged in memory" },
        { "over half the node's available memory", new(true, true, Gib, 12 * Gib, 3 * Gib, null, long.MaxValue), false, 1600 * Mib, "over half of the node's available memory (3072 MiB)" },
        { "half the node's available memory exactly", new(true, true, Gib, 12 * Gib, 3200 * Mib, null, long.MaxValue), true, 1600 * Mib, "staged in memory" },
        { "agent's limit too tight", new(true, true, Gib, 12 * Gib, 20 * Gib, 1 * Gib, long.MaxValue), false, 1600 * Mib, "the agent's memory limit leaves 1024 MiB" },
        { "agent's limit leaves room and its reserve", new(true, true, Gib, 12 * Gib, 20 * Gib, 1856 * Mib, long.MaxValue), true, 1600 * Mib, "staged in memory" },
        { "agent's limit one MiB short of the reserve", new(true, true, Gib, 12 * Gib, 20 * Gib, 1855 * Mib, long.MaxValue), false, 1600 * Mib, "the agent's memory limit" },
        { "agent over its limit", new(true, true, 64 * Mib, 12 * Gib, 20 * Gib, -5 * Mib, long.MaxValue), false, 160 * Mib, "leaves 0 MiB" },
        { "a small pod beside a tight agent limit", new(true, true, 64 * Mib, 12 * Gib, 20 * Gib, 700 * Mib, long.MaxValue), true, 160 * Mib, "needs about 160 MiB" },
        { "budget spent by others", new(true, true, Gib, 12 * Gib, 20 * Gib, null, 1 * Gib), false, 1600 * Mib, "budget (Agent:MemoryStagingMaxBytes) has 1024 MiB left" },
        { "budget overspent", new(true, true, Gib, 12 * Gib, 20 * Gib, null, -Gib), false, 1600 * Mib, "has 0 MiB left" },
        { "budget just enough", new(true, true, Gib, 12 * Gib, 20 * Gib, null, 1600 * Mib), true, 1600 * Mib, "staged in memory" },
        { "free space and availability after others' reservations", new(true, true, Gib, -3 * Gib, -Gib, -Gib, long.MaxValue), false, 1600 * Mib, "has -3072 MiB free" },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void A_migration_is_staged_in_memory_only_where_it_fits(string row, StagingMediumFacts facts, bool inMemory, long needed, string reason)
    {
        var medium = StagingMediumDecision.Choose(facts);
        Assert.True(medium.InMemory == inMemory, $"{row}: {medium.Reason}");
        Assert.Contains(reason, medium.Reason, StringComparison.Ordinal);
        Assert.Equal(needed, medium.NeededBytes);
    }

    [Theory]
    [InlineData("Name:\tx\nRssAnon:\t  1024 kB\nRssFile:\t 999 kB\nRssShmem:\t   16 kB\n", 1040 * 1024)]
    [InlineData("Name:\tx\nRssAnon:\t  1024 kB\n", 1024 * 1024)]
    [InlineData("Name:\tkthreadd\n", 0)]
    [InlineData("Name:\tx\nRssAnon:\t  garbage kB\nRssShmem:\t8 kB\n", 8 * 1024)]
    public void A_process_memory_is_its_resident_private_and_shared_pages(string status, long bytes) =>
        Assert.Equal(bytes, StagingMediumProbe.ProcessMemoryBytes(status));

    [Theory]
    [InlineData("MemTotal:       24683772 kB\nMemFree:        21086528 kB\nMemAvailable:   23110552 kB\n", 23110552L * 1024)]
    [InlineData("MemTotal:       24683772 kB\n", 0)]
    public void The_node_available_memory_is_MemAvailable(string meminfo, long bytes) =>
        Assert.Equal(bytes, StagingMediumProbe.AvailableBytes(meminfo));

    [Theory]
    [InlineData("max\n", "1000\n", "", null)]
    [InlineData("9223372036854771712\n", "1000\n", "", null)] // cgroup v1's "no limit"
    [InlineData("1073741824\n", "73741824\n", "", 1000000000L)]
    [InlineData("1000\n", "1500\n", "", -500L)]
    [InlineData("1000\n", "", "", null)]
    // v2: inactive file pages are reclaimed before the limit is reached; active ones and anonymous ones count
    [InlineData("1000000\n", "900000\n", "anon 100000\nfile 800000\nactive_file 200000\ninactive_file 600000\n", 700000L)]
    // v1: the hierarchy's total, not the group's own
    [InlineData("1000000\n", "900000\n", "inactive_file 1\ntotal_inactive_file 500000\n", 600000L)]
    // more inactive pages counted than used (the two read at different moments): nothing used
    [InlineData("1000\n", "500\n", "inactive_file 800\n", 1000L)]
    public void The_agent_headroom_is_its_cgroup_limit_less_its_working_set(string limit, string usage, string stat, long? headroom) =>
        Assert.Equal(headroom, StagingMediumProbe.Headroom(limit, usage, stat));

    [Fact]
    public void A_process_named_like_a_key_is_not_read_as_one() =>
        Assert.Equal(4096, StagingMediumProbe.ProcessMemoryBytes("Name:\tRssAnon: 999999 kB\nRssAnon:\t4 kB\n"));

    [Fact]
    public void This_process_memory_is_measured_from_proc()
    {
        // the test host's own process: something resident, and the node's available memory read
        Assert.True(StagingMediumProbe.TreeMemoryBytes([Environment.ProcessId]) > 1 * Mib);
        Assert.True(StagingMediumProbe.NodeAvailableBytes() > 0);
        Assert.Equal(0, StagingMediumProbe.TreeMemoryBytes([int.MaxValue]));
    }
}

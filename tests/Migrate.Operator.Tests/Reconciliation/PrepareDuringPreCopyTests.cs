using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>When the replacement pod is made while pre-copy rounds still run, as a table (45 s budget).</summary>
public sealed class PrepareDuringPreCopyTests
{
    [Theory]
    [InlineData(1, 0U, false, 3, false)] // round 1 not staged yet: its length is unknown
    [InlineData(1, 2_000U, false, 3, true)] // rounds 2 and 3 and the handoff, 3 s each: 9 s
    [InlineData(2, 2_000U, false, 3, true)] // round 2 under way, round 3, the handoff: 9 s
    [InlineData(1, 10_000U, false, 3, true)] // 3 x 15 s = 45 s: just within
    [InlineData(2, 10_000U, false, 3, true)]
    [InlineData(1, 10_001U, false, 3, false)]
    [InlineData(3, 14_000U, false, 3, true)] // the last round under way and the handoff: 2 x 21 s
    [InlineData(3, 20_000U, false, 3, false)] // 2 x 30 s: the restore might wait too long
    [InlineData(2, 2_000U, false, 50, false)] // 48 rounds may follow: 150 s
    [InlineData(2, 2_000U, true, 3, false)] // converged: made by the ordinary path
    public void Decides_whether_the_replacement_is_made_during_the_rounds(int rounds, uint firstRoundMillis, bool converged, int maxRounds, bool expected)
    {
        var progress = new PreCopyProgress { Rounds = rounds, FirstRoundMillis = firstRoundMillis, Converged = converged };
        Assert.Equal(expected, MigrationDecisions.PrepareDuringPreCopy(progress, maxRounds, TimeSpan.FromSeconds(45)));
    }

    [Fact]
    public void Nothing_known_makes_nothing() => Assert.False(MigrationDecisions.PrepareDuringPreCopy(null, 3, TimeSpan.FromSeconds(45)));

    private const ulong MiB = 1UL << 20;

    [Theory]
    // round 1's pre-dump under way, only the memory known: 64 MiB at 50 MB/s is 1.34 s; 1.34 + 3 x 2.01 s
    [InlineData(0, 0U, 64 * MiB, 0UL, 0UL, 50e6, 3, true)]
    // 256 MiB: 5.37 + 3 x 8.05 = 29.5 s
    [InlineData(0, 0U, 256 * MiB, 0UL, 0UL, 50e6, 3, true)]
    // 1 GiB: 21.5 + 3 x 32.2 s: wait for round 1's transfer to show its rate
    [InlineData(0, 0U, 1024 * MiB, 0UL, 0UL, 50e6, 3, false)]
    // 256 MiB under an operator bandwidth limit of 10 MB/s: 26.8 + 3 x 40.3 s
    [InlineData(0, 0U, 256 * MiB, 0UL, 0UL, 10e6, 3, false)]
    // 64 MiB, but 50 rounds allowed: 1.34 + 50 x 2.01 s
    [InlineData(0, 0U, 64 * MiB, 0UL, 0UL, 50e6, 50, false)]
    // 1 GiB, its transfer 1/8 through after 2.2 s: 17.6 s estimated, 15.4 s left + 3 x 26.4 s
    [InlineData(1, 2_200U, 1024 * MiB, 128 * MiB, 1024 * MiB, 50e6, 3, false)]
    // 1 GiB, 5/8 through after 4 s: 6.4 s estimated, 2.4 s left + 3 x 9.6 s = 31.2 s
    [InlineData(1, 4_000U, 1024 * MiB, 640 * MiB, 1024 * MiB, 50e6, 3, true)]
    // 4 GiB, 7/8 through after 30 s: 34.3 s estimated, 4.3 s left + 3 x 51.4 s
    [InlineData(1, 30_000U, 4096 * MiB, 3584 * MiB, 4096 * MiB, 50e6, 3, false)]
    // nothing reported (an older agent): as before, wait for round 1 to be staged
    [InlineData(0, 0U, 0UL, 0UL, 0UL, 50e6, 3, false)]
    public void While_round_1_runs_its_length_is_estimated_from_its_transfer_or_the_memory_at_a_floor_rate(int rounds, uint roundMillis, ulong memory, ulong sent, ulong total,
        double floor, int maxRounds, bool expected)
    {
        var progress = new PreCopyProgress { Rounds = rounds, RoundMillis = roundMillis, MemoryBytes = memory, BytesSent = sent, BytesTotal = total };
        Assert.Equal(expected, MigrationDecisions.PrepareDuringPreCopy(progress, maxRounds, TimeSpan.FromSeconds(45), floor));
    }

    [Fact]
    public void Round_1s_estimate_scales_the_time_so_far_by_the_transfer_still_to_go_and_falls_back_on_the_memory()
    {
        Assert.Equal(8_000, MigrationDecisions.FirstRoundEstimateMillis(new PreCopyProgress { Rounds = 1, RoundMillis = 2_000, BytesSent = 100, BytesTotal = 400, MemoryBytes = 1 }, 50e6));
        Assert.Equal(1_500, MigrationDecisions.FirstRoundEstimateMillis(new PreCopyProgress { Rounds = 0, RoundMillis = 500, MemoryBytes = 50_000_000 }, 50e6));
        // a transfer that reports more sent than in all is not believed
        Assert.Equal(1_500, MigrationDecisions.FirstRoundEstimateMillis(new PreCopyProgress { Rounds = 1, RoundMillis = 500, BytesSent = 9, BytesTotal = 4, MemoryBytes = 50_000_000 }, 50e6));
        Assert.Null(MigrationDecisions.FirstRoundEstimateMillis(new PreCopyProgress { Rounds = 0, RoundMillis = 500 }, 50e6));
        Assert.Null(MigrationDecisions.FirstRoundEstimateMillis(new PreCopyProgress { MemoryBytes = 1 }, 0));
    }
}

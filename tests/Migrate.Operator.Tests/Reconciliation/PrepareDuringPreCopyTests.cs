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
}

using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>When pre-copy takes no further round, as a table.</summary>
public sealed class PreCopyRoundsTests
{
    [Theory]
    [InlineData(1, 3, null, 262144UL, 10, PreCopyEnd.Continue)] // the first round says nothing about the dirty rate
    [InlineData(1, 3, null, 12UL, 10, PreCopyEnd.Continue)] // not even when it is small: there is no round before to compare
    [InlineData(1, 1, null, 262144UL, 10, PreCopyEnd.Limit)]
    [InlineData(2, 3, 262144UL, 40UL, 10, PreCopyEnd.Small)] // an idle pod: the freeze takes the rest
    [InlineData(2, 3, 262144UL, 1024UL, 10, PreCopyEnd.Small)]
    [InlineData(2, 3, 262144UL, 1025UL, 10, PreCopyEnd.Continue)] // just above small, shrinking: one more round
    [InlineData(2, 3, 16384UL, 4000UL, 10, PreCopyEnd.Continue)] // a dirtying pod: shrinking
    [InlineData(3, 3, 4000UL, 1200UL, 10, PreCopyEnd.Limit)]
    [InlineData(3, 5, 4000UL, 3700UL, 10, PreCopyEnd.Stalled)] // 7.5 % smaller: not the 10 % asked
    [InlineData(3, 5, 4000UL, 3600UL, 10, PreCopyEnd.Continue)] // exactly 10 % smaller goes on
    [InlineData(3, 5, 4000UL, 5000UL, 0, PreCopyEnd.Stalled)] // grew: stalled whatever the percentage
    [InlineData(3, 5, 4000UL, 4000UL, -5, PreCopyEnd.Continue)] // a negative percentage counts as 0: no growth goes on
    [InlineData(3, 5, 40000UL, 3000UL, 150, PreCopyEnd.Stalled)] // over 100 counts as 100: every round stalls
    [InlineData(4, 3, 4000UL, 2000UL, 10, PreCopyEnd.Limit)] // past the limit (rounds taken before a restart)
    public void Decides_whether_another_round_is_taken(int round, int maxRounds, ulong? previous, ulong pages, int minShrinkPercent, PreCopyEnd expected) =>
        Assert.Equal(expected, PreCopyRounds.After(round, maxRounds, previous, pages, minShrinkPercent));

    [Theory]
    [InlineData(true, true, PreCopyMethod.ContentComparison, true, null)] // tracked, allowed: nothing reads them here again
    [InlineData(false, true, PreCopyMethod.ContentComparison, true, "turned off")]
    [InlineData(true, true, PreCopyMethod.ContentComparison, false, "not tracked")] // the next round compares with them
    [InlineData(true, false, PreCopyMethod.ContentComparison, true, "not allowed by the operator")] // a plain final dump, or the source's images a fallback
    [InlineData(true, true, PreCopyMethod.KernelTracking, true, "soft-dirty")]
    [InlineData(false, false, PreCopyMethod.ContentComparison, false, "turned off")] // the first reason given
    public void Decides_whether_a_containers_sent_rounds_are_given_back(bool enabled, bool allowed, PreCopyMethod method, bool tracked, string? why)
    {
        var kept = RoundRelease.WhyKept(enabled, allowed, method, tracked);
        if (why is null)
        {
            Assert.Null(kept);
        }
        else
        {
            Assert.Contains(why, kept);
        }
    }
}

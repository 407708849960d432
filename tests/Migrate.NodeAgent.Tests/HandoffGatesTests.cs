using Grpc.Core;
using Migrate.Agent.Contracts.Groups;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The holds of a group member's handoff: let through once, in order, never back; a hold not let through in time fails.</summary>
public sealed class HandoffGatesTests
{
    [Theory]
    [InlineData(null, 0)]
    [InlineData("", 0)]
    [InlineData(GroupHolds.Dump, 1)]
    [InlineData(GroupHolds.Commit, 2)]
    [InlineData("Restore", -1)]
    public void Through_words_reach_as_far_as_they_say(string? through, int reach) => Assert.Equal(reach, GroupHolds.Reach(through));

    [Theory]
    [InlineData(GroupHolds.Frozen, "", false)]
    [InlineData(GroupHolds.Frozen, GroupHolds.Dump, true)]
    [InlineData(GroupHolds.Staged, GroupHolds.Dump, false)]
    [InlineData(GroupHolds.Staged, GroupHolds.Commit, true)]
    [InlineData(GroupHolds.Frozen, GroupHolds.Commit, true)]
    public void A_hold_passes_once_let_through_that_far(string hold, string through, bool passes) => Assert.Equal(passes, GroupHolds.Passes(hold, through));

    [Fact]
    public async Task A_hold_waits_until_let_through_and_a_word_given_early_is_kept()
    {
        var gates = new HandoffGates();
        var waiting = gates.WaitAsync("m1", GroupHolds.Frozen, TimeSpan.FromSeconds(30), CancellationToken.None);
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        gates.Continue("m1", GroupHolds.Dump);
        await waiting.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(GroupHolds.Dump, gates.Through("m1"));

        // the second hold waits for its own word; Commit given before it is reached lets it through at once
        var staged = gates.WaitAsync("m1", GroupHolds.Staged, TimeSpan.FromSeconds(30), CancellationToken.None);
        await Task.Delay(50);
        Assert.False(staged.IsCompleted);
        gates.Continue("m1", GroupHolds.Commit);
        await staged.WaitAsync(TimeSpan.FromSeconds(5));
        gates.Continue("m1", GroupHolds.Dump); // going back is ignored
        Assert.Equal(GroupHolds.Commit, gates.Through("m1"));

        gates.Continue("m2", GroupHolds.Commit);
        await gates.WaitAsync("m2", GroupHolds.Frozen, TimeSpan.FromSeconds(1), CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
        await gates.WaitAsync("m2", GroupHolds.Staged, TimeSpan.FromSeconds(1), CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_hold_not_let_through_in_time_fails_saying_so_and_a_cancelled_one_stops()
    {
        var gates = new HandoffGates();
        var late = await Assert.ThrowsAsync<CheckpointException>(() => gates.WaitAsync("m1", GroupHolds.Frozen, TimeSpan.FromMilliseconds(200), CancellationToken.None));
        Assert.Equal(StatusCode.DeadlineExceeded, late.Code);
        Assert.Contains("did not continue past hold Frozen within 0.2 seconds", late.Message, StringComparison.Ordinal);

        using var stop = new CancellationTokenSource();
        var cancelled = gates.WaitAsync("m1", GroupHolds.Staged, TimeSpan.FromSeconds(30), stop.Token);
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
    }

    [Theory]
    [InlineData("")]
    [InlineData("Restore")]
    [InlineData("commit")]
    public void An_unknown_word_is_refused(string through)
    {
        var refused = Assert.Throws<CheckpointException>(() => new HandoffGates().Continue("m1", through));
        Assert.Equal(StatusCode.InvalidArgument, refused.Code);
    }
}

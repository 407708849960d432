using Grpc.Core;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The holds of group members' checkpoint takes: the first word counts, whenever it comes; no word ends the hold at its time.</summary>
public sealed class CheckpointGatesTests
{
    [Fact]
    public async Task Thaw_said_during_the_wait_lets_it_through()
    {
        var gates = new CheckpointGates();
        var waiting = gates.WaitAsync("c1", TimeSpan.FromSeconds(30), CancellationToken.None);
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);

        Assert.Equal("Thaw", gates.Decide("c1", "Thaw"));
        await waiting;
        Assert.Equal("Abort", gates.Decide("c2", "Abort"));
        Assert.Equal("Abort", gates.Decide("c2", "Thaw")); // the first word counts
    }

    [Fact]
    public async Task Abort_said_before_the_wait_ends_it_at_once_as_Aborted()
    {
        var gates = new CheckpointGates();
        gates.Decide("c1", "Abort");
        var e = await Assert.ThrowsAsync<CheckpointException>(() => gates.WaitAsync("c1", TimeSpan.FromSeconds(30), CancellationToken.None));
        Assert.Equal(StatusCode.Aborted, e.Code);
        Assert.Equal("Abort", gates.Decision("c1"));
        gates.Forget("c1");
        Assert.Null(gates.Decision("c1"));
    }

    [Fact]
    public async Task No_word_ends_the_wait_at_its_time_and_a_wrong_word_is_refused()
    {
        var gates = new CheckpointGates();
        var e = await Assert.ThrowsAsync<CheckpointException>(() => gates.WaitAsync("c1", TimeSpan.FromMilliseconds(200), CancellationToken.None));
        Assert.Equal(StatusCode.DeadlineExceeded, e.Code);
        Assert.Contains("within 0.2 seconds", e.Message, StringComparison.Ordinal);

        var wrong = Assert.Throws<CheckpointException>(() => gates.Decide("c1", "Commit"));
        Assert.Equal(StatusCode.InvalidArgument, wrong.Code);
        Assert.Null(gates.Decision("c1"));
    }
}

using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

public sealed class FaultsFirstTests
{
    private static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(5), Most = TimeSpan.FromMilliseconds(50);

    [Theory]
    // no fault yet, or the last one long ago: the piece goes now
    [InlineData(0, null, 0, 0)]
    [InlineData(0, 5.0, 0, 0)]
    [InlineData(0, 900.0, 10, 0)]
    // a fault being answered: wait a quiet window, then ask again
    [InlineData(1, 0.0, 0, 5)]
    [InlineData(3, 1.0, 20, 5)]
    // the last fault just answered: wait out the rest of the quiet window
    [InlineData(0, 1.0, 0, 4)]
    [InlineData(0, 4.5, 30, 0.5)]
    // never past the bound per piece, however the process faults
    [InlineData(1, 0.0, 48, 2)]
    [InlineData(0, 0.5, 47, 3)]
    [InlineData(1, 0.0, 50, 0)]
    [InlineData(9, 0.0, 400, 0)]
    public void The_lane_waits_while_faults_are_answered_and_a_quiet_window_after_but_never_past_its_bound(int inFlight, double? sinceLastMillis, int waitedMillis,
        double expectedMillis)
    {
        var wait = LaneYield.Wait(inFlight, sinceLastMillis is { } since ? TimeSpan.FromMilliseconds(since) : null, TimeSpan.FromMilliseconds(waitedMillis), Quiet, Most);
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMillis), wait);
    }

    [Fact]
    public async Task A_piece_waits_for_the_fault_being_answered_and_goes_once_it_is()
    {
        var faults = new FaultsFirst(TimeProvider.System, quiet: TimeSpan.FromMilliseconds(1), most: TimeSpan.FromHours(1));
        using var lane = faults.Lane("m1");
        var fault = faults.Fault("m1");
        var piece = faults.BeforePieceAsync("m1", CancellationToken.None);
        // with an hour's bound only the fault's end lets it go
        await Task.Delay(50);
        Assert.False(piece.IsCompleted, "the piece went while a fault was being answered");
        fault.Dispose();
        await piece.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task A_fault_that_never_ends_holds_a_piece_back_no_longer_than_the_bound()
    {
        var faults = new FaultsFirst(TimeProvider.System, quiet: TimeSpan.FromMilliseconds(5), most: TimeSpan.FromMilliseconds(20));
        using var lane = faults.Lane("m1");
        using var stuck = faults.Fault("m1");
        for (int i = 0; i < 3; i++)
        {
            await faults.BeforePieceAsync("m1", CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public void Faults_of_another_migration_or_without_an_open_lane_hold_nothing_back()
    {
        var faults = new FaultsFirst(TimeProvider.System, quiet: TimeSpan.FromHours(1), most: TimeSpan.FromHours(1));
        using (faults.Lane("m1"))
        {
            using var other = faults.Fault("m2");
            Assert.True(faults.BeforePieceAsync("m1", CancellationToken.None).IsCompletedSuccessfully);
        }

        // the lane closed: its record went with it, and a fault now is not kept
        using var late = faults.Fault("m1");
        Assert.True(faults.BeforePieceAsync("m1", CancellationToken.None).IsCompletedSuccessfully);
    }

    [Fact]
    public async Task Two_lanes_of_one_migration_share_its_faults_until_the_last_closes()
    {
        var faults = new FaultsFirst(TimeProvider.System, quiet: TimeSpan.FromMilliseconds(1), most: TimeSpan.FromHours(1));
        var first = faults.Lane("m1");
        using var second = faults.Lane("m1");
        first.Dispose();
        first.Dispose(); // twice changes nothing
        var fault = faults.Fault("m1");
        var piece = faults.BeforePieceAsync("m1", CancellationToken.None);
        await Task.Delay(50);
        Assert.False(piece.IsCompleted, "the open lane lost its migration's faults when the other closed");
        fault.Dispose();
        await piece.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task A_lane_whose_request_is_aborted_stops_waiting()
    {
        var faults = new FaultsFirst(TimeProvider.System, quiet: TimeSpan.FromMilliseconds(1), most: TimeSpan.FromHours(1));
        using var lane = faults.Lane("m1");
        using var fault = faults.Fault("m1");
        using var aborted = new CancellationTokenSource();
        var piece = faults.BeforePieceAsync("m1", aborted.Token);
        await aborted.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => piece.WaitAsync(TimeSpan.FromSeconds(10)));
    }
}

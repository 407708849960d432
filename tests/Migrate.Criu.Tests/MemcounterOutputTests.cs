using Migrate.TestSupport;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>The test workload's tick lines, and the pause it saw across a move, read from them.</summary>
public sealed class MemcounterOutputTests
{
    [Fact]
    public void Tick_lines_are_read_with_and_without_their_time_and_other_lines_are_skipped()
    {
        var ticks = Memcounter.Parse([
            "tick=7 pid=12 ppid=1 mib=64 checksum=00000000000000ff verified=ok dirtied=3 at=1796325303500123",
            "memcounter: some warning",
            "tick=8 pid=12 ppid=1 mib=64 checksum=0000000000000100 verified=- dirtied=4",
            "tick=9 pid=12 ppid=1 mib=64 checksum=0000000000000100 verified=- dirtied=4 at=",
        ]);

        Assert.Equal(2, ticks.Count);
        Assert.Equal(new MemcounterTick(7, 12, 1, 64, 0xff, "ok", 3, 1796325303500123), ticks[0]);
        Assert.Equal(0, ticks[1].AtMicros);
    }

    [Theory]
    [InlineData(41, 1_000_000, 42, 1_250_500, 250.5)] // the pause: last tick before to first tick after
    [InlineData(41, 1_000_000, 43, 1_250_500, null)] // a tick lost: no pause to speak of
    [InlineData(41, 0, 42, 1_250_500, null)] // an older workload without times
    [InlineData(41, 1_000_000, 42, 0, null)]
    public void The_pause_seen_is_the_time_between_consecutive_ticks_across_the_move(long before, long beforeAt, long after, long afterAt, double? pause)
    {
        var last = new MemcounterTick(before, 1, 0, 64, 0, "-", 0, beforeAt);
        var first = new MemcounterTick(after, 1, 0, 64, 0, "ok", 0, afterAt);
        Assert.Equal(pause, MemcounterTick.PauseMillis(last, first));
    }
}

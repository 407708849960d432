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

    /// <summary>Ticks every 10 ms up to 41 (at 1 000 000 µs for tick 41), then the ticks after the move as "tick@µs".</summary>
    public static TheoryData<string, string, double?> Pauses() => new()
    {
        { "the pause: last tick before to first tick after", "42@1250500 43@1260600", 250.5 },
        { "frozen after tick 42 took its time, before it printed: the gap after it", "42@1010000 43@1262000", 252.0 },
        { "the first gap is 3 intervals: already a pause", "42@1030000 43@1040000", 30.0 },
        { "a tick lost: no pause to speak of", "43@1250500 44@1260500", null },
        { "no time after the move", "42@0", null },
        { "frozen mid-tick and nothing after it yet: the only gap there is", "42@1010000", 10.0 },
    };

    [Theory]
    [MemberData(nameof(Pauses))]
    public void The_pause_seen_is_the_gap_across_the_move_even_when_the_freeze_caught_a_tick_half_way(string name, string after, double? pause)
    {
        var before = Enumerable.Range(30, 12).Select(t => Tick(t, 1_000_000 - ((41 - t) * 10_000))).ToList();
        var moved = after.Split(' ').Select(t => t.Split('@')).Select(p => Tick(long.Parse(p[0], System.Globalization.CultureInfo.InvariantCulture), long.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture))).ToList();
        Assert.True(pause == MemcounterTick.PauseMillis(before, moved), $"{name}: {MemcounterTick.PauseMillis(before, moved)}");
    }

    [Fact]
    public void Ticks_without_times_before_the_move_give_the_plain_gap()
    {
        MemcounterTick[] before = [Tick(40, 0), Tick(41, 1_000_000)];
        Assert.Equal(250.5, MemcounterTick.PauseMillis(before, [Tick(42, 1_250_500), Tick(43, 1_260_500)]));
        Assert.Null(MemcounterTick.PauseMillis([], [Tick(42, 1_250_500)]));
    }

    private static MemcounterTick Tick(long tick, long at) => new(tick, 1, 0, 64, 0, "-", 0, at);
}

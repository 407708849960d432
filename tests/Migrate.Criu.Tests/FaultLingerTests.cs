using Migrate.Criu.Lazy;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>
/// When the memory filler, having answered faults, waits for the next one before its next piece:
/// only after a fault, and never so long that the fill stalls (a piece at least every 10 ms, the
/// waiting at most a quarter of the fill's time).
/// </summary>
public sealed class FaultLingerTests
{
    public static TheoryData<string, bool, double, double, double, bool> Cases() => new()
    {
        { "a fault answered, a piece just filled, little waited", true, 0.5, 2, 100, true },
        { "no fault in this pass: the next piece", false, 0.5, 2, 100, false },
        { "no piece for 10 ms: a piece, faults or not", true, 10, 2, 100, false },
        { "no piece for just under 10 ms", true, 9.9, 2, 100, true },
        { "waited a quarter of the fill: a piece", true, 0.5, 25, 100, false },
        { "waited just under a quarter", true, 0.5, 24.9, 100, true },
        { "the fill's first pass: nothing waited, no time yet", true, 0, 0, 0, false },
        { "the fill's first moments", true, 0, 0, 0.1, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Waits_for_a_further_fault_only_within_its_bounds(string _, bool answered, double sinceLastPieceMs, double lingeredMs, double fillingMs, bool expected) =>
        Assert.Equal(expected, FaultLinger.Wait(answered, TimeSpan.FromMilliseconds(sinceLastPieceMs), TimeSpan.FromMilliseconds(lingeredMs), TimeSpan.FromMilliseconds(fillingMs)));
}

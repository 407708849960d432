namespace Migrate.Criu.Lazy;

/// <summary>
/// Whether the memory filler, having just answered a fault, waits a moment for the process's next
/// fault instead of filling its next piece at once. A process that writes its memory while it
/// fills faults in bursts: each answered fault lets it run on for a few microseconds to the next
/// page it misses. Filled at once, the next piece (up to <see cref="MemoryFiller.PiecePages"/>
/// pages, a millisecond and more here) would hold that next fault back, and so every fault of the
/// burst: a process writing 131 scattered pages a tick waited about a piece for each, which the
/// pod saw as a pause after its restore. Waiting is bounded, so the fill (which the source waits
/// for, frozen, when pages were left on it) goes on: a piece at least every
/// <see cref="PieceAtLeastEvery"/>, and the time spent waiting for faults that did not come at
/// most a <see cref="ShareDivisor"/>th of the fill's time so far.
/// </summary>
public static class FaultLinger
{
    /// <summary>How long one wait for a further fault lasts (a poll's timeout).</summary>
    public const int Millis = 1;

    /// <summary>A piece is filled at least this often, however many faults come.</summary>
    public static readonly TimeSpan PieceAtLeastEvery = TimeSpan.FromMilliseconds(10);

    /// <summary>The waiting takes at most 1/this of the fill's time.</summary>
    public const int ShareDivisor = 4;

    /// <param name="answered">Faults were answered in this pass.</param>
    /// <param name="sinceLastPiece">Since the last piece was filled (or the fill began).</param>
    /// <param name="lingered">Spent waiting for further faults so far.</param>
    /// <param name="filling">Since the fill began (the restore finished).</param>
    public static bool Wait(bool answered, TimeSpan sinceLastPiece, TimeSpan lingered, TimeSpan filling) =>
        answered && sinceLastPiece < PieceAtLeastEvery && lingered.Ticks * ShareDivisor < filling.Ticks;
}

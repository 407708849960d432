namespace Migrate.NodeAgent.Checkpointing;

/// <summary>Why pre-copy takes no further round (or <see cref="Continue"/>).</summary>
public enum PreCopyEnd
{
    /// <summary>Another round is worth taking.</summary>
    Continue,

    /// <summary>The round found so little written that the freeze can take it: another round would cost more than it saves.</summary>
    Small,

    /// <summary>The dirty set stopped shrinking: the workload writes about as fast as rounds copy, more rounds would not shorten the freeze.</summary>
    Stalled,

    /// <summary>The request's round limit was reached.</summary>
    Limit,
}

/// <summary>
/// When pre-copy stops, from the pages each round found written and nothing else. A round after the
/// first ends it when what it found is small (the final dump takes that much in a few milliseconds
/// while a round costs a pre-dump and a transfer), or when it did not shrink by the request's
/// percentage against the round before; the round limit ends it in any case.
/// </summary>
public static class PreCopyRounds
{
    /// <summary>
    /// At most this many pages (4 MiB) written since the round before is small: the freeze captures
    /// and sends them in some 20 ms, less than one more round costs (a pre-dump and a transfer to the
    /// target: 57-241 ms measured for such rounds of a 64 MiB pod).
    /// </summary>
    public const ulong SmallPages = 1024;

    /// <param name="round">The round just taken (1 for the first).</param>
    /// <param name="maxRounds">The request's limit.</param>
    /// <param name="previousPages">Pages the round before found written (null after the first round).</param>
    /// <param name="pages">Pages this round found written.</param>
    /// <param name="minShrinkPercent">How much smaller than the round before a round must be to go on (clamped to 0-100).</param>
    public static PreCopyEnd After(int round, int maxRounds, ulong? previousPages, ulong pages, int minShrinkPercent)
    {
        if (previousPages is { } previous && round > 1)
        {
            if (pages <= SmallPages)
            {
                return PreCopyEnd.Small;
            }

            if (pages * 100 > previous * (ulong)(100 - Math.Clamp(minShrinkPercent, 0, 100)))
            {
                return PreCopyEnd.Stalled;
            }
        }

        return round >= maxRounds ? PreCopyEnd.Limit : PreCopyEnd.Continue;
    }
}

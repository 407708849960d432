namespace Migrate.Agent.Contracts.Groups;

/// <summary>
/// The words of a group member's handoff holds (HandoffProgress.held, ContinueHandoffRequest.through),
/// and the order they come in: a member is held once frozen, let through to dump, held again once
/// its final images are staged on its target, and let through to commit.
/// </summary>
public static class GroupHolds
{
    /// <summary>Held: frozen with its network locked, nothing dumped yet.</summary>
    public const string Frozen = "Frozen";

    /// <summary>Held: the final images are staged on the target, not committed.</summary>
    public const string Staged = "Staged";

    /// <summary>Through: past the hold after the freeze.</summary>
    public const string Dump = "Dump";

    /// <summary>Through: past both holds.</summary>
    public const string Commit = "Commit";

    /// <summary>How long a hold lasts when the request names no time.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How far a "through" word reaches: 0 for none, 1 for Dump, 2 for Commit; -1 for a word that is neither.</summary>
    public static int Reach(string? through) => through switch
    {
        null or "" => 0,
        Dump => 1,
        Commit => 2,
        _ => -1,
    };

    /// <summary>How far (<see cref="Reach"/>) a handoff must be let through to pass a hold.</summary>
    public static int Needs(string hold) => hold switch
    {
        Frozen => 1,
        Staged => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(hold), hold, "not a hold"),
    };

    /// <summary>Whether a hold is passed once the handoff was let through <paramref name="through"/>.</summary>
    public static bool Passes(string hold, string? through) => Reach(through) >= Needs(hold);
}

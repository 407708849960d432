namespace Migrate.Agent.Contracts.Groups;

/// <summary>
/// The words of a group checkpoint's hold (KeptCheckpoint.held, ContinueCheckpointRequest.decision):
/// a member's take, once dumped, is held frozen until the operator says whether the group's cut
/// stands (every member frozen at once: thaw and keep) or not (another member failed: thaw and
/// discard).
/// </summary>
public static class CheckpointHolds
{
    /// <summary>Held: frozen, the images written, not kept yet.</summary>
    public const string Dumped = "Dumped";

    /// <summary>Decision: the cut stands; thaw the pod and keep the checkpoint.</summary>
    public const string Thaw = "Thaw";

    /// <summary>Decision: the group is rolled back; thaw the pod and discard the images.</summary>
    public const string Abort = "Abort";

    /// <summary>How long a hold lasts when the request names no time.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Whether a decision word is one of the two.</summary>
    public static bool IsDecision(string? word) => word is Thaw or Abort;
}

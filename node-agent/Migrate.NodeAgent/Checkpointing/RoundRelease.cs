using CriuPreCopyMethod = Migrate.Criu.Incremental.PreCopyMethod;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Whether a container's pre-copy rounds, once staged on the target, give their pages' bytes back on
/// the source (<see cref="Criu.Incremental.ReleasedPages"/>). Only where nothing on the source reads
/// them again: a container whose writes are tracked lists its next round and its lazy final memory
/// from the tracker and the rounds' pagemaps. Without a tracker each round's pages are compared with
/// the round before, and a plain (not lazy) final dump is compared with the last round; released,
/// those pages would compare as missing and be sent again whole. Nor where the source's images are a
/// fallback: the operator allows it only for a lazy final dump of a pod that does not keep its name.
/// A round given back can no longer be sent again, so a target that lost it ends the migration (it
/// rolls back) instead of receiving it twice.
/// </summary>
public static class RoundRelease
{
    /// <summary>Null when the container's sent rounds are given back; else why they are kept.</summary>
    /// <param name="enabled">Agent:ReleaseSentRounds.</param>
    /// <param name="allowed">Whether the operator allows it (StartPreCopyRequest.release_sent_rounds).</param>
    /// <param name="method">How the migration's rounds find what changed.</param>
    /// <param name="tracked">Whether the container has a write tracker armed.</param>
    public static string? WhyKept(bool enabled, bool allowed, CriuPreCopyMethod method, bool tracked) =>
        !enabled ? "turned off (Agent:ReleaseSentRounds=false)"
        : method == CriuPreCopyMethod.KernelTracking ? "CRIU's own rounds (soft-dirty tracking) read their parent images"
        : !tracked ? "its writes are not tracked: the next round compares its pages with them"
        : !allowed ? "not allowed by the operator: a plain final dump compares with the last round, or the source's images are the pod's fallback"
        : null;
}

using Migrate.Api;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Whether a request may leave memory on its source for the running replacement to fetch (modes
/// PostCopy and Hybrid, and Auto when its rounds end); the refusal, naming why, when it may not.
/// Pure: decided at admission.
/// </summary>
public static class PostCopyChoice
{
    /// <param name="mode">The request's mode.</param>
    /// <param name="keepsName">The pod moves under its own name (a StatefulSet's): its source is ended before the replacement exists.</param>
    /// <param name="groupMember">The request is a member of a group migration.</param>
    /// <param name="target">The target node's name.</param>
    /// <param name="targetLazyPages">The target's CRIU restores lazily (userfaultfd).</param>
    public static string? WhyNot(string? mode, bool keepsName, bool groupMember, string target, bool targetLazyPages) =>
        MigrationModes.LeavesMemoryOnSource(mode) && Obstacle(keepsName, groupMember, target, targetLazyPages) is { } obstacle
            ? $"Mode {mode} {obstacle}; use mode PreCopy."
            : null;

    /// <summary>What keeps any mode from leaving memory on the source (a clause that follows "Mode X"), or null when nothing does.</summary>
    public static string? Obstacle(bool keepsName, bool groupMember, string target, bool targetLazyPages)
    {
        if (keepsName)
        {
            return "keeps the pod's memory on its source until the replacement has fetched it, and a pod that keeps its name (a StatefulSet's) is ended on its source before its replacement exists";
        }

        if (groupMember)
        {
            return "is not taken by group migrations, whose members are released together once all are restored";
        }

        return targetLazyPages ? null
            : $"runs the replacement before its memory is in place, and node {target}'s CRIU cannot restore lazily (no userfaultfd lazy pages)";
    }
}

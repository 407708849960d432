using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Which path a migration takes (spec.checkpointPath): the agents' CRIU and the podmig runtime
/// class, or the container runtimes' own CRI checkpoint and restore. A pure decision over the
/// request and both nodes' capabilities.
/// </summary>
public static class CheckpointPathChoice
{
    /// <summary>The path, or why the CRI path that was asked for cannot be taken.</summary>
    public sealed record Outcome(string? Path, string? Refusal);

    public static Outcome Decide(string? requested, string? mode, bool keepsName, bool keepAddressRequired,
        string source, GetCapabilitiesResponse? sourceAgent, string target, GetCapabilitiesResponse? targetAgent)
    {
        if (requested is null or "" or CheckpointPaths.Auto or CheckpointPaths.RuntimeClass)
        {
            // Auto: the RuntimeClass path, which every node with an agent offers and which is the faster
            // (pre-copy, lazy restore) and fuller (kept addresses, names, groups)
            return new Outcome(CheckpointPaths.RuntimeClass, null);
        }

        if (requested != CheckpointPaths.Cri)
        {
            return new Outcome(null, $"checkpointPath '{requested}' is not one of {CheckpointPaths.Auto}, {CheckpointPaths.RuntimeClass}, {CheckpointPaths.Cri}.");
        }

        if (mode is not (null or "" or MigrationModes.Auto or MigrationModes.Cold))
        {
            return new Outcome(null, "checkpointPath CRI takes one checkpoint while the pod is frozen, with no pre-copy rounds: set mode: Cold (or leave it Auto).");
        }

        if (keepsName)
        {
            return new Outcome(null, "a pod that keeps its name (a StatefulSet's) moves through the RuntimeClass path only.");
        }

        if (keepAddressRequired)
        {
            return new Outcome(null, "keepAddress: true needs the RuntimeClass path, which moves the address and the connections.");
        }

        if (sourceAgent?.CriCheckpoint is not { Supported: true })
        {
            return new Outcome(null, $"node {source} cannot take a CRI checkpoint: {Why(sourceAgent)}.");
        }

        if (targetAgent?.CriCheckpoint is not { RuntimeRestores: true })
        {
            return new Outcome(null, $"node {target} cannot restore a CRI checkpoint: {Why(targetAgent)}.");
        }

        return new Outcome(CheckpointPaths.Cri, null);
    }

    /// <summary>Whether a node can be a CRI path's target.</summary>
    public static bool RestoresCri(GetCapabilitiesResponse? agent) => agent?.CriCheckpoint?.RuntimeRestores == true;

    private static string Why(GetCapabilitiesResponse? agent) =>
        agent is null ? "its agent does not answer"
        : agent.CriCheckpoint is null ? "its agent does not report a CRI path (an older agent)"
        : agent.CriCheckpoint.Reason is { Length: > 0 } reason ? reason.TrimEnd('.') : "its agent says no";
}

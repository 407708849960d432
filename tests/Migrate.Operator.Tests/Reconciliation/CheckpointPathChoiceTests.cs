using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>spec.checkpointPath against the request and both nodes' capabilities, as a table.</summary>
public sealed class CheckpointPathChoiceTests
{
    private static readonly GetCapabilitiesResponse Able = new() { CriCheckpoint = new CriCheckpointInfo { Supported = true, RuntimeRestores = true, Runtime = "containerd v2.1.9" } };
    private static readonly GetCapabilitiesResponse TargetOnly = new() { CriCheckpoint = new CriCheckpointInfo { RuntimeRestores = true, Reason = "no checkpoint registry is configured (Agent:CheckpointRegistry)" } };
    private static readonly GetCapabilitiesResponse Old = new() { CriCheckpoint = new CriCheckpointInfo { Reason = "containerd 1.7.24 cannot restore a CRI checkpoint (containerd 2.0 is the first that can)" } };
    private static readonly GetCapabilitiesResponse OlderAgent = new();

    public static TheoryData<string, string?, string, bool, bool, GetCapabilitiesResponse?, GetCapabilitiesResponse?, string?, string?> Rows() => new()
    {
        { "unset: RuntimeClass", null, "PreCopy", false, false, Old, Old, "RuntimeClass", null },
        { "Auto: RuntimeClass, even where both could take CRI", "Auto", "Cold", false, false, Able, Able, "RuntimeClass", null },
        { "RuntimeClass asked", "RuntimeClass", "PreCopy", true, true, Old, Old, "RuntimeClass", null },
        { "CRI, both able: CRI", "CRI", "Cold", false, false, Able, Able, "CRI", null },
        { "CRI, a target without a registry of its own still restores", "CRI", "Cold", false, false, Able, TargetOnly, "CRI", null },
        { "CRI with pre-copy", "CRI", "PreCopy", false, false, Able, Able, null, "set mode: Cold" },
        { "CRI for a pod keeping its name", "CRI", "Cold", true, false, Able, Able, null, "StatefulSet" },
        { "CRI with keepAddress: true", "CRI", "Cold", false, true, Able, Able, null, "keepAddress: true needs the RuntimeClass path" },
        { "CRI from a source without a registry", "CRI", "Cold", false, false, TargetOnly, Able, null, "node node-a cannot take a CRI checkpoint: no checkpoint registry is configured" },
        { "CRI to a containerd 1.7 target", "CRI", "Cold", false, false, Able, Old, null, "node node-b cannot restore a CRI checkpoint: containerd 1.7.24 cannot restore" },
        { "CRI to a target whose agent is silent", "CRI", "Cold", false, false, Able, null, null, "node node-b cannot restore a CRI checkpoint: its agent does not answer" },
        { "CRI from an agent older than the CRI path", "CRI", "Cold", false, false, OlderAgent, Able, null, "does not report a CRI path" },
        { "an unknown path", "Criu", "Cold", false, false, Able, Able, null, "checkpointPath 'Criu' is not one of Auto, RuntimeClass, CRI" },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void The_path_follows_from_the_request_and_the_nodes(string row, string? requested, string mode, bool keepsName, bool keepAddress,
        GetCapabilitiesResponse? source, GetCapabilitiesResponse? target, string? path, string? refusal)
    {
        var outcome = CheckpointPathChoice.Decide(requested, mode, keepsName, keepAddress, "node-a", source, "node-b", target);
        Assert.True(path == outcome.Path, $"{row}: {outcome}");
        if (refusal is null)
        {
            Assert.Null(outcome.Refusal);
        }
        else
        {
            Assert.Contains(refusal, outcome.Refusal, StringComparison.Ordinal);
        }
    }
}

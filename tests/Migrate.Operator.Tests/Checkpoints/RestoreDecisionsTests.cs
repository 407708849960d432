using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Operator.Checkpoints;
using Migrate.Operator.Reconciliation;
using Xunit;
using static Migrate.Operator.Tests.Checkpoints.CheckpointDecisionsTests;

namespace Migrate.Operator.Tests.Checkpoints;

public sealed class RestoreDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 2, 12, 0, 0, DateTimeKind.Utc);
    private static readonly CheckpointPolicy Policy = new();

    public sealed record Row(string Name, Func<RestoreFacts> Facts, Action<RestoreDecision> Expect)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<Row> Rows() =>
    [
        new("no such checkpoint 10 s after the restore was made: Failed, nothing made", () => Facts(Restore(created: Now.AddSeconds(-10))) with { Checkpoint = null },
            d => Failed(d, "CheckpointNotFound", "Checkpoint default/ck does not exist.", touched: false)),
        new("no such checkpoint yet, the restore just made (applied with it in one go): wait", () => Facts(Restore(created: Now.AddSeconds(-3))) with { Checkpoint = null },
            d => { Assert.IsType<RestoreAction.Nothing>(d.Action); Assert.Null(d.Status.Phase); Assert.Equal("Waiting for Checkpoint default/ck to appear.", d.Status.Message); }),
        new("the checkpoint still being taken: wait", () => Facts(Restore()) with { Checkpoint = ReadyCheckpoint("Checkpointing") },
            d => { Assert.IsType<RestoreAction.Nothing>(d.Action); Assert.Null(d.Status.Phase); }),
        new("a failed checkpoint: Failed", () => Facts(Restore()) with { Checkpoint = ReadyCheckpoint("Failed") }, d => Failed(d, "CheckpointNotReady", "is Failed", touched: false)),
        new("its node no longer keeps it: Failed", () => Facts(Restore()) with { Source = KeptView.KnowsNothing }, d => Failed(d, "CheckpointLost", "no longer keeps", touched: false)),
        new("its node gone: Failed", () => Facts(Restore()) with { Nodes = [Candidate("node-b")] },
            d => Failed(d, "CheckpointNodeGone", "Checkpoint ck is kept on node node-a, which is gone.", touched: false)),
        new("its node gone but it was exported: Failed, saying how to restore it still", () => Facts(Restore()) with { Nodes = [Candidate("node-b")], Checkpoint = Exported(ReadyCheckpoint()) },
            d => Failed(d, "CheckpointNodeGone", "which is gone. It was exported to default/ck: import it (a Checkpoint with spec.source.path default/ck, or kubectl migrate import default/ck) and restore that.", touched: false)),
        new("a node that does not exist: Failed", () => Facts(Restore(node: "node-z")), d => Failed(d, "TargetNotFound", "Node node-z does not exist.", touched: false)),
        new("a node that is not Ready: Failed", () => Facts(Restore(node: "node-b")) with { Nodes = [Candidate("node-a"), Candidate("node-b", ready: false)] },
            d => Failed(d, "TargetNotReady", "Node node-b cannot restore checkpoint ck: it is not Ready.", touched: false)),
        new("a node with an older CRIU: refused, naming why", () => Facts(Restore(node: "node-b")) with { Nodes = [Candidate("node-a"), Candidate("node-b", criu: "3.17.1")] },
            d => Failed(d, "TargetIncompatible", "it has CRIU 3.17.1, older than the source's 4.1.1", touched: false)),
        new("a node lacking a CPU feature: refused", () => Facts(Restore(node: "node-b")) with { Nodes = [Candidate("node-a"), Candidate("node-b", flags: ["sse2"])] },
            d => Failed(d, "TargetIncompatible", "lacks CPU features the source has (avx2)", touched: false)),
        new("memory left to a lazy restore, a node without lazy pages: refused", () => Facts(Restore(node: "node-b"), lazy: true) with { Nodes = [Candidate("node-a"), Candidate("node-b", lazyPages: false)] },
            d => Failed(d, "TargetIncompatible", "it has no CRIU lazy pages (userfaultfd), which this checkpoint's memory needs", touched: false)),
        new("memory left to a lazy restore, a node with lazy pages: admitted", () => Facts(Restore(node: "node-b"), lazy: true),
            d => Assert.Equal(("Transferring", "node-b"), (d.Status.Phase, d.Status.NodeName))),
        new("the operator's choice: the checkpoint's own node", () => Facts(Restore()),
            d => { Assert.Equal(("Transferring", "node-a", "node-a", "r"), (d.Status.Phase, d.Status.NodeName, d.Status.SourceNode, d.Status.PodName)); }),
        new("the operator's choice when its node cannot: another that can", () => Facts(Restore()) with { Nodes = [Candidate("node-a", unschedulable: true), Candidate("node-b")] },
            d => Assert.Equal(("Transferring", "node-b"), (d.Status.Phase, d.Status.NodeName))),
        new("no node can: Failed, each one's reason", () => Facts(Restore()) with { Nodes = [Candidate("node-a", unschedulable: true), Candidate("node-b", agent: false)] },
            d => Failed(d, "NoEligibleTarget", "node-a is cordoned; node-b runs no podmig agent that answers", touched: false)),
        new("the name is taken by another pod: Failed", () => Facts(Restore()) with { Pod = Pod() }, d => Failed(d, "NameTaken", "already exists", touched: false)),
        new("transferring: the target is readied first", () => Facts(Restore(phase: "Transferring")) with { Target = AgentView.KnowsNothing },
            d => Assert.Equal(new RestoreAction.ExpectImages("node-b"), d.Action)),
        new("transferring: ready, the checkpoint's node sends", () => Facts(Restore(phase: "Transferring")) with { Target = Target(expected: true) },
            d => Assert.Equal(new RestoreAction.Send("node-a", "node-b"), d.Action)),
        new("transferring: the send failed: Failed, the target's copy removed", () => Facts(Restore(phase: "Transferring")) with { Target = Target(expected: true), Source = Sending(OperationState.Failed) },
            d => Failed(d, "TransferFailed", "failed: connection reset.", touched: true)),
        new("committed: Restoring, the pod made", () => Facts(Restore(phase: "Transferring")) with { Target = Target(expected: true, committed: true) },
            d => { Assert.Equal(new RestoreAction.CreatePod("node-b"), d.Action); Assert.Equal("Restoring", d.Status.Phase); }),
        new("restoring: the restore runtime failed: Failed, the pod deleted", () => Facts(Restore(phase: "Restoring")) with { Pod = Pod(ours: true, phase: "Pending"), Target = Target(expected: true, committed: true, error: "CRIU: no such file") },
            d => { Failed(d, "RestoreFailed", "no such file", touched: true); Assert.Equal("r", ((RestoreAction.Finish)d.Action).DeletePod); }),
        new("restoring: the pod runs: Succeeded, the target's copy removed", () => Facts(Restore(phase: "Restoring")) with { Pod = Pod(ours: true), Target = Target(expected: true, committed: true, restored: true) },
            d =>
            {
                Assert.Equal(new RestoreAction.Finish("node-b", null), d.Action);
                Assert.Equal(("Succeeded", 640L), (d.Status.Phase, d.Status.RestoreMillis));
                Assert.Equal("Restored", d.Event?.Reason);
            }),
        new("restoring too long: Failed", () => Facts(Restore(phase: "Restoring", phaseStarted: Now.AddMinutes(-6))) with { Pod = Pod(ours: true, phase: "Pending"), Target = Target(expected: true, committed: true) },
            d => Failed(d, "PhaseTimedOut", "Restoring took longer than 300 seconds.", touched: true)),
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Decides(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        row.Expect(RestoreDecisions.Decide(row.Facts(), Policy));
    }

    private static void Failed(RestoreDecision d, string reason, string message, bool touched)
    {
        Assert.Equal(("Failed", reason), (d.Status.Phase, d.Status.Reason));
        Assert.Contains(message, d.Status.Message, StringComparison.Ordinal);
        if (touched)
        {
            Assert.IsType<RestoreAction.Finish>(d.Action);
        }
        else
        {
            Assert.IsType<RestoreAction.Nothing>(d.Action); // nothing was created: nothing to undo
        }
    }

    private static Restore Restore(string? node = null, string? phase = null, DateTime? phaseStarted = null, DateTime? created = null) => new()
    {
        Metadata = new V1ObjectMeta { Name = "r", NamespaceProperty = "default", Uid = "uid-r", CreationTimestamp = created },
        Spec = new RestoreSpec { CheckpointName = "ck", NodeName = node },
        Status = phase is null ? null : new RestoreStatus
        {
            Phase = phase, SourceNode = "node-a", NodeName = "node-b", PodName = "r", StartTime = Now.AddSeconds(-5), PhaseStartTime = phaseStarted ?? Now.AddSeconds(-2),
        },
    };

    private static Checkpoint ReadyCheckpoint(string phase = "Ready")
    {
        var checkpoint = Checkpoint(saved: true, phase: phase);
        checkpoint.Status!.CheckpointTime = Now.AddMinutes(-1);
        return checkpoint;
    }

    private static Checkpoint Exported(Checkpoint checkpoint)
    {
        checkpoint.Status!.Export = new CheckpointArchiveStatus { Path = "default/ck", Digest = "sha256:ee" };
        return checkpoint;
    }

    private static RestoreFacts Facts(Restore restore, bool lazy = false)
    {
        var kept = Kept();
        kept.LazyMemory = lazy;
        kept.Node.Cpu = new CpuInfo { Vendor = "GenuineIntel", Flags = { "sse2", "avx2" } };
        return new RestoreFacts
        {
            Restore = restore, Now = Now, Checkpoint = ReadyCheckpoint(), Source = new KeptView(true, kept),
            Nodes = [Candidate("node-a"), Candidate("node-b")],
        };
    }

    private static RestoreCandidate Candidate(string name, bool ready = true, bool unschedulable = false, bool agent = true, string criu = "4.1.1", string[]? flags = null, bool lazyPages = true)
    {
        var node = Node(name, ready: ready);
        node.Spec = new V1NodeSpec { Unschedulable = unschedulable };
        return new RestoreCandidate(node, agent
            ? new GetCapabilitiesResponse
            {
                NodeName = name, Criu = new CriuCapabilities { Version = criu, CheckPassed = true, LazyPages = lazyPages }, Kernel = new KernelInfo { Release = "6.18.0", Machine = "x86_64" },
                Cpu = new CpuInfo { Vendor = "GenuineIntel", Flags = { flags ?? ["sse2", "avx2"] } },
            }
            : null);
    }

    private static V1Pod Pod(bool ours = false, string phase = "Running") => new()
    {
        Metadata = new V1ObjectMeta { Name = "r", NamespaceProperty = "default", Annotations = ours ? new Dictionary<string, string> { [Annotations.RestoreFrom] = "uid-r" } : null },
        Spec = new V1PodSpec { NodeName = "node-b" },
        Status = new V1PodStatus { Phase = phase },
    };

    private static AgentView Target(bool expected = false, bool committed = false, string? error = null, bool restored = false)
    {
        var incoming = new IncomingStatus { Expected = expected, Staged = committed, Committed = committed, ReceivedBytes = 20 << 20 };
        if (error is not null || restored)
        {
            incoming.Restores.Add(new RestoreState { Container = "main", Error = error ?? "", Restored = restored, RestoreMillis = 640 });
        }

        return AgentView.Knows(new MigrationStatus { MigrationId = "uid-r", Incoming = incoming });
    }

    private static KeptView Sending(OperationState state)
    {
        var kept = Kept();
        kept.Sends.Add(new CheckpointSend { RestoreId = "uid-r", TargetNode = "node-b", Operation = new Operation { Kind = "Send", State = state, Reason = "TransferFailed", Message = "connection reset" } });
        return new KeptView(true, kept);
    }
}

using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Operator.Checkpoints;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Checkpoints;

/// <summary>The Checkpoint and Restore decisions as tables: observed facts in, one action and the status out.</summary>
public sealed class CheckpointDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 2, 12, 0, 0, DateTimeKind.Utc);
    private static readonly CheckpointPolicy Policy = new();

    public sealed record Row(string Name, Func<CheckpointFacts> Facts, Action<CheckpointDecision> Expect)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<Row> Rows() =>
    [
        new("new: the finalizer first", () => Facts(Checkpoint(finalizer: false)), d => Assert.IsType<CheckpointAction.AddFinalizer>(d.Action)),
        new("no such pod: Failed, nothing taken", () => Facts(Checkpoint()) with { Pod = null },
            d => Failed(d, "PodNotFound", "Pod default/app does not exist.")),
        new("a pod not running: Failed", () => Facts(Checkpoint()) with { Pod = Pod("Pending") }, d => Failed(d, "PodNotRunning", "only a Running pod")),
        new("a pod on the host's network: refused", () => Facts(Checkpoint()) with { Pod = Pod(hostNetwork: true) }, d => Failed(d, "CheckpointRefused", "host's network")),
        new("a node without agent: Failed", () => Facts(Checkpoint()) with { Node = Node(agent: false) }, d => Failed(d, "SourceHasNoAgent", "runs no podmig agent")),
        new("admitted: the pod is copied into the checkpoint first", () => Facts(Checkpoint()), d => Assert.IsType<CheckpointAction.SavePod>(d.Action)),
        new("saved: Checkpointing, the agent asked to take it", () => Facts(Checkpoint(saved: true)),
            d => { Assert.Equal(new CheckpointAction.Take("node-a"), d.Action); Assert.Equal(("Checkpointing", "node-a", "uid-app"), (d.Status.Phase, d.Status.NodeName, d.Status.PodUid)); }),
        new("an earlier Ready checkpoint of the pod on its node: taken as a delta on the latest", () => Facts(Checkpoint(saved: true)) with
            {
                Earlier = [Earlier("old", -60), Earlier("latest", -10), Earlier("failed", -5, phase: "Failed"), Earlier("other-node", -4, node: "node-b"),
                    Earlier("other-pod", -3, podUid: "uid-older-app"), Earlier("deleting", -2, deleting: true)],
            },
            d =>
            {
                Assert.Equal(new CheckpointAction.Take("node-a", null, "uid-latest"), d.Action);
                Assert.Equal(("latest", "uid-latest"), (d.Status.Parent?.Name, d.Status.Parent?.Uid));
                Assert.Contains("as a delta on checkpoint latest", d.Status.Message, StringComparison.Ordinal);
            }),
        new("an exported earlier checkpoint is a parent too (its kept images are a full dump)", () => Facts(Checkpoint(saved: true)) with { Earlier = [Earlier("latest", -10), Earlier("exported", -1, exported: true)] },
            d => Assert.Equal(new CheckpointAction.Take("node-a", null, "uid-exported"), d.Action)),
        new("incremental: false: a full checkpoint whatever came before", () => Facts(Full(Checkpoint(saved: true))) with { Earlier = [Earlier("latest", -10)] },
            d => { Assert.Equal(new CheckpointAction.Take("node-a"), d.Action); Assert.Null(d.Status.Parent); }),
        new("exported: a full checkpoint (an export holds no chain)", () => Facts(Exported(Checkpoint(saved: true), null)) with { Earlier = [Earlier("latest", -10)] },
            d => { Assert.Equal(new CheckpointAction.Take("node-a", "default/ck"), d.Action); Assert.Null(d.Status.Parent); }),
        new("taking a delta: the agent restarted, asked again with the same parent", () => Facts(WithParent(Checkpoint(saved: true, phase: "Checkpointing"))) with { Agent = KeptView.KnowsNothing },
            d => Assert.Equal(new CheckpointAction.Take("node-a", null, "uid-latest"), d.Action)),
        new("kept as a delta: Ready, its own bytes and chain in the status", () => Facts(WithParent(Checkpoint(saved: true, phase: "Checkpointing"))) with { Agent = new KeptView(true, Delta(Kept(), "uid-latest")) },
            d =>
            {
                Assert.Equal(("Ready", "latest", 3, 1L << 20, (string?)null), (d.Status.Phase, d.Status.Parent?.Name, d.Status.ChainLength, d.Status.OwnBytes, d.Status.ChainNote));
                Assert.Contains($"{20 << 20} bytes kept, {1 << 20} of them its own: a delta on checkpoint latest (a chain of 3)", d.Status.Message, StringComparison.Ordinal);
            }),
        new("the node took a full one instead: no parent, and why", () => Facts(WithParent(Checkpoint(saved: true, phase: "Checkpointing"))) with { Agent = new KeptView(true, Delta(Kept(), "", "checkpoint uid-latest is not kept on this node")) },
            d =>
            {
                Assert.Equal(("Ready", null, 1, 20L << 20), (d.Status.Phase, d.Status.Parent, d.Status.ChainLength, d.Status.OwnBytes));
                Assert.Contains("a full checkpoint rather than a delta on latest (checkpoint uid-latest is not kept on this node)", d.Status.Message, StringComparison.Ordinal);
            }),
        new("taking: the agent knows nothing (restarted): asked again", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = KeptView.KnowsNothing },
            d => Assert.Equal(new CheckpointAction.Take("node-a"), d.Action)),
        new("a group member: taken with a hold", () => Facts(Checkpoint(saved: true)) with { IsGroupMember = true },
            d => Assert.Equal(new CheckpointAction.Take("node-a", null, null, GroupHold: true), d.Action)),
        new("a group member held, no decision yet: Held, wait", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, Agent = Held() },
            d => { Assert.IsType<CheckpointAction.Nothing>(d.Action); Assert.True(d.Status.Held); }),
        new("a group member held, the group says Thaw: told so", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Thaw", Agent = Held() },
            d => { Assert.Equal(new CheckpointAction.Continue("node-a", "Thaw"), d.Action); Assert.True(d.Status.Held); }),
        new("a group member still dumping, the group says Abort: told at once (applied at its hold)", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Abort", Agent = Agent(Op(OperationState.Running)) },
            d => { Assert.Equal(new CheckpointAction.Continue("node-a", "Abort"), d.Action); Assert.Null(d.Status.Held); }),
        new("a group member not started, the group says Abort: Failed without a take", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Abort", Agent = KeptView.KnowsNothing },
            d => Failed(d, "GroupRolledBack", "was not frozen and runs on")),
        new("a group member whose agent lost its held take after Thaw: Failed, not taken again (a later instant is not the cut)", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Thaw", Agent = KeptView.KnowsNothing },
            d => Failed(d, "HeldCheckpointLost", "would not be part of the group's cut")),
        new("a group member not admitted, the group says Abort: Failed", () => Facts(Checkpoint(saved: true)) with { IsGroupMember = true, GroupDecision = "Abort" },
            d => Failed(d, "GroupRolledBack", "before pod default/app was checkpointed")),
        new("a group member rolled back by its agent: Failed with the agent's reason", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Abort", Agent = Agent(Op(OperationState.Failed, "GroupRolledBack", "the group checkpoint was rolled back")) },
            d => { Failed(d, "GroupRolledBack", "rolled back"); Assert.Null(d.Status.Held); }),
        new("a group member kept: Ready, no longer held", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { IsGroupMember = true, GroupDecision = "Thaw", Agent = new KeptView(true, Kept()) },
            d => { Assert.Equal("Ready", d.Status.Phase); Assert.Null(d.Status.Held); }),
        new("taking: under way, wait", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = Agent(Op(OperationState.Running)) },
            d => { Assert.IsType<CheckpointAction.Nothing>(d.Action); Assert.Equal(Policy.PollInterval, d.Requeue); }),
        new("kept: Ready, with the figures", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = new KeptView(true, Kept()) },
            d =>
            {
                Assert.Equal("Ready", d.Status.Phase);
                Assert.Equal((120L, 20L << 20, "node-a:/var/lib/podmig/checkpoints/uid-ck", "4.1.1", "6.18.0"),
                    (d.Status.FreezeMillis, d.Status.SizeBytes, d.Status.Location, d.Status.CriuVersion, d.Status.KernelVersion));
                Assert.Equal(Now.AddSeconds(-3), d.Status.CheckpointTime);
                Assert.Equal("sha256:ab", Assert.Single(d.Status.Containers!).Digest);
                Assert.Equal("Checkpointed", d.Event?.Reason);
            }),
        new("the agent refused: Failed with its reason", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = Agent(Op(OperationState.Failed, "CheckpointRefused", "volume data is a hostPath")) },
            d => Failed(d, "CheckpointRefused", "failed: volume data is a hostPath. The pod runs on.")),
        new("the agent silent past the grace: Failed", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = new KeptView(false, null, Now.AddMinutes(-1), "refused") },
            d => Failed(d, "SourceAgentUnreachable", "has not answered for 60 seconds")),
        new("the agent silent a moment: wait", () => Facts(Checkpoint(saved: true, phase: "Checkpointing")) with { Agent = new KeptView(false, null, Now.AddSeconds(-5), "refused") },
            d => Assert.IsType<CheckpointAction.Nothing>(d.Action)),
        new("taking too long: Failed", () => Facts(Checkpoint(saved: true, phase: "Checkpointing", started: Now.AddMinutes(-6))) with { Agent = Agent(Op(OperationState.Running)) },
            d => Failed(d, "TimedOut", "within 300 seconds")),
        new("Ready: nothing more", () => Facts(Checkpoint(saved: true, phase: "Ready")), d => { Assert.IsType<CheckpointAction.Nothing>(d.Action); Assert.Null(d.Requeue); }),
        new("exported: the agent takes it with the export path (default namespace/name)", () => Facts(Exported(Checkpoint(saved: true), null)),
            d => Assert.Equal(new CheckpointAction.Take("node-a", "default/ck"), d.Action)),
        new("exported: a path of the user's", () => Facts(Exported(Checkpoint(saved: true), "team/app-1")),
            d => { Assert.Equal(new CheckpointAction.Take("node-a", "team/app-1"), d.Action); Assert.Contains("to be exported to team/app-1", d.Status.Message, StringComparison.Ordinal); }),
        new("exported and kept: Ready, the export in the status", () => Facts(Exported(Checkpoint(saved: true, phase: "Checkpointing"), null)) with { Agent = new KeptView(true, Kept(export: true)) },
            d =>
            {
                Assert.Equal("Ready", d.Status.Phase);
                Assert.Equal(("default/ck", "sha256:ee", 30L << 20, 900L), (d.Status.Export!.Path, d.Status.Export.Digest, d.Status.Export.SizeBytes, d.Status.Export.Millis));
                Assert.Contains("exported to default/ck", d.Status.Message, StringComparison.Ordinal);
            }),
        new("import: the node asked for, the agent asked to import", () => Facts(Imported(Checkpoint(), "node-b")) with { Pod = null, Node = Node("node-b") },
            d =>
            {
                Assert.Equal(new CheckpointAction.Import("node-b", "default/ck", "sha256:ee"), d.Action);
                Assert.Equal(("Checkpointing", "Importing", "node-b"), (d.Status.Phase, d.Status.Reason, d.Status.NodeName));
            }),
        new("import: the node asked for does not exist: Failed", () => Facts(Imported(Checkpoint(), "node-x")) with { Pod = null, Node = null },
            d => Failed(d, "NodeNotFound", "Node node-x does not exist.")),
        new("import: no node at all: Failed", () => Facts(Imported(Checkpoint(), null)) with { Pod = null, Node = null },
            d => Failed(d, "NoNode", "No Ready node with a podmig agent")),
        new("import: the agent restarted: asked again", () => Facts(Imported(Checkpoint(phase: "Checkpointing"), null)) with { Pod = null, Agent = KeptView.KnowsNothing },
            d => Assert.Equal(new CheckpointAction.Import("node-a", "default/ck", "sha256:ee"), d.Action)),
        new("import refused by the agent: Failed with its reason", () => Facts(Imported(Checkpoint(phase: "Checkpointing"), null)) with { Pod = null, Agent = Agent(Op(OperationState.Failed, "ImportRefused", "blob sha256:aa does not match its digest")) },
            d => Failed(d, "ImportRefused", "Importing the checkpoint exported at default/ck on node-a failed: blob sha256:aa does not match its digest.")),
        new("imported: the pod it carries saved first", () => Facts(Imported(Checkpoint(phase: "Checkpointing"), null)) with { Pod = null, Agent = new KeptView(true, Kept(imported: true)) },
            d => Assert.Equal(new CheckpointAction.SavePod("""{"metadata":{"name":"app"}}"""), d.Action)),
        new("imported and saved: Ready, where it came from in the status", () => Facts(Imported(Checkpoint(saved: true, phase: "Checkpointing"), null)) with { Pod = null, Agent = new KeptView(true, Kept(imported: true)) },
            d =>
            {
                Assert.Equal(("Ready", "Imported", "default/ck"), (d.Status.Phase, d.Status.Reason, d.Status.ImportedFrom?.Path));
                Assert.Contains("imported from default/ck onto node-a", d.Status.Message, StringComparison.Ordinal);
                Assert.Equal("Imported", d.Event?.Reason);
            }),
        new("deleted while held for its group: told Abort (thawed and discarded at once)", () => Facts(Checkpoint(saved: true, phase: "Checkpointing", deleting: true)) with { Agent = Held() },
            d => Assert.Equal(new CheckpointAction.Continue("node-a", "Abort"), d.Action)),
        new("deleted and exported: the export goes too", () => Facts(Exported(Checkpoint(saved: true, phase: "Ready", deleting: true), null)) with { Agent = new KeptView(true, Kept(export: true)) },
            d => Assert.Equal(new CheckpointAction.Delete("node-a", DeleteExport: true), d.Action)),
        new("deleted, exported with retain: the export stays", () => Facts(Exported(Checkpoint(saved: true, phase: "Ready", deleting: true), null, retain: true)) with { Agent = new KeptView(true, Kept(export: true)) },
            d => Assert.Equal(new CheckpointAction.Delete("node-a", DeleteExport: false), d.Action)),
        new("deleted, exported, its node gone: another node's agent removes the export", () => Facts(WithExport(Exported(Checkpoint(saved: true, phase: "Ready", deleting: true), null))) with { Node = null, ArchiveNode = "node-b" },
            d =>
            {
                Assert.Equal(new CheckpointAction.RemoveFinalizer(false, "node-b", "default/ck"), d.Action);
                Assert.Contains("Its export default/ck is removed from the archive storage through node-b.", d.Event?.Message, StringComparison.Ordinal);
            }),
        new("deleted, exported, its node gone and no other: the export stays, said so", () => Facts(WithExport(Exported(Checkpoint(saved: true, phase: "Ready", deleting: true), null))) with { Node = null },
            d =>
            {
                Assert.Equal(new CheckpointAction.RemoveFinalizer(), d.Action);
                Assert.Contains("stays in the archive storage", d.Event?.Message, StringComparison.Ordinal);
            }),
        new("deleted, exported with retain, its agent silent: the export stays", () => Facts(WithExport(Exported(Checkpoint(saved: true, phase: "Ready", deleting: true, deletedAt: Now.AddMinutes(-1)), null, retain: true))) with { Agent = new KeptView(false, null, Now.AddMinutes(-1)), ArchiveNode = "node-b" },
            d => Assert.Equal(new CheckpointAction.RemoveFinalizer(ImagesLeft: true), d.Action)),
        new("deleted: the agent removes the images", () => Facts(Checkpoint(saved: true, phase: "Ready", deleting: true)) with { Agent = new KeptView(true, Kept()) },
            d => Assert.Equal(new CheckpointAction.Delete("node-a"), d.Action)),
        new("deleted while a restore's send runs: wait for it", () => Facts(Checkpoint(saved: true, phase: "Ready", deleting: true)) with { Agent = new KeptView(true, Kept(sending: true)) },
            d => Assert.IsType<CheckpointAction.Nothing>(d.Action)),
        new("deleted, the images gone: the finalizer goes", () => Facts(Checkpoint(saved: true, phase: "Ready", deleting: true)) with { Agent = KeptView.KnowsNothing },
            d => Assert.Equal(new CheckpointAction.RemoveFinalizer(), d.Action)),
        new("deleted, the node gone: the finalizer goes, saying so", () => Facts(Checkpoint(saved: true, phase: "Ready", deleting: true)) with { Node = null },
            d => { Assert.IsType<CheckpointAction.RemoveFinalizer>(d.Action); Assert.Equal("NodeGone", d.Event?.Reason); }),
        new("deleted, the agent silent past the grace: let go, saying where the images are", () => Facts(Checkpoint(saved: true, phase: "Ready", deleting: true, deletedAt: Now.AddMinutes(-1))) with { Agent = new KeptView(false, null, Now.AddMinutes(-1)) },
            d => { Assert.Equal(new CheckpointAction.RemoveFinalizer(ImagesLeft: true), d.Action); Assert.Equal("ImagesLeft", d.Event?.Reason); }),
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Decides(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        row.Expect(CheckpointDecisions.Decide(row.Facts(), Policy));
    }

    public static TheoryData<string, string[], string[], string[]> OrphanCases() => new()
    {
        // held: id@minutes-ago; known: UIDs of existing Checkpoints; left: let go by their finalizer
        { "named by a Checkpoint: kept, however old", ["a@60"], ["a"], [] },
        { "unknown and older than the grace: removed", ["a@60", "b@20"], [], ["a", "b"] },
        { "unknown but younger than the grace: kept (the cache may not have seen it yet)", ["a@5"], [], [] },
        { "let go by its finalizer while the agent was silent: removed at once", ["a@1"], [], ["a"] },
        { "let go, but a Checkpoint of that UID exists again: kept", ["a@1"], ["a"], [] },
    };

    [Theory]
    [MemberData(nameof(OrphanCases))]
    public void Orphans_are_the_directories_no_Checkpoint_names(string name, string[] held, string[] known, string[] expected)
    {
        var kept = held.Select(h => h.Split('@')).Select(h => new KeptCheckpoint
        {
            CheckpointId = h[0], FrozenUnixMillis = new DateTimeOffset(Now.AddMinutes(-int.Parse(h[1], System.Globalization.CultureInfo.InvariantCulture))).ToUnixTimeMilliseconds(),
        });
        var left = name.StartsWith("let go", StringComparison.Ordinal) ? new HashSet<string> { "a" } : [];
        Assert.Equal(expected, CheckpointDecisions.Orphans(kept, known.ToHashSet(), left, Now, TimeSpan.FromMinutes(15)));
    }

    [Theory]
    [InlineData("node-b", "node-b")]
    [InlineData("node-x", null)]
    [InlineData(null, "node-b")] // node-a is not Ready, node-c has no agent, node-d is cordoned
    public void An_import_goes_to_the_node_asked_for_or_the_first_ready_one_with_an_agent(string? asked, string? expected)
    {
        var cordoned = Node("node-0");
        cordoned.Spec = new V1NodeSpec { Unschedulable = true };
        V1Node[] nodes = [Node("node-c", agent: false), Node("node-b"), Node("node-a", ready: false), cordoned];

        Assert.Equal(expected, CheckpointDecisions.ImportNode(asked, nodes)?.Metadata.Name);
    }

    private static void Failed(CheckpointDecision d, string reason, string message)
    {
        Assert.IsType<CheckpointAction.Nothing>(d.Action);
        Assert.Equal(("Failed", reason), (d.Status.Phase, d.Status.Reason));
        Assert.Contains(message, d.Status.Message, StringComparison.Ordinal);
        Assert.Equal("Warning", d.Event?.Type);
    }

    internal static Checkpoint Checkpoint(bool finalizer = true, bool saved = false, string? phase = null, DateTime? started = null, bool deleting = false, DateTime? deletedAt = null) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = "ck", NamespaceProperty = "default", Uid = "uid-ck",
            Finalizers = finalizer ? [Finalizers.Cleanup] : null,
            Annotations = saved ? new Dictionary<string, string> { [Annotations.SourcePod] = "{}" } : null,
            DeletionTimestamp = deleting ? deletedAt ?? Now : null,
        },
        Spec = new CheckpointSpec { PodName = "app" },
        Status = phase is null ? null : new CheckpointStatus { Phase = phase, NodeName = "node-a", PodUid = "uid-app", StartTime = started ?? Now.AddSeconds(-2), Location = "node-a:/x" },
    };

    private static Checkpoint Earlier(string name, int seconds, string phase = "Ready", string node = "node-a", string podUid = "uid-app", bool deleting = false, bool exported = false)
    {
        var earlier = Checkpoint(saved: true, phase: phase, deleting: deleting);
        earlier.Metadata.Name = name;
        earlier.Metadata.Uid = "uid-" + name;
        earlier.Status!.NodeName = node;
        earlier.Status.PodUid = podUid;
        earlier.Status.CheckpointTime = Now.AddSeconds(seconds);
        return exported ? Exported(earlier, null) : earlier;
    }

    private static Checkpoint Full(Checkpoint checkpoint)
    {
        checkpoint.Spec.Incremental = false;
        return checkpoint;
    }

    private static Checkpoint WithParent(Checkpoint checkpoint)
    {
        checkpoint.Status!.Parent = new CheckpointParent { Name = "latest", Uid = "uid-latest" };
        return checkpoint;
    }

    private static KeptCheckpoint Delta(KeptCheckpoint kept, string parentId, string note = "")
    {
        kept.ParentCheckpointId = parentId;
        kept.ChainLength = parentId.Length > 0 ? 3u : 1u;
        kept.OwnBytes = parentId.Length > 0 ? 1u << 20 : kept.SizeBytes;
        kept.ChainNote = note;
        return kept;
    }

    private static Checkpoint Exported(Checkpoint checkpoint, string? path, bool retain = false)
    {
        checkpoint.Spec.Export = new CheckpointExportSpec { Path = path, Retain = retain };
        return checkpoint;
    }

    private static Checkpoint WithExport(Checkpoint checkpoint)
    {
        checkpoint.Status!.Export = new CheckpointArchiveStatus { Path = "default/ck", Digest = "sha256:ee" };
        return checkpoint;
    }

    private static Checkpoint Imported(Checkpoint checkpoint, string? node)
    {
        checkpoint.Spec.PodName = "";
        checkpoint.Spec.Source = new CheckpointSource { Path = "default/ck", Digest = "sha256:ee" };
        checkpoint.Spec.NodeName = node;
        return checkpoint;
    }

    private static CheckpointFacts Facts(Checkpoint checkpoint) => new() { Checkpoint = checkpoint, Now = Now, Pod = Pod(), Node = Node() };

    internal static V1Pod Pod(string phase = "Running", bool hostNetwork = false) => new()
    {
        Metadata = new V1ObjectMeta { Name = "app", NamespaceProperty = "default", Uid = "uid-app" },
        Spec = new V1PodSpec { NodeName = "node-a", HostNetwork = hostNetwork, Containers = [new V1Container { Name = "main" }] },
        Status = new V1PodStatus { Phase = phase },
    };

    internal static V1Node Node(string name = "node-a", bool agent = true, bool ready = true) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Annotations = agent ? new Dictionary<string, string> { [Annotations.AgentEndpoint] = "127.0.0.2:9443" } : null },
        Status = new V1NodeStatus { Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False" }] },
    };

    private static Operation Op(OperationState state, string reason = "", string message = "") => new() { Kind = "Checkpoint", State = state, Reason = reason, Message = message };

    private static KeptView Held() => new(true, new KeptCheckpoint { CheckpointId = "uid-ck", NodeName = "node-a", Operation = Op(OperationState.Running), Held = "Dumped" });

    private static KeptView Agent(Operation operation) => new(true, new KeptCheckpoint { CheckpointId = "uid-ck", NodeName = "node-a", Operation = operation });

    internal static KeptCheckpoint Kept(bool sending = false, string criu = "4.1.1", bool export = false, bool imported = false)
    {
        var kept = new KeptCheckpoint
        {
            CheckpointId = "uid-ck", NodeName = "node-a", Ready = true, Directory = "/var/lib/podmig/checkpoints/uid-ck",
            FrozenUnixMillis = new DateTimeOffset(Now.AddSeconds(-3)).ToUnixTimeMilliseconds(), FrozenMillis = 120, SizeBytes = 20 << 20,
            Node = new GetCapabilitiesResponse { NodeName = "node-a", Criu = new CriuCapabilities { Version = criu, CheckPassed = true }, Kernel = new KernelInfo { Release = "6.18.0", Machine = "x86_64" } },
        };
        kept.Containers.Add(new KeptContainer { Name = "main", Image = "memcounter", Digest = "sha256:ab", SizeBytes = 20 << 20 });
        var archive = new CheckpointExport { Path = "default/ck", Digest = "sha256:ee", SizeBytes = 30 << 20, ExportMillis = 900 };
        kept.Export = export ? archive : null;
        kept.ImportedFrom = imported ? archive : null;
        kept.SavedPodJson = imported ? """{"metadata":{"name":"app"}}""" : "";
        kept.Pod = new PodRef { Namespace = "default", Name = "app", Uid = "uid-app" };
        if (sending)
        {
            kept.Sends.Add(new CheckpointSend { RestoreId = "uid-r", TargetNode = "node-b", Operation = new Operation { Kind = "Send", State = OperationState.Running } });
        }

        return kept;
    }
}

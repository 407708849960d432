using k8s.Models;
using Migrate.Api;
using Migrate.Operator.Checkpoints;
using Xunit;

namespace Migrate.Operator.Tests.Checkpoints;

/// <summary>Recovery after a node failure as a table: the cluster as the cache holds it in, the steps out.</summary>
public sealed class RecoveryDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 2, 12, 0, 0, DateTimeKind.Utc);

    public sealed record Row(string Name, Func<World> World, string[] Expected)
    {
        public override string ToString() => Name;
    }

    /// <summary>What the cache holds: a schedule "s" recovering pods labelled app=db, pod "db" (uid u-1) on node-a.</summary>
    public sealed record World
    {
        public bool Recover { get; init; } = true;

        public List<V1Pod> Pods { get; init; } = [Pod()];

        public List<V1Node> Nodes { get; init; } = [Node("node-a", ready: false, downSeconds: 90), Node("node-b")];

        public List<Checkpoint> Checkpoints { get; init; } = [Taken("s-db-1", -300), Taken("s-db-2", -60)];

        public List<Restore> Restores { get; init; } = [];
    }

    public static TheoryData<Row> Rows() =>
    [
        new("node NotReady past the grace: import the newest exported checkpoint", () => new World(),
            ["Import db from s-db-2 as db-recovered-u1: node node-a has not been Ready for 90 seconds (KubeletNotReady)"]),
        new("node NotReady within the grace: nothing yet", () => new World { Nodes = [Node("node-a", ready: false, downSeconds: 30), Node("node-b")] }, []),
        new("node Ready: nothing", () => new World { Nodes = [Node("node-a"), Node("node-b")] }, []),
        new("node deleted: import at once", () => new World { Nodes = [Node("node-b")] }, ["Import db from s-db-2 as db-recovered-u1: node node-a was deleted"]),
        new("schedule without recoverOnNodeFailure: nothing", () => new World { Recover = false }, []),
        new("a pod the selector does not match: nothing", () => new World { Pods = [Pod(app: "web")] }, []),
        new("the newest is not exported: the newest exported one", () => new World { Checkpoints = [Taken("s-db-1", -300), Taken("s-db-2", -60, exported: false)] },
            ["Import db from s-db-1 as db-recovered-u1: node node-a has not been Ready for 90 seconds (KubeletNotReady)"]),
        new("a checkpoint of an earlier pod of that name is not used", () => new World { Checkpoints = [Taken("s-db-1", -300, podUid: "u-0")] },
            ["Unrecoverable db: node node-a has not been Ready for 90 seconds (KubeletNotReady), and pod default/db has no exported Ready checkpoint to recover from"]),
        new("no checkpoint: said so", () => new World { Checkpoints = [] }, ["Unrecoverable db: node node-a has not been Ready for 90 seconds (KubeletNotReady), and pod default/db has no exported Ready checkpoint to recover from"]),
        new("imported already, the failed pod still there: fenced, not imported again", () => new World { Checkpoints = [Taken("s-db-2", -60), Import("Checkpointing")] },
            ["Fence db on node-a"]),
        new("import under way, the pod fenced: wait for it", () => new World { Pods = [], Checkpoints = [Taken("s-db-2", -60), Import("Checkpointing")] }, []),
        new("import Ready, the pod gone: restored under its name", () => new World { Pods = [], Checkpoints = [Taken("s-db-2", -60), Import("Ready")] },
            ["Restore db-recovered-u1 as db"]),
        new("restored already: nothing more (exactly once)", () => new World { Pods = [], Checkpoints = [Taken("s-db-2", -60), Import("Ready")], Restores = [new Restore { Metadata = new V1ObjectMeta { Name = "db-recovered-u1", NamespaceProperty = "default" } }] }, []),
        new("the restored pod runs (a new uid): nothing", () => new World { Pods = [Pod(uid: "u-2", node: "node-b")], Checkpoints = [Taken("s-db-2", -60), Import("Ready")] }, []),
        new("import failed: no restore", () => new World { Pods = [], Checkpoints = [Taken("s-db-2", -60), Import("Failed")] }, []),
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Plans(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        var world = row.World();
        var schedule = new CheckpointSchedule
        {
            Metadata = new V1ObjectMeta { Name = "s", NamespaceProperty = "default" },
            Spec = new CheckpointScheduleSpec
            {
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "db" } },
                RecoverOnNodeFailure = world.Recover,
                NodeFailureGraceSeconds = 60,
            },
        };

        var steps = RecoveryDecisions.Plan(schedule, world.Pods, world.Nodes, world.Checkpoints, world.Restores, Now);

        Assert.Equal(row.Expected, steps.Select(Describe));
    }

    [Fact]
    public void The_fenced_pods_are_read_from_the_node_annotation()
    {
        var node = Node("node-a");
        Assert.Empty(RecoveryDecisions.Fenced(node));
        node.Metadata.Annotations = new Dictionary<string, string> { [Annotations.FencedPods] = "u-1, u-2,,u-1" };
        Assert.Equal(["u-1", "u-2"], RecoveryDecisions.Fenced(node));
    }

    private static string Describe(RecoveryStep step) => step switch
    {
        RecoveryStep.Import i => $"Import {i.Pod.Metadata.Name} from {i.From.Metadata.Name} as {i.Name}: {i.Why}",
        RecoveryStep.Fence f => $"Fence {f.Pod.Metadata.Name} on {f.Pod.Spec.NodeName}",
        RecoveryStep.Restore r => $"Restore {r.Imported.Metadata.Name} as {r.PodName}",
        RecoveryStep.Unrecoverable u => $"Unrecoverable {u.Pod.Metadata.Name}: {u.Why}",
        _ => step.ToString(),
    };

    private static V1Pod Pod(string app = "db", string uid = "u-1", string node = "node-a") => new()
    {
        Metadata = new V1ObjectMeta { Name = "db", NamespaceProperty = "default", Uid = uid, Labels = new Dictionary<string, string> { ["app"] = app } },
        Spec = new V1PodSpec { NodeName = node },
        Status = new V1PodStatus { Phase = "Running" },
    };

    private static V1Node Node(string name, bool ready = true, int downSeconds = 0) => new()
    {
        Metadata = new V1ObjectMeta { Name = name },
        Status = new V1NodeStatus
        {
            Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False", Reason = ready ? "KubeletReady" : "KubeletNotReady", LastTransitionTime = Now.AddSeconds(-downSeconds) }],
        },
    };

    private static Checkpoint Taken(string name, int secondsAgo, bool exported = true, string podUid = "u-1") => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default", Labels = new Dictionary<string, string> { [Labels.Schedule] = "s", [Labels.Pod] = "db" } },
        Spec = new CheckpointSpec { PodName = "db", Export = exported ? new CheckpointExportSpec() : null },
        Status = new CheckpointStatus
        {
            Phase = CheckpointPhases.Ready,
            PodUid = podUid,
            NodeName = "node-a",
            CheckpointTime = Now.AddSeconds(secondsAgo),
            Export = exported ? new CheckpointArchiveStatus { Path = "default/" + name, Digest = "sha256:aa" } : null,
        },
    };

    private static Checkpoint Import(string phase) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = "db-recovered-u1", NamespaceProperty = "default",
            Labels = new Dictionary<string, string> { [Labels.Recovers] = "u-1", [Labels.Pod] = "db" },
            Annotations = new Dictionary<string, string> { [Labels.Schedule] = "s" },
        },
        Spec = new CheckpointSpec { Source = new CheckpointSource { Path = "default/s-db-2" } },
        Status = new CheckpointStatus { Phase = phase, NodeName = "node-b" },
    };
}

using k8s.Models;
using Migrate.Api;
using Migrate.Operator.Checkpoints;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Checkpoints;

/// <summary>The group Checkpoint decisions as a table: the group, its members and the pods in; members to make or delete, the status and the decision out.</summary>
public sealed class CheckpointGroupDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 4, 12, 0, 0, DateTimeKind.Utc);
    private static readonly CheckpointGroupPolicy Policy = new() { MaxMembers = 3 };

    public sealed record Row(string Name, Func<CheckpointGroupFacts> Facts, Action<CheckpointGroupDecision> Expect)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<Row> Rows() =>
    [
        new("pods named and running: admitted whole, a member each", () => Facts(Group(pods: ["a", "b", "c"])),
            d =>
            {
                Assert.Equal([new("g-a", "a"), new("g-b", "b"), new("g-c", "c")], d.Create);
                Assert.Equal(("Checkpointing", null), (d.Status.Phase, d.Status.Group!.Decision));
                Assert.Contains("Checkpointing 3 pods on 2 nodes as one cut", d.Status.Message, StringComparison.Ordinal);
                Assert.Equal(["node-a", "node-a", "node-b"], d.Status.Group.Members.Select(m => m.NodeName));
            }),
        new("a selector: the Running pods of the namespace with every label, by name", () => Facts(Group(selector: new() { ["ring"] = "r" })),
            d => Assert.Equal([new("g-a", "a"), new("g-c", "c")], d.Create)),
        new("a selector that matches nothing: refused, nothing made", () => Facts(Group(selector: new() { ["ring"] = "none" })),
            d => Refused(d, Reasons.InvalidGroup, "ring=none matches no Running pod in namespace default")),
        new("more pods than the limit: refused", () => Facts(Group(pods: ["a", "b", "c", "d"])), d => Refused(d, Reasons.GroupTooLarge, "names 4 pods; at most 3")),
        new("a pod named twice: refused", () => Facts(Group(pods: ["a", "a"])), d => Refused(d, Reasons.InvalidGroup, "more than once: a")),
        new("a pod that does not exist: refused, nothing made", () => Facts(Group(pods: ["a", "zz"])), d => Refused(d, Reasons.PodNotFound, "default/zz does not exist")),
        new("a pod not running: refused", () => Facts(Group(pods: ["a", "d"])), d => Refused(d, Reasons.PodNotRunning, "default/d is Pending")),
        new("a pod on the host's network: refused before any member is made", () => Facts(Group(pods: ["a", "h"])) with { Pods = [Pod("a", "node-a"), HostNetwork(Pod("h", "node-b"))] },
            d => Refused(d, Reasons.CheckpointRefused, "default/h uses the host's network")),
        new("an export asked of a group: refused", () => Facts(Exported(Group(pods: ["a"]))), d => Refused(d, Reasons.InvalidGroup, "export, source and podName")),
        new("members being taken: no decision, look again", () => InFlight(Member("a", "Checkpointing", held: true), Member("b", "Checkpointing"), Member("c", "Checkpointing", held: true)),
            d =>
            {
                Assert.Null(d.Status.Group!.Decision);
                Assert.Equal(["Dumped", "Checkpointing", "Dumped"], d.Status.Group.Members.Select(m => m.Reason));
                Assert.Equal(Policy.PollInterval, d.Requeue);
            }),
        new("every member held: Thaw (the cut stands)", () => InFlight(Member("a", "Checkpointing", held: true), Member("b", "Checkpointing", held: true), Member("c", "Checkpointing", held: true)),
            d => Assert.Equal(("Thaw", "Thawing"), (d.Status.Group!.Decision, d.Status.Reason))),
        new("held or already kept after Thaw: Thaw stays", () => InFlight("Thaw", Member("a", "Ready"), Member("b", "Checkpointing", held: true), Member("c", "Checkpointing", held: true)),
            d => { Assert.Equal("Thaw", d.Status.Group!.Decision); Assert.Equal("Checkpointing", d.Status.Phase); }),
        new("a member failed before the decision: Abort, naming it", () => InFlight(Member("a", "Checkpointing", held: true), Member("b", "Failed", reason: "CheckpointRefused"), Member("c", "Checkpointing")),
            d =>
            {
                Assert.Equal(("Abort", Reasons.GroupRolledBack, "Checkpointing"), (d.Status.Group!.Decision, d.Status.Reason, d.Status.Phase));
                Assert.Contains("member g-b (pod b) failed: CheckpointRefused", d.Status.Message, StringComparison.Ordinal);
            }),
        new("aborted and every member ended: Failed, the first failure named, not the rolled back ones", () =>
                InFlight("Abort", Member("a", "Failed", reason: "GroupRolledBack", ended: 1), Member("b", "Failed", reason: "CheckpointRefused", ended: 5), Member("c", "Failed", reason: "GroupRolledBack", ended: 2)),
            d =>
            {
                Assert.Equal(("Failed", Reasons.GroupRolledBack), (d.Status.Phase, d.Status.Reason));
                Assert.Contains("every member was rolled back (thawed, nothing kept): member g-b (pod b) failed: CheckpointRefused", d.Status.Message, StringComparison.Ordinal);
                Assert.Equal(TimeSpan.Zero, d.Requeue);
            }),
        new("failed with members left: they are deleted (all or nothing)", () => InFlight(Member("a", "Ready"), Member("b", "Failed"), Member("c", "Failed", deleting: true)) with { Group = Phase(Group(pods: ["a", "b", "c"]), "Failed") },
            d => Assert.Equal(["g-a", "g-b"], d.Delete)),
        new("every member kept: Ready, the cut's figures", () => InFlight("Thaw", Member("a", "Ready", frozenAt: -5, freeze: 1900, size: 10), Member("b", "Ready", frozenAt: -4, freeze: 700, size: 20), Member("c", "Ready", frozenAt: -4, freeze: 800, size: 30)),
            d =>
            {
                Assert.Equal(("Ready", "Kept"), (d.Status.Phase, d.Status.Reason));
                Assert.Equal((Now.AddSeconds(-4), 1900L, 60L), (d.Status.CheckpointTime, d.Status.FreezeMillis, d.Status.SizeBytes));
                Assert.Equal(1900L, d.Status.Group!.SpreadMillis); // a frozen at -5 s and thawed last, at -3.1 s
                Assert.Equal("Checkpointed", d.Event?.Reason);
            }),
        new("a member deleted after Thaw, the others kept: Failed, not Ready (the cut is not whole)", () => InFlight("Thaw", Member("a", "Ready"), Member("b", "Ready", deleting: true), Member("c", "Ready")),
            d => { Assert.Equal(("Failed", "Abort"), (d.Status.Phase, d.Status.Group!.Decision)); Assert.Contains("member g-b (pod b) was deleted", d.Status.Message, StringComparison.Ordinal); }),
        new("a member gone after Thaw: Failed, not stuck", () => InFlight("Thaw", Member("a", "Ready"), Member("c", "Ready")) with { Now = Now.AddSeconds(30) },
            d => Assert.Equal(("Failed", "Abort"), (d.Status.Phase, d.Status.Group!.Decision))),
        new("a member kept before any decision (its agent did not hold it): Abort", () => InFlight(Member("a", "Ready"), Member("b", "Checkpointing", held: true), Member("c", "Checkpointing", held: true)),
            d => { Assert.Equal("Abort", d.Status.Group!.Decision); Assert.Contains("without being held with the rest", d.Status.Message, StringComparison.Ordinal); }),
        new("a group name too long for its members' label: refused", () => Facts(Named(Group(pods: ["a"]), new string('g', 64))), d => Refused(d, Reasons.InvalidGroup, "at most 63 characters")),
        new("too slow: Abort, timed out", () => InFlight(Member("a", "Checkpointing", held: true), Member("b", "Checkpointing"), Member("c", "Checkpointing")) with { Now = Now.AddMinutes(6) },
            d => Assert.Equal(("Abort", Reasons.TimedOut), (d.Status.Group!.Decision, d.Status.Reason))),
        new("a member deleted while taken: Abort, naming it", () => InFlight(Member("a", "Checkpointing", held: true), Member("b", "Checkpointing", deleting: true), Member("c", "Checkpointing")),
            d => { Assert.Equal("Abort", d.Status.Group!.Decision); Assert.Contains("member g-b (pod b) was deleted", d.Status.Message, StringComparison.Ordinal); }),
        new("a member not seen just after admission: made again", () => InFlight(Member("a", "Checkpointing"), Member("c", "Checkpointing")) with { Now = Now.AddSeconds(2) },
            d => { Assert.Equal([new("g-b", "b")], d.Create); Assert.Null(d.Status.Group!.Decision); }),
        new("a member gone later: Abort", () => InFlight(Member("a", "Checkpointing"), Member("c", "Checkpointing")) with { Now = Now.AddSeconds(30) },
            d => { Assert.Empty(d.Create); Assert.Equal("Abort", d.Status.Group!.Decision); }),
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Decides(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        row.Expect(CheckpointGroupDecisions.Decide(row.Facts(), Policy));
    }

    [Fact]
    public void Members_are_known_by_the_owner_reference_of_a_labelled_Checkpoint()
    {
        var group = Group(pods: ["a"]);
        var mine = Member("a", "Pending");
        var unlabelled = Member("b", "Pending");
        unlabelled.Metadata.Labels = null;
        var other = Member("c", "Pending");
        other.Metadata.OwnerReferences![0].Uid = "uid-other";

        Assert.Equal(["g-a"], CheckpointGroupDecisions.MembersOf(group, [mine, unlabelled, other]).Select(m => m.Metadata.Name));
    }

    private static void Refused(CheckpointGroupDecision d, string reason, string message)
    {
        Assert.Empty(d.Create);
        Assert.Equal(("Failed", reason), (d.Status.Phase, d.Status.Reason));
        Assert.Contains(message, d.Status.Message, StringComparison.Ordinal);
        Assert.Equal("Warning", d.Event?.Type);
    }

    private static Checkpoint Group(List<string>? pods = null, Dictionary<string, string>? selector = null) => new()
    {
        Metadata = new V1ObjectMeta { Name = "g", NamespaceProperty = "default", Uid = "uid-g" },
        Spec = new CheckpointSpec { Pods = pods, PodSelector = selector },
    };

    private static V1Pod HostNetwork(V1Pod pod)
    {
        pod.Spec.HostNetwork = true;
        return pod;
    }

    private static Checkpoint Named(Checkpoint group, string name)
    {
        group.Metadata.Name = name;
        return group;
    }

    private static Checkpoint Exported(Checkpoint group)
    {
        group.Spec.Export = new CheckpointExportSpec();
        return group;
    }

    private static Checkpoint Phase(Checkpoint group, string phase)
    {
        group.Status ??= new CheckpointStatus { StartTime = Now };
        group.Status.Phase = phase;
        return group;
    }

    private static CheckpointGroupFacts Facts(Checkpoint group) => new()
    {
        Group = group,
        Now = Now,
        Pods = [Pod("a", "node-a", ring: true), Pod("b", "node-a"), Pod("c", "node-b", ring: true), Pod("d", "node-b", phase: "Pending", ring: true), Pod("e", "node-b", ns: "other", ring: true)],
    };

    /// <summary>A group admitted at <see cref="Now"/> with members a, b, c, of which these exist.</summary>
    private static CheckpointGroupFacts InFlight(params Checkpoint[] members) => InFlight(null, members);

    private static CheckpointGroupFacts InFlight(string? decision, params Checkpoint[] members)
    {
        var group = Group(pods: ["a", "b", "c"]);
        group.Status = new CheckpointStatus
        {
            Phase = "Checkpointing",
            StartTime = Now,
            Group = new CheckpointGroupStatus
            {
                Decision = decision,
                Members = [.. new[] { ("a", "node-a"), ("b", "node-a"), ("c", "node-b") }.Select(m => new CheckpointGroupMember { Name = $"g-{m.Item1}", PodName = m.Item1, NodeName = m.Item2, Phase = "Pending" })],
            },
        };
        return Facts(group) with { Members = members };
    }

    private static Checkpoint Member(string pod, string phase, bool held = false, string? reason = null, int ended = 0, bool deleting = false, int frozenAt = 0, long freeze = 0, long size = 0) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = $"g-{pod}", NamespaceProperty = "default", Uid = $"uid-g-{pod}",
            Labels = new Dictionary<string, string> { [Labels.Group] = "g" },
            OwnerReferences = [new V1OwnerReference { Kind = "Checkpoint", Name = "g", Uid = "uid-g", Controller = true }],
            DeletionTimestamp = deleting ? Now : null,
        },
        Spec = new CheckpointSpec { PodName = pod },
        Status = new CheckpointStatus
        {
            Phase = phase,
            Reason = reason ?? phase,
            Message = $"{reason ?? phase} here",
            Held = held ? true : null,
            NodeName = pod == "c" ? "node-b" : "node-a",
            CompletionTime = ended > 0 ? Now.AddSeconds(ended) : null,
            CheckpointTime = phase == "Ready" ? Now.AddSeconds(frozenAt) : null,
            FreezeMillis = phase == "Ready" ? freeze : null,
            SizeBytes = phase == "Ready" ? size : null,
        },
    };

    private static V1Pod Pod(string name, string node, string phase = "Running", bool ring = false, string ns = "default") => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns, Uid = $"uid-{name}", Labels = ring ? new Dictionary<string, string> { ["ring"] = "r" } : null },
        Spec = new V1PodSpec { NodeName = node },
        Status = new V1PodStatus { Phase = phase },
    };
}

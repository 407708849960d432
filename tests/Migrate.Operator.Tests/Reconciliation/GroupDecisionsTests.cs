using k8s.Models;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>
/// The group (gang) decisions as a table: a group request, its members' requests and the pods of
/// its namespace in, the status (its gate) and the members to create out. No I/O, no clock.
/// </summary>
public sealed class GroupDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 3, 12, 0, 0, DateTimeKind.Utc);
    private static readonly GroupPolicy Policy = new() { MaxMembers = 3, MaxConcurrentGroups = 1 };
    private static readonly string[] Three = ["ring-0", "ring-1", "ring-2"];

    public sealed record Row(string Name, Func<GroupFacts> Facts, Action<GroupDecision> Expect)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<Row> Rows() =>
    [
        // ------------------------------------------------------------- admission
        new("listed pods, all running: Migrating at gate Prepare, a member request for each", () => New(Listed(Three)),
            d =>
            {
                Assert.Equal((GroupPhases.Migrating, GroupGates.Prepare), (d.Status.Phase, d.Status.Group!.Gate));
                Assert.Equal(["ring-ring-0", "ring-ring-1", "ring-ring-2"], d.Create.Select(c => c.Name));
                Assert.Equal(["node-b", "node-c", "node-x"], d.Create.Select(c => c.Spec.TargetNode));
                Assert.All(d.Create, c => Assert.Equal(("PreCopy", 300, true), (c.Spec.Mode, c.Spec.TimeoutSeconds, c.Spec.KeepAddress)));
            }),
        new("a selector: the running pods carrying its labels, by name; replacements and other apps left out", () => New(Selected()) with { Pods = Pods() },
            d => Assert.Equal(["ring-0", "ring-2"], d.Status.Group!.Members.Select(m => m.PodName))),
        new("a selector matching nothing: Failed, nothing made", () => New(Selected()) with { Pods = [] },
            d => Refused(d, Reasons.InvalidGroup, "No running pod in namespace default carries the labels app=ring")),
        new("a pod named twice: Failed", () => New(Listed(["ring-0", "ring-0"])), d => Refused(d, Reasons.InvalidGroup, "Pod ring-0 is named twice")),
        new("more pods than allowed: Failed", () => New(Listed([.. Three, "ring-3"])) with { Pods = [.. Pods(), Pod("ring-3")] },
            d => Refused(d, Reasons.GroupTooLarge, "The group has 4 pods; at most 3 move together.")),
        new("a pod that does not exist: Failed", () => New(Listed(["ring-0", "ghost"])), d => Refused(d, Reasons.PodNotFound, "Pod default/ghost of the group does not exist.")),
        new("a pod that does not run: Failed", () => New(Listed(Three)) with { Pods = [Pod("ring-0"), Pod("ring-1", phase: "Pending"), Pod("ring-2")] },
            d => Refused(d, Reasons.PodNotRunning, "Pod default/ring-1 of the group is not Running.")),
        new("another group in flight at the limit: queued, nothing made", () => New(Listed(Three)) with { GroupsInFlight = 1 },
            d => { Assert.Equal((MigrationPhases.Pending, Reasons.Queued), (d.Status.Phase, d.Status.Reason)); Assert.Empty(d.Create); }),

        // ------------------------------------------------------------- the gates, forward
        new("members still preparing: the gate stays, the laggards named", () => At(GroupGates.Prepare, GroupSteps.Ready, null, GroupSteps.Ready),
            d => { Assert.Equal(GroupGates.Prepare, d.Status.Group!.Gate); Assert.Equal("Gate Prepare: waiting for ring-1.", d.Status.Message); Assert.Empty(d.Create); }),
        new("every member ready: Freeze", () => At(GroupGates.Prepare, GroupSteps.Ready, GroupSteps.Ready, GroupSteps.Ready), d => Opens(d, GroupGates.Freeze)),
        new("every member frozen: Dump", () => At(GroupGates.Freeze, GroupSteps.Frozen, GroupSteps.Frozen, GroupSteps.Frozen), d => Opens(d, GroupGates.Dump)),
        new("two frozen, one still ready: the gate stays at Freeze", () => At(GroupGates.Freeze, GroupSteps.Frozen, GroupSteps.Ready, GroupSteps.Frozen),
            d => Assert.Equal(GroupGates.Freeze, d.Status.Group!.Gate)),
        new("every member staged: Commit", () => At(GroupGates.Dump, GroupSteps.Staged, GroupSteps.Staged, GroupSteps.Staged), d => Opens(d, GroupGates.Commit)),
        new("every member restored: Release, at this time", () => At(GroupGates.Commit, GroupSteps.Restored, GroupSteps.Restored, GroupSteps.Restored),
            d => { Opens(d, GroupGates.Release); Assert.Equal(Now, d.Status.Group!.ReleaseTime); Assert.Equal(Now, d.Status.Group.GateTimes![GroupGates.Release]); }),
        new("released, members cutting over: wait", () => At(GroupGates.Release, GroupSteps.Released, GroupSteps.Released, GroupSteps.Restored),
            d => { Assert.Equal(GroupPhases.Migrating, d.Status.Phase); Assert.Equal(Policy.PollInterval, d.RequeueAfter); }),
        new("released, every member Succeeded: Succeeded, the longest downtime named", () => Final(At(GroupGates.Release, GroupSteps.Released, GroupSteps.Released, GroupSteps.Released), MigrationPhases.Succeeded),
            d =>
            {
                Assert.Equal((MigrationPhases.Succeeded, Reasons.GroupMigrated), (d.Status.Phase, d.Status.Reason));
                Assert.Equal("All 3 pods moved as one cut; the longest frozen for 1200 ms.", d.Status.Message);
                Assert.True(d.Status.Is(ConditionTypes.Ready));
            }),
        new("a member not created yet (the cache was behind): made again", () => At(GroupGates.Prepare, GroupSteps.Ready, GroupSteps.Ready, null) with { Members = [.. Members(GroupSteps.Ready, GroupSteps.Ready, null).Take(2)] },
            d => Assert.Equal(["ring-ring-2"], d.Create.Select(c => c.Name))),

        new("a member request that never appeared (its name taken): the group goes back, naming it", () => Admitted(At(GroupGates.Prepare, GroupSteps.Ready, GroupSteps.Ready, null) with
            { Members = [.. Members(GroupSteps.Ready, GroupSteps.Ready, null).Take(2)] }, Now.AddMinutes(-1)),
            d =>
            {
                Assert.Equal(GroupGates.RollBack, d.Status.Group!.Gate);
                Assert.Empty(d.Create);
                Assert.StartsWith("Member ring-2 failed (InvalidGroup: MigrationRequest ring-ring-2 could not be made for it", d.Status.Message, StringComparison.Ordinal);
            }),

        // ------------------------------------------------------------- all or nothing
        new("a member rolling back before the release: the gate turns to RollBack, the member and its reason named", () => Failing(At(GroupGates.Dump, GroupSteps.Staged, GroupSteps.Frozen, GroupSteps.Staged), 1, rolling: true),
            d =>
            {
                Assert.Equal(GroupGates.RollBack, d.Status.Group!.Gate);
                Assert.Equal(Reasons.GroupRolledBack, d.Status.Reason);
                Assert.Equal("Member ring-1 failed (TargetAgentUnreachable: The agent on node-c has not answered for 21 seconds); every member is rolled back.", d.Status.Message);
                Assert.Contains(d.Events, e => e.Type == "Warning" && e.Reason == Reasons.GroupRolledBack);
            }),
        new("a member refused at its admission: RollBack as well", () => Failing(At(GroupGates.Prepare, GroupSteps.Ready, null, GroupSteps.Ready), 1, phase: MigrationPhases.Failed),
            d => Assert.Equal(GroupGates.RollBack, d.Status.Group!.Gate)),
        new("rolling back, members still going back: wait", () => Failing(Gate(At(GroupGates.Dump, GroupSteps.Staged, GroupSteps.Frozen, GroupSteps.Staged), GroupGates.RollBack), 1, phase: MigrationPhases.RolledBack),
            d => { Assert.Equal(GroupPhases.Migrating, d.Status.Phase); Assert.Equal(Policy.PollInterval, d.RequeueAfter); }),
        new("rolling back, every member back: RolledBack", () => Final(Gate(At(GroupGates.Dump, GroupSteps.Staged, GroupSteps.Frozen, GroupSteps.Staged), GroupGates.RollBack), MigrationPhases.RolledBack),
            d => { Assert.Equal(MigrationPhases.RolledBack, d.Status.Phase); Assert.EndsWith("Done: every member was rolled back and runs on where it was.", d.Status.Message, StringComparison.Ordinal); }),
        new("rolling back, a member left frozen (its agent gone): Failed, that member named", () => Failing(Final(Gate(At(GroupGates.Dump, GroupSteps.Staged, GroupSteps.Staged, GroupSteps.Staged), GroupGates.RollBack),
                MigrationPhases.RolledBack), 2, phase: MigrationPhases.Failed, reason: Reasons.SourceFrozenAgentUnreachable),
            d => { Assert.Equal(MigrationPhases.Failed, d.Status.Phase); Assert.Contains("member ring-2 could not be rolled back (SourceFrozenAgentUnreachable", d.Status.Message, StringComparison.Ordinal); }),
        new("a member failing after the release: no rollback (the others run on their targets); the group ends Failed naming it",
            () => Failing(Final(At(GroupGates.Release, GroupSteps.Released, GroupSteps.Released, GroupSteps.Released), MigrationPhases.Succeeded), 0, phase: MigrationPhases.Failed, reason: "RestoreFailed"),
            d => { Assert.Equal(GroupGates.Release, d.Status.Group!.Gate); Assert.Equal(MigrationPhases.Failed, d.Status.Phase); Assert.StartsWith("Member ring-0 failed after the group was released", d.Status.Message, StringComparison.Ordinal); }),
        new("a final group: nothing", () => Gate(At(GroupGates.Release), GroupGates.Release) with { Group = Done(At(GroupGates.Release).Group) }, d => { Assert.Empty(d.Create); Assert.Null(d.RequeueAfter); }),
    ];

    [Theory]
    [MemberData(nameof(Rows))]
    public void Decides(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        row.Expect(GroupDecisions.Decide(row.Facts(), Policy));
    }

    [Theory]
    [InlineData(null, GroupGates.Prepare, true)]
    [InlineData(GroupGates.Freeze, GroupGates.Prepare, true)]
    [InlineData(GroupGates.Commit, GroupGates.Dump, true)]
    [InlineData(GroupGates.Dump, GroupGates.Commit, false)]
    [InlineData(GroupGates.RollBack, GroupGates.Prepare, false)]
    [InlineData(GroupGates.Release, GroupGates.Release, true)]
    public void Gates_are_ordered_and_RollBack_opens_nothing(string? gate, string wanted, bool open) => Assert.Equal(open, GroupGates.AtLeast(gate, wanted));

    [Theory]
    [InlineData(null, GroupSteps.Ready, false)]
    [InlineData(GroupSteps.Ready, GroupSteps.Ready, true)]
    [InlineData(GroupSteps.Staged, GroupSteps.Frozen, true)]
    [InlineData(GroupSteps.Frozen, GroupSteps.Staged, false)]
    [InlineData(GroupSteps.Released, GroupSteps.Restored, true)]
    public void Steps_are_ordered(string? step, string wanted, bool reached) => Assert.Equal(reached, GroupSteps.AtLeast(step, wanted));

    [Fact]
    public void A_member_name_stays_a_valid_object_name()
    {
        var group = Group(Listed(Three));
        group.Metadata.Name = new string('g', 200);
        var name = GroupDecisions.MemberName(group, new string('p', 100));
        Assert.Equal(253, name.Length);
    }

    // ------------------------------------------------------------- builders

    private static MigrationRequestSpec Listed(string[] pods) => new()
    {
        Mode = "PreCopy",
        TimeoutSeconds = 300,
        KeepAddress = true,
        TargetNode = "node-x",
        Pods = [.. pods.Select((p, i) => new GroupMemberSpec { PodName = p, TargetNode = i switch { 0 => "node-b", 1 => "node-c", _ => null } })],
    };

    private static MigrationRequestSpec Selected() => new() { PodSelector = new Dictionary<string, string> { ["app"] = "ring" } };

    private static MigrationRequest Group(MigrationRequestSpec spec) => new()
    {
        Metadata = new V1ObjectMeta { Name = "ring", NamespaceProperty = "default", Uid = "group-uid", Generation = 1 },
        Spec = spec,
    };

    private static GroupFacts New(MigrationRequestSpec spec) => new() { Group = Group(spec), Now = Now, Pods = [Pod("ring-0"), Pod("ring-1"), Pod("ring-2"), Pod("web", app: "web")] };

    private static V1Pod Pod(string name, string phase = "Running", string app = "ring", bool replacement = false) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = "default",
            Labels = new Dictionary<string, string> { ["app"] = app },
            Annotations = replacement ? new Dictionary<string, string> { [Annotations.RestoreFrom] = "some-migration" } : null,
        },
        Status = new V1PodStatus { Phase = phase },
    };

    private static List<V1Pod> Pods() => [Pod("ring-2"), Pod("ring-0"), Pod("ring-1", phase: "Pending"), Pod("web", app: "web"), Pod("ring-0-m1234", replacement: true)];

    /// <summary>A group admitted at <paramref name="gate"/> whose three members reached the steps given (null: not yet a step).</summary>
    private static GroupFacts At(string gate, params string?[] steps)
    {
        var group = Group(Listed(Three));
        group.Status = new MigrationRequestStatus
        {
            Phase = GroupPhases.Migrating,
            StartTime = Now.AddSeconds(-20),
            Group = new GroupStatus { Gate = gate, Members = [.. Three.Select(p => new GroupMemberStatus { PodName = p, Request = "ring-" + p })] },
        };
        return new GroupFacts { Group = group, Now = Now, Pods = [Pod("ring-0"), Pod("ring-1"), Pod("ring-2")], Members = Members(steps.Length == 0 ? [null, null, null] : steps) };
    }

    private static List<MigrationRequest> Members(params string?[] steps) =>
    [
        .. steps.Select((step, i) => new MigrationRequest
        {
            Metadata = new V1ObjectMeta { Name = "ring-" + Three[i], NamespaceProperty = "default", Labels = new Dictionary<string, string> { [Labels.Group] = "ring" } },
            Spec = new MigrationRequestSpec { PodName = Three[i] },
            Status = new MigrationRequestStatus { Phase = MigrationPhases.Checkpointing, GroupStep = step, DowntimeMillis = 400 * (i + 1), SourceNode = "node-a", TargetNode = "node-c" },
        }),
    ];

    private static GroupFacts Admitted(GroupFacts facts, DateTime at)
    {
        facts.Group.Status!.SetCondition(ConditionTypes.Validated, "True", Reasons.Validated, "admitted", 1, at);
        return facts;
    }

    private static GroupFacts Gate(GroupFacts facts, string gate)
    {
        facts.Group.Status!.Group!.Gate = gate;
        return facts;
    }

    /// <summary>Every member ended in <paramref name="phase"/>.</summary>
    private static GroupFacts Final(GroupFacts facts, string phase)
    {
        foreach (var member in facts.Members)
        {
            member.Status!.Phase = phase;
        }

        return facts;
    }

    /// <summary>Member <paramref name="index"/> failed (or is rolling back) with a reason.</summary>
    private static GroupFacts Failing(GroupFacts facts, int index, bool rolling = false, string? phase = null, string reason = Reasons.TargetAgentUnreachable)
    {
        var status = facts.Members[index].Status!;
        status.Reason = reason;
        status.Message = "The agent on node-c has not answered for 21 seconds.";
        status.Phase = phase ?? status.Phase;
        if (rolling)
        {
            status.SetCondition(ConditionTypes.RollingBack, "True", reason, status.Message, 1, Now);
        }

        return facts;
    }

    private static MigrationRequest Done(MigrationRequest group)
    {
        group.Status!.Phase = MigrationPhases.Succeeded;
        return group;
    }

    private static void Opens(GroupDecision decision, string gate)
    {
        Assert.Equal(gate, decision.Status.Group!.Gate);
        Assert.Equal(TimeSpan.Zero, decision.RequeueAfter);
        Assert.Contains(decision.Events, e => e.Reason == "Group" + gate);
    }

    private static void Refused(GroupDecision decision, string reason, string message)
    {
        Assert.Equal((MigrationPhases.Failed, reason), (decision.Status.Phase, decision.Status.Reason));
        Assert.StartsWith(message, decision.Status.Message, StringComparison.Ordinal);
        Assert.EndsWith("Nothing was changed.", decision.Status.Message, StringComparison.Ordinal);
        Assert.Empty(decision.Create);
        Assert.Null(decision.Status.Group);
    }
}

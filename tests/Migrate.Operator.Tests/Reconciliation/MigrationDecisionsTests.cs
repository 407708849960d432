using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>
/// The decisions as a table: a phase and what was observed, the one action and the status that
/// follow. No API server, no agents, no clock: each row builds facts and calls the pure function.
/// </summary>
public sealed class MigrationDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 2, 12, 0, 0, DateTimeKind.Utc);
    private static readonly MigrationPolicy Policy = new();
    private const string Id = "0f3a9c2e-1111-4222-8333-944455556666";

    /// <summary>One row: a name, the facts, and what must come out.</summary>
    public sealed record Row(string Name, Func<MigrationFacts> Facts, Action<Decision> Expect)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<Row> Rows() =>
    [
        // ------------------------------------------------------------- admission
        new("new request: the finalizer first", () => New(finalizer: false), d => Is<MigrationAction.AddFinalizer>(d)),
        new("new request, refused: Failed with the reason, nothing touched", () => New() with { Admission = Validation.Fail("PodNotFound", "Pod default/db-0 does not exist.") },
            d => { Nothing(d); Phase(d, "Failed", "PodNotFound"); Assert.NotNull(d.Status.CompletionTime); }),
        new("new request, admitted: Pending with its nodes", () => New() with { Admission = new Validation("node-a", "node-b", null, null) },
            d => { Nothing(d); Phase(d, "Pending", "Validated"); Assert.Equal(("node-a", "node-b"), (d.Status.SourceNode, d.Status.TargetNode)); }),
        new("new request deleted: the finalizer goes", () => New(deleting: true), d => Is<MigrationAction.RemoveFinalizer>(d)),
        new("new request in mode Auto, admitted where pages may stay on the source: PreCopy rounds, the rest undecided", () => New() with
            {
                Admission = new Validation("node-a", "node-b", null, null) { Mode = ModeChoice.AtAdmission(MigrationModes.Auto, CheckpointPaths.RuntimeClass, null, 500) },
            },
            d =>
            {
                Nothing(d);
                Assert.Equal(MigrationModes.PreCopy, d.Status.Mode);
                Assert.Equal(("Unknown", ModeReasons.AwaitingRounds), (d.Status.Condition(ConditionTypes.ModeChosen)!.Status, d.Status.Condition(ConditionTypes.ModeChosen)!.Reason));
            }),

        // ------------------------------------------------------------- queueing
        new("pending, the cluster is full: queued", () => At("Pending") with { InFlight = 5 },
            d => { Nothing(d); Phase(d, "Pending", "Queued"); Assert.Equal("Waiting: 5 migrations are in flight, the limit is 5.", d.Status.Message); }),
        new("pending, two already leave the source: queued", () => At("Pending") with { OutboundFromSource = 2 },
            d => { Phase(d, "Pending", "Queued"); Assert.Contains("leave node node-a", d.Status.Message, StringComparison.Ordinal); }),
        new("pending, two already go to the target: queued", () => At("Pending") with { InboundToTarget = 2 },
            d => { Phase(d, "Pending", "Queued"); Assert.Contains("go to node node-b", d.Status.Message, StringComparison.Ordinal); }),
        new("pending with a free slot: Checkpointing, the pod told", () => At("Pending"),
            d => { Phase(d, "Checkpointing", "Checkpointing"); Assert.Contains(d.Events, e => e.PodName == "db-0" && e.Reason == "Migrating"); }),
        new("pending and deleted: the finalizer goes", () => At("Pending", deleting: true), d => Is<MigrationAction.RemoveFinalizer>(d)),

        // ------------------------------------------------------------- checkpointing, forward
        new("checkpointing without a trace: the root span first", () => At("Checkpointing", traced: false), d => Is<MigrationAction.StartTrace>(d)),
        new("the source agent knows nothing yet: begin", () => At("Checkpointing") with { SourceAgent = AgentView.KnowsNothing }, d => Is<MigrationAction.BeginCheckpoint>(d)),
        new("the source agent does not answer: wait", () => At("Checkpointing") with { SourceAgent = Silent(5) }, d => Waits(d)),
        new("the target expects nothing yet", () => At("Checkpointing") with { TargetAgent = AgentView.KnowsNothing },
            d => Assert.Equal("node-b", Is<MigrationAction.ExpectImages>(d).Node)),
        new("pre-copy not started", () => At("Checkpointing", mode: "PreCopy"), d => Is<MigrationAction.StartPreCopy>(d)),
        new("pre-copy running: wait, its progress shown", () => At("Checkpointing", mode: "PreCopy") with { SourceAgent = Source(preCopy: Op("PreCopy", OperationState.Running), sent: 40, total: 100) },
            d => { Waits(d); Assert.Equal((40L, 100L), (d.Status.Progress!.BytesSent, d.Status.Progress.BytesTotal)); }),
        new("pre-copy's first round staged quickly: the replacement is prepared during the rounds left", () => PreCopyAfterFirstRound(At("Checkpointing", mode: "PreCopy"), firstRoundMillis: 2_000),
            d => { Assert.Equal("node-b", Is<MigrationAction.CreateReplacement>(d).Node); Assert.Equal(Replacement, d.Status.ReplacementPod); Assert.False(d.Status.Is(ConditionTypes.Frozen)); }),
        new("pre-copy's first round took long: the replacement waits for convergence (its restore would give up waiting)", () => PreCopyAfterFirstRound(At("Checkpointing", mode: "PreCopy"), firstRoundMillis: 20_000),
            d => Waits(d)),
        new("pre-copy's first round staged quickly, the replacement already made: wait for convergence", () => PreCopyAfterFirstRound(At("Checkpointing", mode: "PreCopy"), firstRoundMillis: 2_000) with { Replacement = Waiting() },
            d => Waits(d)),
        new("pre-copy's first round staged quickly, a pod keeping its name: no replacement before the handoff", () => PreCopyAfterFirstRound(At("Checkpointing", mode: "PreCopy", keepsName: true), firstRoundMillis: 2_000),
            d => Waits(d)),
        new("pre-copy converged, no replacement: make it (the source still runs)", () => At("Checkpointing", mode: "PreCopy") with { SourceAgent = Source(preCopy: Op("PreCopy", OperationState.Succeeded), converged: true) },
            d => { Assert.Equal("node-b", Is<MigrationAction.CreateReplacement>(d).Node); Assert.False(d.Status.Is(ConditionTypes.Frozen)); }),
        new("Auto's rounds ended with 4 MiB written (42 ms to send): PreCopy, settled and written before anything else", () => AutoRoundsEnded(lastRoundPages: 1024),
            d =>
            {
                Nothing(d);
                Assert.Equal(MigrationModes.PreCopy, d.Status.Mode);
                Assert.Equal(("True", ModeReasons.RoundsConverged), (d.Status.Condition(ConditionTypes.ModeChosen)!.Status, d.Status.Condition(ConditionTypes.ModeChosen)!.Reason));
                Assert.Contains(d.Events, e => e.Reason == ModeReasons.RoundsConverged);
            }),
        new("Auto's rounds ended with 391 MiB written (4 s to send, over the default 2 s): Hybrid", () => AutoRoundsEnded(lastRoundPages: 100_000),
            d =>
            {
                Nothing(d);
                Assert.Equal(MigrationModes.Hybrid, d.Status.Mode);
                Assert.Equal(("True", ModeReasons.WritesOutpaceRounds), (d.Status.Condition(ConditionTypes.ModeChosen)!.Status, d.Status.Condition(ConditionTypes.ModeChosen)!.Reason));
                Assert.Contains("over the 2000 ms limit", d.Status.Condition(ConditionTypes.ModeChosen)!.Message, StringComparison.Ordinal);
            }),
        new("Auto settled: on to the replacement and the handoff", () => Settled(AutoRoundsEnded(lastRoundPages: 100_000)),
            d => Is<MigrationAction.CreateReplacement>(d)),
        new("Auto's rounds still running: nothing settled yet", () => AutoRoundsEnded(lastRoundPages: 100_000, running: true),
            d => { Waits(d); Assert.Equal("Unknown", d.Status.Condition(ConditionTypes.ModeChosen)!.Status); }),
        new("cold: no pre-copy, the replacement at once", () => At("Checkpointing"), d => Is<MigrationAction.CreateReplacement>(d)),
        new("the network moves addresses, the pod could not keep its own (keepAddress unset): a new address, said before the replacement is made",
            () => KeepingAddress(At("Checkpointing"), spec: null, kept: false, note: "the pod's network namespace has 2 IPv4 addresses (10.1.0.5/24 on eth0, 10.2.0.5/24 on net1); only a pod with one can keep it"),
            d =>
            {
                Nothing(d);
                var condition = d.Status.Condition(ConditionTypes.KeepsAddress)!;
                Assert.Equal(("False", "PodAddressCannotMove"), (condition.Status, condition.Reason));
                Assert.Equal("The replacement gets a new address: the pod's network namespace has 2 IPv4 addresses (10.1.0.5/24 on eth0, 10.2.0.5/24 on net1); only a pod with one can keep it.", condition.Message);
                Assert.Contains(d.Events, e => e.Reason == "PodAddressCannotMove");
            }),
        new("the pod keeps its address: the replacement at once, KeepsAddress stays", () => KeepingAddress(At("Checkpointing"), spec: null, kept: true, note: ""),
            d => { Is<MigrationAction.CreateReplacement>(d); Assert.True(d.Status.Is(ConditionTypes.KeepsAddress)); }),
        new("keepAddress required: never turned into a new address", () => KeepingAddress(At("Checkpointing"), spec: true, kept: false, note: "no IPv4 address"),
            d => { Is<MigrationAction.CreateReplacement>(d); Assert.True(d.Status.Is(ConditionTypes.KeepsAddress)); }),
        new("the replacement's sandbox is not ready: wait, no freeze", () => At("Checkpointing") with { Replacement = Pod(Replacement, "node-b", "Pending") },
            d => { Waits(d); Assert.StartsWith("Preparing the replacement pod", d.Status.Message, StringComparison.Ordinal); }),
        new("the replacement waits for the images: hand off", () => At("Checkpointing") with { Replacement = Pod(Replacement, "node-b", "Pending"), TargetAgent = Target(waiting: true) },
            d => Is<MigrationAction.StartHandoff>(d)),
        new("a pod keeping its name: hand off without a replacement", () => At("Checkpointing", keepsName: true), d => Is<MigrationAction.StartHandoff>(d)),
        // ------------------------------------------------------------- the CRI path
        new("CRI path: no images expected on the target, no replacement made early: hand off", () => Cri(At("Checkpointing")),
            d => Is<MigrationAction.StartHandoff>(d)),
        new("CRI path: the runtime checkpoints the paused pod: Frozen, wait", () => Cri(At("Checkpointing")) with { SourceAgent = Source(handoff: HandoffStep.Dumping, frozenAt: Now.AddSeconds(-1)) },
            d => { Waits(d); Assert.True(d.Status.Is(ConditionTypes.Frozen)); Assert.Equal("Checkpointing", d.Status.Phase); }),
        new("CRI path: the images are published: the replacement is made from them", () => Cri(At("Checkpointing")) with { SourceAgent = Published(Source(handoff: HandoffStep.Committed)) },
            d =>
            {
                Assert.Equal("node-b", Is<MigrationAction.CreateReplacement>(d).Node);
                Assert.Equal(["registry.local/ck/default/db-0@sha256:" + new string('a', 64)], d.Status.CheckpointImages);
                Assert.Equal("Checkpointing", d.Status.Phase);
            }),
        new("CRI path: the replacement exists: Restoring", () => Cri(At("Checkpointing")) with { SourceAgent = Published(Source(handoff: HandoffStep.Committed)), Replacement = Waiting() },
            d => { Nothing(d); Assert.Equal("Restoring", d.Status.Phase); }),
        new("CRI path: the replacement runs: cut over, downtime until it was seen running", () => Cri(At("Restoring")) with
            { SourceAgent = Published(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddSeconds(-2))), Replacement = Pod(Replacement, "node-b", "Running") },
            d => { Assert.Equal("CuttingOver", d.Status.Phase); Assert.Equal(2000, d.Status.DowntimeMillis); Assert.Null(d.Status.RestoreMillis); }),
        new("CRI path, a target agent reporting a restore anyway: no restoreMillis (the runtime restored, not the agent)", () => Cri(At("Restoring")) with
            {
                SourceAgent = Published(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddSeconds(-2))), Replacement = Pod(Replacement, "node-b", "Running"),
                TargetAgent = Target(restoredAt: Now.AddMilliseconds(-650), restoreMillis: 48),
            },
            d => { Assert.Equal("CuttingOver", d.Status.Phase); Assert.Null(d.Status.RestoreMillis); }),
        new("CRI path, rolling back with the replacement gone and the target's agent silent: the source resumes (no target agent can restore it)",
            () => Cri(Rolling("Restoring", frozen: true)) with { SourceAgent = Published(Source(handoff: HandoffStep.Committed)), TargetAgent = Silent(120) },
            d => Is<MigrationAction.ResumeSource>(d)),
        new("RuntimeClass path, the same: the source stays frozen until the target's agent answers", () => Rolling("Restoring", frozen: true) with
            { SourceAgent = Source(handoff: HandoffStep.Committed), TargetAgent = Silent(120) },
            d => StillRolling(d)),

        new("the handoff froze the pod: Frozen, at the agent's time", () => At("Checkpointing") with { Replacement = Waiting(), TargetAgent = Target(waiting: true), SourceAgent = Source(handoff: HandoffStep.Dumping, frozenAt: Now.AddSeconds(-2)) },
            d => { Waits(d); Assert.Equal(Now.AddSeconds(-2), d.Status.Condition(ConditionTypes.Frozen)!.LastTransitionTime); }),
        new("the final dump is done: Transferring", () => At("Checkpointing") with { Replacement = Waiting(), TargetAgent = Target(waiting: true), SourceAgent = Source(handoff: HandoffStep.Sending, frozenAt: Now.AddSeconds(-1)) },
            d => { Phase(d, "Transferring", "Transferring"); Assert.Equal(50_000_000, d.Status.ImageBytes); }),

        // ------------------------------------------------------------- a member of a group
        new("a group member pending in a full cluster: it starts all the same (its group was admitted whole)", () => Member(At("Pending") with { InFlight = 5, OutboundFromSource = 2 }, GroupGates.Prepare),
            d => Phase(d, "Checkpointing", "Checkpointing")),
        new("a group member prepared, the group not ready: Ready, nothing frozen", () => Member(At("Checkpointing") with { Replacement = Waiting(), TargetAgent = Target(waiting: true) }, GroupGates.Prepare),
            d => { Waits(d); Assert.Equal(GroupSteps.Ready, d.Status.GroupStep); Assert.Contains("waiting for the other members of group ring", d.Status.Message, StringComparison.Ordinal); }),
        new("a group member prepared, the gate at Freeze: hand off (held)", () => Member(At("Checkpointing") with { Replacement = Waiting(), TargetAgent = Target(waiting: true) }, GroupGates.Freeze),
            d => Is<MigrationAction.StartHandoff>(d)),
        new("a group member frozen, the gate still at Freeze: Frozen, it waits", () => Member(At("Checkpointing") with
            { Replacement = Waiting(), TargetAgent = Target(waiting: true), SourceAgent = Held(Source(handoff: HandoffStep.Dumping), "Frozen") }, GroupGates.Freeze),
            d => { Waits(d); Assert.Equal(GroupSteps.Frozen, d.Status.GroupStep); Assert.True(d.Status.Is(ConditionTypes.Frozen)); }),
        new("a group member frozen, the gate at Dump: let it dump", () => Member(At("Checkpointing") with
            { Replacement = Waiting(), TargetAgent = Target(waiting: true), SourceAgent = Held(Source(handoff: HandoffStep.Dumping), "Frozen") }, GroupGates.Dump),
            d => Assert.Equal("Dump", Is<MigrationAction.ContinueHandoff>(d).Through)),
        new("a group member let through to dump, still held a moment: not asked twice", () => Member(At("Checkpointing") with
            { Replacement = Waiting(), TargetAgent = Target(waiting: true), SourceAgent = Held(Source(handoff: HandoffStep.Dumping), "Frozen", "Dump") }, GroupGates.Dump),
            d => Waits(d)),
        new("a group member staged, the gate at Dump: Staged, it waits", () => Member(At("Transferring") with { Replacement = Waiting(), SourceAgent = Held(Source(handoff: HandoffStep.Sending), "Staged", "Dump") }, GroupGates.Dump),
            d => { Waits(d); Assert.Equal(GroupSteps.Staged, d.Status.GroupStep); Assert.Equal("Transferring", d.Status.Phase); }),
        new("a group member staged, the gate at Commit: let it commit", () => Member(At("Transferring") with { Replacement = Waiting(), SourceAgent = Held(Source(handoff: HandoffStep.Sending), "Staged", "Dump") }, GroupGates.Commit),
            d => Assert.Equal("Commit", Is<MigrationAction.ContinueHandoff>(d).Through)),
        new("a group member's replacement runs with its network held, the gate at Commit: Restored, it stays Restoring", () => Member(At("Restoring") with
            { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), TargetAgent = Network(Target(restoredAt: Now.AddMilliseconds(-650)), held: true) }, GroupGates.Commit),
            d => { Waits(d); Assert.Equal(GroupSteps.Restored, d.Status.GroupStep); Assert.Equal("Restoring", d.Status.Phase); }),
        new("a group member restored, the gate at Release: its network released", () => Member(At("Restoring") with
            { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), TargetAgent = Network(Target(restoredAt: Now.AddMilliseconds(-650)), held: true) }, GroupGates.Release),
            d => Is<MigrationAction.ReleaseNetwork>(d)),
        new("a group member released: CuttingOver, its downtime until the release", () => Member(At("Restoring") with
            {
                Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = Network(Target(restoredAt: Now.AddMilliseconds(-650)), held: true, releasedAt: Now.AddMilliseconds(-100)),
            }, GroupGates.Release),
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Equal(GroupSteps.Released, d.Status.GroupStep); Assert.Equal(800, d.Status.DowntimeMillis); }),
        new("a group rolled back while the member prepares: it goes back", () => Member(At("Checkpointing") with { Replacement = Waiting(), TargetAgent = Target(waiting: true) }, GroupGates.RollBack),
            d => RollsBack(d, Reasons.GroupRolledBack)),
        new("a group rolled back while the member's replacement runs, its network held: it goes back all the same (nobody talked to it)", () => Member(At("Restoring") with
            { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed), TargetAgent = Network(Target(restoredAt: Now.AddMilliseconds(-650)), held: true) }, GroupGates.RollBack),
            d => RollsBack(d, Reasons.GroupRolledBack)),
        new("a group member held restored past its phase's time: it goes back", () => Member(At("Restoring", phaseStarted: Now.AddMinutes(-6)) with
            { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed), TargetAgent = Network(Target(restoredAt: Now.AddMinutes(-5)), held: true) }, GroupGates.Commit),
            d => RollsBack(d, Reasons.PhaseTimedOut)),
        new("a group member released is past the point of return: forward whatever the gate", () => Member(At("CuttingOver", expendable: true) with { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed) }, GroupGates.RollBack, step: GroupSteps.Released),
            d => Is<MigrationAction.FinishSource>(d)),

        // ------------------------------------------------------------- transferring, restoring, cutting over
        new("transferring, not yet committed: wait", () => At("Transferring") with { Replacement = Waiting(), SourceAgent = Source(handoff: HandoffStep.Sending) }, d => Waits(d)),
        new("bytes transferred: what pre-copy and the handoff sent, less the pages sent as references", () => At("Transferring") with { Replacement = Waiting(), SourceAgent = Sent(Source(handoff: HandoffStep.Sending), preCopy: 300, handoff: 50, referenced: 120) },
            d => { Waits(d); Assert.Equal(230L, d.Status.BytesTransferred); }),
        new("committed: Restoring", () => At("Transferring") with { Replacement = Waiting(), SourceAgent = Source(handoff: HandoffStep.Committed) }, d => Phase(d, "Restoring", "Restoring")),
        new("the replacement runs: CuttingOver, downtime by the agents' clocks", () => At("Restoring") with
            {
                Replacement = Pod(Replacement, "node-b", "Running"),
                SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = Target(restoredAt: Now.AddMilliseconds(-650), restoreMillis: 48),
            },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Equal(250, d.Status.DowntimeMillis); Assert.Equal(48, d.Status.RestoreMillis); }),
        new("the replacement runs, two containers restored one after the other: restoreMillis spans from the first's start to the last's end", () => At("Restoring") with
            {
                Replacement = Pod(Replacement, "node-b", "Running"),
                SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                // main: 698 to 650 ms ago; sidecar, started after it: 640 to 620 ms ago
                TargetAgent = SecondRestore(Target(restoredAt: Now.AddMilliseconds(-650), restoreMillis: 48), restoredAt: Now.AddMilliseconds(-620), restoreMillis: 20),
            },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Equal(78, d.Status.RestoreMillis); }),
        new("cutting over with restoreMillis unset (the pass that cut over did not hear the target): set from the target's report", () => At("CuttingOver") with
            {
                Replacement = Pod(Replacement, "node-b", "Running"),
                SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = Target(restoredAt: Now.AddMilliseconds(-650), restoreMillis: 48),
            },
            d => Assert.Equal(48, d.Status.RestoreMillis)),
        new("the replacement runs, its target's agent silent now: the restore time it reported before stays", () => RestoreReported(At("Restoring") with
            {
                Replacement = Pod(Replacement, "node-b", "Running"),
                SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = Silent(5),
            }, 48),
            d => Assert.Equal(48, d.Status.RestoreMillis)),
        new("the replacement runs, restored by an agent that gave no restore time: restoreMillis stays unset", () => At("Restoring") with
            {
                Replacement = Pod(Replacement, "node-b", "Running"),
                SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = Target(restoredAt: Now.AddMilliseconds(-650)),
            },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Null(d.Status.RestoreMillis); }),
        new("the replacement runs, its lazy memory still arriving: the source stays frozen, Restoring", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = LazyTarget(Now.AddMilliseconds(-650), memoryError: null),
            },
            d => { Waits(d); Assert.Equal("Restoring", d.Status.Phase); Assert.Equal("Lazy", d.Status.MemoryRestore); }),
        new("the replacement runs, its lazy memory all in place: CuttingOver", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = LazyTarget(Now.AddMilliseconds(-650), memoryError: ""),
            },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Equal("Lazy", d.Status.MemoryRestore); }),
        new("the replacement runs, but a lazy-restore helper died before the last page: roll back to the frozen source", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)),
                TargetAgent = LazyTarget(Now.AddMilliseconds(-650), memoryError: "the page server ended without reporting"),
            },
            d => { RollsBack(d, "RestoreFailed"); Assert.Contains("not all of it arrived: the page server ended", d.Status.Message, StringComparison.Ordinal); }),
        new("the replacement runs, memory left lazy, and the target's agent does not answer: nobody knows it arrived, the source stays frozen", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = LazySource(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), pagesLeft: 8192),
                TargetAgent = Silent(5),
            },
            d => { Waits(d); Assert.Equal("Restoring", d.Status.Phase); Assert.Null(d.Status.MemoryRestore); }),
        new("the replacement runs, memory left lazy, the target's agent silent beyond its grace: roll back to the frozen source", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = LazySource(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), pagesLeft: 8192),
                TargetAgent = Silent(31),
            },
            d => RollsBack(d, "TargetAgentUnreachable")),
        new("post-copy: the replacement runs, the pages left on the source all arrived: CuttingOver, and how much came from the source", () => At("Restoring") with
            {
                Replacement = Running(), SourceAgent = LazySource(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), pagesLeft: 8192),
                TargetAgent = LazyTarget(Now.AddMilliseconds(-650), memoryError: ""),
            },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Assert.Equal(8192L * 4096, d.Status.PostCopyBytes); }),
        new("post-copy: a second container left pages on the source and has not said they arrived: the source stays frozen", () => At("Restoring") with
            {
                Replacement = Running(),
                SourceAgent = LazySource(LazySource(Source(handoff: HandoffStep.Committed, frozenAt: Now.AddMilliseconds(-900)), pagesLeft: 8192), pagesLeft: 16, container: "sidecar"),
                TargetAgent = LazyTarget(Now.AddMilliseconds(-650), memoryError: ""),
            },
            d => { Waits(d); Assert.Equal("Restoring", d.Status.Phase); }),
        new("cutting over: the source marked for its owner first", () => At("CuttingOver") with { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.MarkSourceExpendable>(d)),
        new("cutting over: the frozen source ended", () => At("CuttingOver", expendable: true) with { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.FinishSource>(d)),
        new("cutting over: the replacement takes the labels", () => At("CuttingOver", expendable: true) with { Replacement = Running(held: true), SourceAgent = Source(MigrationPhase.Finished) },
            d => Is<MigrationAction.HandOverIdentity>(d)),
        new("cutting over: the source pod deleted", () => At("CuttingOver", expendable: true) with { Replacement = Running(), SourceAgent = Source(MigrationPhase.Finished) },
            d => Assert.Equal("db-0", Is<MigrationAction.DeletePod>(d).Name)),
        new("cutting over: images removed on both nodes in one pass", () => At("CuttingOver") with { NamedPod = null, Replacement = Running(), SourceAgent = Source(MigrationPhase.Finished) },
            d => Assert.Equal(["node-a", "node-b"], Is<MigrationAction.Cleanup>(d).Nodes)),
        new("cutting over: images removed on the target, the source's gone already", () => At("CuttingOver") with { NamedPod = null, Replacement = Running(), SourceAgent = AgentView.KnowsNothing },
            d => Assert.Equal(["node-b"], Is<MigrationAction.Cleanup>(d).Nodes)),
        new("cutting over: images removed on the source, the target's agent silent (its images later)", () => At("CuttingOver") with { NamedPod = null, Replacement = Running(), SourceAgent = Source(MigrationPhase.Finished), TargetAgent = Silent(60) },
            d => { Assert.Equal(["node-a"], Is<MigrationAction.Cleanup>(d).Nodes); Assert.Equal(["node-b"], d.Status.PendingCleanup); }),
        new("cutting over: Succeeded once both agents hold nothing", () => At("CuttingOver") with { NamedPod = null, Replacement = Running(), SourceAgent = AgentView.KnowsNothing, TargetAgent = AgentView.KnowsNothing },
            d => { Phase(d, "Succeeded", "Migrated"); Assert.True(d.Status.Is(ConditionTypes.Ready)); Assert.Null(d.Status.PendingCleanup); }),
        new("cutting over, the target's agent silent: Succeeded, its images removed later", () => At("CuttingOver") with { NamedPod = null, Replacement = Running(), SourceAgent = AgentView.KnowsNothing, TargetAgent = Silent(60) },
            d => { Phase(d, "Succeeded", "Migrated"); Assert.Equal(["node-b"], d.Status.PendingCleanup); }),
        new("cutting over and deleted: forward all the same", () => At("CuttingOver", deleting: true, expendable: true) with { Replacement = Running(), SourceAgent = Source(handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.FinishSource>(d)),

        // ------------------------------------------------------------- the failure ladder
        new("the whole migration took too long", () => At("Checkpointing", started: Now.AddMinutes(-11)), d => RollsBack(d, "TimedOut")),
        new("the phase took too long", () => At("Transferring", phaseStarted: Now.AddMinutes(-6)), d => RollsBack(d, "PhaseTimedOut")),
        new("the source pod disappeared before the commit", () => At("Checkpointing") with { NamedPod = null }, d => RollsBack(d, "SourcePodGone")),
        new("the source pod disappeared after the commit: forward", () => At("Restoring") with { NamedPod = null, Replacement = Waiting(), SourceAgent = Source(handoff: HandoffStep.Committed) }, d => Waits(d)),
        new("the source pod was recreated (another UID)", () => At("Checkpointing") with { NamedPod = Pod("db-0", "node-a", "Running", uid: "recreated") }, d => RollsBack(d, "SourcePodGone")),
        new("the target node was deleted", () => At("Transferring") with { TargetNode = null }, d => RollsBack(d, "TargetNodeGone")),
        new("the target node is NotReady", () => At("Transferring") with { TargetNode = Node("node-b", ready: false) }, d => RollsBack(d, "TargetNodeNotReady")),
        new("the target's agent silent beyond its grace", () => At("Transferring") with { TargetAgent = Silent(30) }, d => RollsBack(d, "TargetAgentUnreachable")),
        new("the target's agent silent within its grace: wait", () => At("Transferring") with { Replacement = Waiting(), TargetAgent = Silent(5), SourceAgent = Source(handoff: HandoffStep.Sending) }, d => Waits(d)),
        new("the source's agent silent beyond its grace", () => At("Checkpointing") with { SourceAgent = Silent(30) }, d => RollsBack(d, "SourceAgentUnreachable")),
        new("pre-copy failed on the source", () => At("Checkpointing", mode: "PreCopy") with { SourceAgent = Source(preCopy: Op("PreCopy", OperationState.Failed, "PreDumpFailed", "criu died")) },
            d => { RollsBack(d, "PreCopyFailed"); Assert.Contains("criu died", d.Status.Message, StringComparison.Ordinal); }),
        new("the handoff failed on the source", () => At("Transferring") with { SourceAgent = Source(preCopy: Op("Handoff", OperationState.Failed, "TransferFailed", "node-b refused")) }, d => RollsBack(d, "HandoffFailed")),
        new("the source agent lost the migration (it restarted and thawed)", () => At("Transferring") with { SourceAgent = Source(MigrationPhase.Resumed) }, d => RollsBack(d, "SourceAgentRestarted")),
        new("the source thawed while its handoff still runs: the failure is on its way, wait for its reason",
            () => At("Transferring") with { Replacement = Waiting(), SourceAgent = Source(MigrationPhase.Resumed, preCopy: Op("Handoff", OperationState.Running)) }, d => Waits(d)),
        new("the restore runtime reports an error", () => At("Restoring") with { Replacement = Waiting(), SourceAgent = Source(handoff: HandoffStep.Committed), TargetAgent = Target(error: "CRIU: no such file") },
            d => RollsBack(d, "RestoreFailed")),
        new("the replacement cannot start", () => At("Restoring") with { Replacement = Pod(Replacement, "node-b", "Pending", waiting: "RunContainerError"), SourceAgent = Source(handoff: HandoffStep.Committed) },
            d => RollsBack(d, "RestoreFailed")),
        new("the replacement was deleted before it ran", () => At("Restoring") with { Replacement = null, SourceAgent = Source(handoff: HandoffStep.Committed) }, d => RollsBack(d, "RestoreFailed")),
        new("the replacement's sandbox took too long (never frozen)", () => At("Checkpointing") with { Replacement = Pod(Replacement, "node-b", "Pending", created: Now.AddMinutes(-2)) },
            d => RollsBack(d, "TargetPreparationTimedOut")),
        new("the replacement runs: no failure counts any more", () => At("Restoring") with { Replacement = Running(), TargetNode = Node("node-b", ready: false), SourceAgent = Source(handoff: HandoffStep.Committed) },
            d => { Phase(d, "CuttingOver", "CuttingOver"); Is<MigrationAction.MarkSourceExpendable>(d); }),
        new("deleted in flight: rolled back", () => At("Checkpointing", deleting: true), d => RollsBack(d, "Deleted")),

        // ------------------------------------------------------------- the rollback ladder
        new("rollback: the replacement goes first", () => Rolling("Transferring") with { Replacement = Waiting() }, d => Assert.Equal(Replacement, Is<MigrationAction.DeletePod>(d).Name)),
        new("rollback after a commit: the target must refuse the restore", () => Rolling("Restoring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = Target(committed: true) },
            d => Is<MigrationAction.AbortRestore>(d)),
        new("rollback after a commit, target silent: wait", () => Rolling("Restoring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = Silent(10) }, d => StillRolling(d)),
        new("rollback after a commit, target silent too long: Failed, the source stays frozen", () => Rolling("Restoring", since: Now.AddMinutes(-2)) with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = Silent(120) },
            d => { Phase(d, "Failed", "SourceFrozenTargetUnreachable"); Assert.Equal(["node-a", "node-b"], d.Status.PendingCleanup); }),
        new("rollback before any commit, target silent: thaw at once", () => Rolling("Transferring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Sending), TargetAgent = Silent(60) },
            d => Assert.False(Is<MigrationAction.ResumeSource>(d).ReplacementRemoved)),
        new("rollback after a commit, the target already holds nothing: thaw, nothing to abort", () => Rolling("Restoring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = AgentView.KnowsNothing },
            d => Is<MigrationAction.ResumeSource>(d)),
        new("rollback, aborted on the target: thaw", () => Rolling("Restoring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = Target(committed: true, aborted: true) },
            d => Is<MigrationAction.ResumeSource>(d)),
        new("rollback, a restore began and its pod is gone: thaw, saying so", () => Rolling("Restoring") with { SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed), TargetAgent = Target(committed: true, began: true) },
            d => Assert.True(Is<MigrationAction.ResumeSource>(d).ReplacementRemoved)),
        new("rollback, the source's agent silent with the pod frozen: wait", () => Rolling("Transferring", frozen: true) with { SourceAgent = Silent(5), TargetAgent = AgentView.KnowsNothing }, d => StillRolling(d)),
        new("rollback, the source's agent silent, the pod never frozen: RolledBack, its images removed later", () => Rolling("Transferring") with { SourceAgent = Silent(5), TargetAgent = AgentView.KnowsNothing },
            d => { Phase(d, "RolledBack", "HandoffFailed"); Assert.Equal(["node-a"], d.Status.PendingCleanup); }),
        new("rollback, the source's agent silent too long with the pod frozen: Failed", () => Rolling("Transferring", since: Now.AddMinutes(-2), frozen: true) with { SourceAgent = Silent(120), TargetAgent = AgentView.KnowsNothing },
            d => Phase(d, "Failed", "SourceFrozenAgentUnreachable")),
        new("rollback, thawed: images removed on both nodes", () => Rolling("Transferring") with { SourceAgent = Source(MigrationPhase.Resumed), TargetAgent = Target() },
            d => Assert.Equal(["node-a", "node-b"], Is<MigrationAction.Cleanup>(d).Nodes)),
        new("rollback done: RolledBack, the pod told", () => Rolling("Transferring") with { SourceAgent = AgentView.KnowsNothing, TargetAgent = AgentView.KnowsNothing },
            d => { Phase(d, "RolledBack", "HandoffFailed"); Assert.Contains(d.Events, e => e.PodName == "db-0" && e.Reason == "MigrationRolledBack"); }),
        new("rollback done, the target's agent silent: RolledBack, its images removed later", () => Rolling("Transferring") with { SourceAgent = AgentView.KnowsNothing, TargetAgent = Silent(60) },
            d => { Phase(d, "RolledBack", "HandoffFailed"); Assert.Equal(["node-b"], d.Status.PendingCleanup); }),

        // ------------------------------------------------------------- a pod that keeps its name
        new("committed, the source not kept yet: keep it in the request", () => At("Restoring", keepsName: true) with { Replacement = null, SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.KeepSourcePod>(d)),
        new("kept: the source is retired", () => At("Restoring", keepsName: true, savedSource: true) with { Replacement = null, SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed) },
            d => { Nothing(d); Assert.True(d.Status.Is(ConditionTypes.SourceRetired)); }),
        new("retired: its processes ended", () => At("Restoring", keepsName: true, savedSource: true, retired: true) with { Replacement = null, SourceAgent = Source(MigrationPhase.Frozen, handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.FinishSource>(d)),
        new("retired and ended: its pod deleted", () => At("Restoring", keepsName: true, savedSource: true, retired: true) with { Replacement = null, SourceAgent = Source(MigrationPhase.Finished, handoff: HandoffStep.Committed) },
            d => Assert.Equal("db-0", Is<MigrationAction.DeletePod>(d).Name)),
        new("retired, the name free: the replacement made", () => At("Restoring", keepsName: true, savedSource: true, retired: true) with { NamedPod = null, Replacement = null, SourceAgent = Source(MigrationPhase.Finished, handoff: HandoffStep.Committed) },
            d => Is<MigrationAction.CreateReplacement>(d)),
        new("retired, and the replacement failed: restored on its own node (the images sent home)", () => Rolling("Restoring", keepsName: true, savedSource: true, retired: true) with
            {
                NamedPod = null, Replacement = null, SourceAgent = Source(MigrationPhase.Finished, handoff: HandoffStep.Committed, homeExpected: true), TargetAgent = Target(committed: true, aborted: true),
            },
            d => Assert.Equal("node-a", Is<MigrationAction.StartTransfer>(d).Node)),
    ];

    [Theory]
    [InlineData(PreCopyMethod.WriteTracking, "WriteProtect")]
    [InlineData(PreCopyMethod.KernelTracking, "SoftDirty")]
    [InlineData(PreCopyMethod.ContentComparison, "ContentComparison")]
    [InlineData(PreCopyMethod.Unspecified, null)]
    public void Status_memory_tracking_names_the_method_the_source_agent_reports(PreCopyMethod reported, string? status) =>
        Assert.Equal(status, MigrationDecisions.TrackingOf(reported));

    [Theory]
    [InlineData(false, true, true)] // a lazy final dump reads the tracker, and nothing restores from the source's images
    [InlineData(false, false, false)] // a plain final dump is compared with the last round
    [InlineData(true, true, false)] // a pod keeping its name is restored in place from the source's images if its replacement fails
    [InlineData(true, false, false)]
    public void The_source_gives_sent_rounds_back_only_after_a_lazy_final_dump_and_when_its_images_are_no_fallback(bool keepsName, bool finalLazy, bool release) =>
        Assert.Equal(release, MigrationDecisions.SourceMayReleaseRounds(keepsName, finalLazy));

    [Theory]
    [MemberData(nameof(Rows))]
    public void Decides(Row row)
    {
        ArgumentNullException.ThrowIfNull(row);
        var decision = MigrationDecisions.Decide(row.Facts(), Policy);

        row.Expect(decision);
    }

    [Fact]
    public void A_decision_never_changes_the_facts_it_was_given()
    {
        var facts = At("Transferring") with { SourceAgent = Source(handoff: HandoffStep.Committed) };
        var before = k8s.KubernetesJson.Serialize(facts.Request);

        var decision = MigrationDecisions.Decide(facts, Policy);

        Assert.Equal("Restoring", decision.Status.Phase);
        Assert.Equal(before, k8s.KubernetesJson.Serialize(facts.Request));
    }

    // ------------------------------------------------------------- builders

    private const string Replacement = "db-0-m0f3a9";

    private static MigrationFacts New(bool finalizer = true, bool deleting = false) => new()
    {
        Request = Request(null, finalizer, deleting),
        Now = Now,
        NamedPod = Pod("db-0", "node-a", "Running"),
    };

    private static MigrationFacts At(string phase, string mode = "Cold", bool deleting = false, bool traced = true, bool keepsName = false, bool savedSource = false,
        bool retired = false, bool expendable = false, DateTime? started = null, DateTime? phaseStarted = null)
    {
        var request = Request(phase, true, deleting, mode, traced, savedSource);
        var status = request.Status!;
        status.StartTime = started ?? Now.AddSeconds(-30);
        status.PhaseStartTime = phaseStarted ?? Now.AddSeconds(-5);
        if (keepsName)
        {
            status.SetCondition(ConditionTypes.KeepsName, "True", "StatefulSetPod", "keeps its name", 1, Now.AddSeconds(-30));
        }

        if (retired)
        {
            status.SetCondition(ConditionTypes.SourceRetired, "True", "NameHandedOver", "retired", 1, Now.AddSeconds(-2));
        }

        var source = Pod("db-0", "node-a", "Running");
        if (expendable)
        {
            source.Metadata.Annotations = new Dictionary<string, string> { [Annotations.PodDeletionCost] = int.MinValue.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        }

        return new MigrationFacts
        {
            Request = request,
            Now = Now,
            NamedPod = source,
            SourceNode = Node("node-a"),
            TargetNode = Node("node-b"),
            SourceAgent = Source(),
            TargetAgent = Target(),
        };
    }

    /// <summary>Admission decided the address is kept; the source agent reports whether the pod could keep it.</summary>
    private static MigrationFacts KeepingAddress(MigrationFacts facts, bool? spec, bool kept, string note)
    {
        facts.Request.Spec.KeepAddress = spec;
        facts.Request.Status!.SetCondition(ConditionTypes.KeepsAddress, "True", "NetworkMovesAddresses", "kept", 1, Now.AddSeconds(-30));
        var source = facts.SourceAgent.Migration!.Clone();
        source.KeepsAddress = kept;
        source.AddressNote = note;
        return facts with { SourceAgent = AgentView.Knows(source) };
    }

    /// <summary>Admitted to the CRI path: the target's agent holds nothing of it.</summary>
    private static MigrationFacts Cri(MigrationFacts facts)
    {
        facts.Request.Status!.CheckpointPath = CheckpointPaths.Cri;
        return facts with { TargetAgent = AgentView.KnowsNothing };
    }

    /// <summary>A source whose CRI handoff published the pod's one checkpoint image.</summary>
    private static AgentView Published(AgentView source)
    {
        var status = source.Migration!.Clone();
        status.CheckpointImages.Add(new CheckpointImage { Container = "main", Image = "registry.local/ck/default/db-0@sha256:" + new string('a', 64), Bytes = 1000 });
        return AgentView.Knows(status);
    }

    private static MigrationFacts Rolling(string phase, DateTime? since = null, bool keepsName = false, bool savedSource = false, bool retired = false, bool frozen = false)
    {
        var facts = At(phase, keepsName: keepsName, savedSource: savedSource, retired: retired);
        var status = facts.Request.Status!;
        status.Reason = "HandoffFailed";
        status.Message = "The handoff failed.";
        status.SetCondition(ConditionTypes.RollingBack, "True", "HandoffFailed", "The handoff failed.", 1, since ?? Now.AddSeconds(-1));
        if (frozen)
        {
            status.SetCondition(ConditionTypes.Frozen, "True", "FinalDump", "frozen", 1, Now.AddMinutes(-3));
        }

        return facts;
    }

    private static MigrationRequest Request(string? phase, bool finalizer, bool deleting, string mode = "Cold", bool traced = true, bool savedSource = false)
    {
        var annotations = new Dictionary<string, string>();
        if (traced)
        {
            annotations[Annotations.TraceContext] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        }

        if (savedSource)
        {
            annotations[Annotations.SourcePod] = k8s.KubernetesJson.Serialize(Pod("db-0", "node-a", "Running"));
        }

        return new MigrationRequest
        {
            Metadata = new V1ObjectMeta
            {
                Name = "move-db",
                NamespaceProperty = "default",
                Uid = Id,
                Generation = 1,
                Finalizers = finalizer ? [Finalizers.Cleanup] : null,
                DeletionTimestamp = deleting ? Now.AddSeconds(-1) : null,
                Annotations = annotations,
            },
            Spec = new MigrationRequestSpec { PodName = "db-0", TargetNode = "node-b", Mode = mode },
            Status = phase is null ? null : new MigrationRequestStatus { Phase = phase, SourceNode = "node-a", TargetNode = "node-b", ReplacementPod = Replacement },
        };
    }

    private static V1Pod Pod(string name, string node, string phase, string uid = "source-uid", string? waiting = null, DateTime? created = null, bool ours = false) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = "default",
            Uid = uid,
            CreationTimestamp = created ?? Now.AddSeconds(-3),
            Annotations = ours || name == Replacement ? new Dictionary<string, string> { [Annotations.RestoreFrom] = Id } : null,
        },
        Spec = new V1PodSpec { NodeName = node },
        Status = new V1PodStatus
        {
            Phase = phase,
            ContainerStatuses = waiting is null ? null : [new V1ContainerStatus { Name = "main", State = new V1ContainerState { Waiting = new V1ContainerStateWaiting { Reason = waiting } } }],
        },
    };

    private static V1Pod Waiting() => Pod(Replacement, "node-b", "Pending", uid: "replacement-uid");

    private static V1Pod Running(bool held = false)
    {
        var pod = Pod(Replacement, "node-b", "Running", uid: "replacement-uid");
        if (held)
        {
            pod.Metadata.Annotations![Annotations.HeldLabels] = "{\"app\":\"db\"}";
        }

        return pod;
    }

    private static V1Node Node(string name, bool ready = true) => new()
    {
        Metadata = new V1ObjectMeta { Name = name },
        Status = new V1NodeStatus { Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False" }] },
    };

    private static Operation Op(string kind, OperationState state, string reason = "", string message = "") => new() { Kind = kind, State = state, Reason = reason, Message = message };

    private static AgentView Source(MigrationPhase phase = MigrationPhase.Prepared, Operation? preCopy = null, bool converged = false, ulong sent = 0, ulong total = 0,
        HandoffStep handoff = HandoffStep.Unspecified, DateTime? frozenAt = null, bool homeExpected = false)
    {
        var status = new MigrationStatus
        {
            MigrationId = Id,
            Pod = new PodRef { Namespace = "default", Name = "db-0", Uid = "source-uid" },
            Phase = handoff >= HandoffStep.Dumping && phase == MigrationPhase.Prepared ? MigrationPhase.Frozen : phase,
            Operation = handoff != HandoffStep.Unspecified ? Op("Handoff", handoff == HandoffStep.Committed ? OperationState.Succeeded : OperationState.Running) : preCopy,
            PreCopy = new PreCopyProgress { Rounds = converged ? 2 : 1, Converged = converged, BytesSent = sent, BytesTotal = total },
            Handoff = new HandoffProgress
            {
                Step = handoff,
                FrozenUnixMillis = frozenAt is { } at ? new DateTimeOffset(at).ToUnixTimeMilliseconds() : handoff >= HandoffStep.Dumping ? new DateTimeOffset(Now.AddSeconds(-1)).ToUnixTimeMilliseconds() : 0,
            },
            FinalDump = handoff >= HandoffStep.Sending ? new FinalDumpResponse { StagedBytes = 50_000_000 } : null,
            Incoming = homeExpected ? new IncomingStatus { Expected = true } : null,
        };
        if (preCopy is not null && handoff != HandoffStep.Unspecified)
        {
            status.Operation = preCopy;
        }

        return AgentView.Knows(status);
    }

    /// <summary>A source that sent <paramref name="preCopy"/> and <paramref name="handoff"/> bytes, <paramref name="referenced"/> of them as page references.</summary>
    private static AgentView Sent(AgentView source, ulong preCopy, ulong handoff, ulong referenced)
    {
        source.Migration!.PreCopy.BytesSent = preCopy;
        source.Migration.Handoff.BytesSent = handoff;
        source.Migration.BytesReferenced = referenced;
        return source;
    }

    /// <summary>
    /// Mode Auto admitted where pages may stay on the source, its rounds ended (or still running) with
    /// <paramref name="lastRoundPages"/> found written in the last, having sent 200 MB in 2 s.
    /// </summary>
    private static MigrationFacts AutoRoundsEnded(ulong lastRoundPages, bool running = false)
    {
        var facts = At("Checkpointing", mode: MigrationModes.Auto);
        var choice = ModeChoice.AtAdmission(MigrationModes.Auto, CheckpointPaths.RuntimeClass, null, new PreCopyLimits().FrozenSendLimitMillis);
        facts.Request.Status!.Mode = choice.Mode;
        facts.Request.Status.SetCondition(ConditionTypes.ModeChosen, "Unknown", choice.Reason, choice.Message, 1, Now.AddSeconds(-30));
        var source = Source(preCopy: Op("PreCopy", running ? OperationState.Running : OperationState.Succeeded), converged: !running, sent: 200_000_000, total: 200_000_000);
        source.Migration!.PreCopy.LastRoundPages = lastRoundPages;
        source.Migration.PreCopy.RoundsMillis = 2_000;
        return facts with { SourceAgent = source };
    }

    /// <summary>The same facts once the decision they led to was written (the status it decided, as stored).</summary>
    private static MigrationFacts Settled(MigrationFacts facts)
    {
        var decided = MigrationDecisions.Decide(facts, Policy);
        facts.Request.Status = decided.Status;
        return facts;
    }

    /// <summary>Pre-copy running, its first round staged on the target after <paramref name="firstRoundMillis"/> and its second under way.</summary>
    private static MigrationFacts PreCopyAfterFirstRound(MigrationFacts facts, uint firstRoundMillis)
    {
        var source = Source(preCopy: Op("PreCopy", OperationState.Running), sent: 64, total: 64);
        source.Migration!.PreCopy.Rounds = 2;
        source.Migration.PreCopy.FirstRoundMillis = firstRoundMillis;
        return facts with { SourceAgent = source };
    }

    /// <summary>A source whose final dump left its memory to a lazy restore, <paramref name="pagesLeft"/> pages of it on the source (post-copy).</summary>
    private static AgentView LazySource(AgentView source, ulong pagesLeft, string container = "main")
    {
        source.Migration!.FinalDump ??= new FinalDumpResponse { StagedBytes = 5_000_000 };
        source.Migration.FinalDump.Containers.Add(new ContainerDump { ContainerName = container, LazyMemory = true, PagesLeftOnSource = pagesLeft });
        return source;
    }

    /// <summary>A target whose restore ran before its memory was in place: still filling (null), filled (""), or failed (why).</summary>
    private static AgentView LazyTarget(DateTime restoredAt, string? memoryError)
    {
        var view = Target(restoredAt: restoredAt);
        var restore = view.Incoming!.Restores[0];
        restore.LazyMemory = true;
        restore.MemoryFilled = memoryError == "";
        restore.MemoryError = memoryError ?? "";
        return view;
    }

    /// <summary><paramref name="facts"/> whose status already holds the restore time <paramref name="millis"/>, as an earlier pass set it.</summary>
    private static MigrationFacts RestoreReported(MigrationFacts facts, long millis)
    {
        facts.Request.Status!.RestoreMillis = millis;
        return facts;
    }

    /// <summary><paramref name="view"/> with a second container, "sidecar", restored at <paramref name="restoredAt"/> in <paramref name="restoreMillis"/> ms.</summary>
    private static AgentView SecondRestore(AgentView view, DateTime restoredAt, uint restoreMillis)
    {
        view.Incoming!.Restores.Add(new RestoreState
        {
            Container = "sidecar", Restored = true, RestoredUnixMillis = new DateTimeOffset(restoredAt).ToUnixTimeMilliseconds(), RestoreMillis = restoreMillis,
        });
        return view;
    }

    private static AgentView Target(bool waiting = false, bool committed = false, bool aborted = false, bool began = false, string? error = null, DateTime? restoredAt = null,
        uint restoreMillis = 0)
    {
        var incoming = new IncomingStatus { Expected = true, Staged = committed, Committed = committed, Aborted = aborted, RestoreBegan = began || restoredAt is not null };
        if (waiting || error is not null || restoredAt is not null)
        {
            incoming.Restores.Add(new RestoreState
            {
                Container = "main",
                Waiting = waiting,
                Error = error ?? "",
                Restored = restoredAt is not null,
                RestoredUnixMillis = restoredAt is { } at ? new DateTimeOffset(at).ToUnixTimeMilliseconds() : 0,
                RestoreMillis = restoreMillis,
            });
        }

        return AgentView.Knows(new MigrationStatus { MigrationId = Id, Incoming = incoming });
    }

    /// <summary>The facts of a member of group "ring" whose gate is <paramref name="gate"/>.</summary>
    private static MigrationFacts Member(MigrationFacts facts, string gate, string? step = null)
    {
        facts.Request.Metadata.Labels = new Dictionary<string, string> { [Labels.Group] = "ring" };
        facts.Request.Status!.GroupStep = step;
        return facts with { GroupGate = gate };
    }

    /// <summary>A source agent whose handoff is at a group hold (and was let through <paramref name="continued"/>).</summary>
    private static AgentView Held(AgentView view, string held, string continued = "")
    {
        var status = view.Migration!.Clone();
        status.Handoff.Held = held;
        status.Handoff.ContinuedThrough = continued;
        return AgentView.Knows(status);
    }

    /// <summary>A target whose restored replacement's network is held for the group (and released, when).</summary>
    private static AgentView Network(AgentView view, bool held, DateTime? releasedAt = null)
    {
        var status = view.Migration!.Clone();
        status.Incoming.NetworkHeld = held;
        status.Incoming.NetworkReleased = releasedAt is not null;
        status.Incoming.NetworkReleasedUnixMillis = releasedAt is { } at ? new DateTimeOffset(at).ToUnixTimeMilliseconds() : 0;
        return AgentView.Knows(status);
    }

    private static AgentView Silent(int seconds) => AgentView.Unreachable(Now.AddSeconds(-seconds), "connection refused");

    // ------------------------------------------------------------- expectations

    private static T Is<T>(Decision decision)
        where T : MigrationAction => Assert.IsType<T>(decision.Action);

    private static void Nothing(Decision decision) => Assert.IsType<MigrationAction.Nothing>(decision.Action);

    private static void Waits(Decision decision)
    {
        Nothing(decision);
        Assert.Equal(Policy.PollInterval, decision.RequeueAfter);
        Assert.False(decision.Status.Is(ConditionTypes.RollingBack), decision.Status.Message);
    }

    private static void StillRolling(Decision decision)
    {
        Nothing(decision);
        Assert.Equal(Policy.PollInterval, decision.RequeueAfter);
        Assert.True(decision.Status.Is(ConditionTypes.RollingBack));
        Assert.False(MigrationPhases.IsFinal(decision.Status.Phase));
    }

    private static void Phase(Decision decision, string phase, string reason) =>
        Assert.Equal((phase, reason), (decision.Status.Phase, decision.Status.Reason));

    private static void RollsBack(Decision decision, string reason)
    {
        Nothing(decision);
        var rolling = decision.Status.Condition(ConditionTypes.RollingBack);
        Assert.True(rolling?.Status == "True", $"not rolling back: {decision.Status.Reason}: {decision.Status.Message}");
        Assert.Equal(reason, rolling!.Reason);
        Assert.Equal(reason, decision.Status.Reason);
    }
}

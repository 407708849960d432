using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Migrate.Api;

/// <summary>podmigration.io/v1alpha1 MigrationRequest (crds/podmigration.io_migrationrequests.yaml).</summary>
public sealed class MigrationRequest : IKubernetesObject<V1ObjectMeta>
{
    public const string Group = "podmigration.io";
    public const string Version = "v1alpha1";
    public const string Plural = "migrationrequests";
    public const string KindName = "MigrationRequest";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{Group}/{Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public MigrationRequestSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public MigrationRequestStatus? Status { get; set; }
}

public sealed class MigrationRequestList : IKubernetesObject<V1ListMeta>, IItems<MigrationRequest>
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "MigrationRequestList";

    [JsonPropertyName("metadata")]
    public V1ListMeta Metadata { get; set; } = new();

    [JsonPropertyName("items")]
    public IList<MigrationRequest> Items { get; set; } = [];
}

public sealed class MigrationRequestSpec
{
    [JsonPropertyName("podName")]
    public string PodName { get; set; } = "";

    [JsonPropertyName("targetNode")]
    public string? TargetNode { get; set; }

    [JsonPropertyName("targetNodeSelector")]
    public IDictionary<string, string>? TargetNodeSelector { get; set; }

    [JsonPropertyName("avoidNodes")]
    public IList<string>? AvoidNodes { get; set; }

    /// <summary>How memory moves (<see cref="MigrationModes"/>); unset is Auto, which the operator resolves into status.mode.</summary>
    [JsonPropertyName("mode")]
    public string Mode { get; set; } = MigrationModes.Auto;

    [JsonPropertyName("preCopy")]
    public PreCopyLimits? PreCopy { get; set; }

    [JsonPropertyName("timeoutSeconds")]
    public int TimeoutSeconds { get; set; } = 600;

    /// <summary>
    /// Whether the replacement keeps the pod's IP address (and its established TCP connections
    /// survive): true requires it (refused where the network cannot move an address), false gives
    /// the replacement a new one, unset keeps it where both nodes' pod network can move it
    /// (docs/connections.md). What was decided is the condition KeepsAddress.
    /// </summary>
    [JsonPropertyName("keepAddress")]
    public bool? KeepAddress { get; set; }

    /// <summary>
    /// How the pod is checkpointed and restored (<see cref="CheckpointPaths"/>): by the agents' CRIU
    /// and the podmig runtime class, or by the container runtimes' own CRI checkpoint and restore.
    /// Unset is Auto. What was taken is status.checkpointPath.
    /// </summary>
    [JsonPropertyName("checkpointPath")]
    public string? CheckpointPath { get; set; }

    /// <summary>
    /// A group (gang) migration: these pods move as one consistent cut (docs/groups.md), each to
    /// its own targetNode or to one the operator picks. With <see cref="PodSelector"/> the
    /// group is the pods of the namespace whose labels match; podName is then left empty.
    /// </summary>
    [JsonPropertyName("pods")]
    public IList<GroupMemberSpec>? Pods { get; set; }

    /// <summary>A group given by labels: every running pod of the namespace carrying all of them (see <see cref="Pods"/>).</summary>
    [JsonPropertyName("podSelector")]
    public IDictionary<string, string>? PodSelector { get; set; }

    /// <summary>Whether this request moves a group of pods (its members are MigrationRequests of their own).</summary>
    [JsonIgnore]
    public bool IsGroup => Pods is { Count: > 0 } || PodSelector is { Count: > 0 };
}

/// <summary>One pod of a group migration.</summary>
public sealed class GroupMemberSpec
{
    [JsonPropertyName("podName")]
    public string PodName { get; set; } = "";

    /// <summary>Its target; unset: the group's targetNode, else the operator's choice.</summary>
    [JsonPropertyName("targetNode")]
    public string? TargetNode { get; set; }
}

/// <summary>
/// The gate of a group migration (status.group.gate): how far the group lets its members go.
/// Members prepare (pre-copy, replacement ready) on their own; then, each gate opened only once
/// every member reached it: all freeze and lock their network, all dump and stage their final
/// images on their targets, all commit and restore with the replacement's network still locked,
/// and all release it together. Until Release any failure rolls every member back.
/// </summary>
public static class GroupGates
{
    public const string Prepare = "Prepare";
    public const string Freeze = "Freeze";
    public const string Dump = "Dump";
    public const string Commit = "Commit";
    public const string Release = "Release";
    public const string RollBack = "RollBack";

    /// <summary>The forward order; RollBack stands outside it.</summary>
    private static readonly string[] Forward = [Prepare, Freeze, Dump, Commit, Release];

    public static IReadOnlyList<string> Order => Forward;

    /// <summary>Whether <paramref name="gate"/> is open at least as far as <paramref name="wanted"/> (never for RollBack).</summary>
    public static bool AtLeast(string? gate, string wanted) =>
        gate != RollBack && IndexOf(gate) >= IndexOf(wanted);

    private static int IndexOf(string? gate) => gate is null ? 0 : Math.Max(0, Array.IndexOf(Forward, gate));
}

/// <summary>How far a member of a group got (status.groupStep), each step reached by every member before the group's gate opens the next.</summary>
public static class GroupSteps
{
    /// <summary>Prepared: the replacement is ready and pre-copy (if any) converged; waiting for the group's freeze.</summary>
    public const string Ready = "Ready";

    /// <summary>Frozen with its network locked, nothing dumped yet.</summary>
    public const string Frozen = "Frozen";

    /// <summary>The final images are staged on the target, not committed.</summary>
    public const string Staged = "Staged";

    /// <summary>The replacement runs with all its memory, its network still locked.</summary>
    public const string Restored = "Restored";

    /// <summary>The replacement's network was released: the member is past the point of return.</summary>
    public const string Released = "Released";

    private static readonly string[] Forward = [Ready, Frozen, Staged, Restored, Released];

    public static IReadOnlyList<string> Order => Forward;

    /// <summary>Whether <paramref name="step"/> is at least <paramref name="wanted"/>.</summary>
    public static bool AtLeast(string? step, string wanted) =>
        step is not null && Array.IndexOf(Forward, step) >= Array.IndexOf(Forward, wanted) && Array.IndexOf(Forward, wanted) >= 0;
}

public sealed class PreCopyLimits
{
    [JsonPropertyName("maxRounds")]
    public int MaxRounds { get; set; } = 3;

    [JsonPropertyName("minShrinkPercent")]
    public int MinShrinkPercent { get; set; } = 10;

    /// <summary>
    /// Mode Auto: when the rounds end, what they left is sent while the pod is frozen if that is
    /// estimated to take at most this many milliseconds (at the rate the rounds themselves ran);
    /// above it, and where the pod may, it is left on the source for the running replacement to
    /// fetch (Hybrid). Ignored by the other modes.
    /// </summary>
    [JsonPropertyName("frozenSendLimitMillis")]
    public int FrozenSendLimitMillis { get; set; } = 2000;
}

public static class MigrationModes
{
    /// <summary>The default: the operator picks the mode (status.mode, condition ModeChosen) from the nodes, the pod and its pre-copy rounds.</summary>
    public const string Auto = "Auto";

    public const string Cold = "Cold";
    public const string PreCopy = "PreCopy";

    /// <summary>No rounds: frozen only for CRIU's dump and the restore; the replacement runs at once and fetches its memory from the frozen source.</summary>
    public const string PostCopy = "PostCopy";

    /// <summary>Pre-copy rounds, then post-copy for what was written since the last one.</summary>
    public const string Hybrid = "Hybrid";

    /// <summary>Whether a mode copies memory in rounds while the pod runs.</summary>
    public static bool HasRounds(string? mode) => mode is PreCopy or Hybrid;

    /// <summary>Whether a mode leaves memory on the source for the running replacement to fetch.</summary>
    public static bool LeavesMemoryOnSource(string? mode) => mode is PostCopy or Hybrid;
}

/// <summary>The values of spec.checkpointPath and status.checkpointPath.</summary>
public static class CheckpointPaths
{
    /// <summary>The operator chooses (today: RuntimeClass).</summary>
    public const string Auto = "Auto";

    /// <summary>The agents' CRIU dumps, restored by the podmig runtime class.</summary>
    public const string RuntimeClass = "RuntimeClass";

    /// <summary>The container runtime's own checkpoint (CRI CheckpointContainer) and restore from a checkpoint image.</summary>
    public const string Cri = "CRI";
}

/// <summary>The values of status.memoryRestore.</summary>
public static class MemoryRestoreModes
{
    /// <summary>The replacement's processes ran before their memory was in place (some container's, at least).</summary>
    public const string Lazy = "Lazy";

    /// <summary>All memory was in place before the processes ran.</summary>
    public const string Full = "Full";
}

/// <summary>The values of status.memoryTracking: how pre-copy found the pages written between rounds.</summary>
public static class MemoryTrackingMethods
{
    /// <summary>userfaultfd write-protection read by PAGEMAP_SCAN: only written pages were read.</summary>
    public const string WriteProtect = "WriteProtect";

    /// <summary>The kernel's soft-dirty bits, through CRIU's pre-dump.</summary>
    public const string SoftDirty = "SoftDirty";

    /// <summary>Every page read and compared with the round before.</summary>
    public const string ContentComparison = "ContentComparison";
}

/// <summary>The values of status.imageStaging: where the source node staged the migration's images until the target had them.</summary>
public static class ImageStagingMedia
{
    /// <summary>In memory (the agent's memory staging directory, a tmpfs): they fit the room the agent reckoned.</summary>
    public const string Memory = "Memory";

    /// <summary>On the node's disk (the agent's staging directory).</summary>
    public const string Disk = "Disk";
}

/// <summary>The phases of a request; the last three are final.</summary>
public static class MigrationPhases
{
    public const string Pending = "Pending";
    public const string Checkpointing = "Checkpointing";
    public const string Transferring = "Transferring";
    public const string Restoring = "Restoring";
    public const string CuttingOver = "CuttingOver";
    public const string Succeeded = "Succeeded";
    public const string Failed = "Failed";
    public const string RolledBack = "RolledBack";

    public static bool IsFinal(string? phase) => phase is Succeeded or Failed or RolledBack;

    /// <summary>The order a successful migration goes through its phases.</summary>
    private static readonly string[] ForwardOrder = [Pending, Checkpointing, Transferring, Restoring, CuttingOver, Succeeded];

    /// <summary>
    /// The phases a request must have passed through between two looks at it that saw
    /// <paramref name="seen"/> and then <paramref name="now"/>: those strictly between them when
    /// <paramref name="now"/> lies ahead on the successful path; none otherwise (a rollback or a
    /// failure may leave from any phase, so nothing is inferred for them).
    /// </summary>
    public static IReadOnlyList<string> Passed(string? seen, string now)
    {
        int from = seen is null ? -1 : Array.IndexOf(ForwardOrder, seen);
        int to = Array.IndexOf(ForwardOrder, now);
        return (seen is null || from >= 0) && to > from + 1 ? ForwardOrder[(from + 1)..to] : [];
    }
}

public sealed class MigrationRequestStatus
{
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [JsonPropertyName("conditions")]
    public IList<MigrationCondition> Conditions { get; set; } = [];

    [JsonPropertyName("sourceNode")]
    public string? SourceNode { get; set; }

    [JsonPropertyName("targetNode")]
    public string? TargetNode { get; set; }

    [JsonPropertyName("replacementPod")]
    public string? ReplacementPod { get; set; }

    [JsonPropertyName("startTime")]
    public DateTime? StartTime { get; set; }

    [JsonPropertyName("phaseStartTime")]
    public DateTime? PhaseStartTime { get; set; }

    [JsonPropertyName("completionTime")]
    public DateTime? CompletionTime { get; set; }

    [JsonPropertyName("downtimeMillis")]
    public long? DowntimeMillis { get; set; }

    /// <summary>
    /// The restore on the target, as its restore runtime measured it: from the first container's restore
    /// taking up the committed final images to the last container's processes running; with lazy memory
    /// they run before all of it is in place. A replacement made only after the commit (a pod keeping
    /// its name) has its making outside it (it is in <see cref="DowntimeMillis"/>). Not set on the CRI
    /// path (no agent restores there).
    /// </summary>
    [JsonPropertyName("restoreMillis")]
    public long? RestoreMillis { get; set; }

    /// <summary>How the replacement's memory was restored: "Lazy" (its processes ran first, their memory followed from the target's staged images) or "Full".</summary>
    [JsonPropertyName("memoryRestore")]
    public string? MemoryRestore { get; set; }

    /// <summary>The path the migration took (<see cref="CheckpointPaths.RuntimeClass"/> or <see cref="CheckpointPaths.Cri"/>), set at admission.</summary>
    [JsonPropertyName("checkpointPath")]
    public string? CheckpointPath { get; set; }

    /// <summary>
    /// The mode that runs: spec.mode, or what Auto resolved to (condition ModeChosen says why).
    /// Set at admission; Auto may turn PreCopy into Hybrid when its rounds end.
    /// </summary>
    [JsonPropertyName("mode")]
    public string? Mode { get; set; }

    /// <summary>Path CRI: the checkpoint image each container was published as, by digest.</summary>
    [JsonPropertyName("checkpointImages")]
    public IList<string>? CheckpointImages { get; set; }

    /// <summary>How pre-copy found the pages written between rounds (<see cref="MemoryTrackingMethods"/>); unset without rounds.</summary>
    [JsonPropertyName("memoryTracking")]
    public string? MemoryTracking { get; set; }

    /// <summary>Where the source node staged the images (<see cref="ImageStagingMedia"/>); unset before the checkpoint began.</summary>
    [JsonPropertyName("imageStaging")]
    public string? ImageStaging { get; set; }

    /// <summary>Post-copy: the bytes of memory the final dump left on the source, which the running replacement fetched from there.</summary>
    [JsonPropertyName("postCopyBytes")]
    public long? PostCopyBytes { get; set; }

    [JsonPropertyName("bytesTransferred")]
    public long? BytesTransferred { get; set; }

    [JsonPropertyName("imageBytes")]
    public long? ImageBytes { get; set; }

    [JsonPropertyName("preCopyRounds")]
    public int? PreCopyRounds { get; set; }

    /// <summary>The image transfer under way (or the last one), updated at most once a second while it runs.</summary>
    [JsonPropertyName("progress")]
    public MigrationProgress? Progress { get; set; }

    /// <summary>Nodes whose agent has not removed this migration's images yet (it did not answer when the migration ended); retried until it does.</summary>
    [JsonPropertyName("pendingCleanup")]
    public IList<string>? PendingCleanup { get; set; }

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }

    [JsonPropertyName("message")]
    public string? Message { get; set; }

    /// <summary>A member of a group: how far it got (<see cref="GroupSteps"/>).</summary>
    [JsonPropertyName("groupStep")]
    public string? GroupStep { get; set; }

    /// <summary>A group request: its gate and its members.</summary>
    [JsonPropertyName("group")]
    public GroupStatus? Group { get; set; }

    /// <summary>A deep copy (a decision changes its copy, never the observed status).</summary>
    public MigrationRequestStatus Copy() => KubernetesJson.Deserialize<MigrationRequestStatus>(KubernetesJson.Serialize(this));

    /// <summary>The condition of a type, or null.</summary>
    public MigrationCondition? Condition(string type) => Conditions.FirstOrDefault(c => c.Type == type);

    /// <summary>Whether a condition of the type is True.</summary>
    public bool Is(string type) => Condition(type)?.Status == "True";

    /// <summary>Sets a condition; its lastTransitionTime moves only when its status changes (the standard rule).</summary>
    public void SetCondition(string type, string value, string reason, string message, long? generation, DateTime now)
    {
        var condition = Conditions.FirstOrDefault(c => c.Type == type);
        if (condition is null)
        {
            condition = new MigrationCondition { Type = type, LastTransitionTime = now };
            Conditions.Add(condition);
        }
        else if (condition.Status != value)
        {
            condition.LastTransitionTime = now;
        }

        condition.Status = value;
        condition.Reason = reason;
        condition.Message = message;
        condition.ObservedGeneration = generation;
    }
}

/// <summary>How far the current image transfer has got.</summary>
public sealed class MigrationProgress
{
    /// <summary>The phase the transfer belongs to: Checkpointing (a pre-copy round), Transferring (the final images), Restoring (back to the source node).</summary>
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    /// <summary>Bytes of this transfer sent so far (what the target already held counts as sent).</summary>
    [JsonPropertyName("bytesSent")]
    public long BytesSent { get; set; }

    /// <summary>Bytes this transfer moves in all.</summary>
    [JsonPropertyName("bytesTotal")]
    public long BytesTotal { get; set; }

    [JsonPropertyName("updateTime")]
    public DateTime UpdateTime { get; set; }
}

/// <summary>A standard condition (metav1.Condition's shape).</summary>
public sealed class MigrationCondition
{
    [JsonPropertyName("type")]
    public string Type { get; set; } = "";

    [JsonPropertyName("status")]
    public string Status { get; set; } = "Unknown";

    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [JsonPropertyName("lastTransitionTime")]
    public DateTime LastTransitionTime { get; set; }

    [JsonPropertyName("reason")]
    public string Reason { get; set; } = "";

    [JsonPropertyName("message")]
    public string Message { get; set; } = "";
}

/// <summary>The state of a group migration (status.group of a request with pods or podSelector).</summary>
public sealed class GroupStatus
{
    /// <summary>How far the group lets its members go (<see cref="GroupGates"/>).</summary>
    [JsonPropertyName("gate")]
    public string? Gate { get; set; }

    [JsonPropertyName("members")]
    public IList<GroupMemberStatus> Members { get; set; } = [];

    /// <summary>When the first member was frozen.</summary>
    [JsonPropertyName("firstFrozenTime")]
    public DateTime? FirstFrozenTime { get; set; }

    /// <summary>When each gate opened (Freeze, Dump, Commit, Release, RollBack): where a group's time went.</summary>
    [JsonPropertyName("gateTimes")]
    public IDictionary<string, DateTime>? GateTimes { get; set; }

    /// <summary>When the gate opened to Release (every member restored).</summary>
    [JsonPropertyName("releaseTime")]
    public DateTime? ReleaseTime { get; set; }

    /// <summary>The longest any member was frozen, as its request reports it.</summary>
    [JsonPropertyName("downtimeMillis")]
    public long? DowntimeMillis { get; set; }

    /// <summary>From the first member frozen to the last one running again on its target (its network released).</summary>
    [JsonPropertyName("spreadMillis")]
    public long? SpreadMillis { get; set; }
}

public sealed class GroupMemberStatus
{
    [JsonPropertyName("podName")]
    public string PodName { get; set; } = "";

    /// <summary>The member's own MigrationRequest.</summary>
    [JsonPropertyName("request")]
    public string? Request { get; set; }

    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("step")]
    public string? Step { get; set; }

    [JsonPropertyName("sourceNode")]
    public string? SourceNode { get; set; }

    [JsonPropertyName("targetNode")]
    public string? TargetNode { get; set; }

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }

    [JsonPropertyName("message")]
    public string? Message { get; set; }

    /// <summary>When the member's processes were frozen.</summary>
    [JsonPropertyName("frozenTime")]
    public DateTime? FrozenTime { get; set; }

    /// <summary>How long its peers went without it: freeze to its network's release.</summary>
    [JsonPropertyName("downtimeMillis")]
    public long? DowntimeMillis { get; set; }
}

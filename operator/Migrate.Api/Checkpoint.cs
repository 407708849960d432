using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Migrate.Api;

/// <summary>
/// A Checkpoint (crds/podmigration.io_checkpoints.yaml): a checkpoint of a running pod's containers,
/// one consistent cut (frozen together, dumped, thawed), kept on the pod's node until the object is
/// deleted. The pod runs on.
/// </summary>
public sealed class Checkpoint : IKubernetesObject<V1ObjectMeta>
{
    public const string Plural = "checkpoints";
    public const string KindName = "Checkpoint";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public CheckpointSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public CheckpointStatus? Status { get; set; }
}

public sealed class CheckpointList : IKubernetesObject<V1ListMeta>, IItems<Checkpoint>
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "CheckpointList";

    [JsonPropertyName("metadata")]
    public V1ListMeta Metadata { get; set; } = new();

    [JsonPropertyName("items")]
    public IList<Checkpoint> Items { get; set; } = [];
}

public sealed class CheckpointSpec
{
    /// <summary>The pod to checkpoint, in the Checkpoint's namespace (empty for an import: <see cref="Source"/>).</summary>
    [JsonIgnore]
    public string PodName { get; set; } = "";

    /// <summary><see cref="PodName"/> as written: absent when empty (the schema tells a checkpoint from an import by it).</summary>
    [JsonPropertyName("podName")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PodNameField { get => PodName.Length == 0 ? null : PodName; set => PodName = value ?? ""; }

    /// <summary>The pod runs on after the checkpoint (the only mode so far; the schema refuses false).</summary>
    [JsonPropertyName("leaveRunning")]
    public bool LeaveRunning { get; set; } = true;

    /// <summary>Also write the checkpoint to the archive storage, where any node (or another cluster) can import it.</summary>
    [JsonPropertyName("export")]
    public CheckpointExportSpec? Export { get; set; }

    /// <summary>Instead of checkpointing a pod: import a checkpoint exported to the archive storage.</summary>
    [JsonPropertyName("source")]
    public CheckpointSource? Source { get; set; }

    /// <summary>For an import: the node to keep it on (unset: the operator's choice).</summary>
    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    /// <summary>
    /// Take it as a delta on the pod's latest Ready checkpoint on the same node, when there is one
    /// (the default): only the memory that changed since is written. False: a full checkpoint.
    /// </summary>
    [JsonPropertyName("incremental")]
    public bool Incremental { get; set; } = true;

    /// <summary>
    /// A group checkpoint of these pods of the namespace: one consistent cut across all of them
    /// (every member is frozen before any is thawed). Each pod gets a member Checkpoint,
    /// GROUP-POD, owned by this one.
    /// </summary>
    [JsonPropertyName("pods")]
    public IList<string>? Pods { get; set; }

    /// <summary>A group checkpoint of the Running pods of the namespace carrying all of these labels (resolved once, at admission).</summary>
    [JsonPropertyName("podSelector")]
    public IDictionary<string, string>? PodSelector { get; set; }

    /// <summary>Whether it names a group (<see cref="Pods"/> or <see cref="PodSelector"/>) rather than one pod.</summary>
    [JsonIgnore]
    public bool IsGroup => Pods is { Count: > 0 } || PodSelector is { Count: > 0 };
}

/// <summary>A group checkpoint's view of its members, and the decision its members' holds wait for.</summary>
public sealed class CheckpointGroupStatus
{
    /// <summary>Unset while members are dumped; Thaw once every member is held frozen (the cut stands); Abort once one failed.</summary>
    [JsonPropertyName("decision")]
    public string? Decision { get; set; }

    [JsonPropertyName("members")]
    public IList<CheckpointGroupMember> Members { get; set; } = [];

    /// <summary>From the first member frozen to the last thawed: how long the group's cut kept the group stopped at most.</summary>
    [JsonPropertyName("spreadMillis")]
    public long? SpreadMillis { get; set; }
}

public sealed class CheckpointGroupMember
{
    /// <summary>The member Checkpoint's name.</summary>
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [JsonPropertyName("podName")]
    public string PodName { get; set; } = "";

    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }
}

/// <summary>The earlier checkpoint a checkpoint is a delta on.</summary>
public sealed class CheckpointParent
{
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [JsonPropertyName("uid")]
    public string Uid { get; set; } = "";
}

public sealed class CheckpointExportSpec
{
    /// <summary>The export's directory, relative to the archive storage; unset: NAMESPACE/NAME.</summary>
    [JsonPropertyName("path")]
    public string? Path { get; set; }

    /// <summary>Keep the export when the Checkpoint is deleted (default: it goes with it).</summary>
    [JsonPropertyName("retain")]
    public bool Retain { get; set; }
}

public sealed class CheckpointSource
{
    /// <summary>The export's directory, relative to the archive storage.</summary>
    [JsonPropertyName("path")]
    public string Path { get; set; } = "";

    /// <summary>When set, the export's index.json must have this digest ("sha256:…").</summary>
    [JsonPropertyName("digest")]
    public string? Digest { get; set; }
}

/// <summary>A checkpoint in the archive storage.</summary>
public sealed class CheckpointArchiveStatus
{
    [JsonPropertyName("path")]
    public string Path { get; set; } = "";

    /// <summary>sha256 of the export's index.json, which names every other part by its digest.</summary>
    [JsonPropertyName("digest")]
    public string? Digest { get; set; }

    [JsonPropertyName("sizeBytes")]
    public long? SizeBytes { get; set; }

    /// <summary>How long writing (or reading) it took.</summary>
    [JsonPropertyName("millis")]
    public long? Millis { get; set; }
}

public static class CheckpointPhases
{
    public const string Pending = "Pending";
    public const string Checkpointing = "Checkpointing";
    public const string Ready = "Ready";
    public const string Failed = "Failed";

    public static bool IsFinal(string? phase) => phase is Ready or Failed;
}

public sealed class CheckpointStatus
{
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }

    [JsonPropertyName("message")]
    public string? Message { get; set; }

    /// <summary>The node the checkpoint was taken on, and where its images are kept.</summary>
    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    [JsonPropertyName("podUID")]
    public string? PodUid { get; set; }

    /// <summary>The pod checkpointed: spec.podName, or for an import the pod the export was taken of.</summary>
    [JsonPropertyName("podName")]
    public string? PodName { get; set; }

    /// <summary>When the pod was frozen for it: the state it holds is the pod's at this instant.</summary>
    [JsonPropertyName("checkpointTime")]
    public DateTime? CheckpointTime { get; set; }

    [JsonPropertyName("startTime")]
    public DateTime? StartTime { get; set; }

    [JsonPropertyName("completionTime")]
    public DateTime? CompletionTime { get; set; }

    /// <summary>How long the pod's processes were frozen (freeze to thaw).</summary>
    [JsonPropertyName("freezeMillis")]
    public long? FreezeMillis { get; set; }

    /// <summary>Bytes kept: images, writable layers, emptyDir contents.</summary>
    [JsonPropertyName("sizeBytes")]
    public long? SizeBytes { get; set; }

    /// <summary>Where the images are: node:directory.</summary>
    [JsonPropertyName("location")]
    public string? Location { get; set; }

    [JsonPropertyName("criuVersion")]
    public string? CriuVersion { get; set; }

    [JsonPropertyName("kernelVersion")]
    public string? KernelVersion { get; set; }

    [JsonPropertyName("containers")]
    public IList<CheckpointContainer>? Containers { get; set; }

    /// <summary>Where it was exported to (spec.export).</summary>
    [JsonPropertyName("export")]
    public CheckpointArchiveStatus? Export { get; set; }

    /// <summary>Where it was imported from (spec.source).</summary>
    [JsonPropertyName("importedFrom")]
    public CheckpointArchiveStatus? ImportedFrom { get; set; }

    /// <summary>
    /// The earlier checkpoint it is a delta on (chosen when it is admitted; cleared when the node
    /// took a full one instead, see <see cref="ChainNote"/>). Deleting that one later is safe:
    /// this one holds links to every image it needs.
    /// </summary>
    [JsonPropertyName("parent")]
    public CheckpointParent? Parent { get; set; }

    /// <summary>Checkpoints in its chain, itself included (1: a full checkpoint).</summary>
    [JsonPropertyName("chainLength")]
    public int? ChainLength { get; set; }

    /// <summary>Bytes only this checkpoint added (its size less what it shares with its chain).</summary>
    [JsonPropertyName("ownBytes")]
    public long? OwnBytes { get; set; }

    /// <summary>Why the node took a full checkpoint although a parent was chosen.</summary>
    [JsonPropertyName("chainNote")]
    public string? ChainNote { get; set; }

    /// <summary>A group member: dumped and held frozen until its group decides.</summary>
    [JsonPropertyName("held")]
    public bool? Held { get; set; }

    /// <summary>A group checkpoint: its members and the decision they wait for.</summary>
    [JsonPropertyName("group")]
    public CheckpointGroupStatus? Group { get; set; }
}

public sealed class CheckpointContainer
{
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [JsonPropertyName("image")]
    public string? Image { get; set; }

    /// <summary>sha256 over the container's kept files (each file's path, size and SHA-256).</summary>
    [JsonPropertyName("digest")]
    public string? Digest { get; set; }

    [JsonPropertyName("sizeBytes")]
    public long? SizeBytes { get; set; }
}

/// <summary>
/// A Restore (crds/podmigration.io_restores.yaml): a new pod made from a Checkpoint, on a node of
/// the user's or the operator's choice, whose processes resume as of the checkpoint. Each Restore
/// makes its own pod; the pod the checkpoint was taken of is not touched.
/// </summary>
public sealed class Restore : IKubernetesObject<V1ObjectMeta>
{
    public const string Plural = "restores";
    public const string KindName = "Restore";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public RestoreSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public RestoreStatus? Status { get; set; }
}

public sealed class RestoreList : IKubernetesObject<V1ListMeta>, IItems<Restore>
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "RestoreList";

    [JsonPropertyName("metadata")]
    public V1ListMeta Metadata { get; set; } = new();

    [JsonPropertyName("items")]
    public IList<Restore> Items { get; set; } = [];
}

public sealed class RestoreSpec
{
    /// <summary>The Checkpoint to restore, in the Restore's namespace.</summary>
    [JsonPropertyName("checkpointName")]
    public string CheckpointName { get; set; } = "";

    /// <summary>The node to restore on; unset: the checkpoint's own node if it can, else another that can.</summary>
    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    /// <summary>The new pod's name; unset: the Restore's name.</summary>
    [JsonPropertyName("podName")]
    public string? PodName { get; set; }

    /// <summary>The new pod carries the checkpointed pod's labels too (for a pod that replaces one that is gone, as after a node failure).</summary>
    [JsonPropertyName("keepLabels")]
    public bool KeepLabels { get; set; }
}

public static class RestorePhases
{
    public const string Pending = "Pending";
    public const string Transferring = "Transferring";
    public const string Restoring = "Restoring";
    public const string Succeeded = "Succeeded";
    public const string Failed = "Failed";

    public static bool IsFinal(string? phase) => phase is Succeeded or Failed;
}

public sealed class RestoreStatus
{
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }

    [JsonPropertyName("message")]
    public string? Message { get; set; }

    /// <summary>The node the checkpoint's images came from.</summary>
    [JsonPropertyName("sourceNode")]
    public string? SourceNode { get; set; }

    /// <summary>The node the pod was restored on.</summary>
    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    [JsonPropertyName("podName")]
    public string? PodName { get; set; }

    /// <summary>The checkpoint's time: the restored processes resume from the state they had then.</summary>
    [JsonPropertyName("checkpointTime")]
    public DateTime? CheckpointTime { get; set; }

    [JsonPropertyName("startTime")]
    public DateTime? StartTime { get; set; }

    [JsonPropertyName("phaseStartTime")]
    public DateTime? PhaseStartTime { get; set; }

    [JsonPropertyName("completionTime")]
    public DateTime? CompletionTime { get; set; }

    [JsonPropertyName("bytesTransferred")]
    public long? BytesTransferred { get; set; }

    /// <summary>How long the restore itself took on the node (images to running processes: from the first container's restore beginning to the last one's processes running).</summary>
    [JsonPropertyName("restoreMillis")]
    public long? RestoreMillis { get; set; }
}

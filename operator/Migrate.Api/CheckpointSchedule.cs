using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Migrate.Api;

/// <summary>
/// A CheckpointSchedule (crds/podmigration.io_checkpointschedules.yaml): Checkpoints of the
/// namespace's Running pods that match a selector, one per pod every interval, and the retention
/// that removes old ones.
/// </summary>
public sealed class CheckpointSchedule : IKubernetesObject<V1ObjectMeta>
{
    public const string Plural = "checkpointschedules";
    public const string KindName = "CheckpointSchedule";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public CheckpointScheduleSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public CheckpointScheduleStatus? Status { get; set; }
}

public sealed class CheckpointScheduleList : IKubernetesObject<V1ListMeta>, IItems<CheckpointSchedule>
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "CheckpointScheduleList";

    [JsonPropertyName("metadata")]
    public V1ListMeta Metadata { get; set; } = new();

    [JsonPropertyName("items")]
    public IList<CheckpointSchedule> Items { get; set; } = [];
}

public sealed class CheckpointScheduleSpec
{
    /// <summary>The pods (in the schedule's namespace) whose labels match.</summary>
    [JsonPropertyName("selector")]
    public V1LabelSelector Selector { get; set; } = new();

    /// <summary>Seconds between two checkpoints of one pod.</summary>
    [JsonPropertyName("intervalSeconds")]
    public int IntervalSeconds { get; set; } = 3600;

    [JsonPropertyName("retention")]
    public CheckpointRetention Retention { get; set; } = new();

    /// <summary>No new checkpoints while true (retention still applies).</summary>
    [JsonPropertyName("suspend")]
    public bool Suspend { get; set; }

    /// <summary>Export every checkpoint to the archive storage (Checkpoint spec.export; implied by <see cref="RecoverOnNodeFailure"/>).</summary>
    [JsonPropertyName("export")]
    public bool Export { get; set; }

    /// <summary>
    /// When a pod's node is NotReady (or deleted) for longer than <see cref="NodeFailureGraceSeconds"/>,
    /// restore the pod on another node from its newest exported checkpoint, once, and fence the old copy.
    /// </summary>
    [JsonPropertyName("recoverOnNodeFailure")]
    public bool RecoverOnNodeFailure { get; set; }

    [JsonPropertyName("nodeFailureGraceSeconds")]
    public int NodeFailureGraceSeconds { get; set; } = 60;
}

/// <summary>
/// What is kept of each pod's scheduled checkpoints. Pinned checkpoints (label
/// podmigration.io/pinned=true) are always kept and count toward none of the limits; the newest
/// Ready checkpoint of a pod is always kept.
/// </summary>
public sealed class CheckpointRetention
{
    /// <summary>At most this many (unpinned, Ready) checkpoints per pod.</summary>
    [JsonPropertyName("maxCount")]
    public int? MaxCount { get; set; }

    /// <summary>Checkpoints older than this are removed.</summary>
    [JsonPropertyName("maxAgeSeconds")]
    public long? MaxAgeSeconds { get; set; }

    /// <summary>The pod's checkpoints may hold at most this many bytes together (oldest removed first).</summary>
    [JsonPropertyName("maxTotalBytes")]
    public long? MaxTotalBytes { get; set; }

    /// <summary>Limits over all the schedule's checkpoints in its namespace, every pod together (applied after the per-pod ones).</summary>
    [JsonPropertyName("namespace")]
    public NamespaceRetention? Namespace { get; set; }
}

/// <summary>Limits over all of a schedule's checkpoints in its namespace: the oldest go first, but each pod keeps its newest Ready one.</summary>
public sealed class NamespaceRetention
{
    [JsonPropertyName("maxCount")]
    public int? MaxCount { get; set; }

    [JsonPropertyName("maxTotalBytes")]
    public long? MaxTotalBytes { get; set; }
}

public sealed class CheckpointScheduleStatus
{
    [JsonPropertyName("lastCheckpointTime")]
    public DateTime? LastCheckpointTime { get; set; }

    /// <summary>Checkpoints of the schedule that exist now.</summary>
    [JsonPropertyName("checkpoints")]
    public int Checkpoints { get; set; }

    /// <summary>Bytes they hold.</summary>
    [JsonPropertyName("totalBytes")]
    public long TotalBytes { get; set; }

    /// <summary>Checkpoints the retention removed since the schedule was made.</summary>
    [JsonPropertyName("removed")]
    public int Removed { get; set; }

    /// <summary>Pods restored on another node after their node failed, since the schedule was made.</summary>
    [JsonPropertyName("recoveries")]
    public int Recoveries { get; set; }

    [JsonPropertyName("message")]
    public string? Message { get; set; }
}

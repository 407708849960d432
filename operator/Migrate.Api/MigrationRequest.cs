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

    [JsonPropertyName("mode")]
    public string Mode { get; set; } = MigrationModes.PreCopy;

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
}

public sealed class PreCopyLimits
{
    [JsonPropertyName("maxRounds")]
    public int MaxRounds { get; set; } = 3;

    [JsonPropertyName("minShrinkPercent")]
    public int MinShrinkPercent { get; set; } = 10;
}

public static class MigrationModes
{
    public const string Cold = "Cold";
    public const string PreCopy = "PreCopy";
}

/// <summary>The values of status.memoryRestore.</summary>
public static class MemoryRestoreModes
{
    /// <summary>The replacement's processes ran before their memory was in place (some container's, at least).</summary>
    public const string Lazy = "Lazy";

    /// <summary>All memory was in place before the processes ran.</summary>
    public const string Full = "Full";
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

    /// <summary>How the replacement's memory was restored: "Lazy" (its processes ran first, their memory followed from the target's staged images) or "Full".</summary>
    [JsonPropertyName("memoryRestore")]
    public string? MemoryRestore { get; set; }

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

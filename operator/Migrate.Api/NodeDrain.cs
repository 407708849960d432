using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Migrate.Api;

/// <summary>A NodeDrain (crds/podmigration.io_nodedrains.yaml): empty a node, migrating the pods that opted in.</summary>
public sealed class NodeDrain : IKubernetesObject<V1ObjectMeta>
{
    public const string Plural = "nodedrains";
    public const string KindName = "NodeDrain";


    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public NodeDrainSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public NodeDrainStatus? Status { get; set; }
}

public sealed class NodeDrainList : IKubernetesObject<V1ListMeta>, IItems<NodeDrain>
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = $"{MigrationRequest.Group}/{MigrationRequest.Version}";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "NodeDrainList";

    [JsonPropertyName("metadata")]
    public V1ListMeta Metadata { get; set; } = new();

    [JsonPropertyName("items")]
    public IList<NodeDrain> Items { get; set; } = [];
}

public sealed class NodeDrainSpec
{
    [JsonPropertyName("nodeName")]
    public string NodeName { get; set; } = "";

    [JsonPropertyName("reason")]
    public string? Reason { get; set; }

    [JsonPropertyName("targetNodeSelector")]
    public IDictionary<string, string>? TargetNodeSelector { get; set; }

    [JsonPropertyName("maxParallel")]
    public int MaxParallel { get; set; } = 2;

    [JsonPropertyName("maxAttempts")]
    public int MaxAttempts { get; set; } = 3;
}

public sealed class NodeDrainStatus
{
    public const string Draining = "Draining";
    public const string Blocked = "Blocked";
    public const string Drained = "Drained";

    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [JsonPropertyName("migrated")]
    public int Migrated { get; set; }

    [JsonPropertyName("evicted")]
    public int Evicted { get; set; }

    [JsonPropertyName("failed")]
    public int Failed { get; set; }

    [JsonPropertyName("remaining")]
    public int Remaining { get; set; }

    [JsonPropertyName("blockingPods")]
    public IList<BlockingPod> BlockingPods { get; set; } = [];

    [JsonPropertyName("message")]
    public string? Message { get; set; }

    [JsonPropertyName("startTime")]
    public DateTime? StartTime { get; set; }

    [JsonPropertyName("completionTime")]
    public DateTime? CompletionTime { get; set; }
}

public sealed record BlockingPod(
    [property: JsonPropertyName("namespace")] string Namespace,
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("reason")] string Reason);

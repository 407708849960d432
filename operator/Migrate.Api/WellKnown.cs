namespace Migrate.Api;

/// <summary>
/// Every label, annotation and finalizer key the project reads or writes. All live under the API
/// group's domain, <c>podmigration.io/</c>. Releases up to 0.1 wrote some of them under
/// <c>podmig.io/</c>; those old keys are still read (never written) until 0.3, through
/// <see cref="Keys.Get"/>, so objects labelled by users or written by older agents keep working.
/// </summary>
public static class Keys
{
    public const string Domain = "podmigration.io/";

    /// <summary>The domain of release 0.1's keys, read during the deprecation period.</summary>
    public const string DeprecatedDomain = "podmig.io/";

    /// <summary>The deprecated spelling of a key under <see cref="Domain"/>, or null for keys that never had one.</summary>
    public static string? Deprecated(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return key.StartsWith(Domain, StringComparison.Ordinal) && DeprecatedKeys.Contains(key) ? DeprecatedDomain + key[Domain.Length..] : null;
    }

    /// <summary>A key's value from labels or annotations: the current key first, then its deprecated spelling.</summary>
    public static string? Get(IDictionary<string, string>? map, string key)
    {
        if (map is null)
        {
            return null;
        }

        if (map.TryGetValue(key, out var value))
        {
            return value;
        }

        return Deprecated(key) is { } old && map.TryGetValue(old, out var oldValue) ? oldValue : null;
    }

    /// <summary>Whether a key belongs to the project (either domain): such pod annotations reach the restore runtime.</summary>
    public static bool IsOurs(string key) =>
        key is not null && (key.StartsWith(Domain, StringComparison.Ordinal) || key.StartsWith(DeprecatedDomain, StringComparison.Ordinal));

    private static readonly HashSet<string> DeprecatedKeys = new(StringComparer.Ordinal)
    {
        Annotations.RestoreFrom, Annotations.MigratedFrom, Annotations.HeldLabels, Annotations.HeldOwnerReferences, Annotations.SourcePod,
        Annotations.TraceContext, Annotations.AgentEndpoint, Annotations.Node, Labels.ReplacementOf, Labels.KeepName,
    };
}

/// <summary>Labels the project sets or reads.</summary>
public static class Labels
{
    /// <summary>On a pod or its namespace, set by users: "true" means the pod is migrated, not evicted, when its node is drained.</summary>
    public const string Migrate = Keys.Domain + "migrate";

    /// <summary>On a StatefulSet's pod, set by users: "true" lets the pod move under its own name (the replacement takes it).</summary>
    public const string KeepName = Keys.Domain + "keep-name";

    /// <summary>On a replacement pod until cut-over: the source pod's name (its own labels wait in <see cref="Annotations.HeldLabels"/>).</summary>
    public const string ReplacementOf = Keys.Domain + "replacement-of";

    /// <summary>On the MigrationRequests a NodeDrain creates: the drain's name.</summary>
    public const string Drain = Keys.Domain + "drain";

    /// <summary>On a member MigrationRequest or Checkpoint: the group request or group Checkpoint it belongs to (by name, in its namespace).</summary>
    public const string Group = Keys.Domain + "group";

    /// <summary>On pods, set by users: pods of a namespace with the same value move together when a drain moves one of them (a group request, docs/groups.md).</summary>
    public const string MigrationGroup = Keys.Domain + "migration-group";

    /// <summary>On the MigrationRequests the eviction webhook creates.</summary>
    public const string Trigger = Keys.Domain + "trigger";

    /// <summary>On the Checkpoints a CheckpointSchedule creates: the schedule's name.</summary>
    public const string Schedule = Keys.Domain + "schedule";

    /// <summary>On the Checkpoints a CheckpointSchedule creates: the pod's name.</summary>
    public const string Pod = Keys.Domain + "pod";

    /// <summary>On a Checkpoint, set by users: "true" keeps it whatever the retention says.</summary>
    public const string Pinned = Keys.Domain + "pinned";

    /// <summary>On a pod a Restore made: the Restore's name.</summary>
    public const string Restore = Keys.Domain + "restore";

    /// <summary>On a pod a Restore made: the Checkpoint it was restored from.</summary>
    public const string RestoredFrom = Keys.Domain + "restored-from";

    /// <summary>On the Checkpoint and Restore that recover a pod after its node failed: the failed pod's UID.</summary>
    public const string Recovers = Keys.Domain + "recovers";
}

/// <summary>Annotations the project sets or reads.</summary>
public static class Annotations
{
    /// <summary>On a Node: the UIDs (comma-separated) of pods restored elsewhere after the node failed; its agent removes what it still has of them.</summary>
    public const string FencedPods = Keys.Domain + "fenced-pods";

    /// <summary>On a replacement pod: the migration whose staged images its containers are restored from (read by the restore runtime).</summary>
    public const string RestoreFrom = Keys.Domain + "restore-from";

    /// <summary>On a replacement pod: source pod@source node.</summary>
    public const string MigratedFrom = Keys.Domain + "migrated-from";

    /// <summary>On a replacement pod whose migration keeps the pod's address: the address its network must give it (podmig-ipam honours it only beside <see cref="RestoreFrom"/>).</summary>
    public const string PinnedAddress = Keys.Domain + "pinned-address";

    /// <summary>The operator's signature on <see cref="PinnedAddress"/> (<see cref="PinToken"/>): the node's IPAM honours no pin without it.</summary>
    public const string PinnedAddressToken = Keys.Domain + "pinned-address-token";

    /// <summary>On a replacement pod until cut-over: the source's labels, as JSON.</summary>
    public const string HeldLabels = Keys.Domain + "held-labels";

    /// <summary>On a replacement pod until cut-over: the source's owner references, as JSON.</summary>
    public const string HeldOwnerReferences = Keys.Domain + "held-owner-references";

    /// <summary>On a MigrationRequest: the source pod as it was, kept because a pod that keeps its name is deleted before its replacement exists.</summary>
    public const string SourcePod = Keys.Domain + "source-pod";

    /// <summary>On a MigrationRequest: the W3C traceparent of the migration's root span.</summary>
    public const string TraceContext = Keys.Domain + "trace-context";

    /// <summary>On a Node, written by its agent: host:port where the agent serves gRPC.</summary>
    public const string AgentEndpoint = Keys.Domain + "agent-endpoint";

    /// <summary>On an agent's certificate Secret: the node it belongs to.</summary>
    public const string Node = Keys.Domain + "node";

    /// <summary>On a Node: the NodeDrain that cordoned it (and uncordons it when deleted).</summary>
    public const string CordonedBy = Keys.Domain + "cordoned-by";

    /// <summary>On a pod whose eviction-triggered migration was cancelled: its evictions pass from then on.</summary>
    public const string EvictionMigrationCancelled = Keys.Domain + "eviction-migration-cancelled";

    /// <summary>The ReplicaSet controller removes the pod with the lowest cost first when it has one too many (Kubernetes' own key).</summary>
    public const string PodDeletionCost = "controller.kubernetes.io/pod-deletion-cost";
}

/// <summary>Finalizers the operator puts on its resources.</summary>
public static class Finalizers
{
    /// <summary>On a MigrationRequest: an in-flight migration is rolled back (or finished) and its images removed before the request goes.</summary>
    public const string Cleanup = Keys.Domain + "cleanup";

    /// <summary>On a NodeDrain: the node it cordoned is uncordoned before the drain goes.</summary>
    public const string Uncordon = Keys.Domain + "uncordon";
}

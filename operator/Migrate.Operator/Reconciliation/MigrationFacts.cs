using k8s.Models;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// What the operator observed of one node agent for one migration, when it last asked: the agent's
/// report, or that the agent knows nothing of the migration, or that it did not answer (and since
/// when it has not).
/// </summary>
public sealed record AgentView(bool Reachable, MigrationStatus? Migration, DateTime? UnreachableSince = null, string? Error = null)
{
    /// <summary>No node, or no agent on it, was asked.</summary>
    public static AgentView None { get; } = new(false, null, null, "no agent");

    public static AgentView Knows(MigrationStatus status) => new(true, status);

    /// <summary>The agent answered that it knows nothing of the migration.</summary>
    public static AgentView KnowsNothing { get; } = new(true, null);

    public static AgentView Unreachable(DateTime since, string error) => new(false, null, since, error);

    public IncomingStatus? Incoming => Migration?.Incoming;

    public Operation? Operation => Migration?.Operation;

    /// <summary>How long the agent has not answered, as of <paramref name="now"/>.</summary>
    public TimeSpan Silence(DateTime now) => Reachable || UnreachableSince is not { } since ? TimeSpan.Zero : now - since;
}

/// <summary>
/// Everything one pass over a MigrationRequest decides on, gathered before anything is decided:
/// the request, its pods and nodes as the informers' caches hold them, what the two agents report,
/// how many migrations are in flight, and (for a request not yet admitted) the admission's verdict.
/// </summary>
public sealed record MigrationFacts
{
    public required MigrationRequest Request { get; init; }

    public required DateTime Now { get; init; }

    /// <summary>The pod the request names, as it is now (null: no pod of that name). For a pod that keeps its name this may be the replacement.</summary>
    public V1Pod? NamedPod { get; init; }

    /// <summary>The replacement pod (by its deterministic name), if it exists and carries this migration's restore annotation.</summary>
    public V1Pod? Replacement { get; init; }

    /// <summary>A pod holding the replacement's name that is not this migration's (null for most requests).</summary>
    public V1Pod? ForeignNameHolder { get; init; }

    public V1Node? SourceNode { get; init; }

    public V1Node? TargetNode { get; init; }

    public AgentView SourceAgent { get; init; } = AgentView.None;

    public AgentView TargetAgent { get; init; } = AgentView.None;

    /// <summary>Other migrations in flight, cluster-wide.</summary>
    public int InFlight { get; init; }

    /// <summary>Other migrations in flight out of this request's source node.</summary>
    public int OutboundFromSource { get; init; }

    /// <summary>Other migrations in flight into this request's target node.</summary>
    public int InboundToTarget { get; init; }

    /// <summary>The admission's verdict, for a request not admitted yet.</summary>
    public Validation? Admission { get; init; }

    /// <summary>A member of a group: its group's gate (<see cref="GroupGates"/>; RollBack when the group request is gone). Null for a request of its own.</summary>
    public string? GroupGate { get; init; }

    public bool IsGroupMember => GroupGate is not null;

    public MigrationRequestStatus Status => Request.Status ?? new MigrationRequestStatus();

    public string MigrationId => Request.Metadata.Uid;

    public bool KeepsName => MigrationExecutor.KeepsName(Request);

    /// <summary>The source pod, while it is still the pod the request was admitted for (not our replacement under the same name).</summary>
    public V1Pod? SourcePod => NamedPod is { } pod && !IsOurs(pod) ? pod : null;

    public bool IsOurs(V1Pod pod) => Keys.Get(pod?.Metadata.Annotations, Annotations.RestoreFrom) == MigrationId;
}

/// <summary>The knobs of the decisions: limits and the time each wait may take.</summary>
public sealed record MigrationPolicy
{
    public int MaxConcurrentMigrations { get; init; } = 5;

    public int MaxOutboundPerNode { get; init; } = 2;

    public int MaxInboundPerNode { get; init; } = 2;

    /// <summary>How long Checkpointing, Transferring and Restoring may each take.</summary>
    public TimeSpan PhaseTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How long an agent may not answer before the migration gives up on it.</summary>
    public TimeSpan AgentGrace { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>How long the replacement's sandbox may take to be ready for the restore (the pod is still running meanwhile).</summary>
    public TimeSpan PreparationTimeout { get; init; } = TimeSpan.FromSeconds(90);

    /// <summary>
    /// How long at most the rounds left of a pre-copy may be expected to take for the replacement pod
    /// to be made during them (<see cref="MigrationDecisions.PrepareDuringPreCopy"/>): well within
    /// podmig-runc's 100 s wait for the commit.
    /// </summary>
    public TimeSpan ReplacementWaitBudget { get; init; } = TimeSpan.FromSeconds(45);

    /// <summary>
    /// The least rate, in bytes per second, at which a first pre-copy round is assumed to read and
    /// send the pod's memory before its transfer shows a rate of its own
    /// (<see cref="MigrationDecisions.FirstRoundEstimateMillis"/>): 50 MB/s, a fifth of what this
    /// project's benchmark machine does, or the operator's per-migration bandwidth limit when lower.
    /// </summary>
    public double FirstRoundFloorBytesPerSecond { get; init; } = 50e6;

    /// <summary>How long a rollback waits for an agent it needs before it ends the request anyway.</summary>
    public TimeSpan RollbackGrace { get; init; } = TimeSpan.FromSeconds(45);

    /// <summary>How often at most the transfer progress is written into the status.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How soon a request is looked at again while an agent works (agents' reports wake it sooner).</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(1);
}

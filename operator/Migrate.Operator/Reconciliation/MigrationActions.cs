namespace Migrate.Operator.Reconciliation;

/// <summary>
/// The one side effect a pass over a MigrationRequest makes (besides writing its status). Every
/// action is idempotent: carried out twice (an operator restarted in between, a lost answer), it
/// does no more than once.
/// </summary>
public abstract record MigrationAction
{
    public static readonly MigrationAction None = new Nothing();

    /// <summary>Nothing to do: wait for the next observation.</summary>
    public sealed record Nothing : MigrationAction;

    /// <summary>The operator's finalizer, before anything can be staged (deleting the request then always cleans up).</summary>
    public sealed record AddFinalizer : MigrationAction;

    /// <summary>A deleted request whose migration is over may go.</summary>
    public sealed record RemoveFinalizer : MigrationAction;

    /// <summary>The migration's root span, its context kept in the request's annotation.</summary>
    public sealed record StartTrace : MigrationAction;

    /// <summary>The source agent finds the pod and checks it can move (nothing frozen).</summary>
    public sealed record BeginCheckpoint : MigrationAction;

    /// <summary>A node's agent is told to take images from the source (with a token for them).</summary>
    public sealed record ExpectImages(string Node) : MigrationAction;

    /// <summary>The source agent starts the pre-copy rounds, each sent to the target as taken.</summary>
    public sealed record StartPreCopy : MigrationAction;

    /// <summary>The replacement pod is created on a node (it waits there, ready, for the images to be committed).</summary>
    public sealed record CreateReplacement(string Node) : MigrationAction;

    /// <summary>The source agent freezes the pod, dumps, sends and commits the final images.</summary>
    public sealed record StartHandoff : MigrationAction;

    /// <summary>A group member's source agent lets its handoff past a hold (GroupHolds.Dump or Commit).</summary>
    public sealed record ContinueHandoff(string Through) : MigrationAction;

    /// <summary>A group member's target agent lifts the lock its restored replacement was held under.</summary>
    public sealed record ReleaseNetwork : MigrationAction;

    /// <summary>The source agent sends what it staged to a node and commits it there (a pod that kept its name, restored on its own node).</summary>
    public sealed record StartTransfer(string Node) : MigrationAction;

    /// <summary>For a pod that keeps its name: the source pod is kept in the request before it is deleted.</summary>
    public sealed record KeepSourcePod : MigrationAction;

    /// <summary>The source agent ends the frozen processes for good.</summary>
    public sealed record FinishSource : MigrationAction;

    /// <summary>The source pod gets the lowest pod-deletion cost (its owner removes it first, should it see two pods).</summary>
    public sealed record MarkSourceExpendable : MigrationAction;

    /// <summary>The replacement takes the source's labels and owner references.</summary>
    public sealed record HandOverIdentity : MigrationAction;

    /// <summary>This very pod (its UID) is deleted at once.</summary>
    public sealed record DeletePod(string Name, string Uid) : MigrationAction;

    /// <summary>A node's agent lets no restore of the migration begin.</summary>
    public sealed record AbortRestore(string Node) : MigrationAction;

    /// <summary>The source agent thaws the pod.</summary>
    public sealed record ResumeSource(bool ReplacementRemoved) : MigrationAction;

    /// <summary>Each node's agent removes the migration's images (the nodes at once).</summary>
    public sealed record Cleanup(IReadOnlyList<string> Nodes) : MigrationAction
    {
        protected override bool PrintMembers(System.Text.StringBuilder builder)
        {
            ArgumentNullException.ThrowIfNull(builder);
            builder.Append("Nodes = ").AppendJoin(", ", Nodes);
            return true;
        }
    }
}

/// <summary>An event the pass records: on the request, or on a pod of the migration.</summary>
public sealed record EventNote(string Type, string Reason, string Message, string? PodName = null);

/// <summary>
/// What a pass decided: one action, the status as it must be written (the executor writes it only
/// when it differs from the stored one), when to look again without a change, and events.
/// </summary>
public sealed record Decision(MigrationAction Action, MigrationRequestStatus Status, TimeSpan? RequeueAfter, IReadOnlyList<EventNote> Events);

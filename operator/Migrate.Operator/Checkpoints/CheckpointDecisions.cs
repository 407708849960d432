using k8s.Models;
using Migrate.Agent.Contracts.Groups;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>What the operator saw of the agent that keeps (or takes) a checkpoint, when it last asked.</summary>
public sealed record KeptView(bool Reachable, KeptCheckpoint? Kept, DateTime? UnreachableSince = null, string? Error = null)
{
    public static KeptView None { get; } = new(false, null, null, "no agent");

    /// <summary>The agent answered that it neither keeps nor takes the checkpoint.</summary>
    public static KeptView KnowsNothing { get; } = new(true, null);

    public TimeSpan Silence(DateTime now) => Reachable || UnreachableSince is not { } since ? TimeSpan.Zero : now - since;
}

/// <summary>Everything one pass over a Checkpoint decides on.</summary>
public sealed record CheckpointFacts
{
    public required Checkpoint Checkpoint { get; init; }

    public required DateTime Now { get; init; }

    /// <summary>The pod the checkpoint names (null: none of that name).</summary>
    public V1Pod? Pod { get; init; }

    /// <summary>The node the checkpoint is (to be) kept on, if it exists (for an import not yet started: the node chosen, see <see cref="CheckpointDecisions.ImportNode"/>).</summary>
    public V1Node? Node { get; init; }

    public KeptView Agent { get; init; } = KeptView.None;

    /// <summary>Another Ready node with an agent (any can reach the shared archive storage), if one exists.</summary>
    public string? ArchiveNode { get; init; }

    /// <summary>The Checkpoints of its namespace (while it is admitted: one may become its parent).</summary>
    public IReadOnlyList<Checkpoint> Earlier { get; init; } = [];

    /// <summary>A member of a group checkpoint: its take holds the pod frozen once dumped, until the group decides.</summary>
    public bool IsGroupMember { get; init; }

    /// <summary>A member's group's decision (CheckpointHolds.Thaw or Abort), once made.</summary>
    public string? GroupDecision { get; init; }
}

public abstract record CheckpointAction
{
    public sealed record Nothing : CheckpointAction;

    public sealed record AddFinalizer : CheckpointAction;

    /// <param name="ImagesLeft">Let go while the node's agent was silent: its images are still there (the sweeper removes them).</param>
    /// <param name="ExportVia">Its own node gone or silent: this node's agent removes the export from the (shared) archive storage first.</param>
    /// <param name="ExportPath">The export to remove.</param>
    public sealed record RemoveFinalizer(bool ImagesLeft = false, string? ExportVia = null, string? ExportPath = null) : CheckpointAction;

    /// <summary>Keep a copy of the pod (its spec, labels, annotations) in the Checkpoint: restores are made from it (an import's copy comes with it: <paramref name="Json"/>).</summary>
    public sealed record SavePod(string? Json = null) : CheckpointAction;

    /// <param name="Node">The pod's node, which takes and keeps it.</param>
    /// <param name="ExportPath">Also export it there (relative to the archive storage); null: kept on the node only.</param>
    /// <param name="ParentId">The earlier checkpoint (its id on the node) to take it as a delta on; null: a full one.</param>
    /// <param name="GroupHold">A group member: held frozen once dumped until its group decides (<see cref="Continue"/>).</param>
    public sealed record Take(string Node, string? ExportPath = null, string? ParentId = null, bool GroupHold = false) : CheckpointAction;

    /// <summary>Tell a group member's take its group's decision (CheckpointHolds.Thaw or Abort).</summary>
    public sealed record Continue(string Node, string Decision) : CheckpointAction;

    public sealed record Import(string Node, string Path, string? Digest) : CheckpointAction;

    public sealed record Delete(string Node, bool DeleteExport = false) : CheckpointAction;

    public static CheckpointAction None { get; } = new Nothing();
}

/// <summary>The pass's decision: one action, the status to write, when to look again, and an Event to record (type, reason, message).</summary>
public sealed record CheckpointDecision(CheckpointAction Action, CheckpointStatus Status, TimeSpan? Requeue, (string Type, string Reason, string Message)? Event = null);

/// <summary>The knobs of the checkpoint decisions.</summary>
public sealed record CheckpointPolicy
{
    /// <summary>How long taking a checkpoint may take, from the request to the images kept.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How long the agent may not answer before the checkpoint fails (or, when it is deleted, is let go).</summary>
    public TimeSpan AgentGrace { get; init; } = TimeSpan.FromSeconds(30);

    public TimeSpan PollInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// How long a new Restore waits for its Checkpoint to be seen before it fails: a Restore applied
    /// in one go with its Checkpoint (one kubectl apply) can reach the operator first.
    /// </summary>
    public TimeSpan CheckpointAppearGrace { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// The next step for a Checkpoint, from what was observed: a pure function. Pending → (the pod
/// copied into the Checkpoint) → Checkpointing (the agent takes it: freeze, dump, thaw) → Ready,
/// or Failed with the reason. Deleting a Checkpoint has the agent remove its images first (the
/// finalizer), unless the node or its agent is gone for longer than the grace.
/// </summary>
public static class CheckpointDecisions
{
    public const string SourcePodAnnotation = Annotations.SourcePod;

    public static CheckpointDecision Decide(CheckpointFacts f, CheckpointPolicy p)
    {
        ArgumentNullException.ThrowIfNull(f);
        ArgumentNullException.ThrowIfNull(p);
        var c = f.Checkpoint;
        var s = Clone(c.Status);
        bool hasFinalizer = c.Metadata.Finalizers?.Contains(Finalizers.Cleanup) == true;
        if (c.Metadata.DeletionTimestamp is { } deleting)
        {
            return hasFinalizer ? Deleting(f, p, s, deleting) : new(CheckpointAction.None, s, null);
        }

        if (!hasFinalizer)
        {
            return new(new CheckpointAction.AddFinalizer(), s, TimeSpan.Zero);
        }

        if (CheckpointPhases.IsFinal(s.Phase))
        {
            return new(CheckpointAction.None, s, null);
        }

        s.StartTime ??= f.Now;
        if (s.Phase is null or CheckpointPhases.Pending)
        {
            return Admit(f, s);
        }

        // Checkpointing (or importing)
        bool import = c.Spec.Source is not null;
        if (f.Agent.Kept is { Ready: true } kept)
        {
            if (import && Keys.Get(c.Metadata.Annotations, SourcePodAnnotation) is null)
            {
                return kept.SavedPodJson.Length > 0
                    ? new(new CheckpointAction.SavePod(kept.SavedPodJson), s, TimeSpan.Zero)
                    : Fail(s, f.Now, "ImportRefused", $"The export at {c.Spec.Source!.Path} carries no pod to restore.");
            }

            return Kept(f, s, kept);
        }

        s.Held = f.IsGroupMember && f.Agent.Kept is { Ready: false, Held.Length: > 0 } ? true : null;
        if (f.Agent.Kept?.Operation is { State: OperationState.Failed } failed)
        {
            return Fail(s, f.Now, failed.Reason, import
                ? $"Importing the checkpoint exported at {c.Spec.Source!.Path} on {s.NodeName} failed: {failed.Message.TrimEnd('.')}."
                : $"Checkpointing pod {c.Spec.PodName} on {s.NodeName} failed: {failed.Message.TrimEnd('.')}. The pod runs on.");
        }

        if (f.Now - s.StartTime > p.Timeout)
        {
            return Fail(s, f.Now, Reasons.TimedOut, $"The checkpoint was not kept within {p.Timeout.TotalSeconds:0} seconds.");
        }

        if (f.Node is null)
        {
            return Fail(s, f.Now, "NodeGone", $"Node {s.NodeName} was deleted while the checkpoint was being taken.");
        }

        if (!f.Agent.Reachable)
        {
            return f.Agent.Silence(f.Now) > p.AgentGrace
                ? Fail(s, f.Now, Reasons.SourceAgentUnreachable, $"The agent on {s.NodeName} has not answered for {f.Agent.Silence(f.Now).TotalSeconds:0} seconds ({f.Agent.Error}).")
                : new(CheckpointAction.None, s, p.PollInterval);
        }

        if (f.IsGroupMember && f.GroupDecision is { } decision)
        {
            // a take under way hears the decision (a held one thaws, now or once it is dumped). One the agent does not
            // know is not started again: after Abort nothing is wanted, and after Thaw (every member was held, so this
            // one's held take was lost: its agent restarted and thawed the pod) a new take would be of a later instant
            // than the others', after they ran on: not the group's cut
            return f.Agent.Kept is null
                ? (decision == CheckpointHolds.Abort
                    ? Fail(s, f.Now, Reasons.GroupRolledBack, $"The group was rolled back before pod {c.Spec.PodName} was checkpointed; it was not frozen and runs on.")
                    : Fail(s, f.Now, "HeldCheckpointLost", $"The agent on {s.NodeName} lost pod {c.Spec.PodName}'s held checkpoint (it restarted and thawed the pod); a new one would not be part of the group's cut. The pod runs on."))
                : new(new CheckpointAction.Continue(s.NodeName!, decision), s, p.PollInterval);
        }

        // the agent knows nothing of it (first call, or it restarted): ask again, which starts it at most once at a time
        return f.Agent.Kept is null ? new(Start(f, s, s.NodeName!), s, p.PollInterval) : new(CheckpointAction.None, s, p.PollInterval);
    }

    /// <summary>The archive path of a Checkpoint's export: spec.export.path, or NAMESPACE/NAME; null when it is not exported.</summary>
    public static string? ExportPath(Checkpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        return checkpoint.Spec.Export is { } export ? export.Path ?? $"{checkpoint.Metadata.NamespaceProperty}/{checkpoint.Metadata.Name}" : null;
    }

    /// <summary>
    /// The node an import is kept on: the one asked for (null when it does not exist), or else the
    /// first by name of the Ready, schedulable nodes with an agent.
    /// </summary>
    public static V1Node? ImportNode(string? asked, IEnumerable<V1Node> nodes)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        return asked is not null
            ? nodes.FirstOrDefault(n => n.Metadata.Name == asked)
            : nodes.Where(n => n.Spec?.Unschedulable != true && Keys.Get(n.Metadata.Annotations, Annotations.AgentEndpoint) is not null
                    && n.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true)
                .OrderBy(n => n.Metadata.Name, StringComparer.Ordinal).FirstOrDefault();
    }

    private static CheckpointAction Start(CheckpointFacts f, CheckpointStatus s, string node) =>
        f.Checkpoint.Spec.Source is { } source ? new CheckpointAction.Import(node, source.Path, source.Digest)
            : new CheckpointAction.Take(node, ExportPath(f.Checkpoint), s.Parent?.Uid, f.IsGroupMember);

    /// <summary>
    /// The checkpoint a new one of <paramref name="pod"/> is taken as a delta on: the latest Ready one
    /// of the same pod (same UID) kept on the node it runs on, not being deleted; null when there is
    /// none, or the new one is exported (an export is one full dump) or asks for a full one.
    /// </summary>
    public static Checkpoint? Parent(Checkpoint checkpoint, V1Pod pod, IEnumerable<Checkpoint> earlier)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(pod);
        ArgumentNullException.ThrowIfNull(earlier);
        if (!checkpoint.Spec.Incremental || checkpoint.Spec.Export is not null)
        {
            return null;
        }

        return earlier
            .Where(e => e.Metadata.Uid != checkpoint.Metadata.Uid && e.Metadata.DeletionTimestamp is null && e.Spec.Source is null
                && e.Metadata.NamespaceProperty == checkpoint.Metadata.NamespaceProperty && e.Spec.PodName == checkpoint.Spec.PodName
                && e.Status is { Phase: CheckpointPhases.Ready, CheckpointTime: not null } st
                && st.PodUid == pod.Metadata.Uid && st.NodeName == pod.Spec.NodeName)
            .OrderByDescending(e => e.Status!.CheckpointTime)
            .ThenBy(e => e.Metadata.Name, StringComparer.Ordinal)
            .FirstOrDefault();
    }

    /// <summary>
    /// The checkpoint directories a node holds that no Checkpoint names any more: those whose
    /// Checkpoint let go of them while the node's agent was silent (<paramref name="leftBehind"/>,
    /// at once), and any other unknown one older than <paramref name="grace"/> (a Checkpoint
    /// the cache has not seen yet is never older than that).
    /// </summary>
    public static IReadOnlyList<string> Orphans(IEnumerable<KeptCheckpoint> held, IReadOnlySet<string> knownUids, IReadOnlySet<string> leftBehind, DateTime now, TimeSpan grace)
    {
        ArgumentNullException.ThrowIfNull(held);
        ArgumentNullException.ThrowIfNull(knownUids);
        ArgumentNullException.ThrowIfNull(leftBehind);
        return [.. held.Where(k => !knownUids.Contains(k.CheckpointId)
                && (leftBehind.Contains(k.CheckpointId) || now - DateTimeOffset.FromUnixTimeMilliseconds(k.FrozenUnixMillis).UtcDateTime > grace))
            .Select(k => k.CheckpointId)];
    }

    private static CheckpointDecision Admit(CheckpointFacts f, CheckpointStatus s)
    {
        var c = f.Checkpoint;
        if (c.Spec.Source is { } source)
        {
            return AdmitImport(f, s, source);
        }

        var name = $"{c.Metadata.NamespaceProperty}/{c.Spec.PodName}";
        if (f.IsGroupMember && f.GroupDecision == CheckpointHolds.Abort)
        {
            return Fail(s, f.Now, Reasons.GroupRolledBack, $"The group was rolled back before pod {name} was checkpointed; it was not frozen and runs on.");
        }

        if (!c.Spec.LeaveRunning)
        {
            return Fail(s, f.Now, "Unsupported", "leaveRunning: false is not supported yet: a checkpoint leaves the pod running.");
        }

        if (f.Pod is not { } pod)
        {
            return Fail(s, f.Now, Reasons.PodNotFound, $"Pod {name} does not exist.");
        }

        if (pod.Status?.Phase != "Running" || string.IsNullOrEmpty(pod.Spec.NodeName) || pod.Metadata.DeletionTimestamp is not null)
        {
            return Fail(s, f.Now, Reasons.PodNotRunning, $"Pod {name} is {(pod.Metadata.DeletionTimestamp is not null ? "being deleted" : pod.Status?.Phase ?? "without a phase")}; only a Running pod can be checkpointed.");
        }

        if (pod.Spec.HostNetwork == true)
        {
            return Fail(s, f.Now, Reasons.CheckpointRefused, $"Pod {name} uses the host's network: its sockets belong to the node, not to the pod, and cannot be checkpointed.");
        }

        if (f.Node is null || f.Node.Metadata.Name != pod.Spec.NodeName)
        {
            return new(CheckpointAction.None, s, TimeSpan.FromSeconds(1)); // the node is not in the cache yet
        }

        if (Keys.Get(f.Node.Metadata.Annotations, Annotations.AgentEndpoint) is null)
        {
            return Fail(s, f.Now, Reasons.SourceHasNoAgent, $"Node {pod.Spec.NodeName} runs no podmig agent.");
        }

        if (Keys.Get(c.Metadata.Annotations, SourcePodAnnotation) is null)
        {
            return new(new CheckpointAction.SavePod(), s, TimeSpan.Zero);
        }

        s.Phase = CheckpointPhases.Checkpointing;
        s.NodeName = pod.Spec.NodeName;
        s.PodUid = pod.Metadata.Uid;
        s.PodName = pod.Metadata.Name;
        s.Parent = Parent(c, pod, f.Earlier) is { } parent ? new CheckpointParent { Name = parent.Metadata.Name, Uid = parent.Metadata.Uid } : null;
        s.Reason = "Checkpointing";
        s.Message = $"Checkpointing pod {name} on {pod.Spec.NodeName}{(ExportPath(c) is { } path ? $", to be exported to {path}" : "")}{(s.Parent is { } p ? $", as a delta on checkpoint {p.Name}" : "")}.";
        return new(Start(f, s, pod.Spec.NodeName), s, TimeSpan.FromMilliseconds(200));
    }

    private static CheckpointDecision AdmitImport(CheckpointFacts f, CheckpointStatus s, CheckpointSource source)
    {
        var asked = f.Checkpoint.Spec.NodeName;
        if (f.Node is not { } node)
        {
            return Fail(s, f.Now, asked is null ? "NoNode" : "NodeNotFound",
                asked is null ? "No Ready node with a podmig agent to import the checkpoint on." : $"Node {asked} does not exist.");
        }

        if (Keys.Get(node.Metadata.Annotations, Annotations.AgentEndpoint) is null)
        {
            return Fail(s, f.Now, Reasons.SourceHasNoAgent, $"Node {node.Metadata.Name} runs no podmig agent.");
        }

        s.Phase = CheckpointPhases.Checkpointing;
        s.NodeName = node.Metadata.Name;
        s.Reason = "Importing";
        s.Message = $"Importing the checkpoint exported at {source.Path} on {node.Metadata.Name}.";
        return new(Start(f, s, node.Metadata.Name), s, TimeSpan.FromMilliseconds(200));
    }

    private static CheckpointDecision Kept(CheckpointFacts f, CheckpointStatus s, KeptCheckpoint kept)
    {
        s.Phase = CheckpointPhases.Ready;
        s.Reason = "Kept";
        s.Held = null;
        s.CheckpointTime = DateTimeOffset.FromUnixTimeMilliseconds(kept.FrozenUnixMillis).UtcDateTime;
        s.CompletionTime = f.Now;
        s.FreezeMillis = kept.FrozenMillis;
        s.SizeBytes = (long)kept.SizeBytes;
        s.Location = $"{kept.NodeName}:{kept.Directory}";
        s.CriuVersion = kept.Node?.Criu?.Version;
        s.KernelVersion = kept.Node?.Kernel?.Release;
        s.Containers = [.. kept.Containers.Select(k => new CheckpointContainer { Name = k.Name, Image = k.Image, Digest = k.Digest, SizeBytes = (long)k.SizeBytes })];
        s.Export = Archive(kept.Export);
        s.ImportedFrom = Archive(kept.ImportedFrom);
        if (kept.ImportedFrom is { } from)
        {
            s.Reason = "Imported";
            s.PodUid = kept.Pod?.Uid;
            s.PodName = kept.Pod?.Name;
            s.Message = $"Checkpoint of pod {kept.Pod?.Namespace}/{kept.Pod?.Name} imported from {from.Path} onto {kept.NodeName}: {kept.SizeBytes} bytes, checked against {from.Digest}; it holds the pod's state as of {s.CheckpointTime:yyyy-MM-ddTHH:mm:ss.fffZ}.";
            return new(CheckpointAction.None, s, null, ("Normal", "Imported", s.Message));
        }

        var exported = kept.Export is { } e ? $", exported to {e.Path} ({e.SizeBytes} bytes, {e.Digest})" : "";
        s.ChainLength = (int)Math.Max(kept.ChainLength, 1u);
        s.OwnBytes = (long)(kept.OwnBytes > 0 ? kept.OwnBytes : kept.SizeBytes);
        s.ChainNote = kept.ChainNote.Length > 0 ? kept.ChainNote : null;
        string chain = "";
        if (s.Parent is { } parent && kept.ParentCheckpointId == parent.Uid)
        {
            chain = $", {s.OwnBytes} of them its own: a delta on checkpoint {parent.Name} (a chain of {s.ChainLength})";
        }
        else if (s.Parent is { } refused)
        {
            chain = $", a full checkpoint rather than a delta on {refused.Name} ({s.ChainNote ?? "the node did not link it"})";
            s.Parent = null;
        }

        s.Message = $"Pod {f.Checkpoint.Spec.PodName} checkpointed on {kept.NodeName}: {kept.SizeBytes} bytes kept{chain}, frozen for {kept.FrozenMillis} ms{exported}.";
        return new(CheckpointAction.None, s, null, ("Normal", "Checkpointed", s.Message));
    }

    private static CheckpointArchiveStatus? Archive(CheckpointExport? archive) => archive is null ? null : new CheckpointArchiveStatus
    {
        Path = archive.Path,
        Digest = archive.Digest,
        SizeBytes = (long)archive.SizeBytes,
        Millis = archive.ExportMillis,
    };

    private static CheckpointDecision Deleting(CheckpointFacts f, CheckpointPolicy p, CheckpointStatus s, DateTime deleting)
    {
        if (s.NodeName is null)
        {
            return new(new CheckpointAction.RemoveFinalizer(), s, null);
        }

        var export = f.Checkpoint.Spec.Export is { Retain: false } && s.Export?.Path is { Length: > 0 } path ? path : null;
        string ExportNote() => export is null ? "" : f.ArchiveNode is { } via ? $" Its export {export} is removed from the archive storage through {via}." : $" Its export {export} stays in the archive storage: no other node's agent could remove it.";
        CheckpointAction LetGo(bool imagesLeft) => new CheckpointAction.RemoveFinalizer(imagesLeft, export is null ? null : f.ArchiveNode, f.ArchiveNode is null ? null : export);
        if (f.Node is null)
        {
            return new(LetGo(false), s, null, ("Warning", "NodeGone", $"Node {s.NodeName} is gone; its copy of the checkpoint went with it.{ExportNote()}"));
        }

        if (f.Agent.Reachable)
        {
            if (f.Agent.Kept is null || f.Agent.Kept.Deleted)
            {
                return new(new CheckpointAction.RemoveFinalizer(), s, null);
            }

            if (f.Agent.Kept is { Ready: false, Held.Length: > 0, Operation.State: OperationState.Running })
            {
                return new(new CheckpointAction.Continue(s.NodeName, CheckpointHolds.Abort), s, p.PollInterval); // a held group member: thawed and discarded at once
            }

            return f.Agent.Kept.Operation is { State: OperationState.Running } || f.Agent.Kept.Sends.Any(x => x.Operation?.State == OperationState.Running)
                ? new(CheckpointAction.None, s, p.PollInterval) // taken or sent right now: removed once that ends
                : new(new CheckpointAction.Delete(s.NodeName, DeleteExport: f.Checkpoint.Spec.Export is { Retain: false }), s, p.PollInterval);
        }

        return f.Now - deleting > p.AgentGrace
            ? new(LetGo(true), s, null,
                ("Warning", "ImagesLeft", $"The agent on {s.NodeName} did not answer for {p.AgentGrace.TotalSeconds:0} seconds; the checkpoint's images in {s.Location} are removed once it answers.{ExportNote()}"))
            : new(CheckpointAction.None, s, p.PollInterval);
    }

    private static CheckpointDecision Fail(CheckpointStatus s, DateTime now, string reason, string message)
    {
        s.Held = null;
        s.Phase = CheckpointPhases.Failed;
        s.Reason = reason;
        s.Message = message;
        s.CompletionTime = now;
        return new(CheckpointAction.None, s, null, ("Warning", reason, message));
    }

    private static CheckpointStatus Clone(CheckpointStatus? status) =>
        status is null ? new CheckpointStatus() : System.Text.Json.JsonSerializer.Deserialize<CheckpointStatus>(System.Text.Json.JsonSerializer.Serialize(status))!;
}

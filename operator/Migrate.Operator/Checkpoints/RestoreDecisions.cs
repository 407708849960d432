using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Migrate.Operator.Scheduling;

namespace Migrate.Operator.Checkpoints;

/// <summary>A node a restore could go to, with its agent's capabilities (null: no agent answers there).</summary>
public sealed record RestoreCandidate(V1Node Node, GetCapabilitiesResponse? Agent);

/// <summary>Everything one pass over a Restore decides on.</summary>
public sealed record RestoreFacts
{
    public required Restore Restore { get; init; }

    public required DateTime Now { get; init; }

    public Checkpoint? Checkpoint { get; init; }

    /// <summary>What the checkpoint's node keeps of it (and of its sends).</summary>
    public KeptView Source { get; init; } = KeptView.None;

    /// <summary>What the restore's node holds of the restore's images.</summary>
    public AgentView Target { get; init; } = AgentView.None;

    /// <summary>The nodes, with their agents' capabilities (asked only before the restore is admitted).</summary>
    public IReadOnlyList<RestoreCandidate> Nodes { get; init; } = [];

    /// <summary>The pod holding the restored pod's name, if any.</summary>
    public V1Pod? Pod { get; init; }

    public string RestoreId => Restore.Metadata.Uid;

    public string PodName => Restore.Spec.PodName is { Length: > 0 } name ? name : Restore.Metadata.Name;

    /// <summary>Whether <see cref="Pod"/> is this restore's.</summary>
    public bool PodIsOurs => Keys.Get(Pod?.Metadata.Annotations, Annotations.RestoreFrom) == RestoreId;
}

public abstract record RestoreAction
{
    public sealed record Nothing : RestoreAction;

    public sealed record ExpectImages(string Node) : RestoreAction;

    public sealed record Send(string SourceNode, string TargetNode) : RestoreAction;

    public sealed record CreatePod(string Node) : RestoreAction;

    /// <summary>The end: the restored pod deleted if it failed, the target's copy of the images removed (best effort).</summary>
    public sealed record Finish(string? TargetNode, string? DeletePod) : RestoreAction;

    public static RestoreAction None { get; } = new Nothing();
}

public sealed record RestoreDecision(RestoreAction Action, RestoreStatus Status, TimeSpan? Requeue, (string Type, string Reason, string Message)? Event = null);

/// <summary>
/// The next step for a Restore, from what was observed: a pure function. Pending (the checkpoint
/// is Ready; the node, given or chosen, is Ready, has an agent, and can run what the checkpoint's
/// node dumped; the pod's name is free) → Transferring (the checkpoint's node sends its images
/// to the restore's node, which stages and commits them under the restore's id) → Restoring (a
/// new pod, pinned to the node, restored by the podmig runtime) → Succeeded once it runs, or
/// Failed with the reason (its pod deleted). Nothing is created before the checks pass.
/// </summary>
public static class RestoreDecisions
{
    public static RestoreDecision Decide(RestoreFacts f, CheckpointPolicy p)
    {
        ArgumentNullException.ThrowIfNull(f);
        ArgumentNullException.ThrowIfNull(p);
        var s = f.Restore.Status is null ? new RestoreStatus()
            : System.Text.Json.JsonSerializer.Deserialize<RestoreStatus>(System.Text.Json.JsonSerializer.Serialize(f.Restore.Status))!;
        if (RestorePhases.IsFinal(s.Phase) || f.Restore.Metadata.DeletionTimestamp is not null)
        {
            return new(RestoreAction.None, s, null);
        }

        s.StartTime ??= f.Now;
        s.PhaseStartTime ??= f.Now;
        if (s.Phase is null or RestorePhases.Pending)
        {
            return Admit(f, p, s);
        }

        if (f.Now - s.PhaseStartTime > p.Timeout)
        {
            return Fail(f, s, Reasons.PhaseTimedOut, $"{s.Phase} took longer than {p.Timeout.TotalSeconds:0} seconds.");
        }

        if (f.Target.Silence(f.Now) > p.AgentGrace)
        {
            return Fail(f, s, Reasons.TargetAgentUnreachable, $"The agent on {s.NodeName} has not answered for {f.Target.Silence(f.Now).TotalSeconds:0} seconds ({f.Target.Error}).");
        }

        return s.Phase == RestorePhases.Transferring ? Transferring(f, p, s) : Restoring(f, p, s);
    }

    private static RestoreDecision Admit(RestoreFacts f, CheckpointPolicy p, RestoreStatus s)
    {
        var r = f.Restore;
        var ns = r.Metadata.NamespaceProperty;
        if (f.Checkpoint is not { } checkpoint)
        {
            if (f.Now - (r.Metadata.CreationTimestamp ?? s.StartTime ?? f.Now) < p.CheckpointAppearGrace)
            {
                s.Message = $"Waiting for Checkpoint {ns}/{r.Spec.CheckpointName} to appear.";
                return new(RestoreAction.None, s, p.PollInterval);
            }

            return Fail(f, s, "CheckpointNotFound", $"Checkpoint {ns}/{r.Spec.CheckpointName} does not exist.");
        }

        if (checkpoint.Status?.Phase == CheckpointPhases.Failed || checkpoint.Metadata.DeletionTimestamp is not null)
        {
            return Fail(f, s, "CheckpointNotReady", $"Checkpoint {ns}/{checkpoint.Metadata.Name} is {(checkpoint.Metadata.DeletionTimestamp is not null ? "being deleted" : "Failed")}: there is nothing to restore.");
        }

        if (checkpoint.Spec.IsGroup)
        {
            var members = checkpoint.Status?.Group?.Members.Select(m => m.Name).ToList() ?? [];
            return Fail(f, s, "CheckpointIsGroup", $"Checkpoint {ns}/{checkpoint.Metadata.Name} is a group checkpoint: restore its members one by one"
                + (members.Count > 0 ? $" ({string.Join(", ", members)})." : "."));
        }

        if (checkpoint.Status?.Phase != CheckpointPhases.Ready)
        {
            return new(RestoreAction.None, s, p.PollInterval); // still being taken
        }

        var sourceNode = checkpoint.Status.NodeName!;
        // where the node that keeps it is gone, an export still restores: say how
        var viaExport = checkpoint.Status.Export is { Path.Length: > 0 } export
            ? $" It was exported to {export.Path}: import it (a Checkpoint with spec.source.path {export.Path}, or kubectl migrate import {export.Path}) and restore that."
            : "";
        if (f.Nodes.All(n => n.Node.Metadata.Name != sourceNode))
        {
            return Fail(f, s, "CheckpointNodeGone", $"Checkpoint {checkpoint.Metadata.Name} is kept on node {sourceNode}, which is gone.{viaExport}");
        }

        if (f.Source.Kept is not { Ready: true } kept)
        {
            if (f.Source.Reachable)
            {
                return Fail(f, s, "CheckpointLost", $"The agent on {sourceNode} no longer keeps checkpoint {checkpoint.Metadata.Name}.");
            }

            return f.Now - s.StartTime > p.AgentGrace
                ? Fail(f, s, Reasons.SourceAgentUnreachable, $"The agent on {sourceNode}, which keeps checkpoint {checkpoint.Metadata.Name}, has not answered ({f.Source.Error}).{viaExport}")
                : new(RestoreAction.None, s, p.PollInterval);
        }

        var origin = kept.Node ?? new GetCapabilitiesResponse();
        string? target;
        if (r.Spec.NodeName is { Length: > 0 } asked)
        {
            if (f.Nodes.FirstOrDefault(n => n.Node.Metadata.Name == asked) is not { } candidate)
            {
                return Fail(f, s, Reasons.TargetNotFound, $"Node {asked} does not exist.");
            }

            if (WhyNot(candidate, origin, kept.LazyMemory) is { } why)
            {
                return Fail(f, s, why.Reason, $"Node {asked} cannot restore checkpoint {checkpoint.Metadata.Name}: it {why.Phrase}.");
            }

            target = asked;
        }
        else
        {
            // the checkpoint's own node first (nothing crosses the network), then any other that can
            target = f.Nodes.OrderBy(n => n.Node.Metadata.Name == sourceNode ? 0 : 1).ThenBy(n => n.Node.Metadata.Name, StringComparer.Ordinal)
                .FirstOrDefault(n => WhyNot(n, origin, kept.LazyMemory) is null)?.Node.Metadata.Name;
            if (target is null)
            {
                var reasons = string.Join("; ", f.Nodes.Select(n => $"{n.Node.Metadata.Name} {WhyNot(n, origin, kept.LazyMemory)!.Value.Phrase}"));
                return Fail(f, s, Reasons.NoEligibleTarget, $"No node can restore checkpoint {checkpoint.Metadata.Name}: {reasons}.");
            }
        }

        if (f.Pod is { } holder && !f.PodIsOurs)
        {
            return Fail(f, s, Reasons.NameTaken, $"Pod {ns}/{holder.Metadata.Name} already exists; name the restored pod with spec.podName.");
        }

        s.Phase = RestorePhases.Transferring;
        s.PhaseStartTime = f.Now;
        s.SourceNode = sourceNode;
        s.NodeName = target;
        s.PodName = f.PodName;
        s.CheckpointTime = checkpoint.Status.CheckpointTime;
        s.Reason = "Transferring";
        s.Message = sourceNode == target
            ? $"Staging checkpoint {checkpoint.Metadata.Name} for the restore on its own node {target}."
            : $"Sending checkpoint {checkpoint.Metadata.Name} from {sourceNode} to {target}.";
        return new(RestoreAction.None, s, TimeSpan.Zero);
    }

    private static RestoreDecision Transferring(RestoreFacts f, CheckpointPolicy p, RestoreStatus s)
    {
        if (f.Target.Incoming is { Committed: true } incoming)
        {
            s.Phase = RestorePhases.Restoring;
            s.PhaseStartTime = f.Now;
            s.BytesTransferred = (long)incoming.ReceivedBytes;
            s.Reason = "Restoring";
            s.Message = $"Restoring pod {s.PodName} on {s.NodeName}.";
            return new(new RestoreAction.CreatePod(s.NodeName!), s, p.PollInterval);
        }

        if (f.Target.Reachable && f.Target.Incoming is not { Expected: true })
        {
            return new(new RestoreAction.ExpectImages(s.NodeName!), s, TimeSpan.Zero);
        }

        var send = f.Source.Kept?.Sends.FirstOrDefault(x => x.RestoreId == f.RestoreId);
        if (send?.Operation is { State: OperationState.Failed } failed)
        {
            return Fail(f, s, failed.Reason, $"Sending checkpoint {f.Restore.Spec.CheckpointName} from {s.SourceNode} to {s.NodeName} failed: {failed.Message.TrimEnd('.')}.");
        }

        if (f.Source.Silence(f.Now) > p.AgentGrace)
        {
            return Fail(f, s, Reasons.SourceAgentUnreachable, $"The agent on {s.SourceNode} has not answered for {f.Source.Silence(f.Now).TotalSeconds:0} seconds ({f.Source.Error}).");
        }

        if (send is not null)
        {
            s.BytesTransferred = (long)send.BytesSent;
            return new(RestoreAction.None, s, p.PollInterval);
        }

        return f.Source.Reachable && f.Target.Reachable
            ? new(new RestoreAction.Send(s.SourceNode!, s.NodeName!), s, p.PollInterval)
            : new(RestoreAction.None, s, p.PollInterval);
    }

    private static RestoreDecision Restoring(RestoreFacts f, CheckpointPolicy p, RestoreStatus s)
    {
        if (f.Target.Incoming?.Restores.FirstOrDefault(r => !string.IsNullOrEmpty(r.Error)) is { } broken)
        {
            return Fail(f, s, Reasons.RestoreFailed, $"Restoring container {broken.Container} on {s.NodeName} failed: {broken.Error.TrimEnd('.')}.");
        }

        if (f.Pod is null)
        {
            return new(new RestoreAction.CreatePod(s.NodeName!), s, p.PollInterval);
        }

        if (!f.PodIsOurs)
        {
            return Fail(f, s, Reasons.NameTaken, $"Pod {f.Pod.Metadata.Name} was created by someone else.");
        }

        if (MigrationDecisions.StartFailure(f.Pod) is { } why)
        {
            return Fail(f, s, Reasons.RestoreFailed, $"The restored pod {f.Pod.Metadata.Name} on {s.NodeName} did not start: {why.TrimEnd('.')}.");
        }

        if (!MigrationDecisions.IsRunning(f.Pod))
        {
            return new(RestoreAction.None, s, p.PollInterval);
        }

        if (f.Target.Incoming?.Restores.Any(r => r.LazyMemory && !r.MemoryFilled) == true)
        {
            return new(RestoreAction.None, s, p.PollInterval); // (restores from kept checkpoints are not lazy; should one be, it is done once its memory is)
        }

        s.Phase = RestorePhases.Succeeded;
        s.Reason = "Restored";
        s.CompletionTime = f.Now;
        s.RestoreMillis = f.Target.Incoming is { } incoming ? RestoreTimes.SpanMillis(incoming.Restores) : null;
        s.Message = $"Pod {s.PodName} runs on {s.NodeName}, resumed from checkpoint {f.Restore.Spec.CheckpointName} taken at {s.CheckpointTime:yyyy-MM-dd'T'HH:mm:ss.fff'Z'}.";
        return new(new RestoreAction.Finish(s.NodeName, null), s, null, ("Normal", "Restored", s.Message));
    }

    /// <summary>Why a node cannot restore what a node with capabilities <paramref name="origin"/> dumped (with memory left to a lazy restore: <paramref name="lazyMemory"/>): (reason, phrase about the node); null when it can.</summary>
    public static (string Reason, string Phrase)? WhyNot(RestoreCandidate candidate, GetCapabilitiesResponse origin, bool lazyMemory = false)
    {
        ArgumentNullException.ThrowIfNull(candidate);
        var node = candidate.Node;
        if (node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status != "True")
        {
            return (Reasons.TargetNotReady, "is not Ready");
        }

        if (node.Spec?.Unschedulable == true)
        {
            return (Reasons.TargetUnschedulable, "is cordoned");
        }

        if (candidate.Agent is not { } agent)
        {
            return (Reasons.TargetHasNoAgent, "runs no podmig agent that answers");
        }

        if (lazyMemory && agent.Criu?.LazyPages != true)
        {
            return (Reasons.TargetIncompatible, "has no CRIU lazy pages (userfaultfd), which this checkpoint's memory needs");
        }

        return Compatibility.Check(origin, agent) is { } why ? (Reasons.TargetIncompatible, why) : null;
    }

    private static RestoreDecision Fail(RestoreFacts f, RestoreStatus s, string reason, string message)
    {
        s.Phase = RestorePhases.Failed;
        s.Reason = reason;
        s.Message = message;
        s.CompletionTime = f.Now;
        bool touched = s.NodeName is not null;
        return new(touched ? new RestoreAction.Finish(s.NodeName, f.Pod is { } pod && f.PodIsOurs ? pod.Metadata.Name : null) : RestoreAction.None, s, null,
            ("Warning", reason, message));
    }
}

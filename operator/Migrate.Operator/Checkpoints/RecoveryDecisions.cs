using k8s.Models;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Checkpoints;

/// <summary>One step of recovering pods after their node failed.</summary>
public abstract record RecoveryStep
{
    /// <summary>
    /// The decision, made once per pod (its UID names the objects): import the pod's newest
    /// exported checkpoint onto a healthy node, as Checkpoint <paramref name="Name"/>.
    /// </summary>
    public sealed record Import(V1Pod Pod, Checkpoint From, string Name, string Why) : RecoveryStep;

    /// <summary>The failed pod's object goes (at once: its node cannot stop it) and its node is told to remove what it has of it.</summary>
    public sealed record Fence(V1Pod Pod) : RecoveryStep;

    /// <summary>The imported checkpoint is restored as the pod, under its name and with its labels.</summary>
    public sealed record Restore(Checkpoint Imported, string PodName) : RecoveryStep;

    /// <summary>A pod on a failed node that cannot be recovered (no exported checkpoint): said once.</summary>
    public sealed record Unrecoverable(V1Pod Pod, string Why) : RecoveryStep;
}

/// <summary>
/// Recovery after a node failure, as a pure function of what the cache holds. A pod selected by a
/// schedule with recoverOnNodeFailure whose node is deleted, or NotReady for longer than the grace,
/// is recovered from its newest Ready, exported checkpoint: that checkpoint is imported onto a
/// healthy node (the import, named after the pod's UID, is the decision, so it is made once),
/// the failed pod is fenced (its object deleted at once, its node's agent told to remove it), and
/// only when its object is gone is the import restored under the pod's name. Never two copies
/// known to the API; the old node's copy is removed when its agent answers again.
/// </summary>
public static class RecoveryDecisions
{
    public static IReadOnlyList<RecoveryStep> Plan(CheckpointSchedule schedule, IEnumerable<V1Pod> pods, IEnumerable<V1Node> nodes,
        IEnumerable<Checkpoint> checkpoints, IEnumerable<Migrate.Api.Restore> restores, DateTime now)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        if (!schedule.Spec.RecoverOnNodeFailure || schedule.Metadata.DeletionTimestamp is not null)
        {
            return [];
        }

        var ns = schedule.Metadata.NamespaceProperty;
        var inNamespace = pods.Where(p => p.Metadata.NamespaceProperty == ns).ToList();
        var nodeByName = nodes.ToDictionary(n => n.Metadata.Name, StringComparer.Ordinal);
        var all = checkpoints.Where(c => c.Metadata.NamespaceProperty == ns).ToList();
        var imports = all.Where(c => Keys.Get(c.Metadata.Labels, Labels.Recovers) is not null && Keys.Get(c.Metadata.Labels, Labels.Schedule) is null
            && Keys.Get(c.Metadata.Annotations, Labels.Schedule) == schedule.Metadata.Name).ToList();
        var restoreNames = restores.Where(r => r.Metadata.NamespaceProperty == ns).Select(r => r.Metadata.Name).ToHashSet(StringComparer.Ordinal);
        var steps = new List<RecoveryStep>();

        foreach (var pod in inNamespace.Where(p => p.Spec?.NodeName is not null && p.Status?.Phase is not ("Succeeded" or "Failed")
            && LabelSelectors.Matches(schedule.Spec.Selector, p.Metadata.Labels)).OrderBy(p => p.Metadata.Name, StringComparer.Ordinal))
        {
            if (imports.Any(i => Keys.Get(i.Metadata.Labels, Labels.Recovers) == pod.Metadata.Uid)
                || Failure(pod.Spec.NodeName, nodeByName, schedule.Spec.NodeFailureGraceSeconds, now) is not { } why)
            {
                continue;
            }

            var last = ScheduleDecisions.Of(schedule, all)
                .Where(c => Keys.Get(c.Metadata.Labels, Labels.Pod) == pod.Metadata.Name && c.Status?.PodUid == pod.Metadata.Uid
                    && c.Status?.Phase == CheckpointPhases.Ready && c.Status.Export is not null && c.Metadata.DeletionTimestamp is null)
                .OrderByDescending(c => c.Status!.CheckpointTime).FirstOrDefault();
            steps.Add(last is null
                ? new RecoveryStep.Unrecoverable(pod, $"{why}, and pod {ns}/{pod.Metadata.Name} has no exported Ready checkpoint to recover from")
                : new RecoveryStep.Import(pod, last, NameFor(pod), why));
        }

        foreach (var import in imports.OrderBy(i => i.Metadata.Name, StringComparer.Ordinal))
        {
            var uid = Keys.Get(import.Metadata.Labels, Labels.Recovers)!;
            if (inNamespace.FirstOrDefault(p => p.Metadata.Uid == uid) is { } failed)
            {
                steps.Add(new RecoveryStep.Fence(failed));
            }
            else if (import.Status?.Phase == CheckpointPhases.Ready && !restoreNames.Contains(import.Metadata.Name)
                && Keys.Get(import.Metadata.Labels, Labels.Pod) is { } name && !inNamespace.Any(p => p.Metadata.Name == name))
            {
                steps.Add(new RecoveryStep.Restore(import, name));
            }
        }

        return steps;
    }

    /// <summary>Why a node counts as failed (deleted, or not Ready for longer than the grace), or null.</summary>
    public static string? Failure(string? nodeName, IReadOnlyDictionary<string, V1Node> nodes, int graceSeconds, DateTime now)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        if (nodeName is null)
        {
            return null;
        }

        if (!nodes.TryGetValue(nodeName, out var node))
        {
            return $"node {nodeName} was deleted";
        }

        var ready = node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready");
        if (ready?.Status == "True")
        {
            return null;
        }

        var since = ready?.LastTransitionTime ?? node.Metadata.CreationTimestamp ?? now;
        var down = now - since;
        return down >= TimeSpan.FromSeconds(Math.Max(1, graceSeconds))
            ? $"node {nodeName} has not been Ready for {down.TotalSeconds:0} seconds ({ready?.Reason ?? "no Ready condition"})"
            : null;
    }

    /// <summary>The name of the import (and the Restore) that recover a pod: its name and the start of its UID.</summary>
    public static string NameFor(V1Pod pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var uid = new string((pod.Metadata.Uid ?? "").Where(char.IsAsciiLetterOrDigit).Take(8).ToArray()).ToLowerInvariant();
        var basis = pod.Metadata.Name.Length > 230 ? pod.Metadata.Name[..230] : pod.Metadata.Name;
        return $"{basis}-recovered-{uid}";
    }

    /// <summary>The fenced pod UIDs a Node's annotation lists.</summary>
    public static IReadOnlyList<string> Fenced(V1Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Keys.Get(node.Metadata.Annotations, Annotations.FencedPods) is { Length: > 0 } list
            ? [.. list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct(StringComparer.Ordinal)]
            : [];
    }
}

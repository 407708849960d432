using k8s.Models;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Checkpoints;

/// <summary>
/// A CheckpointSchedule's decisions, as pure functions: which pods are due for a checkpoint, and
/// which of a pod's checkpoints the retention removes.
/// </summary>
public static class ScheduleDecisions
{
    /// <summary>Failed checkpoints of a pod kept for their message (the newest ones).</summary>
    public const int FailedKept = 1;

    /// <summary>The schedule's pods (Running, matching, in its namespace) that are due: none of theirs under way, and the last one made at least an interval ago.</summary>
    public static IReadOnlyList<V1Pod> Due(CheckpointSchedule schedule, IEnumerable<V1Pod> pods, IEnumerable<Checkpoint> checkpoints, DateTime now)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        if (schedule.Spec.Suspend || schedule.Metadata.DeletionTimestamp is not null)
        {
            return [];
        }

        var ours = Of(schedule, checkpoints).ToLookup(c => Keys.Get(c.Metadata.Labels, Labels.Pod) ?? "", StringComparer.Ordinal);
        var interval = TimeSpan.FromSeconds(Math.Max(1, schedule.Spec.IntervalSeconds));
        return [.. pods.Where(p => p.Metadata.NamespaceProperty == schedule.Metadata.NamespaceProperty && p.Status?.Phase == "Running"
                && p.Metadata.DeletionTimestamp is null && LabelSelectors.Matches(schedule.Spec.Selector, p.Metadata.Labels))
            .Where(p =>
            {
                var mine = ours[p.Metadata.Name].ToList();
                return !mine.Any(c => !CheckpointPhases.IsFinal(c.Status?.Phase))
                    && !mine.Any(c => c.Metadata.CreationTimestamp is { } made && now - made < interval);
            })
            .OrderBy(p => p.Metadata.Name, StringComparer.Ordinal)];
    }

    /// <summary>
    /// The checkpoints of one pod that its retention removes. Pinned ones never, nor the newest
    /// Ready one (the state to come back to), nor any still being taken. Of the others: Failed
    /// ones but the newest; Ready ones past maxCount (newest first), older than maxAgeSeconds,
    /// and, oldest first, until the rest fit in maxTotalBytes.
    /// </summary>
    public static IReadOnlyList<Checkpoint> Expired(CheckpointRetention retention, IEnumerable<Checkpoint> ofOnePod, DateTime now)
    {
        ArgumentNullException.ThrowIfNull(retention);
        var live = ofOnePod.Where(c => c.Metadata.DeletionTimestamp is null && !IsPinned(c)).ToList();
        var expired = new List<Checkpoint>();
        expired.AddRange(live.Where(c => c.Status?.Phase == CheckpointPhases.Failed).OrderByDescending(Time).Skip(FailedKept));

        var ready = live.Where(c => c.Status?.Phase == CheckpointPhases.Ready).OrderByDescending(Time).ToList();
        var kept = new List<Checkpoint>();
        for (int i = 0; i < ready.Count; i++)
        {
            var c = ready[i];
            bool newest = i == 0;
            bool tooMany = retention.MaxCount is { } max && i >= Math.Max(1, max);
            bool tooOld = retention.MaxAgeSeconds is { } age && now - Time(c) > TimeSpan.FromSeconds(age);
            if (!newest && (tooMany || tooOld))
            {
                expired.Add(c);
            }
            else
            {
                kept.Add(c);
            }
        }

        if (retention.MaxTotalBytes is { } budget)
        {
            long total = kept.Sum(c => c.Status?.SizeBytes ?? 0);
            foreach (var c in kept.Skip(1).Reverse())
            {
                if (total <= budget)
                {
                    break;
                }

                expired.Add(c);
                total -= c.Status?.SizeBytes ?? 0;
            }
        }

        return expired;
    }

    /// <summary>
    /// What the namespace-wide limits remove from the checkpoints left after the per-pod retention
    /// (every pod's together): the oldest Ready, unpinned ones first, until at most maxCount remain
    /// and they hold at most maxTotalBytes; the newest Ready one of each pod always stays.
    /// </summary>
    public static IReadOnlyList<Checkpoint> ExpiredAcrossPods(NamespaceRetention? limits, IEnumerable<Checkpoint> left)
    {
        ArgumentNullException.ThrowIfNull(left);
        if (limits is null || (limits.MaxCount is null && limits.MaxTotalBytes is null))
        {
            return [];
        }

        var ready = left.Where(c => c.Metadata.DeletionTimestamp is null && !IsPinned(c) && c.Status?.Phase == CheckpointPhases.Ready).ToList();
        var newestOfEachPod = ready.GroupBy(c => Keys.Get(c.Metadata.Labels, Labels.Pod) ?? "", StringComparer.Ordinal)
            .Select(g => g.MaxBy(Time)!).ToHashSet();
        int count = ready.Count;
        long bytes = ready.Sum(c => c.Status?.SizeBytes ?? 0);
        var expired = new List<Checkpoint>();
        foreach (var c in ready.Where(c => !newestOfEachPod.Contains(c)).OrderBy(Time))
        {
            if ((limits.MaxCount is not { } max || count <= max) && (limits.MaxTotalBytes is not { } budget || bytes <= budget))
            {
                break;
            }

            expired.Add(c);
            count--;
            bytes -= c.Status?.SizeBytes ?? 0;
        }

        return expired;
    }

    public static bool IsPinned(Checkpoint checkpoint) => Keys.Get(checkpoint.Metadata.Labels, Labels.Pinned) == "true";

    /// <summary>The checkpoints a schedule made (by its label), in its namespace.</summary>
    public static IEnumerable<Checkpoint> Of(CheckpointSchedule schedule, IEnumerable<Checkpoint> checkpoints)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        return checkpoints.Where(c => c.Metadata.NamespaceProperty == schedule.Metadata.NamespaceProperty
            && Keys.Get(c.Metadata.Labels, Labels.Schedule) == schedule.Metadata.Name);
    }

    /// <summary>The name of a pod's next scheduled checkpoint: schedule, pod and the time, in seconds.</summary>
    public static string NameFor(CheckpointSchedule schedule, V1Pod pod, DateTime now)
    {
        ArgumentNullException.ThrowIfNull(schedule);
        ArgumentNullException.ThrowIfNull(pod);
        var stamp = new DateTimeOffset(now).ToUnixTimeSeconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        var basis = $"{schedule.Metadata.Name}-{pod.Metadata.Name}";
        return (basis.Length > 242 ? basis[..242] : basis) + "-" + stamp;
    }

    private static DateTime Time(Checkpoint c) => c.Status?.CheckpointTime ?? c.Metadata.CreationTimestamp ?? DateTime.MinValue;
}

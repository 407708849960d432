using k8s.Models;
using Migrate.Agent.Contracts.Groups;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>Everything one pass over a group Checkpoint decides on.</summary>
public sealed record CheckpointGroupFacts
{
    public required Checkpoint Group { get; init; }

    public required DateTime Now { get; init; }

    /// <summary>The member Checkpoints that exist (owned by the group).</summary>
    public IReadOnlyList<Checkpoint> Members { get; init; } = [];

    /// <summary>The pods of the group's namespace.</summary>
    public IReadOnlyList<V1Pod> Pods { get; init; } = [];
}

/// <summary>A member Checkpoint to create: its name and its pod.</summary>
public sealed record NewCheckpointMember(string Name, string PodName);

/// <summary>The pass's decision: members to create or delete, the status to write, when to look again, an Event.</summary>
public sealed record CheckpointGroupDecision(
    IReadOnlyList<NewCheckpointMember> Create,
    IReadOnlyList<string> Delete,
    CheckpointStatus Status,
    TimeSpan? Requeue,
    (string Type, string Reason, string Message)? Event = null);

/// <summary>The limits of group checkpoints.</summary>
public sealed record CheckpointGroupPolicy
{
    /// <summary>The most pods one group checkpoint may hold.</summary>
    public int MaxMembers { get; init; } = 8;

    /// <summary>How long the whole group may take, from admission to every member kept; then it is rolled back.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);

    public TimeSpan PollInterval { get; init; } = TimeSpan.FromMilliseconds(500);
}

/// <summary>
/// The next step for a group Checkpoint (spec.pods or spec.podSelector), a pure function. Pending:
/// the group is resolved and admitted whole (every pod exists and runs, within the size limit) or
/// refused with nothing changed. Checkpointing: one member Checkpoint per pod, each taken by its
/// node's agent and held frozen once dumped; when every member is held the decision is Thaw (all
/// were frozen at once: the cut is consistent) and they are kept; when any member fails first, or
/// the group times out, the decision is Abort: every member thaws and discards, the group is
/// Failed naming the member and its reason, and the members are deleted (all or nothing).
/// </summary>
public static class CheckpointGroupDecisions
{
    /// <summary>The member Checkpoint's name for a pod.</summary>
    public static string MemberName(string group, string pod) => $"{group}-{pod}";

    /// <summary>The member Checkpoints of a group among <paramref name="checkpoints"/>: those it owns by UID.</summary>
    public static IEnumerable<Checkpoint> MembersOf(Checkpoint group, IEnumerable<Checkpoint> checkpoints)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(checkpoints);
        return checkpoints.Where(c => GroupOwner(c)?.Uid == group.Metadata.Uid);
    }

    /// <summary>The group Checkpoint that owns a member (by owner reference), or null.</summary>
    public static V1OwnerReference? GroupOwner(Checkpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        return Keys.Get(checkpoint.Metadata.Labels, Labels.Group) is null ? null
            : checkpoint.Metadata.OwnerReferences?.FirstOrDefault(o => o.Kind == Checkpoint.KindName && o.Controller == true);
    }

    public static CheckpointGroupDecision Decide(CheckpointGroupFacts f, CheckpointGroupPolicy p)
    {
        ArgumentNullException.ThrowIfNull(f);
        ArgumentNullException.ThrowIfNull(p);
        var s = Clone(f.Group.Status);
        if (s.Phase == CheckpointPhases.Failed)
        {
            // all or nothing: a failed group keeps no member
            return new([], [.. f.Members.Where(m => m.Metadata.DeletionTimestamp is null).Select(m => m.Metadata.Name)], s, null);
        }

        if (s.Phase == CheckpointPhases.Ready)
        {
            return new([], [], s, null);
        }

        s.StartTime ??= f.Now;
        return s.Phase is null or CheckpointPhases.Pending ? Admit(f, p, s) : InFlight(f, p, s);
    }

    /// <summary>The pods a group names, in order: spec.pods as written, or the Running pods its podSelector matches, by name.</summary>
    public static IReadOnlyList<string> Resolve(Checkpoint group, IEnumerable<V1Pod> pods)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(pods);
        if (group.Spec.Pods is { Count: > 0 } named)
        {
            return [.. named];
        }

        var selector = group.Spec.PodSelector ?? new Dictionary<string, string>();
        return [.. pods.Where(pod => pod.Metadata.NamespaceProperty == group.Metadata.NamespaceProperty && pod.Status?.Phase == "Running" && pod.Metadata.DeletionTimestamp is null
                && selector.All(l => Keys.Get(pod.Metadata.Labels, l.Key) == l.Value))
            .Select(pod => pod.Metadata.Name)
            .Order(StringComparer.Ordinal)];
    }

    private static CheckpointGroupDecision Admit(CheckpointGroupFacts f, CheckpointGroupPolicy p, CheckpointStatus s)
    {
        var g = f.Group;
        var ns = g.Metadata.NamespaceProperty;
        if (g.Spec.Export is not null || g.Spec.Source is not null || g.Spec.PodName.Length > 0)
        {
            return Fail(s, f.Now, Reasons.InvalidGroup, "A group checkpoint names its pods by pods or podSelector only; export, source and podName are for a single pod's Checkpoint.");
        }

        var names = Resolve(g, f.Pods);
        if (names.Count == 0)
        {
            return Fail(s, f.Now, Reasons.InvalidGroup, $"podSelector {string.Join(",", g.Spec.PodSelector!.Select(l => $"{l.Key}={l.Value}"))} matches no Running pod in namespace {ns}.");
        }

        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count)
        {
            return Fail(s, f.Now, Reasons.InvalidGroup, $"pods names a pod more than once: {string.Join(", ", names.GroupBy(n => n, StringComparer.Ordinal).Where(x => x.Count() > 1).Select(x => x.Key))}.");
        }

        if (names.Count > p.MaxMembers)
        {
            return Fail(s, f.Now, Reasons.GroupTooLarge, $"The group names {names.Count} pods; at most {p.MaxMembers} are checkpointed together (Operator:MaxGroupMembers).");
        }

        if (g.Metadata.Name.Length > 63)
        {
            return Fail(s, f.Now, Reasons.InvalidGroup, $"A group Checkpoint's name is at most 63 characters (its members carry it in the label {Labels.Group}); {g.Metadata.Name} has {g.Metadata.Name.Length}.");
        }

        if (names.FirstOrDefault(n => MemberName(g.Metadata.Name, n).Length > 253) is { } tooLong)
        {
            return Fail(s, f.Now, Reasons.InvalidGroup, $"The member Checkpoint {MemberName(g.Metadata.Name, tooLong)} would be longer than 253 characters: use a shorter group name.");
        }

        var members = new List<CheckpointGroupMember>();
        foreach (var name in names)
        {
            var pod = f.Pods.FirstOrDefault(x => x.Metadata.NamespaceProperty == ns && x.Metadata.Name == name);
            if (pod is null)
            {
                return Fail(s, f.Now, Reasons.PodNotFound, $"Pod {ns}/{name} does not exist; nothing was checkpointed.");
            }

            if (pod.Status?.Phase != "Running" || string.IsNullOrEmpty(pod.Spec?.NodeName) || pod.Metadata.DeletionTimestamp is not null)
            {
                return Fail(s, f.Now, Reasons.PodNotRunning, $"Pod {ns}/{name} is {(pod.Metadata.DeletionTimestamp is not null ? "being deleted" : pod.Status?.Phase ?? "without a phase")}; only Running pods can be checkpointed, so nothing was.");
            }

            if (pod.Spec.HostNetwork == true)
            {
                return Fail(s, f.Now, Reasons.CheckpointRefused, $"Pod {ns}/{name} uses the host's network: its sockets belong to the node and cannot be checkpointed, so nothing was.");
            }

            members.Add(new CheckpointGroupMember { Name = MemberName(g.Metadata.Name, name), PodName = name, NodeName = pod.Spec.NodeName, Phase = CheckpointPhases.Pending });
        }

        s.Phase = CheckpointPhases.Checkpointing;
        s.Reason = "Checkpointing";
        s.Group = new CheckpointGroupStatus { Members = members };
        var nodes = members.Select(m => m.NodeName).Distinct(StringComparer.Ordinal).Count();
        s.Message = $"Checkpointing {Pods(members.Count)} on {nodes} node{(nodes == 1 ? "" : "s")} as one cut: each is held frozen once dumped until every one is.";
        return new([.. members.Select(m => new NewCheckpointMember(m.Name, m.PodName))], [], s, TimeSpan.FromMilliseconds(200),
            ("Normal", "Checkpointing", s.Message));
    }

    private static CheckpointGroupDecision InFlight(CheckpointGroupFacts f, CheckpointGroupPolicy p, CheckpointStatus s)
    {
        var group = s.Group ??= new CheckpointGroupStatus();
        var byName = f.Members.ToDictionary(m => m.Metadata.Name, StringComparer.Ordinal);
        var create = new List<NewCheckpointMember>();
        string? missing = null;
        foreach (var member in group.Members)
        {
            if (byName.TryGetValue(member.Name, out var c))
            {
                member.Phase = c.Status?.Phase ?? CheckpointPhases.Pending;
                member.Reason = c.Status?.Reason;
                member.NodeName = c.Status?.NodeName ?? member.NodeName;
                if (c.Status?.Held == true && member.Phase == CheckpointPhases.Checkpointing)
                {
                    member.Reason = CheckpointHolds.Dumped;
                }

                if (c.Metadata.DeletionTimestamp is not null && member.Phase != CheckpointPhases.Failed)
                {
                    // deleted by someone while the group is taken (even once kept): the cut is not whole any more
                    member.Phase = CheckpointPhases.Failed;
                    member.Reason = Reasons.Deleted;
                }
                else if (member.Phase == CheckpointPhases.Ready && group.Decision is null)
                {
                    // kept without being held (an agent that does not know holds): frozen on its own, not with the group
                    member.Phase = CheckpointPhases.Failed;
                    member.Reason = "NotHeld";
                }
            }
            else if (group.Decision is null && f.Now - s.StartTime < TimeSpan.FromSeconds(10))
            {
                create.Add(new NewCheckpointMember(member.Name, member.PodName)); // not seen yet (or not made: a pass that failed midway)
            }
            else if (member.Phase != CheckpointPhases.Failed)
            {
                missing ??= member.Name;
                member.Phase = CheckpointPhases.Failed;
                member.Reason = Reasons.Deleted;
            }
        }

        var failed = group.Members.Where(m => m.Phase == CheckpointPhases.Failed).ToList();
        var firstFailure = failed
            .Select(m => (Member: m, Checkpoint: byName.GetValueOrDefault(m.Name)))
            .OrderBy(x => x.Checkpoint?.Status?.Reason == Reasons.GroupRolledBack ? 1 : 0)
            .ThenBy(x => x.Checkpoint?.Status?.CompletionTime ?? DateTime.MinValue)
            .Select(x => x.Member.Reason == "NotHeld" ? $"member {x.Member.Name} (pod {x.Member.PodName}) was kept by its node's agent without being held with the rest (an agent older than group checkpoints)"
                : x.Checkpoint is { Metadata.DeletionTimestamp: null } c ? $"member {c.Metadata.Name} (pod {x.Member.PodName}) failed: {c.Status?.Reason}: {c.Status?.Message}"
                : $"member {x.Member.Name} (pod {x.Member.PodName}) was deleted")
            .FirstOrDefault();
        bool timedOut = f.Now - s.StartTime > p.Timeout;
        if (group.Decision is null && (failed.Count > 0 || timedOut))
        {
            group.Decision = CheckpointHolds.Abort;
            s.Reason = failed.Count > 0 ? Reasons.GroupRolledBack : Reasons.TimedOut;
            s.Message = failed.Count > 0
                ? $"Rolling the group back: {firstFailure}"
                : $"Rolling the group back: not every member was dumped within {p.Timeout.TotalSeconds:0} seconds.";
        }

        if (group.Decision == CheckpointHolds.Abort || (group.Decision == CheckpointHolds.Thaw && failed.Count > 0))
        {
            if (group.Members.All(m => CheckpointPhases.IsFinal(m.Phase)))
            {
                group.Decision = CheckpointHolds.Abort;
                var why = s.Reason == Reasons.TimedOut ? $"not every member was dumped within {p.Timeout.TotalSeconds:0} seconds" : firstFailure ?? "a member failed";
                return Fail(s, f.Now, s.Reason == Reasons.TimedOut ? Reasons.TimedOut : Reasons.GroupRolledBack,
                    $"The group checkpoint failed and every member was rolled back (thawed, nothing kept): {why.TrimEnd('.')}.");
            }

            return new(create, [], s, p.PollInterval);
        }

        if (group.Decision is null && group.Members.Count > 0
            && group.Members.All(m => m.Reason == CheckpointHolds.Dumped))
        {
            group.Decision = CheckpointHolds.Thaw;
            s.Reason = "Thawing";
            s.Message = $"Every one of the {group.Members.Count} members is frozen and dumped: the cut stands; thawing them and keeping their checkpoints.";
        }

        if (group.Members.Count > 0 && group.Members.All(m => m.Phase == CheckpointPhases.Ready))
        {
            return Ready(f, s, group, byName);
        }

        return new(create, [], s, p.PollInterval);
    }

    private static CheckpointGroupDecision Ready(CheckpointGroupFacts f, CheckpointStatus s, CheckpointGroupStatus group, Dictionary<string, Checkpoint> byName)
    {
        var members = group.Members.Select(m => byName[m.Name].Status!).ToList();
        var frozen = members.Select(m => m.CheckpointTime ?? f.Now).ToList();
        var thawed = members.Select(m => (m.CheckpointTime ?? f.Now).AddMilliseconds(m.FreezeMillis ?? 0)).ToList();
        s.Phase = CheckpointPhases.Ready;
        s.Reason = "Kept";
        s.CheckpointTime = frozen.Max();
        s.CompletionTime = f.Now;
        s.FreezeMillis = members.Max(m => m.FreezeMillis ?? 0);
        s.SizeBytes = members.Sum(m => m.SizeBytes ?? 0);
        group.SpreadMillis = (long)(thawed.Max() - frozen.Min()).TotalMilliseconds;
        var nodes = group.Members.Select(m => m.NodeName).Distinct(StringComparer.Ordinal).Count();
        s.Message = $"{Pods(group.Members.Count)} on {nodes} node{(nodes == 1 ? "" : "s")} checkpointed as one cut: {s.SizeBytes} bytes kept, "
            + $"the longest freeze {s.FreezeMillis} ms, {group.SpreadMillis} ms from the first member frozen to the last thawed.";
        return new([], [], s, null, ("Normal", "Checkpointed", s.Message));
    }

    private static string Pods(int count) => count == 1 ? "1 pod" : $"{count} pods";

    private static CheckpointGroupDecision Fail(CheckpointStatus s, DateTime now, string reason, string message)
    {
        s.Phase = CheckpointPhases.Failed;
        s.Reason = reason;
        s.Message = message;
        s.CompletionTime = now;
        return new([], [], s, TimeSpan.Zero, ("Warning", reason, message));
    }

    private static CheckpointStatus Clone(CheckpointStatus? status) =>
        status is null ? new CheckpointStatus() : System.Text.Json.JsonSerializer.Deserialize<CheckpointStatus>(System.Text.Json.JsonSerializer.Serialize(status))!;
}

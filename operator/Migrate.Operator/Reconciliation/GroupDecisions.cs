using System.Globalization;
using k8s.Models;

namespace Migrate.Operator.Reconciliation;

/// <summary>Everything one pass over a group request decides on: the request, its members' requests, the pods of its namespace, the other groups in flight.</summary>
public sealed record GroupFacts
{
    public required MigrationRequest Group { get; init; }

    public required DateTime Now { get; init; }

    /// <summary>The member MigrationRequests it owns.</summary>
    public IReadOnlyList<MigrationRequest> Members { get; init; } = [];

    /// <summary>The pods of the group's namespace.</summary>
    public IReadOnlyList<V1Pod> Pods { get; init; } = [];

    /// <summary>Other groups in flight, cluster-wide.</summary>
    public int GroupsInFlight { get; init; }
}

/// <summary>The limits of group migrations.</summary>
public sealed record GroupPolicy
{
    /// <summary>The most pods one group may move.</summary>
    public int MaxMembers { get; init; } = 8;

    /// <summary>The most groups in flight at once (each member of each counts against no other limit).</summary>
    public int MaxConcurrentGroups { get; init; } = 2;

    /// <summary>How long after its admission a group waits for a member request it made to appear before it gives up on the group.</summary>
    public TimeSpan MemberCreationTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How soon a group in flight is looked at again without a change.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(1);
}

/// <summary>A member request the pass wants made.</summary>
public sealed record NewMember(string Name, MigrationRequestSpec Spec);

/// <summary>What a pass over a group decided: its status, the member requests to create, events, when to look again.</summary>
public sealed record GroupDecision(MigrationRequestStatus Status, IReadOnlyList<NewMember> Create, IReadOnlyList<EventNote> Events, TimeSpan? RequeueAfter);

/// <summary>The phases of a group request besides the final ones of <see cref="MigrationPhases"/>.</summary>
public static class GroupPhases
{
    /// <summary>Its members are under way.</summary>
    public const string Migrating = "Migrating";
}

/// <summary>
/// What to do next with a group (gang) migration, from what was observed and nothing else: the
/// group is resolved and admitted once (every pod named exists and runs, within the size and
/// concurrency limits); each member is a MigrationRequest of its own that prepares by itself;
/// the gate opens one step further only when every member reached the step it guards (all
/// ready → freeze, all frozen → dump, all staged → commit, all restored → release); any member
/// failing before the release turns the gate to RollBack, and every member then goes back. The
/// group ends when every member has.
/// </summary>
public static class GroupDecisions
{
    /// <summary>For each gate: the step every member must have reached before the gate opens past it, and the gate that opens then.</summary>
    private static readonly Dictionary<string, (string Step, string Next)> Advance = new(StringComparer.Ordinal)
    {
        [GroupGates.Prepare] = (GroupSteps.Ready, GroupGates.Freeze),
        [GroupGates.Freeze] = (GroupSteps.Frozen, GroupGates.Dump),
        [GroupGates.Dump] = (GroupSteps.Staged, GroupGates.Commit),
        [GroupGates.Commit] = (GroupSteps.Restored, GroupGates.Release),
    };

    public static GroupDecision Decide(GroupFacts facts, GroupPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(facts);
        ArgumentNullException.ThrowIfNull(policy);
        var group = facts.Group;
        var s = group.Status?.Copy() ?? new MigrationRequestStatus();
        var events = new List<EventNote>();
        if (MigrationPhases.IsFinal(s.Phase))
        {
            return new GroupDecision(s, [], events, null);
        }

        s.StartTime ??= facts.Now;
        s.ObservedGeneration = group.Metadata.Generation;
        if (s.Group is null)
        {
            return Admit(facts, policy, s, events);
        }

        var g = s.Group;
        var byPod = facts.Members.ToDictionary(m => m.Spec.PodName, StringComparer.Ordinal);
        var create = new List<NewMember>();
        foreach (var member in g.Members)
        {
            if (byPod.TryGetValue(member.PodName, out var request))
            {
                var ms = request.Status ?? new MigrationRequestStatus();
                member.Request = request.Metadata.Name;
                member.Phase = ms.Phase;
                member.Step = ms.GroupStep;
                member.SourceNode = ms.SourceNode;
                member.TargetNode = ms.TargetNode;
                member.Reason = ms.Reason;
                member.Message = ms.Message;
                member.DowntimeMillis = ms.DowntimeMillis ?? member.DowntimeMillis;
                if (ms.Condition(ConditionTypes.Frozen) is { Status: "True" } frozen)
                {
                    member.FrozenTime ??= frozen.LastTransitionTime;
                }
            }
            else if (g.Gate == GroupGates.Prepare && member.Phase is null)
            {
                create.Add(new NewMember(member.Request ?? MemberName(group, member.PodName), MemberSpec(group, member.PodName)));
            }
        }

        var frozenSince = g.Members.Select(m => m.FrozenTime).OfType<DateTime>().ToList();
        if (frozenSince.Count > 0)
        {
            g.FirstFrozenTime = frozenSince.Min();
        }

        var downtimes = g.Members.Select(m => m.DowntimeMillis).OfType<long>().ToList();
        g.DowntimeMillis = downtimes.Count > 0 ? downtimes.Max() : g.DowntimeMillis;
        if (g.FirstFrozenTime is { } first && g.Members.All(m => m is { FrozenTime: not null, DowntimeMillis: not null }))
        {
            // the first member frozen to the last one running again, on the agents' clocks
            g.SpreadMillis = (long)(g.Members.Max(m => m.FrozenTime!.Value.AddMilliseconds(m.DowntimeMillis!.Value)) - first).TotalMilliseconds;
        }

        // a member request that never appeared (its name taken by a request that is not the group's)
        if (g.Gate == GroupGates.Prepare && create.Count > 0 && s.Condition(ConditionTypes.Validated)?.LastTransitionTime is { } admitted && facts.Now - admitted > policy.MemberCreationTimeout)
        {
            foreach (var missing in g.Members.Where(m => !byPod.ContainsKey(m.PodName)))
            {
                missing.Phase = MigrationPhases.Failed;
                missing.Reason = Reasons.InvalidGroup;
                missing.Message = $"MigrationRequest {missing.Request} could not be made for it (is the name taken by another request?).";
            }

            create.Clear();
        }

        // a member that failed, or is going back, before the release: all go back
        var failed = g.Members.FirstOrDefault(m => m.Phase is MigrationPhases.Failed or MigrationPhases.RolledBack
            || byPod.TryGetValue(m.PodName, out var r) && r.Status?.Is(ConditionTypes.RollingBack) == true);
        if (failed is not null && g.Gate is not (GroupGates.Release or GroupGates.RollBack))
        {
            g.Gate = GroupGates.RollBack;
            (g.GateTimes ??= new Dictionary<string, DateTime>())[GroupGates.RollBack] = facts.Now;
            s.Reason = Reasons.GroupRolledBack;
            s.Message = $"Member {failed.PodName} failed ({failed.Reason}: {failed.Message?.TrimEnd('.')}); every member is rolled back.";
            events.Add(new EventNote("Warning", Reasons.GroupRolledBack, s.Message));
            return new GroupDecision(s, create, events, TimeSpan.Zero);
        }

        if (g.Gate == GroupGates.RollBack)
        {
            if (g.Members.All(m => MigrationPhases.IsFinal(m.Phase) || m.Request is null && m.Phase is null && !byPod.ContainsKey(m.PodName)))
            {
                // a member refused at its admission changed nothing; one left frozen or not restored is the group's failure
                var stuck = g.Members.FirstOrDefault(m => m.Phase == MigrationPhases.Failed
                    && m.Reason is Reasons.SourceFrozenAgentUnreachable or Reasons.SourceFrozenTargetUnreachable or Reasons.RestoreInPlaceFailed);
                s.Phase = stuck is null ? MigrationPhases.RolledBack : MigrationPhases.Failed;
                s.CompletionTime = facts.Now;
                var outcome = s.Phase == MigrationPhases.RolledBack
                    ? "every member was rolled back and runs on where it was"
                    : $"member {stuck!.PodName} could not be rolled back ({stuck.Reason}: {stuck.Message?.TrimEnd('.')})";
                s.Message = string.IsNullOrEmpty(s.Message) ? $"Done: {outcome}." : $"{s.Message.TrimEnd('.')}. Done: {outcome}.";
                s.SetCondition(ConditionTypes.Ready, "False", s.Reason ?? Reasons.GroupRolledBack, s.Message, group.Metadata.Generation, facts.Now);
                events.Add(new EventNote("Warning", s.Reason ?? Reasons.GroupRolledBack, s.Message));
                return new GroupDecision(s, create, events, null);
            }

            return new GroupDecision(s, create, events, policy.PollInterval);
        }

        if (g.Gate == GroupGates.Release)
        {
            if (g.Members.All(m => MigrationPhases.IsFinal(m.Phase)))
            {
                var lost = g.Members.FirstOrDefault(m => m.Phase != MigrationPhases.Succeeded);
                s.Phase = lost is null ? MigrationPhases.Succeeded : MigrationPhases.Failed;
                s.Reason = lost is null ? Reasons.GroupMigrated : lost.Reason;
                s.CompletionTime = facts.Now;
                s.Message = lost is null
                    ? string.Create(CultureInfo.InvariantCulture, $"All {g.Members.Count} pods moved as one cut; the longest frozen for {g.DowntimeMillis ?? 0} ms.")
                    : $"Member {lost.PodName} failed after the group was released ({lost.Reason}: {lost.Message?.TrimEnd('.')}).";
                s.SetCondition(ConditionTypes.Ready, lost is null ? "True" : "False", s.Reason!, s.Message, group.Metadata.Generation, facts.Now);
                events.Add(new EventNote(lost is null ? "Normal" : "Warning", s.Reason!, s.Message));
                return new GroupDecision(s, create, events, null);
            }

            return new GroupDecision(s, create, events, policy.PollInterval);
        }

        // forward: the gate opens one step when every member reached what it guards
        var gate = g.Gate ?? GroupGates.Prepare;
        if (Advance.TryGetValue(gate, out var next) && g.Members.Count > 0 && g.Members.All(m => GroupSteps.AtLeast(m.Step, next.Step)))
        {
            g.Gate = next.Next;
            (g.GateTimes ??= new Dictionary<string, DateTime>())[next.Next] = facts.Now;
            s.Reason = next.Next;
            s.Message = next.Next switch
            {
                GroupGates.Freeze => $"Every member is ready: all {g.Members.Count} freeze and lock their network.",
                GroupGates.Dump => "Every member is frozen with its network locked: all dump.",
                GroupGates.Commit => "Every member's final images are staged on its target: all commit and restore, their networks still locked.",
                _ => "Every member's replacement runs: their networks are released together.",
            };
            if (next.Next == GroupGates.Release)
            {
                g.ReleaseTime = facts.Now;
            }

            events.Add(new EventNote("Normal", "Group" + next.Next, s.Message));
            return new GroupDecision(s, create, events, TimeSpan.Zero);
        }

        var behind = g.Members.Where(m => !GroupSteps.AtLeast(m.Step, Advance.TryGetValue(gate, out var n) ? n.Step : GroupSteps.Ready)).Select(m => m.PodName).ToList();
        s.Message = behind.Count > 0 ? $"Gate {gate}: waiting for {string.Join(", ", behind)}." : s.Message;
        return new GroupDecision(s, create, events, policy.PollInterval);
    }

    private static GroupDecision Admit(GroupFacts f, GroupPolicy policy, MigrationRequestStatus s, List<EventNote> events)
    {
        var group = f.Group;
        var spec = group.Spec;
        List<string> names;
        if (spec.Pods is { Count: > 0 } listed)
        {
            names = [.. listed.Select(p => p.PodName)];
            var twice = names.GroupBy(n => n, StringComparer.Ordinal).FirstOrDefault(n => n.Count() > 1);
            if (twice is not null)
            {
                return Refuse(f, s, events, Reasons.InvalidGroup, $"Pod {twice.Key} is named twice in the group.");
            }
        }
        else
        {
            var selector = spec.PodSelector ?? new Dictionary<string, string>();
            names = [.. f.Pods.Where(p => p.Status?.Phase == "Running" && p.Metadata.DeletionTimestamp is null
                    && selector.All(l => p.Metadata.Labels?.TryGetValue(l.Key, out var v) == true && v == l.Value)
                    && Keys.Get(p.Metadata.Annotations, Annotations.RestoreFrom) is null)
                .Select(p => p.Metadata.Name).Order(StringComparer.Ordinal)];
            if (names.Count == 0)
            {
                return Refuse(f, s, events, Reasons.InvalidGroup, $"No running pod in namespace {group.Metadata.NamespaceProperty} carries the labels {string.Join(",", selector.Select(l => l.Key + "=" + l.Value))}.");
            }
        }

        if (names.Count > policy.MaxMembers)
        {
            return Refuse(f, s, events, Reasons.GroupTooLarge, $"The group has {names.Count} pods; at most {policy.MaxMembers} move together.");
        }

        var missing = names.FirstOrDefault(n => f.Pods.All(p => p.Metadata.Name != n));
        if (missing is not null)
        {
            return Refuse(f, s, events, Reasons.PodNotFound, $"Pod {group.Metadata.NamespaceProperty}/{missing} of the group does not exist.");
        }

        var idle = names.FirstOrDefault(n => f.Pods.First(p => p.Metadata.Name == n).Status?.Phase != "Running");
        if (idle is not null)
        {
            return Refuse(f, s, events, Reasons.PodNotRunning, $"Pod {group.Metadata.NamespaceProperty}/{idle} of the group is not Running.");
        }

        if (f.GroupsInFlight >= policy.MaxConcurrentGroups)
        {
            s.Phase = MigrationPhases.Pending;
            s.Reason = Reasons.Queued;
            s.Message = $"Waiting: {f.GroupsInFlight} group migration(s) are in flight, the limit is {policy.MaxConcurrentGroups}.";
            return new GroupDecision(s, [], events, policy.PollInterval);
        }

        s.Phase = GroupPhases.Migrating;
        s.Reason = Reasons.Validated;
        s.Message = $"Moving {names.Count} pods as one group: {string.Join(", ", names)}.";
        s.Group = new GroupStatus
        {
            Gate = GroupGates.Prepare,
            Members = [.. names.Select(n => new GroupMemberStatus { PodName = n, Request = MemberName(group, n) })],
        };
        s.SetCondition(ConditionTypes.Validated, "True", Reasons.Validated, s.Message, group.Metadata.Generation, f.Now);
        events.Add(new EventNote("Normal", Reasons.Validated, s.Message));
        return new GroupDecision(s, [.. names.Select(n => new NewMember(MemberName(group, n), MemberSpec(group, n)))], events, TimeSpan.Zero);
    }

    private static GroupDecision Refuse(GroupFacts f, MigrationRequestStatus s, List<EventNote> events, string reason, string message)
    {
        s.Phase = MigrationPhases.Failed;
        s.Reason = reason;
        s.Message = message + " Nothing was changed.";
        s.CompletionTime = f.Now;
        s.SetCondition(ConditionTypes.Ready, "False", reason, s.Message, f.Group.Metadata.Generation, f.Now);
        events.Add(new EventNote("Warning", reason, s.Message));
        return new GroupDecision(s, [], events, null);
    }

    /// <summary>A member request's name: the group's and the pod's (a DNS subdomain of at most 253 characters).</summary>
    public static string MemberName(MigrationRequest group, string podName)
    {
        ArgumentNullException.ThrowIfNull(group);
        var name = group.Metadata.Name + "-" + podName;
        return name.Length <= 253 ? name : name[..253].TrimEnd('-', '.');
    }

    /// <summary>A member's spec: the pod, its target (its own, else the group's), and the group's way of moving.</summary>
    public static MigrationRequestSpec MemberSpec(MigrationRequest group, string podName)
    {
        ArgumentNullException.ThrowIfNull(group);
        var spec = group.Spec;
        return new MigrationRequestSpec
        {
            PodName = podName,
            TargetNode = spec.Pods?.FirstOrDefault(p => p.PodName == podName)?.TargetNode is { Length: > 0 } own ? own : spec.TargetNode,
            TargetNodeSelector = spec.TargetNodeSelector,
            AvoidNodes = spec.AvoidNodes,
            Mode = spec.Mode,
            PreCopy = spec.PreCopy,
            TimeoutSeconds = spec.TimeoutSeconds,
            KeepAddress = spec.KeepAddress,
        };
    }
}

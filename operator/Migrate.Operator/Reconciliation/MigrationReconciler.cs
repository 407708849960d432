using System.Net;
using k8s.Autorest;
using k8s.Models;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// One pass over one MigrationRequest: gather the facts (caches; the two agents' reports; for a new
/// request, admission's), decide (<see cref="MigrationDecisions"/>, no I/O), carry the decision out
/// (<see cref="MigrationExecutor"/>). Returns when to look again without a change.
/// </summary>
public sealed partial class MigrationReconciler(ClusterCache cache, AgentViews agents, AdmissionGatherer admission, MigrationExecutor executor, MigrationPolicy policy,
    TimeProvider time, ILogger logger)
{
    public MigrationPolicy Policy => policy;

    public async Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        var request = cache.Requests.Get(key.Namespace, key.Name);
        if (request is null || request.Spec.IsGroup)
        {
            return null; // (a group request is the GroupController's)
        }

        var facts = await GatherAsync(request, cancellationToken);
        var decision = MigrationDecisions.Decide(facts, policy);
        Report(key, request.Status, decision);
        try
        {
            var stored = await executor.ExecuteAsync(facts, decision, cancellationToken);
            cache.Requests.Written(request, stored);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // someone wrote first (the cache was behind): the next pass starts from what they wrote
            return TimeSpan.FromMilliseconds(50);
        }

        return decision.RequeueAfter;
    }

    public async Task<MigrationFacts> GatherAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var status = request.Status ?? new MigrationRequestStatus();
        var ns = request.Metadata.NamespaceProperty;
        var id = MigrationExecutor.MigrationId(request);
        var named = cache.Pods.Get(ns, request.Spec.PodName);
        V1Pod? replacement = null;
        V1Pod? foreign = null;
        if (status.SourceNode is not null)
        {
            var byName = cache.Pods.Get(ns, MigrationExecutor.ReplacementName(request));
            if (byName is not null && Keys.Get(byName.Metadata.Annotations, Annotations.RestoreFrom) == id)
            {
                replacement = byName;
            }
            else if (byName is not null && !MigrationExecutor.KeepsName(request))
            {
                foreign = byName;
            }
            else if (byName is not null && status.Is(ConditionTypes.SourceRetired) && byName.Metadata.Uid != SavedSourceUid(request))
            {
                // (the retired source itself, still on its way out, is not a stranger)
                foreign = byName;
            }
        }

        var sourceNode = status.SourceNode is { } s ? cache.Nodes.Get(null, s) : null;
        var targetNode = status.TargetNode is { } t ? cache.Nodes.Get(null, t) : null;
        bool askAgents = status.SourceNode is not null
            && (!MigrationPhases.IsFinal(status.Phase) || status.PendingCleanup is { Count: > 0 } || status.Phase == MigrationPhases.Failed);
        var sourceAgent = AgentView.None;
        var targetAgent = AgentView.None;
        if (askAgents)
        {
            var source = agents.GetAsync(sourceNode, id, cancellationToken);
            var target = status.TargetNode == status.SourceNode ? source : agents.GetAsync(targetNode, id, cancellationToken);
            sourceAgent = await source;
            targetAgent = await target;
        }

        Validation? verdict = null;
        if (status.SourceNode is null && !MigrationPhases.IsFinal(status.Phase) && request.Metadata.DeletionTimestamp is null
            && request.Metadata.Finalizers?.Contains(Finalizers.Cleanup) == true)
        {
            verdict = Admission.Evaluate(request, await admission.GatherAsync(request, cancellationToken));
        }

        var others = cache.Requests.Items.Where(r => r.Metadata.Uid != request.Metadata.Uid && IsInFlight(r)).ToList();
        string? gate = null;
        if (GroupOwner(request) is { } owner)
        {
            // a member whose group request is gone (or going) goes back, unless it was released already
            var group = cache.Requests.Get(ns, owner.Name);
            gate = group is null || group.Metadata.Uid != owner.Uid || group.Metadata.DeletionTimestamp is not null ? GroupGates.RollBack
                : group.Status?.Group?.Gate ?? GroupGates.Prepare;
        }

        return new MigrationFacts
        {
            Request = request,
            Now = time.GetUtcNow().UtcDateTime,
            NamedPod = named,
            Replacement = replacement,
            ForeignNameHolder = foreign,
            SourceNode = sourceNode,
            TargetNode = targetNode,
            SourceAgent = sourceAgent,
            TargetAgent = targetAgent,
            InFlight = others.Count,
            OutboundFromSource = others.Count(r => r.Status!.SourceNode == status.SourceNode),
            InboundToTarget = others.Count(r => r.Status!.TargetNode == status.TargetNode),
            Admission = verdict,
            GroupGate = gate,
        };
    }

    /// <summary>The group request a member belongs to: its controlling owner, a MigrationRequest (null for a request of its own).</summary>
    public static V1OwnerReference? GroupOwner(MigrationRequest request) =>
        Keys.Get(request?.Metadata.Labels, Labels.Group) is { } name
            ? request!.Metadata.OwnerReferences?.FirstOrDefault(o => o.Controller == true && o.Kind == MigrationRequest.KindName && o.Name == name)
            : null;

    private static string? SavedSourceUid(MigrationRequest request)
    {
        try
        {
            return MigrationExecutor.SavedSource(request).Metadata.Uid;
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>Logs a change of phase or reason, and the action, of a pass.</summary>
    private void Report(ObjectKey key, MigrationRequestStatus? before, Decision decision)
    {
        if (!logger.IsEnabled(LogLevel.Information))
        {
            return;
        }

        var name = key.ToString();
        var after = decision.Status;
        bool rolling = after.Is(ConditionTypes.RollingBack);
        if (before?.Phase != after.Phase || before?.Reason != after.Reason || before?.Is(ConditionTypes.RollingBack) != rolling)
        {
            var suffix = rolling ? " (rolling back)" : "";
            LogStatus(name, after.Phase, after.Reason, suffix, after.Message);
        }

        if (decision.Action is not MigrationAction.Nothing)
        {
            var action = decision.Action.ToString();
            LogAction(name, action);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "MigrationRequest {Key}: {Phase} ({Reason}){Rolling}: {Message}")]
    private partial void LogStatus(string key, string? phase, string? reason, string rolling, string? message);

    [LoggerMessage(Level = LogLevel.Information, Message = "MigrationRequest {Key}: {Action}")]
    private partial void LogAction(string key, string action);

    /// <summary>A migration that holds a slot: started (or rolling back) and not yet final.</summary>
    public static bool IsInFlight(MigrationRequest request) =>
        request?.Status?.Phase is MigrationPhases.Checkpointing or MigrationPhases.Transferring or MigrationPhases.Restoring or MigrationPhases.CuttingOver;
}

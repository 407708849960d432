using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Scheduling;

namespace Migrate.Operator.Reconciliation;

/// <summary>The outcome of checking a request: the nodes it moves between, or why it cannot go ahead.</summary>
public sealed record Validation(string? SourceNode, string? TargetNode, string? FailureReason, string? FailureMessage)
{
    /// <summary>The replacement must take the pod's name (a StatefulSet's pod that opted in).</summary>
    public bool KeepsName { get; init; }

    /// <summary>The replacement keeps the pod's address: asked for, or the default where both nodes' network can move it.</summary>
    public bool KeepsAddress { get; init; }

    /// <summary>The path the migration takes (CheckpointPaths.RuntimeClass or Cri).</summary>
    public string CheckpointPath { get; init; } = CheckpointPaths.RuntimeClass;

    /// <summary>The mode the request runs (status.mode) and why; for Auto possibly still to be settled when its rounds end.</summary>
    public ModeChoice.Choice? Mode { get; init; }

    public bool Failed => FailureReason is not null;

    public static Validation Fail(string reason, string message) => new(null, null, reason, message);
}

/// <summary>What admitting a request looks at: its pod, the nodes and their pods, the agents' capabilities (null: no agent answers there), the other requests.</summary>
public sealed record AdmissionFacts(
    V1Pod? Pod,
    IReadOnlyList<V1Node> Nodes,
    IReadOnlyList<V1Pod> Pods,
    IReadOnlyDictionary<string, GetCapabilitiesResponse?> Agents,
    IReadOnlyList<MigrationRequest> Requests);

/// <summary>
/// Checks a new MigrationRequest before anything is touched, as an ordered chain of checks whose
/// first failure gives the reason: the pod exists and runs, it may move (not a DaemonSet's; a
/// StatefulSet's only if it opted in to keeping its name), no other request is moving it, its node
/// has an agent, and the target (given, or chosen by <see cref="TargetSelector"/>) exists, is
/// Ready and schedulable, is not the source and has an agent compatible with the source's.
/// </summary>
public static class Admission
{
    public static Validation Evaluate(MigrationRequest request, AdmissionFacts facts)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(facts);
        var ns = request.Metadata.NamespaceProperty;
        var podName = request.Spec.PodName;
        if (facts.Pod is not { } pod)
        {
            return Validation.Fail(Reasons.PodNotFound, $"Pod {ns}/{podName} does not exist.");
        }

        if (pod.Status?.Phase != "Running" || string.IsNullOrEmpty(pod.Spec.NodeName) || pod.Metadata.DeletionTimestamp is not null)
        {
            var state = pod.Metadata.DeletionTimestamp is not null ? "being deleted" : pod.Status?.Phase ?? "without a phase";
            return Validation.Fail(Reasons.PodNotRunning, $"Pod {ns}/{podName} is {state}; only a Running pod can be moved.");
        }

        bool keepsName = false;
        if (pod.Metadata.OwnerReferences?.FirstOrDefault(o => o.Controller == true && o.Kind == "StatefulSet") is { } statefulSet)
        {
            // its replacement needs the same name, free only once the source is gone; the operator's pod
            // webhook keeps the StatefulSet from taking it meanwhile, for pods labelled to be guarded
            if (Keys.Get(pod.Metadata.Labels, Labels.KeepName) != "true")
            {
                return Validation.Fail(Reasons.PodOwnedByStatefulSet,
                    $"Pod {ns}/{podName} belongs to StatefulSet {statefulSet.Name}, whose pods keep their names; label its pod template {Labels.KeepName}=true (with the operator's pod webhook installed) to move it.");
            }

            keepsName = true;
        }

        if (pod.Metadata.OwnerReferences?.FirstOrDefault(o => o.Controller == true && o.Kind == "DaemonSet") is { } daemonSet)
        {
            return Validation.Fail(Reasons.PodOwnedByDaemonSet,
                $"Pod {ns}/{podName} belongs to DaemonSet {daemonSet.Name}, which runs one pod on each node; it cannot move to another node.");
        }

        var first = facts.Requests
            .Where(r => r.Metadata.NamespaceProperty == ns && r.Spec.PodName == podName && !MigrationPhases.IsFinal(r.Status?.Phase))
            .OrderBy(r => r.Metadata.CreationTimestamp ?? DateTime.MaxValue)
            .ThenBy(r => r.Metadata.Name, StringComparer.Ordinal)
            .FirstOrDefault();
        if (first is not null && first.Metadata.Name != request.Metadata.Name)
        {
            return Validation.Fail(Reasons.PodAlreadyMigrating, $"Pod {ns}/{podName} is already being moved by MigrationRequest {first.Metadata.Name}.");
        }

        var source = pod.Spec.NodeName;
        var sourceAgent = facts.Agents.GetValueOrDefault(source);
        if (sourceAgent is null)
        {
            return Validation.Fail(Reasons.SourceHasNoAgent, $"Node {source}, where the pod runs, has no reachable pod-migration agent to checkpoint it.");
        }

        bool requireAddress = request.Spec.KeepAddress == true;
        if (requireAddress && sourceAgent.Network?.MovesAddresses != true)
        {
            // the documented alternative: without keepAddress the pod moves with a new address (refused only while it holds established connections)
            return Validation.Fail(Reasons.AddressCannotMove,
                $"Pod {ns}/{podName} cannot keep its address: node {source}'s pod network cannot move an address to another node ({Compatibility.Describe(sourceAgent.Network)}). Move it without keepAddress to give it a new address.");
        }

        var target = request.Spec.TargetNode;
        if (!string.IsNullOrEmpty(target))
        {
            var node = facts.Nodes.FirstOrDefault(n => n.Metadata.Name == target);
            if (node is null)
            {
                return Validation.Fail(Reasons.TargetNotFound, $"Node {target} does not exist.");
            }

            if (target == source)
            {
                return Validation.Fail(Reasons.TargetIsSource, $"Node {target} is the node pod {podName} already runs on.");
            }

            if (node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status != "True")
            {
                return Validation.Fail(Reasons.TargetNotReady, $"Node {target} is not Ready.");
            }

            if (node.Spec?.Unschedulable == true)
            {
                return Validation.Fail(Reasons.TargetUnschedulable, $"Node {target} is cordoned (unschedulable).");
            }

            var view = View(node, facts);
            if (TargetSelector.WhyNot(pod, source, view, sourceAgent, requireAddress) is { } why)
            {
                return Validation.Fail(view.Agent is null ? Reasons.TargetHasNoAgent : Reasons.TargetIncompatible, $"Node {target} {why}.");
            }

            return WithPath(request, keepsName, source, sourceAgent, target, view.Agent);
        }

        bool cri = request.Spec.CheckpointPath == CheckpointPaths.Cri;
        var candidates = facts.Nodes.Where(n => n.Metadata.Name != source && Wanted(n, request.Spec)
            && (!cri || CheckpointPathChoice.RestoresCri(facts.Agents.GetValueOrDefault(n.Metadata.Name)))).ToList();
        if (candidates.Count == 0)
        {
            var selector = string.Join(",", (request.Spec.TargetNodeSelector ?? new Dictionary<string, string>()).Select(l => $"{l.Key}={l.Value}"));
            return Validation.Fail(Reasons.NoEligibleTarget,
                $"No node other than {source}{(cri ? " whose runtime restores CRI checkpoints" : "")} matches the request's targetNodeSelector ({(selector.Length > 0 ? selector : "none")}) outside its avoidNodes ({string.Join(",", request.Spec.AvoidNodes ?? [])}).");
        }

        var choice = TargetSelector.Choose(pod, source, candidates.Select(n => View(n, facts)), sourceAgent, requireAddress);
        return choice.Node is null
            ? Validation.Fail(Reasons.NoEligibleTarget, char.ToUpperInvariant(choice.Explain()[0]) + choice.Explain()[1..] + ".")
            : WithPath(request, keepsName, source, sourceAgent, choice.Node, facts.Agents.GetValueOrDefault(choice.Node));
    }

    /// <summary>The admitted move, with its path; a CRI path that cannot be taken is refused, naming why.</summary>
    private static Validation WithPath(MigrationRequest request, bool keepsName, string source, GetCapabilitiesResponse sourceAgent, string target, GetCapabilitiesResponse? targetAgent)
    {
        var path = CheckpointPathChoice.Decide(request.Spec.CheckpointPath, request.Spec.Mode, keepsName, request.Spec.KeepAddress == true, source, sourceAgent, target, targetAgent);
        if (path.Path is null)
        {
            return Validation.Fail(Reasons.CriPathUnavailable, $"Pod {request.Metadata.NamespaceProperty}/{request.Spec.PodName} cannot move through the CRI path: {path.Refusal}");
        }

        bool groupMember = Keys.Get(request.Metadata.Labels, Labels.Group) is not null, lazyTarget = targetAgent?.Criu?.LazyPages == true;
        if (PostCopyChoice.WhyNot(request.Spec.Mode, keepsName, groupMember, target, lazyTarget) is { } refusal)
        {
            return Validation.Fail(Reasons.TargetIncompatible, refusal);
        }

        bool cri = path.Path == CheckpointPaths.Cri;
        return new Validation(source, target, null, null)
        {
            KeepsName = keepsName,
            // the CRI path's replacement gets a new address: the runtime restores the pod into a new sandbox
            KeepsAddress = !cri && KeepsAddress(request, sourceAgent, targetAgent),
            CheckpointPath = path.Path,
            Mode = ModeChoice.AtAdmission(request.Spec.Mode, path.Path, PostCopyChoice.Obstacle(keepsName, groupMember, target, lazyTarget),
                (request.Spec.PreCopy ?? new PreCopyLimits()).FrozenSendLimitMillis),
        };
    }

    /// <summary>Whether the replacement keeps the address: as asked, or (not asked either way) where it can move from the source's network to the target's.</summary>
    private static bool KeepsAddress(MigrationRequest request, GetCapabilitiesResponse source, GetCapabilitiesResponse? target) =>
        request.Spec.KeepAddress ?? (source.Network?.MovesAddresses == true && Compatibility.WhyAddressCannotMove(source.Network, target?.Network) is null);

    /// <summary>The nodes whose agents admission asks: the pod's, and the Ready ones it may pick or was given.</summary>
    public static IEnumerable<V1Node> NodesToAsk(MigrationRequest request, V1Pod? pod, IEnumerable<V1Node> nodes)
    {
        ArgumentNullException.ThrowIfNull(request);
        return (nodes ?? []).Where(n => n.Metadata.Name == pod?.Spec?.NodeName
            || (IsReady(n) && (string.IsNullOrEmpty(request.Spec.TargetNode) ? Wanted(n, request.Spec) : n.Metadata.Name == request.Spec.TargetNode)));
    }

    /// <summary>Whether the request lets the operator pick this node (its targetNodeSelector and avoidNodes).</summary>
    private static bool Wanted(V1Node node, MigrationRequestSpec spec) =>
        spec.AvoidNodes?.Contains(node.Metadata.Name) != true
        && (spec.TargetNodeSelector ?? new Dictionary<string, string>()).All(l => node.Metadata.Labels?.TryGetValue(l.Key, out var v) == true && v == l.Value);

    private static bool IsReady(V1Node node) => node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status == "True";

    private static NodeView View(V1Node node, AdmissionFacts facts) =>
        new(node, [.. facts.Pods.Where(p => p.Spec.NodeName == node.Metadata.Name)], IsReady(node) ? facts.Agents.GetValueOrDefault(node.Metadata.Name) : null);
}

/// <summary>Gathers what admission looks at, from the caches and, for the agents' capabilities, from the agents (kept for half a minute).</summary>
public sealed class AdmissionGatherer(ClusterCache cache, CapabilitiesCache capabilities)
{
    public AdmissionGatherer(ClusterCache cache, IAgentDirectory agents, TimeProvider time)
        : this(cache, new CapabilitiesCache(agents, time))
    {
    }

    public async Task<AdmissionFacts> GatherAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var pod = cache.Pods.Get(request.Metadata.NamespaceProperty, request.Spec.PodName);
        var nodes = cache.Nodes.Items.ToList();
        var asked = Admission.NodesToAsk(request, pod, nodes).ToList();
        var answers = await Task.WhenAll(asked.Select(async n => (n.Metadata.Name, Capabilities: await capabilities.GetAsync(n, cancellationToken))));
        return new AdmissionFacts(pod, nodes, [.. cache.Pods.Items], answers.ToDictionary(a => a.Name, a => a.Capabilities, StringComparer.Ordinal), [.. cache.Requests.Items]);
    }
}

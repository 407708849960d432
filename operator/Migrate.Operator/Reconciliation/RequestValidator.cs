using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Scheduling;

namespace Migrate.Operator.Reconciliation;

/// <summary>The outcome of checking a request: the nodes it moves between, or why it cannot go ahead.</summary>
public sealed record Validation(string? SourceNode, string? TargetNode, string? FailureReason, string? FailureMessage)
{
    /// <summary>The replacement must take the pod's name (a StatefulSet's pod that opted in).</summary>
    public bool KeepsName { get; init; }

    public bool Failed => FailureReason is not null;

    public static Validation Fail(string reason, string message) => new(null, null, reason, message);
}

/// <summary>
/// Checks a new MigrationRequest before anything is touched: the pod exists and runs, no other
/// request is moving it, and the target (given, or chosen by <see cref="TargetSelector"/>) exists,
/// is Ready and schedulable, is not the source, and has an agent compatible with the source's.
/// </summary>
public sealed class RequestValidator(IKubernetes client, IAgentDirectory agents)
{
    public async Task<Validation> ValidateAsync(MigrationRequest request, IReadOnlyList<MigrationRequest> all, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(all);
        var ns = request.Metadata.NamespaceProperty;
        var podName = request.Spec.PodName;
        var pod = await ReadAsync(() => client.CoreV1.ReadNamespacedPodAsync(podName, ns, cancellationToken: cancellationToken));
        if (pod is null)
        {
            return Validation.Fail("PodNotFound", $"Pod {ns}/{podName} does not exist.");
        }

        if (pod.Status?.Phase != "Running" || string.IsNullOrEmpty(pod.Spec.NodeName) || pod.Metadata.DeletionTimestamp is not null)
        {
            var state = pod.Metadata.DeletionTimestamp is not null ? "being deleted" : pod.Status?.Phase ?? "without a phase";
            return Validation.Fail("PodNotRunning", $"Pod {ns}/{podName} is {state}; only a Running pod can be moved.");
        }

        bool keepsName = false;
        if (pod.Metadata.OwnerReferences?.FirstOrDefault(o => o.Controller == true && o.Kind == "StatefulSet") is { } statefulSet)
        {
            // its replacement needs the same name, free only once the source is gone; the operator's pod
            // webhook keeps the StatefulSet from taking it meanwhile, for pods labelled to be guarded
            if (Keys.Get(pod.Metadata.Labels, Labels.KeepName) != "true")
            {
                return Validation.Fail("PodOwnedByStatefulSet",
                    $"Pod {ns}/{podName} belongs to StatefulSet {statefulSet.Name}, whose pods keep their names; label its pod template {Labels.KeepName}=true (with the operator's pod webhook installed) to move it.");
            }

            keepsName = true;
        }

        if (pod.Metadata.OwnerReferences?.FirstOrDefault(o => o.Controller == true && o.Kind == "DaemonSet") is { } daemonSet)
        {
            return Validation.Fail("PodOwnedByDaemonSet",
                $"Pod {ns}/{podName} belongs to DaemonSet {daemonSet.Name}, which runs one pod on each node; it cannot move to another node.");
        }

        var first = all
            .Where(r => r.Metadata.NamespaceProperty == ns && r.Spec.PodName == podName && !MigrationPhases.IsFinal(r.Status?.Phase))
            .OrderBy(r => r.Metadata.CreationTimestamp ?? DateTime.MaxValue)
            .ThenBy(r => r.Metadata.Name, StringComparer.Ordinal)
            .FirstOrDefault();
        if (first is not null && first.Metadata.Name != request.Metadata.Name)
        {
            return Validation.Fail("PodAlreadyMigrating", $"Pod {ns}/{podName} is already being moved by MigrationRequest {first.Metadata.Name}.");
        }

        var source = pod.Spec.NodeName;
        var nodes = await client.CoreV1.ListNodeAsync(cancellationToken: cancellationToken);
        var sourceNode = nodes.Items.FirstOrDefault(n => n.Metadata.Name == source);
        var sourceAgent = sourceNode is null ? null : await agents.GetCapabilitiesAsync(sourceNode, cancellationToken);
        if (sourceAgent is null)
        {
            return Validation.Fail("SourceHasNoAgent", $"Node {source}, where the pod runs, has no reachable pod-migration agent to checkpoint it.");
        }

        var pods = await client.CoreV1.ListPodForAllNamespacesAsync(cancellationToken: cancellationToken);
        var target = request.Spec.TargetNode;
        if (!string.IsNullOrEmpty(target))
        {
            var node = nodes.Items.FirstOrDefault(n => n.Metadata.Name == target);
            if (node is null)
            {
                return Validation.Fail("TargetNotFound", $"Node {target} does not exist.");
            }

            if (target == source)
            {
                return Validation.Fail("TargetIsSource", $"Node {target} is the node pod {podName} already runs on.");
            }

            if (node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status != "True")
            {
                return Validation.Fail("TargetNotReady", $"Node {target} is not Ready.");
            }

            if (node.Spec?.Unschedulable == true)
            {
                return Validation.Fail("TargetUnschedulable", $"Node {target} is cordoned (unschedulable).");
            }

            var view = await ViewAsync(node, pods.Items, cancellationToken);
            if (TargetSelector.WhyNot(pod, source, view, sourceAgent) is { } why)
            {
                return Validation.Fail(view.Agent is null ? "TargetHasNoAgent" : "TargetIncompatible", $"Node {target} {why}.");
            }

            return new Validation(source, target, null, null) { KeepsName = keepsName };
        }

        if (!nodes.Items.Any(n => n.Metadata.Name != source && Wanted(n, request.Spec)))
        {
            var selector = string.Join(",", (request.Spec.TargetNodeSelector ?? new Dictionary<string, string>()).Select(l => $"{l.Key}={l.Value}"));
            return Validation.Fail("NoEligibleTarget",
                $"No node other than {source} matches the request's targetNodeSelector ({(selector.Length > 0 ? selector : "none")}) outside its avoidNodes ({string.Join(",", request.Spec.AvoidNodes ?? [])}).");
        }

        var views = new List<NodeView>();
        foreach (var node in nodes.Items.Where(n => Wanted(n, request.Spec)))
        {
            views.Add(await ViewAsync(node, pods.Items, cancellationToken));
        }

        var choice = TargetSelector.Choose(pod, source, views, sourceAgent);
        return choice.Node is null
            ? Validation.Fail("NoEligibleTarget", char.ToUpperInvariant(choice.Explain()[0]) + choice.Explain()[1..] + ".")
            : new Validation(source, choice.Node, null, null) { KeepsName = keepsName };
    }

    /// <summary>Whether the request lets the operator pick this node (its targetNodeSelector and avoidNodes).</summary>
    private static bool Wanted(V1Node node, MigrationRequestSpec spec) =>
        spec.AvoidNodes?.Contains(node.Metadata.Name) != true
        && (spec.TargetNodeSelector ?? new Dictionary<string, string>()).All(l => node.Metadata.Labels?.TryGetValue(l.Key, out var v) == true && v == l.Value);

    private async Task<NodeView> ViewAsync(V1Node node, IList<V1Pod> pods, CancellationToken cancellationToken)
    {
        GetCapabilitiesResponse? agent = null;
        if (node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status == "True")
        {
            agent = await agents.GetCapabilitiesAsync(node, cancellationToken);
        }

        return new NodeView(node, [.. pods.Where(p => p.Spec.NodeName == node.Metadata.Name)], agent);
    }

    private static async Task<T?> ReadAsync<T>(Func<Task<T>> read)
        where T : class
    {
        try
        {
            return await read();
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }
}

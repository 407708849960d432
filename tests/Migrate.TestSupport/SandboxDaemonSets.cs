using k8s;
using k8s.Models;

namespace Migrate.TestSupport;

/// <summary>
/// The sandbox's stand-in for kube-controller-manager's DaemonSet controller (there is no real one
/// here): every DaemonSet gets one pod on every node whose taints it tolerates, made from its
/// template (generateName NAME-, its labels plus pod-template-generation, owned by the DaemonSet
/// as its controller) and bound to the node (the real controller leaves binding to the scheduler
/// through a node affinity; the outcome is the same pod on the same node). A pod that is gone or
/// failed is replaced; the status counts the pods scheduled, ready and up to date. Updates to a
/// template are not rolled out. It looks every 200 ms.
/// </summary>
public sealed class SandboxDaemonSets : SandboxController
{
    /// <summary>The label pods carry with the template generation they were made from.</summary>
    public const string GenerationLabel = "pod-template-generation";

    private SandboxDaemonSets(IKubernetes client)
        : base(client, "daemonset", TimeSpan.FromMilliseconds(200))
    {
    }

    public static SandboxDaemonSets Start(IKubernetes client)
    {
        var controller = new SandboxDaemonSets(client);
        controller.Run();
        return controller;
    }

    /// <summary>What the controller does for one DaemonSet: the nodes that need a pod, the failed pods to delete, and its status (a pure function).</summary>
    public static (IReadOnlyList<string> Create, IReadOnlyList<V1Pod> Delete, V1DaemonSetStatus Status) Plan(V1DaemonSet daemonSet, IEnumerable<V1Node> nodes, IEnumerable<V1Pod> pods)
    {
        ArgumentNullException.ThrowIfNull(daemonSet);
        var eligible = nodes.Where(n => Tolerates(daemonSet.Spec.Template.Spec.Tolerations ?? [], n.Spec?.Taints ?? []))
            .Select(n => n.Metadata.Name).Order(StringComparer.Ordinal).ToList();
        var owned = pods.Where(p => p.Metadata.NamespaceProperty == daemonSet.Metadata.NamespaceProperty
            && p.Metadata.OwnerReferences?.Any(o => o.Controller == true && o.Uid == daemonSet.Metadata.Uid) == true).ToList();
        var failed = owned.Where(p => p.Status?.Phase == "Failed" && p.Metadata.DeletionTimestamp is null).ToList();
        var live = owned.Where(p => p.Status?.Phase != "Failed").ToList();
        var create = eligible.Where(node => !live.Any(p => p.Spec.NodeName == node)).ToList();
        var onEligible = live.Where(p => p.Metadata.DeletionTimestamp is null && eligible.Contains(p.Spec.NodeName)).ToList();
        var ready = onEligible.Where(p => p.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true).ToList();
        var generation = (daemonSet.Metadata.Generation ?? 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
        var status = new V1DaemonSetStatus
        {
            DesiredNumberScheduled = eligible.Count,
            CurrentNumberScheduled = onEligible.Select(p => p.Spec.NodeName).Distinct().Count(),
            NumberMisscheduled = live.Count(p => !eligible.Contains(p.Spec.NodeName)),
            NumberReady = ready.Count,
            NumberAvailable = ready.Count,
            NumberUnavailable = eligible.Count - ready.Count,
            UpdatedNumberScheduled = onEligible.Count(p => p.Metadata.Labels?.TryGetValue(GenerationLabel, out var g) == true && g == generation),
            ObservedGeneration = daemonSet.Metadata.Generation,
        };
        return (create, failed, status);
    }

    /// <summary>Whether tolerations let a pod onto a node with these taints (NoSchedule and NoExecute; PreferNoSchedule never keeps it off).</summary>
    public static bool Tolerates(IEnumerable<V1Toleration> tolerations, IEnumerable<V1Taint> taints)
    {
        var list = tolerations.ToList();
        return taints.Where(t => t.Effect is "NoSchedule" or "NoExecute").All(taint => list.Any(t =>
            (string.IsNullOrEmpty(t.Effect) || t.Effect == taint.Effect)
            && (t.OperatorProperty == "Exists" ? string.IsNullOrEmpty(t.Key) || t.Key == taint.Key : t.Key == taint.Key && (t.Value ?? "") == (taint.Value ?? ""))));
    }

    /// <summary>The pod the controller makes for <paramref name="node"/>.</summary>
    public static V1Pod PodFor(V1DaemonSet daemonSet, string node)
    {
        ArgumentNullException.ThrowIfNull(daemonSet);
        var template = KubernetesJson.Deserialize<V1PodTemplateSpec>(KubernetesJson.Serialize(daemonSet.Spec.Template));
        var labels = new Dictionary<string, string>(template.Metadata?.Labels ?? new Dictionary<string, string>(), StringComparer.Ordinal)
        {
            [GenerationLabel] = (daemonSet.Metadata.Generation ?? 1).ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        template.Spec.NodeName = node;
        return new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                GenerateName = daemonSet.Metadata.Name + "-",
                NamespaceProperty = daemonSet.Metadata.NamespaceProperty,
                Labels = labels,
                Annotations = template.Metadata?.Annotations,
                OwnerReferences =
                [
                    new V1OwnerReference
                    {
                        ApiVersion = "apps/v1", Kind = "DaemonSet", Name = daemonSet.Metadata.Name, Uid = daemonSet.Metadata.Uid,
                        Controller = true, BlockOwnerDeletion = true,
                    },
                ],
            },
            Spec = template.Spec,
        };
    }

    protected override async Task PassAsync(CancellationToken cancellationToken)
    {
        var daemonSets = (await Client.AppsV1.ListDaemonSetForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
        if (daemonSets.Count > 0)
        {
            var nodes = (await Client.CoreV1.ListNodeAsync(cancellationToken: cancellationToken)).Items;
            var pods = (await Client.CoreV1.ListPodForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
            foreach (var daemonSet in daemonSets)
            {
                await SyncAsync(daemonSet, nodes, pods, cancellationToken);
            }
        }
    }

    private async Task SyncAsync(V1DaemonSet daemonSet, IList<V1Node> nodes, IList<V1Pod> pods, CancellationToken cancellationToken)
    {
        var (create, delete, status) = Plan(daemonSet, nodes, pods);
        foreach (var pod in delete)
        {
            await Client.CoreV1.DeleteNamespacedPodAsync(pod.Metadata.Name, pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }

        foreach (var node in create)
        {
            await Client.CoreV1.CreateNamespacedPodAsync(PodFor(daemonSet, node), daemonSet.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }

        if (KubernetesJson.Serialize(status) != KubernetesJson.Serialize(daemonSet.Status ?? new V1DaemonSetStatus()))
        {
            daemonSet.Status = status;
            await Client.AppsV1.ReplaceNamespacedDaemonSetStatusAsync(daemonSet, daemonSet.Metadata.Name, daemonSet.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }
    }
}

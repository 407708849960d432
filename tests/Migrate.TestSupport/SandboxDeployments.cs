using System.Security.Cryptography;
using System.Text;
using k8s;
using k8s.Models;

namespace Migrate.TestSupport;

/// <summary>
/// The sandbox's stand-in for kube-controller-manager's Deployment and ReplicaSet controllers and
/// the scheduler's part for their pods (there are none here): a Deployment gets a ReplicaSet
/// NAME-HASH for its template (labelled pod-template-hash, owned by it), and that ReplicaSet its
/// replicas as pods (generateName NAME-HASH-, owned by it), each bound to the node with the fewest
/// of its replicas (replicas spread over nodes, as the operator's preferred anti-affinity asks).
/// Failed pods are replaced, extra ones deleted; both statuses count replicas and ready ones.
/// Template changes are not rolled out, and ReplicaSets no Deployment owns are left alone (tests
/// make such ReplicaSets as owners of pods they run themselves). It looks every 200 ms.
/// </summary>
public sealed class SandboxDeployments : SandboxController
{
    public const string HashLabel = "pod-template-hash";

    private SandboxDeployments(IKubernetes client)
        : base(client, "deployment", TimeSpan.FromMilliseconds(200))
    {
    }

    public static SandboxDeployments Start(IKubernetes client)
    {
        var controller = new SandboxDeployments(client);
        controller.Run();
        return controller;
    }

    /// <summary>The template's hash, as the pod-template-hash label and the ReplicaSet's name carry it.</summary>
    public static string TemplateHash(V1PodTemplateSpec template) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(KubernetesJson.Serialize(template))))[..10];

    /// <summary>The ReplicaSet a Deployment runs its template through.</summary>
    public static V1ReplicaSet ReplicaSetFor(V1Deployment deployment)
    {
        ArgumentNullException.ThrowIfNull(deployment);
        var hash = TemplateHash(deployment.Spec.Template);
        var template = KubernetesJson.Deserialize<V1PodTemplateSpec>(KubernetesJson.Serialize(deployment.Spec.Template));
        template.Metadata ??= new V1ObjectMeta();
        template.Metadata.Labels = new Dictionary<string, string>(template.Metadata.Labels ?? new Dictionary<string, string>(), StringComparer.Ordinal) { [HashLabel] = hash };
        var selector = new Dictionary<string, string>(deployment.Spec.Selector.MatchLabels ?? new Dictionary<string, string>(), StringComparer.Ordinal) { [HashLabel] = hash };
        return new V1ReplicaSet
        {
            Metadata = new V1ObjectMeta
            {
                Name = $"{deployment.Metadata.Name}-{hash}",
                NamespaceProperty = deployment.Metadata.NamespaceProperty,
                Labels = template.Metadata.Labels,
                OwnerReferences =
                [
                    new V1OwnerReference
                    {
                        ApiVersion = "apps/v1", Kind = "Deployment", Name = deployment.Metadata.Name, Uid = deployment.Metadata.Uid,
                        Controller = true, BlockOwnerDeletion = true,
                    },
                ],
            },
            Spec = new V1ReplicaSetSpec { Replicas = deployment.Spec.Replicas ?? 1, Selector = new V1LabelSelector { MatchLabels = selector }, Template = template },
        };
    }

    /// <summary>
    /// What the ReplicaSet controller and the scheduler do for one ReplicaSet: a node for each pod to
    /// make (the one with the fewest of its replicas, ties by name), the pods to delete (failed ones
    /// and those above the count, not-ready ones first), and its status (a pure function).
    /// </summary>
    public static (IReadOnlyList<string> Create, IReadOnlyList<V1Pod> Delete, V1ReplicaSetStatus Status) Plan(V1ReplicaSet replicaSet, IEnumerable<string> nodes, IEnumerable<V1Pod> pods)
    {
        ArgumentNullException.ThrowIfNull(replicaSet);
        var owned = pods.Where(p => p.Metadata.NamespaceProperty == replicaSet.Metadata.NamespaceProperty
            && p.Metadata.OwnerReferences?.Any(o => o.Controller == true && o.Uid == replicaSet.Metadata.Uid) == true).ToList();
        var failed = owned.Where(p => p.Status?.Phase == "Failed" && p.Metadata.DeletionTimestamp is null).ToList();
        // kept first: ready pods, then by name (as the controller deletes not-ready pods first when scaling down)
        var live = owned.Where(p => p.Status?.Phase != "Failed" && p.Metadata.DeletionTimestamp is null)
            .OrderBy(p => p.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true ? 0 : 1)
            .ThenBy(p => p.Metadata.Name, StringComparer.Ordinal).ToList();
        int wanted = replicaSet.Spec.Replicas ?? 1;
        var delete = failed.Concat(live.Skip(wanted)).ToList();
        var counts = nodes.ToDictionary(n => n, n => live.Take(wanted).Count(p => p.Spec.NodeName == n), StringComparer.Ordinal);
        var create = new List<string>();
        for (int i = live.Count; i < wanted && counts.Count > 0; i++)
        {
            var node = counts.OrderBy(c => c.Value).ThenBy(c => c.Key, StringComparer.Ordinal).First().Key;
            create.Add(node);
            counts[node]++;
        }

        var kept = live.Take(wanted).ToList();
        int ready = kept.Count(p => p.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true);
        return (create, delete, new V1ReplicaSetStatus
        {
            Replicas = kept.Count,
            FullyLabeledReplicas = kept.Count,
            ReadyReplicas = ready,
            AvailableReplicas = ready,
            ObservedGeneration = replicaSet.Metadata.Generation,
        });
    }

    /// <summary>A pod of the ReplicaSet on <paramref name="node"/>.</summary>
    public static V1Pod PodFor(V1ReplicaSet replicaSet, string node)
    {
        ArgumentNullException.ThrowIfNull(replicaSet);
        var template = KubernetesJson.Deserialize<V1PodTemplateSpec>(KubernetesJson.Serialize(replicaSet.Spec.Template));
        template.Spec.NodeName = node;
        return new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                GenerateName = replicaSet.Metadata.Name + "-",
                NamespaceProperty = replicaSet.Metadata.NamespaceProperty,
                Labels = template.Metadata?.Labels,
                Annotations = template.Metadata?.Annotations,
                OwnerReferences =
                [
                    new V1OwnerReference
                    {
                        ApiVersion = "apps/v1", Kind = "ReplicaSet", Name = replicaSet.Metadata.Name, Uid = replicaSet.Metadata.Uid,
                        Controller = true, BlockOwnerDeletion = true,
                    },
                ],
            },
            Spec = template.Spec,
        };
    }

    protected override async Task PassAsync(CancellationToken cancellationToken)
    {
        var deployments = (await Client.AppsV1.ListDeploymentForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
        if (deployments.Count > 0)
        {
            var replicaSets = (await Client.AppsV1.ListReplicaSetForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
            var nodes = (await Client.CoreV1.ListNodeAsync(cancellationToken: cancellationToken)).Items
                .Where(n => n.Spec?.Unschedulable != true).Select(n => n.Metadata.Name).ToList();
            var pods = (await Client.CoreV1.ListPodForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
            foreach (var deployment in deployments)
            {
                await SyncAsync(deployment, replicaSets, nodes, pods, cancellationToken);
            }
        }
    }

    private async Task SyncAsync(V1Deployment deployment, IList<V1ReplicaSet> replicaSets, List<string> nodes, IList<V1Pod> pods, CancellationToken cancellationToken)
    {
        var wanted = ReplicaSetFor(deployment);
        var replicaSet = replicaSets.FirstOrDefault(r => r.Metadata.NamespaceProperty == deployment.Metadata.NamespaceProperty && r.Metadata.Name == wanted.Metadata.Name)
            ?? await Client.AppsV1.CreateNamespacedReplicaSetAsync(wanted, deployment.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        var (create, delete, status) = Plan(replicaSet, nodes, pods);
        foreach (var pod in delete)
        {
            await Client.CoreV1.DeleteNamespacedPodAsync(pod.Metadata.Name, pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }

        foreach (var node in create)
        {
            await Client.CoreV1.CreateNamespacedPodAsync(PodFor(replicaSet, node), replicaSet.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }

        if (KubernetesJson.Serialize(status) != KubernetesJson.Serialize(replicaSet.Status ?? new V1ReplicaSetStatus()))
        {
            replicaSet.Status = status;
            await Client.AppsV1.ReplaceNamespacedReplicaSetStatusAsync(replicaSet, replicaSet.Metadata.Name, replicaSet.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }

        var deploymentStatus = new V1DeploymentStatus
        {
            Replicas = status.Replicas,
            UpdatedReplicas = status.Replicas,
            ReadyReplicas = status.ReadyReplicas,
            AvailableReplicas = status.AvailableReplicas,
            UnavailableReplicas = status.Replicas - (status.AvailableReplicas ?? 0) is > 0 and var missing ? missing : null,
            ObservedGeneration = deployment.Metadata.Generation,
        };
        if (KubernetesJson.Serialize(deploymentStatus) != KubernetesJson.Serialize(deployment.Status ?? new V1DeploymentStatus()))
        {
            deployment.Status = deploymentStatus;
            await Client.AppsV1.ReplaceNamespacedDeploymentStatusAsync(deployment, deployment.Metadata.Name, deployment.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }
    }
}

using System.Security.Cryptography;
using System.Text;
using k8s.Models;

namespace Migrate.Operator.Reconciliation;

/// <summary>What both ways of draining (a NodeDrain, and evictions turned into migrations) decide alike: which pods opted in, and the next attempt at moving one.</summary>
public static class DrainAttempts
{
    /// <summary>The pod's own podmigration.io/migrate label decides; without one, its namespace's.</summary>
    public static bool OptedIn(V1Pod pod, bool namespaceOptedIn) =>
        pod?.Metadata.Labels?.TryGetValue(Labels.Migrate, out var label) == true ? label == "true" : namespaceOptedIn;

    /// <summary>The group the pod moves with when drained (its podmigration.io/migration-group label), or null.</summary>
    public static string? GroupOf(V1Pod pod) => Keys.Get(pod?.Metadata.Labels, Labels.MigrationGroup) is { Length: > 0 } group ? group : null;

    /// <summary>The requests, among <paramref name="requests"/>, that moved or move the pod: for a pod of a group, the group requests naming its group; else those naming the pod.</summary>
    public static IEnumerable<MigrationRequest> AttemptsFor(V1Pod pod, IEnumerable<MigrationRequest> requests)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var group = GroupOf(pod);
        return requests.Where(r => r.Metadata.NamespaceProperty == pod.Metadata.NamespaceProperty && (group is null
            ? r.Spec.PodName == pod.Metadata.Name
            : r.Spec.PodSelector?.TryGetValue(Labels.MigrationGroup, out var selected) == true && selected == group && r.Spec.PodSelector.Count == 1));
    }

    /// <summary>
    /// The next request moving the pod: <see cref="Next"/>, or for a pod of a group a group request
    /// for every pod of the namespace in that group (podSelector on the label), named after the group.
    /// </summary>
    public static MigrationRequest NextFor(string prefix, V1Pod pod, IReadOnlyList<MigrationRequest> failures, IDictionary<string, string> labels,
        IDictionary<string, string>? targetNodeSelector = null, V1OwnerReference? owner = null)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var group = GroupOf(pod);
        var request = Next(prefix, pod.Metadata.NamespaceProperty, group ?? pod.Metadata.Name, failures, labels, targetNodeSelector, owner);
        if (group is not null)
        {
            request.Spec.PodName = "";
            request.Spec.PodSelector = new Dictionary<string, string> { [Labels.MigrationGroup] = group };
            request.Metadata.Finalizers = null; // a group request holds nothing itself: its members carry the finalizer
        }

        return request;
    }

    /// <summary>Earlier attempts that ended without moving the pod, oldest first.</summary>
    public static List<MigrationRequest> Failures(IEnumerable<MigrationRequest> attempts) =>
        [.. attempts.Where(r => r.Status?.Phase is MigrationPhases.Failed or MigrationPhases.RolledBack).OrderBy(r => r.Metadata.CreationTimestamp)];

    /// <summary>
    /// The next request for the pod: named prefix-pod-attempt, in the default mode (Auto), avoiding the nodes earlier
    /// attempts failed on, with the operator's finalizer from birth (so that deleting it at once still
    /// goes through the operator).
    /// </summary>
    public static MigrationRequest Next(string prefix, string ns, string pod, IReadOnlyList<MigrationRequest> failures, IDictionary<string, string> labels,
        IDictionary<string, string>? targetNodeSelector = null, V1OwnerReference? owner = null)
    {
        ArgumentNullException.ThrowIfNull(failures);
        return new MigrationRequest
        {
            Metadata = new V1ObjectMeta
            {
                Name = RequestName(prefix, pod, failures.Count + 1),
                NamespaceProperty = ns,
                Labels = labels,
                Finalizers = [Finalizers.Cleanup],
                OwnerReferences = owner is null ? null : [owner],
            },
            Spec = new MigrationRequestSpec
            {
                PodName = pod,
                Mode = MigrationModes.Auto,
                TargetNodeSelector = targetNodeSelector,
                AvoidNodes = [.. failures.Select(f => f.Status?.TargetNode).OfType<string>().Distinct()],
            },
        };
    }

    /// <summary>A DNS-1123 name from a prefix, the pod and the attempt; long ones are shortened with a hash so they stay unique.</summary>
    public static string RequestName(string prefix, string pod, int attempt)
    {
        var name = $"{prefix}-{pod}-{attempt}";
        if (name.Length <= 63)
        {
            return name;
        }

        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(name)))[..8];
        return $"{name[..(63 - 11)].TrimEnd('-', '.')}-{hash}-{attempt}";
    }
}

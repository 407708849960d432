using System.Collections.Immutable;

namespace Migrate.KubeEmulator.Api;

/// <summary>The built-in kinds this emulator serves (a subset of a real API server's).</summary>
public static class BuiltInResources
{
    private static readonly ImmutableArray<string> CreateOnly = ["create"];
    private static readonly ImmutableArray<string> All = ["all"];

    public static IReadOnlyList<ResourceType> Create() =>
    [
        // core/v1
        Core("Namespace", "namespaces", namespaced: false, shortNames: ["ns"], status: true, subresources: ["finalize"]),
        Core("Pod", "pods", namespaced: true, shortNames: ["po"], status: true, categories: All, subresources: ["log", "eviction", "binding"]),
        Core("Node", "nodes", namespaced: false, shortNames: ["no"], status: true),
        Core("Event", "events", namespaced: true, shortNames: ["ev"]),
        Core("ServiceAccount", "serviceaccounts", namespaced: true, shortNames: ["sa"], subresources: ["token"]),
        Core("Secret", "secrets", namespaced: true),
        Core("ConfigMap", "configmaps", namespaced: true, shortNames: ["cm"]),
        Core("Service", "services", namespaced: true, shortNames: ["svc"], status: true, categories: All),
        Core("Endpoints", "endpoints", namespaced: true, shortNames: ["ep"]),
        Core("PersistentVolumeClaim", "persistentvolumeclaims", namespaced: true, shortNames: ["pvc"], status: true),
        Core("PersistentVolume", "persistentvolumes", namespaced: false, shortNames: ["pv"], status: true),

        // apps/v1 (stored objects: no controllers run)
        Grouped("apps", "v1", "Deployment", "deployments", namespaced: true, shortNames: ["deploy"], status: true, categories: All),
        Grouped("apps", "v1", "DaemonSet", "daemonsets", namespaced: true, shortNames: ["ds"], status: true, categories: All),
        Grouped("apps", "v1", "ReplicaSet", "replicasets", namespaced: true, shortNames: ["rs"], status: true, categories: All),
        Grouped("apps", "v1", "StatefulSet", "statefulsets", namespaced: true, shortNames: ["sts"], status: true, categories: All),

        Grouped("coordination.k8s.io", "v1", "Lease", "leases", namespaced: true),
        Grouped("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", namespaced: true, shortNames: ["pdb"], status: true),
        Grouped("events.k8s.io", "v1", "Event", "events", namespaced: true, shortNames: ["ev"]),
        Grouped("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", namespaced: false),
        Grouped("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", namespaced: true, shortNames: ["netpol"]),
        Grouped("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", namespaced: false),
        Grouped("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", namespaced: false),
        Grouped("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced: false, shortNames: ["crd", "crds"], status: true),

        Grouped("rbac.authorization.k8s.io", "v1", "Role", "roles", namespaced: true),
        Grouped("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", namespaced: true),
        Grouped("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced: false),
        Grouped("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced: false),

        Grouped("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", namespaced: false) with { Verbs = CreateOnly, Ephemeral = true },
        Grouped("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", namespaced: false) with { Verbs = CreateOnly, Ephemeral = true },
        Grouped("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", namespaced: false) with { Verbs = CreateOnly, Ephemeral = true },
    ];

    private static ResourceType Core(string kind, string plural, bool namespaced, string[]? shortNames = null, bool status = false,
        ImmutableArray<string> categories = default, string[]? subresources = null) =>
        Grouped("", "v1", kind, plural, namespaced, shortNames, status, categories, subresources);

    private static ResourceType Grouped(string group, string version, string kind, string plural, bool namespaced,
        string[]? shortNames = null, bool status = false, ImmutableArray<string> categories = default, string[]? subresources = null) => new()
        {
            Group = group,
            Version = version,
            Kind = kind,
            Plural = plural,
            Singular = kind.ToLowerInvariant(),
            Namespaced = namespaced,
            ShortNames = [.. shortNames ?? []],
            Categories = categories.IsDefault ? [] : categories,
            HasStatus = status,
            Subresources = [.. subresources ?? []],
        };
}

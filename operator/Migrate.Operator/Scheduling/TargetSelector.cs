using System.Globalization;
using k8s.Models;
using Migrate.Agent.V1;

namespace Migrate.Operator.Scheduling;

/// <summary>A node as the operator sees it when it looks for a target: the node, the pods bound to it, and its agent's capabilities (null: no agent answers there).</summary>
public sealed record NodeView(V1Node Node, IReadOnlyList<V1Pod> Pods, GetCapabilitiesResponse? Agent)
{
    public string Name => Node.Metadata.Name;
}

/// <summary>Why a node cannot take a pod.</summary>
public sealed record NodeRejection(string Node, string Why);

/// <summary>The chosen target, or none and why each node was turned down.</summary>
public sealed record TargetChoice(string? Node, IReadOnlyList<NodeRejection> Rejected)
{
    /// <summary>One sentence summing up why no node qualified.</summary>
    public string Explain() => Rejected.Count == 0
        ? "the cluster has no other node"
        : "no node can take the pod: " + string.Join("; ", Rejected.Select(r => $"{r.Node} {r.Why}"));
}

/// <summary>
/// Where a migrating pod may go: the scheduler's hard rules that matter for one pod (Ready,
/// schedulable, node selector, required node affinity, taints against tolerations, room for its
/// requests), plus an agent able to restore the source's checkpoint. Among eligible nodes the
/// least loaded wins (the larger of CPU and memory request ratios after placing the pod).
/// </summary>
public static class TargetSelector
{
    public static TargetChoice Choose(V1Pod pod, string sourceNode, IEnumerable<NodeView> nodes, GetCapabilitiesResponse? sourceAgent, bool keepAddress = false)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        var rejected = new List<NodeRejection>();
        var eligible = new List<(NodeView Node, double Load)>();
        foreach (var node in nodes.OrderBy(n => n.Name, StringComparer.Ordinal))
        {
            if (WhyNot(pod, sourceNode, node, sourceAgent, keepAddress) is { } why)
            {
                rejected.Add(new NodeRejection(node.Name, why));
            }
            else
            {
                eligible.Add((node, LoadAfter(pod, node)));
            }
        }

        var best = eligible.OrderBy(e => e.Load).ThenBy(e => e.Node.Name, StringComparer.Ordinal).FirstOrDefault();
        return new TargetChoice(best.Node?.Name, rejected);
    }

    /// <summary>Why <paramref name="node"/> cannot take <paramref name="pod"/>, or null when it can.</summary>
    public static string? WhyNot(V1Pod pod, string sourceNode, NodeView node, GetCapabilitiesResponse? sourceAgent, bool keepAddress = false)
    {
        ArgumentNullException.ThrowIfNull(pod);
        ArgumentNullException.ThrowIfNull(node);
        if (node.Name == sourceNode)
        {
            return "is the node the pod runs on";
        }

        if (node.Node.Status?.Conditions?.FirstOrDefault(c => c.Type == "Ready")?.Status != "True")
        {
            return "is not Ready";
        }

        if (node.Node.Spec?.Unschedulable == true)
        {
            return "is cordoned (unschedulable)";
        }

        if (node.Agent is null)
        {
            return "runs no pod-migration agent";
        }

        if (sourceAgent is not null && Compatibility.Check(sourceAgent, node.Agent) is { } incompatible)
        {
            return incompatible;
        }

        if (keepAddress && Compatibility.WhyAddressCannotMove(sourceAgent?.Network, node.Agent.Network) is { } stuck)
        {
            return stuck;
        }

        var labels = node.Node.Metadata.Labels ?? new Dictionary<string, string>();
        foreach (var (key, value) in pod.Spec.NodeSelector ?? new Dictionary<string, string>())
        {
            if (!labels.TryGetValue(key, out var actual) || actual != value)
            {
                return $"does not match the pod's nodeSelector {key}={value}";
            }
        }

        var required = pod.Spec.Affinity?.NodeAffinity?.RequiredDuringSchedulingIgnoredDuringExecution;
        if (required?.NodeSelectorTerms is { Count: > 0 } terms && !terms.Any(t => Matches(t, labels, node.Name)))
        {
            return "does not satisfy the pod's required node affinity";
        }

        foreach (var taint in node.Node.Spec?.Taints ?? [])
        {
            if (taint.Effect is "NoSchedule" or "NoExecute" && !(pod.Spec.Tolerations ?? []).Any(t => Tolerates(t, taint)))
            {
                return $"has the taint {taint.Key}{(taint.Value is null ? "" : "=" + taint.Value)}:{taint.Effect}, which the pod does not tolerate";
            }
        }

        var (cpu, memory) = Requests(pod);
        var (freeCpu, freeMemory) = Free(node);
        if (cpu > freeCpu || memory > freeMemory)
        {
            return string.Create(CultureInfo.InvariantCulture,
                $"has {freeCpu:0.###} CPU and {freeMemory / 1048576:0} MiB of memory unrequested; the pod requests {cpu:0.###} CPU and {memory / 1048576:0} MiB");
        }

        return null;
    }

    /// <summary>A pod's effective requests: the larger of its containers' sum and its largest init container.</summary>
    public static (decimal Cpu, decimal Memory) Requests(V1Pod pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        decimal cpu = 0, memory = 0, initCpu = 0, initMemory = 0;
        foreach (var container in pod.Spec.Containers ?? [])
        {
            cpu += Quantity(container.Resources?.Requests, "cpu");
            memory += Quantity(container.Resources?.Requests, "memory");
        }

        foreach (var container in pod.Spec.InitContainers ?? [])
        {
            initCpu = Math.Max(initCpu, Quantity(container.Resources?.Requests, "cpu"));
            initMemory = Math.Max(initMemory, Quantity(container.Resources?.Requests, "memory"));
        }

        return (Math.Max(cpu, initCpu), Math.Max(memory, initMemory));
    }

    private static (decimal Cpu, decimal Memory) Free(NodeView node)
    {
        var allocatable = node.Node.Status?.Allocatable;
        decimal cpu = Quantity(allocatable, "cpu");
        decimal memory = Quantity(allocatable, "memory");
        foreach (var pod in node.Pods.Where(p => p.Status?.Phase is not ("Succeeded" or "Failed")))
        {
            var (c, m) = Requests(pod);
            cpu -= c;
            memory -= m;
        }

        return (cpu, memory);
    }

    private static double LoadAfter(V1Pod pod, NodeView node)
    {
        var allocatable = node.Node.Status?.Allocatable;
        decimal cpu = Quantity(allocatable, "cpu");
        decimal memory = Quantity(allocatable, "memory");
        var (freeCpu, freeMemory) = Free(node);
        var (podCpu, podMemory) = Requests(pod);
        double cpuLoad = cpu > 0 ? (double)((cpu - freeCpu + podCpu) / cpu) : 1;
        double memoryLoad = memory > 0 ? (double)((memory - freeMemory + podMemory) / memory) : 1;
        return Math.Max(cpuLoad, memoryLoad);
    }

    private static decimal Quantity(IDictionary<string, ResourceQuantity>? resources, string name) =>
        resources is not null && resources.TryGetValue(name, out var quantity) ? quantity.ToDecimal() : 0;

    private static bool Matches(V1NodeSelectorTerm term, IDictionary<string, string> labels, string nodeName)
    {
        foreach (var expression in term.MatchExpressions ?? [])
        {
            bool has = labels.TryGetValue(expression.Key, out var value);
            if (!Migrate.Operator.Kubernetes.LabelSelectors.Satisfies(expression.OperatorProperty, has, value, expression.Values ?? []))
            {
                return false;
            }
        }

        foreach (var field in term.MatchFields ?? [])
        {
            bool ok = field.Key == "metadata.name" && field.OperatorProperty switch
            {
                "In" => (field.Values ?? []).Contains(nodeName),
                "NotIn" => !(field.Values ?? []).Contains(nodeName),
                _ => false,
            };
            if (!ok)
            {
                return false;
            }
        }

        return true;
    }

    private static bool Tolerates(V1Toleration toleration, V1Taint taint)
    {
        if (toleration.Effect is { Length: > 0 } effect && effect != taint.Effect)
        {
            return false;
        }

        if (string.IsNullOrEmpty(toleration.Key))
        {
            return toleration.OperatorProperty == "Exists";
        }

        return toleration.Key == taint.Key && (toleration.OperatorProperty == "Exists" || (toleration.Value ?? "") == (taint.Value ?? ""));
    }
}

/// <summary>Whether a checkpoint taken on one node can be restored on another.</summary>
public static class Compatibility
{
    /// <summary>The IPAM plugin with which an address can move between nodes.</summary>
    public const string MovableIpam = "podmig-ipam";

    /// <summary>Why a pod keeping its address cannot move from <paramref name="source"/>'s pod network to <paramref name="target"/>'s, as a phrase about the target; null when it can.</summary>
    public static string? WhyAddressCannotMove(PodNetworkInfo? source, PodNetworkInfo? target)
    {
        if (target is null || !target.MovesAddresses)
        {
            return $"has a pod network that cannot take another node's address ({Describe(target)})";
        }

        if (source is not null && source.Name != target.Name)
        {
            return $"is on pod network {target.Name}, the source on {source.Name}: an address cannot move between them";
        }

        return null;
    }

    /// <summary>A node's pod network in words, for refusals.</summary>
    public static string Describe(PodNetworkInfo? network) =>
        network is null ? "its agent reports no pod network"
        : network.Name.Length == 0 ? network.Source
        : $"CNI network {network.Name}, IPAM {(network.Ipam.Length > 0 ? network.Ipam : "none")}; keeping an address needs {MovableIpam}";

    /// <summary>Null when <paramref name="target"/> can restore what <paramref name="source"/> dumps; otherwise why not, as a phrase about the target.</summary>
    public static string? Check(GetCapabilitiesResponse source, GetCapabilitiesResponse target)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(target);
        if (target.Criu is null || !target.Criu.CheckPassed)
        {
            return $"has a CRIU that fails its own check ({target.Criu?.CheckMessage ?? "no CRIU"})";
        }

        if (source.Criu is not null && CompareVersions(target.Criu.Version, source.Criu.Version) < 0)
        {
            return $"has CRIU {target.Criu.Version}, older than the source's {source.Criu.Version}";
        }

        if (source.Kernel?.Machine is { Length: > 0 } machine && target.Kernel?.Machine != machine)
        {
            return $"is {target.Kernel?.Machine}, the source is {machine}";
        }

        if (source.Cpu is not null && target.Cpu is not null)
        {
            if (source.Cpu.Vendor.Length > 0 && target.Cpu.Vendor != source.Cpu.Vendor)
            {
                return $"has a {target.Cpu.Vendor} CPU, the source a {source.Cpu.Vendor} one";
            }

            var missing = source.Cpu.Flags.Except(target.Cpu.Flags, StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
            if (missing.Count > 0)
            {
                return $"lacks CPU features the source has ({string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? ", ..." : "")})";
            }
        }

        return null;
    }

    private static int CompareVersions(string a, string b)
    {
        static int[] Parse(string v) => [.. v.Split('.').Select(p => int.TryParse(p, CultureInfo.InvariantCulture, out var n) ? n : 0)];
        var x = Parse(a);
        var y = Parse(b);
        for (int i = 0; i < Math.Max(x.Length, y.Length); i++)
        {
            int c = (i < x.Length ? x[i] : 0).CompareTo(i < y.Length ? y[i] : 0);
            if (c != 0)
            {
                return c;
            }
        }

        return 0;
    }
}

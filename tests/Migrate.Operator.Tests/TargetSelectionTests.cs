using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Scheduling;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>Where a migrating pod may go, and why not elsewhere.</summary>
public sealed class TargetSelectionTests
{
    private static GetCapabilitiesResponse Agent(string criu = "4.1.1", params string[] flags) => new()
    {
        Criu = new CriuCapabilities { Version = criu, CheckPassed = true },
        Kernel = new KernelInfo { Machine = "x86_64", Release = "6.18.0" },
        Cpu = new CpuInfo { Vendor = "AuthenticAMD", Flags = { flags.Length > 0 ? flags : ["sse2", "avx2"] } },
    };

    private static V1Node Node(string name, string cpu = "4", string memory = "8Gi", bool ready = true, bool cordoned = false,
        IDictionary<string, string>? labels = null, IList<V1Taint>? taints = null) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = labels ?? new Dictionary<string, string> { ["kubernetes.io/hostname"] = name } },
        Spec = new V1NodeSpec { Unschedulable = cordoned, Taints = taints },
        Status = new V1NodeStatus
        {
            Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new(cpu), ["memory"] = new(memory) },
            Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False" }],
        },
    };

    private static V1Pod Pod(string cpu = "500m", string memory = "1Gi", string? node = null) => new()
    {
        Metadata = new V1ObjectMeta { Name = "db-0", NamespaceProperty = "default" },
        Spec = new V1PodSpec
        {
            NodeName = node,
            Containers = [new V1Container { Name = "db", Resources = new V1ResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new(cpu), ["memory"] = new(memory) } } }],
        },
        Status = new V1PodStatus { Phase = "Running" },
    };

    [Fact]
    public void The_least_loaded_eligible_node_other_than_the_source_wins()
    {
        var busy = new NodeView(Node("node-b"), [Pod("3", "1Gi", "node-b")], Agent());
        var idle = new NodeView(Node("node-c"), [Pod("1", "1Gi", "node-c")], Agent());
        var source = new NodeView(Node("node-a"), [], Agent());

        var choice = TargetSelector.Choose(Pod(), "node-a", [busy, idle, source], Agent());

        Assert.Equal("node-c", choice.Node);
        Assert.Equal([new NodeRejection("node-a", "is the node the pod runs on")], choice.Rejected);
    }

    [Fact]
    public void Each_hard_rule_turns_a_node_down_with_its_reason()
    {
        var pod = Pod("2", "1Gi");
        pod.Spec.NodeSelector = new Dictionary<string, string> { ["disk"] = "ssd" };
        pod.Spec.Tolerations = [new V1Toleration { Key = "dedicated", OperatorProperty = "Equal", Value = "db", Effect = "NoSchedule" }];
        var ssd = new Dictionary<string, string> { ["disk"] = "ssd" };
        var nodes = new[]
        {
            new NodeView(Node("n1-notready", ready: false, labels: ssd), [], Agent()),
            new NodeView(Node("n2-cordoned", cordoned: true, labels: ssd), [], Agent()),
            new NodeView(Node("n3-noagent", labels: ssd), [], null),
            new NodeView(Node("n4-selector"), [], Agent()),
            new NodeView(Node("n5-taint", labels: ssd, taints: [new V1Taint { Key = "gpu", Effect = "NoSchedule" }]), [], Agent()),
            new NodeView(Node("n6-full", cpu: "2", labels: ssd), [Pod("1", "1Gi", "n6-full")], Agent()),
            new NodeView(Node("n7-oldcriu", labels: ssd), [], Agent("3.17.1")),
            new NodeView(Node("n8-cpu", labels: ssd), [], Agent("4.1.1", "sse2")),
            new NodeView(Node("n9-good", labels: ssd, taints: [new V1Taint { Key = "dedicated", Value = "db", Effect = "NoSchedule" }]), [], Agent()),
        };

        var choice = TargetSelector.Choose(pod, "node-a", nodes, Agent());
        var why = choice.Rejected.ToDictionary(r => r.Node, r => r.Why);

        Assert.Equal("n9-good", choice.Node);
        Assert.Equal("is not Ready", why["n1-notready"]);
        Assert.Equal("is cordoned (unschedulable)", why["n2-cordoned"]);
        Assert.Equal("runs no pod-migration agent", why["n3-noagent"]);
        Assert.Equal("does not match the pod's nodeSelector disk=ssd", why["n4-selector"]);
        Assert.Equal("has the taint gpu:NoSchedule, which the pod does not tolerate", why["n5-taint"]);
        Assert.StartsWith("has 1 CPU and 7168 MiB of memory unrequested; the pod requests 2 CPU", why["n6-full"], StringComparison.Ordinal);
        Assert.Equal("has CRIU 3.17.1, older than the source's 4.1.1", why["n7-oldcriu"]);
        Assert.Equal("lacks CPU features the source has (avx2)", why["n8-cpu"]);
    }

    [Fact]
    public void Required_node_affinity_is_honoured()
    {
        var pod = Pod();
        pod.Spec.Affinity = new V1Affinity
        {
            NodeAffinity = new V1NodeAffinity
            {
                RequiredDuringSchedulingIgnoredDuringExecution = new V1NodeSelector
                {
                    NodeSelectorTerms = [new V1NodeSelectorTerm { MatchExpressions = [new V1NodeSelectorRequirement { Key = "zone", OperatorProperty = "In", Values = ["z1", "z2"] }] }],
                },
            },
        };

        var choice = TargetSelector.Choose(pod, "node-a", [
            new NodeView(Node("node-b", labels: new Dictionary<string, string> { ["zone"] = "z3" }), [], Agent()),
            new NodeView(Node("node-c", labels: new Dictionary<string, string> { ["zone"] = "z2" }), [], Agent()),
        ], Agent());

        Assert.Equal("node-c", choice.Node);
        Assert.Equal("does not satisfy the pod's required node affinity", choice.Rejected.Single().Why);
    }

    [Fact]
    public void With_no_eligible_node_the_explanation_names_every_node()
    {
        var choice = TargetSelector.Choose(Pod(), "node-a", [new NodeView(Node("node-b", ready: false), [], Agent())], Agent());

        Assert.Null(choice.Node);
        Assert.Equal("no node can take the pod: node-b is not Ready", choice.Explain());
    }

    [Fact]
    public void A_target_whose_CRIU_fails_its_check_is_incompatible()
    {
        var broken = Agent();
        broken.Criu.CheckPassed = false;
        broken.Criu.CheckMessage = "kernel lacks userfaultfd";

        Assert.Equal("has a CRIU that fails its own check (kernel lacks userfaultfd)", Compatibility.Check(Agent(), broken));
        Assert.Null(Compatibility.Check(Agent("4.1.1", "sse2"), Agent("4.1.2", "sse2", "avx2")));
    }
}

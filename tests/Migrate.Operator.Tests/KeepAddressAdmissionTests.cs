using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>
/// Admission of a request that keeps its pod's address, as a table: the nodes' pod networks (as
/// their agents read them from the CNI configuration) decide whether the address can move, and a
/// refusal says which node's network cannot and what to do instead.
/// </summary>
public sealed class KeepAddressAdmissionTests
{
    private static readonly PodNetworkInfo Flat = new() { Name = "flat", Ipam = "podmig-ipam", MovesAddresses = true, Source = "/etc/cni/net.d/10-flat.conflist" };
    private static readonly PodNetworkInfo OtherFlat = new() { Name = "flat-2", Ipam = "podmig-ipam", MovesAddresses = true, Source = "/etc/cni/net.d/10-flat.conflist" };
    private static readonly PodNetworkInfo HostLocal = new() { Name = "cbr0", Ipam = "host-local", MovesAddresses = false, Source = "/etc/cni/net.d/10-bridge.conflist" };

    [Theory]
    // source network, target network (given target / chosen), keepAddress, expected reason or target
    [InlineData("flat", "flat", "node-b", true, "node-b keeps")]
    [InlineData("flat", "flat", null, true, "node-b keeps")]
    [InlineData("host-local", "host-local", "node-b", false, "node-b new")]
    [InlineData("flat", "flat", "node-b", false, "node-b new")]
    // not asked either way: kept where the network can move it, else a new address, never a refusal for it
    [InlineData("flat", "flat", "node-b", null, "node-b keeps")]
    [InlineData("flat", "flat", null, null, "node-b keeps")]
    [InlineData("host-local", "host-local", "node-b", null, "node-b new")]
    [InlineData("flat", "host-local", "node-b", null, "node-b new")]
    [InlineData("flat", "flat-2", null, null, "node-b new")]
    [InlineData("none", "flat", "node-b", null, "node-b new")]
    [InlineData("host-local", "flat", "node-b", true, "AddressCannotMove: Pod default/db cannot keep its address: node node-a's pod network cannot move an address to another node (CNI network cbr0, IPAM host-local; keeping an address needs podmig-ipam). Move it without keepAddress to give it a new address.")]
    [InlineData("none", "flat", "node-b", true, "AddressCannotMove: Pod default/db cannot keep its address: node node-a's pod network cannot move an address to another node (its agent reports no pod network). Move it without keepAddress to give it a new address.")]
    [InlineData("flat", "host-local", "node-b", true, "TargetIncompatible: Node node-b has a pod network that cannot take another node's address (CNI network cbr0, IPAM host-local; keeping an address needs podmig-ipam).")]
    [InlineData("flat", "flat-2", "node-b", true, "TargetIncompatible: Node node-b is on pod network flat-2, the source on flat: an address cannot move between them.")]
    [InlineData("flat", "host-local", null, true, "NoEligibleTarget: ")]
    public void The_pod_networks_decide_whether_the_address_can_move(string sourceNetwork, string targetNetwork, string? target, bool? keepAddress, string expected)
    {
        var pod = new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "db", NamespaceProperty = "default" },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main" }] },
            Status = new V1PodStatus { Phase = "Running", PodIP = "10.9.8.12" },
        };
        var request = new MigrationRequest
        {
            Metadata = new V1ObjectMeta { Name = "move-db", NamespaceProperty = "default" },
            Spec = new MigrationRequestSpec { PodName = "db", TargetNode = target, KeepAddress = keepAddress },
        };
        var facts = new AdmissionFacts(pod, [Node("node-a"), Node("node-b")], [pod],
            new Dictionary<string, GetCapabilitiesResponse?> { ["node-a"] = Agent(sourceNetwork), ["node-b"] = Agent(targetNetwork) }, []);

        var validation = Migrate.Operator.Reconciliation.Admission.Evaluate(request, facts);

        if (expected.Contains(':', StringComparison.Ordinal))
        {
            Assert.StartsWith(expected, $"{validation.FailureReason}: {validation.FailureMessage}", StringComparison.Ordinal);
        }
        else
        {
            Assert.False(validation.Failed, validation.FailureMessage);
            Assert.Equal(expected, $"{validation.TargetNode} {(validation.KeepsAddress ? "keeps" : "new")}");
        }
    }

    private static GetCapabilitiesResponse? Agent(string network)
    {
        var agent = FakeAgents.Capabilities();
        agent.Network = network switch
        {
            "flat" => Flat,
            "flat-2" => OtherFlat,
            "host-local" => HostLocal,
            _ => null,
        };
        return agent;
    }

    private static V1Node Node(string name) => new()
    {
        Metadata = new V1ObjectMeta { Name = name },
        Status = new V1NodeStatus
        {
            Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
            Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("4"), ["memory"] = new("8Gi") },
        },
    };
}

using k8s.Models;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>
/// The sandbox's stand-ins for the endpoints controller and kube-proxy, as tables: which pods a
/// Service's Endpoints list (as kube-controller-manager lists them), and the NAT rules a node gets
/// for them (as kube-proxy's iptables mode spreads new connections).
/// </summary>
public sealed class SandboxServiceTests
{
    [Theory]
    // pods as name:phase:ready:ip:labels(app value):deleting
    [InlineData("a:Running:true:10.0.0.5:web:no", "ready 10.0.0.5(a)")]
    [InlineData("a:Running:false:10.0.0.5:web:no", "not-ready 10.0.0.5(a)")]
    [InlineData("a:Running:true:10.0.0.5:db:no", "none")]
    [InlineData("a:Running:true::web:no", "none")]
    [InlineData("a:Running:true:10.0.0.5:web:yes", "none")]
    [InlineData("a:Succeeded:true:10.0.0.5:web:no", "none")]
    [InlineData("b:Running:true:10.0.0.6:web:no;a:Running:true:10.0.0.5:web:no", "ready 10.0.0.5(a),10.0.0.6(b)")]
    [InlineData("src:Running:true:10.0.0.5:web:no;src-m1:Running:true:10.0.0.5:web:no", "ready 10.0.0.5(src),10.0.0.5(src-m1)")]
    public void Endpoints_list_the_live_pods_matching_the_selector_ready_or_not(string pods, string expected)
    {
        var service = new V1Service
        {
            Metadata = new V1ObjectMeta { Name = "web", NamespaceProperty = "default" },
            Spec = new V1ServiceSpec { Selector = new Dictionary<string, string> { ["app"] = "web" }, Ports = [new V1ServicePort { Name = "http", Port = 80, TargetPort = "http" }] },
        };
        var list = pods.Split(';').Select(p => p.Split(':')).Select(f => new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = f[0], NamespaceProperty = "default", Labels = new Dictionary<string, string> { ["app"] = f[4] }, DeletionTimestamp = f[5] == "yes" ? DateTime.UtcNow : null },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Ports = [new V1ContainerPort { Name = "http", ContainerPort = 8080 }] }] },
            Status = new V1PodStatus { Phase = f[1], PodIP = f[3].Length > 0 ? f[3] : null, Conditions = [new V1PodCondition { Type = "Ready", Status = f[2] == "true" ? "True" : "False" }] },
        });

        var subset = SandboxEndpoints.SubsetFor(service, list);

        string Describe(IList<V1EndpointAddress>? addresses) => string.Join(",", (addresses ?? []).Select(a => $"{a.Ip}({a.TargetRef.Name})"));
        var actual = subset is null ? "none"
            : subset.Addresses is { Count: > 0 } ? "ready " + Describe(subset.Addresses)
            : "not-ready " + Describe(subset.NotReadyAddresses);
        Assert.Equal(expected, actual);
        if (subset is not null)
        {
            Assert.Equal(8080, subset.Ports.Single().Port); // the named target port, resolved on the pods
        }
    }

    [Fact]
    public void A_node_sends_new_connections_to_the_cluster_ip_across_the_endpoints_and_drops_them_when_there_is_none()
    {
        Assert.Equal(
            "*nat\n:PMSVC-X - [0:0]\n"
            + "-A PMSVC-X -d 10.96.0.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.33333 -j DNAT --to-destination 10.0.0.5:8080\n"
            + "-A PMSVC-X -d 10.96.0.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.0.0.6:8080\n"
            + "-A PMSVC-X -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.0.0.7:8080\nCOMMIT\n",
            ServiceRoutes.Rules("PMSVC-X", "10.96.0.10", 80, [("10.0.0.5", 8080), ("10.0.0.6", 8080), ("10.0.0.7", 8080)]));
        Assert.Equal("*nat\n:PMSVC-X - [0:0]\n-A PMSVC-X -d 10.96.0.10/32 -p tcp --dport 80 -j DROP\nCOMMIT\n", ServiceRoutes.Rules("PMSVC-X", "10.96.0.10", 80, []));
    }
}

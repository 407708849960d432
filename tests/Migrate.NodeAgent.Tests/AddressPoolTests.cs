using System.Net;
using Migrate.NodeAgent.Networking;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>podmig-ipam's decisions (which address a sandbox gets) and the reading of a pod's address, as tables.</summary>
public sealed class AddressPoolTests
{
    private static readonly AddressRange Range = AddressRange.Parse("10.9.8.0/24", "10.9.8.10", "10.9.8.13");

    [Theory]
    // held addresses as "host:container,container;host:container"; pinned host or null; last host or null; expected host (or "refused: ...") and whether shared
    [InlineData("", null, null, "10", false)]
    [InlineData("10:a", null, null, "11", false)]
    [InlineData("", null, "11", "12", false)]
    [InlineData("", null, "13", "10", false)]
    [InlineData("12:a", null, "11", "13", false)]
    [InlineData("10:a;11:b;12:c;13:d", null, null, "refused: every address of 10.9.8.0/24 (10.9.8.10 to 10.9.8.13) is held", false)]
    [InlineData("11:me", null, null, "11", false)]
    [InlineData("11:me", "12", null, "11", false)]
    [InlineData("11:source,me", null, null, "11", true)]
    [InlineData("12:source", "12", null, "12", true)]
    [InlineData("", "12", null, "12", false)]
    [InlineData("", "200", null, "refused: the pinned address 10.9.8.200 is not one this network hands out", false)]
    [InlineData("", "1", null, "refused: the pinned address 10.9.8.1 is not one this network hands out", false)]
    public void A_sandbox_gets_the_next_free_address_or_its_pinned_one_shared_with_the_source(string held, string? pinned, string? last, string expected, bool shared)
    {
        var holdings = held.Split(';', StringSplitOptions.RemoveEmptyEntries).ToDictionary(
            h => Host(h.Split(':')[0]),
            h => (IReadOnlyList<AddressHolder>)[.. h.Split(':')[1].Split(',').Select(c => new AddressHolder(c, "eth0"))]);
        var decision = AddressPool.Allocate(Range, holdings, new AddressHolder("me", "eth0"), pinned is null ? null : AddressRange.ToAddress(Host(pinned)), last is null ? null : Host(last));
        if (expected.StartsWith("refused: ", StringComparison.Ordinal))
        {
            Assert.Null(decision.Address);
            Assert.StartsWith(expected["refused: ".Length..], decision.Refusal, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal("10.9.8." + expected, decision.Address?.ToString());
            Assert.Equal(shared, decision.Shared);
        }
    }

    [Theory]
    [InlineData("10.0.0.0/16", null, null, null, "10.0.0.1", "10.0.255.254", null)]
    [InlineData("10.0.0.0/24", "10.0.0.10", "10.0.0.200", "10.0.0.1", "10.0.0.10", "10.0.0.200", null)]
    [InlineData("10.0.0.0/24", "10.0.1.10", null, null, null, null, "rangeStart 10.0.1.10 is not a host address of subnet 10.0.0.0/24")]
    [InlineData("10.0.0.0/24", "10.0.0.20", "10.0.0.10", null, null, null, "comes after rangeEnd")]
    [InlineData("10.0.0.0/24", null, "10.0.0.255", null, null, null, "rangeEnd 10.0.0.255 is not a host address")]
    [InlineData("fd00::/64", null, null, null, null, null, "is not an IPv4 subnet")]
    [InlineData("10.0.0.0/31", null, null, null, null, null, "is not an IPv4 subnet")]
    [InlineData("10.0.0.0", null, null, null, null, null, "is not an IPv4 subnet")]
    [InlineData("10.0.0.0/24", null, null, "example", null, null, "gateway 'example' is not an IPv4 address")]
    public void A_range_is_read_from_the_plugin_configuration_and_refused_when_it_makes_no_sense(string subnet, string? start, string? end, string? gateway, string? first, string? lastHost, string? error)
    {
        if (error is not null)
        {
            Assert.Contains(error, Assert.Throws<ArgumentException>(() => AddressRange.Parse(subnet, start, end, gateway)).Message, StringComparison.Ordinal);
            return;
        }

        var range = AddressRange.Parse(subnet, start, end, gateway);
        Assert.Equal(first, AddressRange.ToAddress(range.First).ToString());
        Assert.Equal(lastHost, AddressRange.ToAddress(range.Last).ToString());
        Assert.False(range.Assignable(IPAddress.Parse(subnet.Split('/')[0][..^1] + "1")), "the gateway is never handed out");
    }

    [Theory]
    [InlineData("""[{"ifname":"lo","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},{"ifname":"eth0","address":"aa:bb:cc:dd:ee:01","addr_info":[{"family":"inet","local":"10.9.8.12","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]""", "eth0 10.9.8.12/24 aa:bb:cc:dd:ee:01")]
    [InlineData("""[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]}]""", "refused: the pod's network namespace has no IPv4 address to keep")]
    [InlineData("""[{"ifname":"eth0","address":"aa:bb:cc:dd:ee:01","addr_info":[{"family":"inet","local":"10.9.8.12","prefixlen":24}]},{"ifname":"net1","address":"aa:bb:cc:dd:ee:02","addr_info":[{"family":"inet","local":"192.168.1.5","prefixlen":24}]}]""", "refused: the pod's network namespace has 2 IPv4 addresses (10.9.8.12/24 on eth0, 192.168.1.5/24 on net1)")]
    [InlineData("""[{"ifname":"eth0","address":"aa:bb:cc:dd:ee:01","addr_info":[{"family":"inet6","local":"fd00::5","prefixlen":64,"scope":"global"}]}]""", "refused: the pod's network namespace has no IPv4 address to keep")]
    public void The_address_that_moves_is_the_pods_one_IPv4_address(string json, string expected)
    {
        var (address, refusal) = AddressMove.FromIpJson(json);
        if (expected.StartsWith("refused: ", StringComparison.Ordinal))
        {
            Assert.Null(address);
            Assert.StartsWith(expected["refused: ".Length..], refusal, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal(expected, $"{address!.Interface} {address.Cidr} {address.Mac}");
        }
    }

    [Theory]
    [InlineData("10-flat.conflist", """{"cniVersion":"0.4.0","name":"flat","plugins":[{"type":"bridge","ipam":{"type":"podmig-ipam","subnet":"10.1.0.0/16"}},{"type":"portmap"}]}""", "flat podmig-ipam True")]
    [InlineData("10-bridge.conf", """{"cniVersion":"0.4.0","name":"cbr0","type":"bridge","ipam":{"type":"host-local"}}""", "cbr0 host-local False")]
    [InlineData("05-broken.conflist", "{not json", "no readable CNI configuration in /etc/cni/net.d")]
    [InlineData("10-calico.conflist", """{"name":"k8s-pod-network","plugins":[{"type":"calico","ipam":{"type":"calico-ipam"}}]}""", "k8s-pod-network calico-ipam False")]
    public void An_agent_reads_its_nodes_pod_network_from_the_first_CNI_configuration_that_parses(string file, string text, string expected)
    {
        // the runtime reads files in name order; one that does not parse is skipped, as the runtime skips it
        var network = PodNetworkFacts.FromFiles([("/etc/cni/net.d/" + file, text), ("/etc/cni/net.d/99-later.conflist", null)], "/etc/cni/net.d");
        Assert.Equal(expected, network.Name.Length > 0 ? $"{network.Name} {network.Ipam} {network.MovesAddresses}" : network.Source);
    }

    [Theory]
    [InlineData("", 0)]
    [InlineData("  0: 00000000:1B59 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 588 1", 0)]
    [InlineData("  0: 00000000:1B59 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 588 1", 3)]
    [InlineData("  0: 00000000:1B59 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 588 1\n  1: 00000000:1F90 00000000:0000 0A 00000000:00000011 00:00000000 00000000     0        0 589 1", 19)]
    [InlineData("  1: 0A0B0C0D:1B59 0A0B0CFB:D4A2 01 00000000:00000010 00:00000000 00000000     0        0 590 1", 0)]
    [InlineData("  2: garbage", 0)]
    public void Connections_waiting_to_be_accepted_are_counted_from_the_listeners_queues(string rows, int waiting)
    {
        // a /proc/PID/net/tcp table: its header, then one row per socket; only listeners (state 0A) have an accept queue (rx_queue)
        var table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" + rows;
        Assert.Equal(waiting, AcceptQueues.Waiting(table));
    }

    private static uint Host(string host) => AddressRange.ToNumber(IPAddress.Parse("10.9.8." + host));
}

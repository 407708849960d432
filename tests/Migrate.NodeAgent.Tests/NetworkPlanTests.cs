using Migrate.NodeAgent;
using Migrate.NodeAgent.Networking;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The network lock's rules and the address handover's plans, as data; the runner against a recording fake.</summary>
public sealed class NetworkPlanTests
{
    [Theory]
    [InlineData("eth0", "10.1.2.3/24", "02:42:ac:11:00:02", null)]
    [InlineData("eth0", "fd00::5/64", null, null)]
    [InlineData("eth0", "10.1.2.3", null, "not an address with its prefix length")]
    [InlineData("eth0", "10.1.2.3/33", null, "not an address with its prefix length")]
    [InlineData("eth0", "host/24", null, "not an address with its prefix length")]
    [InlineData("eth0;rm", "10.1.2.3/24", null, "not an interface name")]
    [InlineData("a-very-long-interface", "10.1.2.3/24", null, "not an interface name")]
    [InlineData("", "10.1.2.3/24", null, "not an interface name")]
    [InlineData("eth0", "10.1.2.3/24", "02:42:ac:11:00", "not a MAC address")]
    [InlineData("eth0", "10.1.2.3/24", "zz:42:ac:11:00:02", "not a MAC address")]
    public void A_pod_address_is_checked_before_any_command_is_made_of_it(string @interface, string cidr, string? mac, string? error)
    {
        if (error is null)
        {
            var address = new PodAddress(@interface, cidr, mac);
            Assert.Equal(cidr.Split('/')[0], address.Address.ToString());
        }
        else
        {
            Assert.Contains(error, Assert.Throws<ArgumentException>(() => new PodAddress(@interface, cidr, mac)).Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void The_lock_drops_everything_but_loopback_in_both_directions_for_both_families_and_the_unlock_removes_only_its_own_chains()
    {
        var lockSteps = NetworkLockRules.Lock();
        foreach (var tool in new[] { "iptables", "ip6tables" })
        {
            var mine = lockSteps.Where(s => s.Command.Program == tool).Select(s => string.Join(' ', s.Command.Arguments)).ToList();
            Assert.Equal(
            [
                "-w -N PODMIG-LOCK-IN", "-w -F PODMIG-LOCK-IN", "-w -A PODMIG-LOCK-IN -i lo -j RETURN", "-w -A PODMIG-LOCK-IN -j DROP",
                "-w -N PODMIG-LOCK-OUT", "-w -F PODMIG-LOCK-OUT", "-w -A PODMIG-LOCK-OUT -o lo -j RETURN", "-w -A PODMIG-LOCK-OUT -j DROP",
                "-w -I INPUT 1 -j PODMIG-LOCK-IN", "-w -I OUTPUT 1 -j PODMIG-LOCK-OUT",
            ], mine);
        }

        // the jumps are inserted once only; creating a chain that exists is no error
        Assert.All(lockSteps.Where(s => s.Command.Arguments.Contains("-I")), s => Assert.Equal("-C", s.UnlessSucceeds!.Arguments[1]));
        Assert.All(lockSteps.Where(s => s.Command.Arguments.Contains("-N")), s => Assert.True(s.MayFail));
        Assert.All(NetworkLockRules.Unlock(), s => Assert.True(s.MayFail));
        Assert.All(NetworkLockRules.Unlock(), s => Assert.Contains(s.Command.Arguments, a => a.StartsWith("PODMIG-LOCK", StringComparison.Ordinal)));
    }

    [Fact]
    public void The_address_is_released_before_it_is_claimed_with_the_same_mac_and_announced_only_for_ipv4()
    {
        var address = new PodAddress("eth0", "10.1.2.3/24", "02:42:AC:11:00:02");
        Assert.Equal(["ip address del 10.1.2.3/24 dev eth0", "ip link set dev eth0 down"], AddressHandover.Release(address).Select(s => s.Command.ToString()));
        Assert.Equal(
            ["ip link set dev eth0 down", "ip link set dev eth0 address 02:42:ac:11:00:02", "ip address replace 10.1.2.3/24 dev eth0", "ip link set dev eth0 up"],
            AddressHandover.Claim(address).Select(s => s.Command.ToString()));
        Assert.Equal(["arping -q -U -c 1 -I eth0 10.1.2.3"], AddressHandover.Announce(address).Select(s => s.Command.ToString()));
        Assert.Equal(["ip address replace fd00::5/64 dev eth0", "ip link set dev eth0 up"], AddressHandover.Claim(new("eth0", "fd00::5/64", null)).Select(s => s.Command.ToString()));
        Assert.Empty(AddressHandover.Announce(new("eth0", "fd00::5/64", null)));
    }

    [Fact]
    public void The_runner_enters_the_namespace_skips_what_is_in_place_tolerates_expected_failures_and_stops_at_the_first_other_one()
    {
        var ran = new List<string>();
        var failing = new HashSet<string> { "iptables -w -N PODMIG-LOCK-IN", "iptables -w -C INPUT -j PODMIG-LOCK-IN" };
        var runner = new NamespaceStepRunner(c =>
        {
            ran.Add(c.ToString());
            var inner = string.Join(' ', c.Arguments.Skip(1));
            return new HostCommandResult(failing.Contains(inner) ? 1 : 0, "", failing.Contains(inner) ? "already there" : "");
        });
        var path = "/proc/self/ns/net";
        runner.Run(path, NetworkLockRules.Lock().Take(9), "lock");
        Assert.All(ran, r => Assert.StartsWith("nsenter --net=/proc/self/ns/net iptables ", r, StringComparison.Ordinal));
        Assert.Contains("nsenter --net=/proc/self/ns/net iptables -w -I INPUT 1 -j PODMIG-LOCK-IN", ran);

        ran.Clear();
        failing = ["iptables -w -F PODMIG-LOCK-IN"];
        var error = Assert.Throws<IOException>(() => runner.Run(path, NetworkLockRules.Lock(), "lock the pod"));
        Assert.Contains("cannot lock the pod: 'nsenter --net=/proc/self/ns/net iptables -w -F PODMIG-LOCK-IN' failed (1): already there", error.Message, StringComparison.Ordinal);
        Assert.Equal(2, ran.Count);

        Assert.Contains("no network namespace at /nonexistent", Assert.Throws<ArgumentException>(() => runner.Run("/nonexistent", NetworkLockRules.Lock(), "lock")).Message, StringComparison.Ordinal);
    }
}

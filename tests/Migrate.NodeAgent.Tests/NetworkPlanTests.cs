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
    public void The_lock_drops_everything_but_loopback_in_both_directions_for_both_families_in_one_transaction_each_and_the_unlock_removes_only_its_own_chains()
    {
        var lockSteps = NetworkLockRules.Lock();
        Assert.Equal(["iptables-restore -w --noflush", "ip6tables-restore -w --noflush"], lockSteps.Select(s => s.Command.ToString()));
        Assert.All(lockSteps, s => Assert.Equal(NetworkLockRules.LockTransaction, s.Command.Input));
        Assert.Equal(["iptables -w -C INPUT -j PODMIG-LOCK-IN", "ip6tables -w -C INPUT -j PODMIG-LOCK-IN"], lockSteps.Select(s => s.UnlessSucceeds!.ToString()));
        Assert.Equal(
        [
            "*filter", ":PODMIG-LOCK-IN - [0:0]", ":PODMIG-LOCK-OUT - [0:0]",
            "-A PODMIG-LOCK-IN -i lo -j RETURN", "-A PODMIG-LOCK-IN -j DROP", "-A PODMIG-LOCK-OUT -o lo -j RETURN", "-A PODMIG-LOCK-OUT -j DROP",
            "-I INPUT 1 -j PODMIG-LOCK-IN", "-I OUTPUT 1 -j PODMIG-LOCK-OUT", "COMMIT",
        ], NetworkLockRules.LockTransaction.Split('\n', StringSplitOptions.RemoveEmptyEntries));

        var unlockSteps = NetworkLockRules.Unlock();
        Assert.All(unlockSteps, s => Assert.Equal(NetworkLockRules.UnlockTransaction, s.Command.Input));
        Assert.Equal(["iptables -w -C INPUT -j PODMIG-LOCK-IN", "ip6tables -w -C INPUT -j PODMIG-LOCK-IN"], unlockSteps.Select(s => s.FailsOnlyIf!.ToString()));
        Assert.All(unlockSteps, s => Assert.Null(s.OnlyIfSucceeds)); // the removal is tried first: one command when there is a lock
        Assert.All(NetworkLockRules.UnlockTransaction.Split('\n', StringSplitOptions.RemoveEmptyEntries)[1..^1],
            line => Assert.Contains("PODMIG-LOCK-", line, StringComparison.Ordinal));
    }

    [Fact]
    public void The_address_is_released_before_it_is_claimed_with_the_same_mac_and_announced_only_for_ipv4()
    {
        var address = new PodAddress("eth0", "10.1.2.3/24", "02:42:AC:11:00:02");
        var release = Assert.Single(AddressHandover.Release(address));
        Assert.Equal("ip -batch -", release.Command.ToString());
        Assert.Equal("link set dev eth0 down\naddress flush dev eth0 to 10.1.2.3/32\n", release.Command.Input);
        Assert.Equal("link set dev eth0 down\naddress flush dev eth0 to fd00::5/128\n", AddressHandover.Release(new("eth0", "fd00::5/64", null))[0].Command.Input);
        var claim = AddressHandover.Claim(address);
        Assert.Equal(["ip -batch -", "sysctl -qw net.ipv4.conf.all.arp_ignore=0", "ip -batch -"], claim.Select(s => s.Command.ToString()));
        Assert.Equal("link set dev eth0 down\nlink set dev eth0 address 02:42:ac:11:00:02\naddress replace 10.1.2.3/24 dev eth0\n", claim[0].Command.Input);
        Assert.Equal("link set dev eth0 up\n", claim[2].Command.Input);
        Assert.Equal(["arping -q -U -c 1 -I eth0 10.1.2.3"], AddressHandover.Announce(address).Select(s => s.Command.ToString()));
        Assert.Equal("address replace fd00::5/64 dev eth0\n", AddressHandover.Claim(new("eth0", "fd00::5/64", null))[0].Command.Input);
        Assert.Empty(AddressHandover.Announce(new("eth0", "fd00::5/64", null)));
        // the pod's routes through the interface come back after the link is up
        Assert.Equal(
            "link set dev eth0 up\nroute replace default via 10.1.2.1 dev eth0\nroute replace 10.96.0.0/12 dev eth0\n",
            AddressHandover.Claim(address, [new PodRoute("default", "10.1.2.1"), new PodRoute("10.96.0.0/12", null)])[2].Command.Input);
        Assert.Equal(
            [new PodRoute("default", "10.1.2.1"), new PodRoute("10.96.0.0/12", null)],
            AddressHandover.RoutesFromIpJson("""[{"dst":"default","gateway":"10.1.2.1","dev":"eth0","flags":[]},{"dst":"10.1.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.1.2.3","flags":[]},{"dst":"10.96.0.0/12","dev":"eth0","scope":"link","flags":[]},{"dst":"192.168.0.0/16","gateway":"10.9.9.9","dev":"net1","flags":[]}]""", "eth0"));
        Assert.Throws<ArgumentException>(() => new PodRoute("default; rm", null));
        Assert.Throws<ArgumentException>(() => new PodRoute("default", "gw"));
        // what podmig-ipam does to a sandbox pinned to an address until the claim, which undoes it
        Assert.Equal("sysctl -qw net.ipv4.conf.all.arp_ignore=8", AddressHandover.Silence().ToString());
    }

    [Fact]
    public void The_runner_enters_the_namespace_skips_what_is_done_tolerates_expected_failures_and_stops_at_the_first_other_one()
    {
        var ran = new List<string>();
        var inputs = new List<string?>();
        var failing = new HashSet<string> { "check-present", "make-exists" };
        var runner = new NamespaceStepRunner(c =>
        {
            // the command as run inside the namespace (the runner entered it: no nsenter in front)
            ran.Add(c.ToString());
            inputs.Add(c.Input);
            var inner = c.ToString();
            return new HostCommandResult(failing.Contains(inner) ? 1 : 0, "", failing.Contains(inner) ? "it says no" : "");
        });
        var steps = new NamespaceStep[]
        {
            new(new("make-exists"), MayFail: true),                                        // fails, tolerated
            new(new("insert") { Input = "rules" }, UnlessSucceeds: new("check-present")),   // check fails: runs
            new(new("insert-again"), UnlessSucceeds: new("check-done")),                    // check succeeds: skipped
            new(new("remove"), OnlyIfSucceeds: new("check-present")),                       // check fails: skipped
            new(new("remove-again"), OnlyIfSucceeds: new("check-done")),                    // check succeeds: runs
        };
        runner.Run("/proc/self/ns/net", steps, "lock");
        Assert.Equal(["make-exists", "check-present", "insert", "check-done", "check-present", "check-done", "remove-again"], ran);
        Assert.Equal("rules", inputs[2]);

        ran.Clear();
        failing = ["check-present", "insert"];
        var error = Assert.Throws<IOException>(() => runner.Run("/proc/self/ns/net", steps, "lock the pod"));
        Assert.Equal("cannot lock the pod: 'insert' failed (1): it says no", error.Message);
        Assert.Equal(3, ran.Count);

        Assert.Contains("no network namespace at /nonexistent", Assert.Throws<ArgumentException>(() => runner.Run("/nonexistent", steps, "lock")).Message, StringComparison.Ordinal);
    }
    [Theory]
    [InlineData(false, false, "remove", null)]                          // removed at once: nothing asked
    [InlineData(true, false, "remove,check-locked", null)]              // it failed, and nothing is left to remove: done
    [InlineData(true, true, "remove,check-locked", "'remove' failed (1): it says no")] // it failed, and the lock is still there
    public void A_removal_tried_first_is_asked_about_only_when_it_failed_and_its_failure_stands_only_when_the_thing_is_still_there(
        bool removalFails, bool stillLocked, string expectedRuns, string? expectedError)
    {
        var ran = new List<string>();
        var runner = new NamespaceStepRunner(c =>
        {
            var inner = c.ToString();
            ran.Add(inner);
            bool fails = inner == "remove" ? removalFails : !stillLocked;
            return new HostCommandResult(fails ? 1 : 0, "", fails ? "it says no" : "");
        });
        NamespaceStep[] steps = [new(new("remove"), FailsOnlyIf: new("check-locked"))];
        if (expectedError is null)
        {
            runner.Run("/proc/self/ns/net", steps, "unlock");
        }
        else
        {
            Assert.Equal("cannot unlock: " + expectedError, Assert.Throws<IOException>(() => runner.Run("/proc/self/ns/net", steps, "unlock")).Message);
        }

        Assert.Equal(expectedRuns.Split(','), ran);
    }

    [Fact]
    public void Independent_steps_all_run_at_once_each_with_its_own_condition_and_the_first_failure_in_order_is_thrown_after_all_ended()
    {
        var ran = new System.Collections.Concurrent.ConcurrentBag<string>();
        var failing = new HashSet<string> { "check-v4", "restore-v6" };
        int running = 0, most = 0;
        var runner = new NamespaceStepRunner(c =>
        {
            var inner = c.ToString();
            int now = Interlocked.Increment(ref running);
            int seen;
            while ((seen = Volatile.Read(ref most)) < now && Interlocked.CompareExchange(ref most, now, seen) != seen)
            {
            }

            Thread.Sleep(inner.StartsWith("restore", StringComparison.Ordinal) ? 200 : 0);
            Interlocked.Decrement(ref running);
            ran.Add(inner);
            return new HostCommandResult(failing.Contains(inner) ? 1 : 0, "", failing.Contains(inner) ? "it says no" : "");
        });
        NamespaceStep[] steps =
        [
            new(new("restore-v4"), UnlessSucceeds: new("check-v4")), // check fails: runs
            new(new("restore-v6"), UnlessSucceeds: new("check-v6")), // check succeeds: skipped
        ];

        runner.RunIndependent("/proc/self/ns/net", steps, "lock");
        Assert.Equal(["check-v4", "check-v6", "restore-v4"], ran.Order(StringComparer.Ordinal));

        ran.Clear();
        failing = ["check-v4", "check-v6", "restore-v4", "restore-v6"];
        var error = Assert.Throws<IOException>(() => runner.RunIndependent("/proc/self/ns/net", steps, "lock the pod"));
        Assert.Equal("cannot lock the pod: 'restore-v4' failed (1): it says no", error.Message);
        Assert.Equal(["check-v4", "check-v6", "restore-v4", "restore-v6"], ran.Order(StringComparer.Ordinal)); // the second family ran all the same
        Assert.Equal(2, most); // both restores at once
    }
}

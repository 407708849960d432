using System.Security.Cryptography;
using Migrate.NodeAgent.Networking;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Work inside a pod's network namespace without nsenter (<see cref="NetworkNamespaceThread"/>, and
/// the real <see cref="NamespaceStepRunner"/> on it), in a real namespace made for the test.
/// </summary>
public sealed class NetworkNamespaceThreadTests : IDisposable
{
    private readonly string _name = "pmt-nsthread-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));

    public NetworkNamespaceThreadTests()
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("ip", "sysctl");
        Prerequisites.Run("ip", "netns", "add", _name);
    }

    private string Path => "/run/netns/" + _name;

    public void Dispose() => Prerequisites.Run("ip", "netns", "delete", _name);

    /// <summary>Both families' rules in the namespace, as their save tools print them.</summary>
    private string SavedRules() => Prerequisites.Run("ip", "netns", "exec", _name, "iptables-save") + Prerequisites.Run("ip", "netns", "exec", _name, "ip6tables-save");

    [Fact]
    public void The_work_and_the_programs_it_starts_are_in_the_namespace_and_the_caller_stays_where_it_was()
    {
        string here = NetworkNamespaceThread.Current();
        string inside = NetworkNamespaceThread.Run(Path, NetworkNamespaceThread.Current);

        Assert.StartsWith("net:[", inside, StringComparison.Ordinal);
        Assert.NotEqual(here, inside);
        Assert.Equal(here, NetworkNamespaceThread.Current());
        // a fresh namespace has its loopback only: a program started from the thread is born there
        var links = NetworkNamespaceThread.Run(Path, () => HostCommands.Run(new HostCommand("ip", "-o", "link", "show")));
        Assert.True(links.Succeeded, links.Error);
        Assert.Equal(["lo"], links.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(':')[1].Trim()));
    }

    [Fact]
    public void The_runner_s_steps_change_the_namespace_not_the_host()
    {
        string hostValue = Prerequisites.Run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore").Trim();
        new NamespaceStepRunner().Run(Path,
        [
            new(new HostCommand("ip", "-batch", "-") { Input = "link set dev lo up\naddress add 192.0.2.9/32 dev lo\n" }),
            new(new HostCommand("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=8")),
        ], "prepare the namespace");

        Assert.Contains("inet 192.0.2.9/32", Prerequisites.Run("ip", "-n", _name, "address", "show", "dev", "lo"), StringComparison.Ordinal);
        Assert.Equal("8", Prerequisites.Run("ip", "netns", "exec", _name, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore").Trim());
        Assert.Equal(hostValue, Prerequisites.Run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore").Trim());
        Assert.DoesNotContain("192.0.2.9", Prerequisites.Run("ip", "address", "show", "dev", "lo"), StringComparison.Ordinal);

        // a step that fails names its command and what it said
        var error = Assert.Throws<IOException>(() => new NamespaceStepRunner().Run(Path, [new(new HostCommand("ip", "link", "set", "dev", "no-such-link", "up"))], "bring it up"));
        Assert.StartsWith("cannot bring it up: 'ip link set dev no-such-link up' failed (1): ", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    // only "sysctl -qw net.KEY=VALUE" with a plain key is written in-process; anything else runs the program
    [InlineData("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=0")]
    [InlineData("sysctl", "-qw", "kernel.pid_max=4194304")]
    [InlineData("sysctl", "-qw", "net.ipv4.conf.eth0-1.arp_ignore=0")]
    [InlineData("sysctl", "-qw", "net.ipv4/../../kernel.x=1")]
    [InlineData("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore")]
    [InlineData("sysctl", "-n", "net.ipv4.conf.all.arp_ignore")]
    [InlineData("ip", "-qw", "net.ipv4.conf.all.arp_ignore=0")]
    public void Other_commands_are_left_to_their_programs(string program, string flag, string assignment) =>
        Assert.Null(NamespaceStepRunner.WriteSysctl(new HostCommand(program, flag, assignment)));

    [Fact]
    public void A_path_that_is_no_network_namespace_is_refused_saying_so()
    {
        var error = Assert.Throws<IOException>(() => NetworkNamespaceThread.Run("/etc/hostname", () => 0));
        Assert.StartsWith("cannot enter the network namespace at /etc/hostname: ", error.Message, StringComparison.Ordinal);
        Assert.Throws<FileNotFoundException>(() => NetworkNamespaceThread.Run("/run/netns/" + _name + "-gone", () => 0));
    }

    [Fact]
    public void A_lock_made_ready_ahead_locks_only_when_applied_with_one_jump_per_family_and_unlocks_as_any()
    {
        Prerequisites.RequirePrograms("iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save");
        var network = new PodNetworkLock();
        using (var prepared = network.Prepare(Path)!)
        {
            // both families' tools wait inside the namespace; nothing is locked yet
            Assert.Equal(2, prepared.Waiting);
            Assert.False(network.IsLocked(Path));
            Assert.DoesNotContain(NetworkLockRules.InputChain, Prerequisites.Run("ip", "netns", "exec", _name, "iptables-save"), StringComparison.Ordinal);

            prepared.Apply();
        }

        Assert.True(network.IsLocked(Path));
        foreach (var save in new[] { "iptables-save", "ip6tables-save" })
        {
            var rules = Prerequisites.Run("ip", "netns", "exec", _name, save);
            Assert.Single(rules.Split('\n'), l => l == $"-A INPUT -j {NetworkLockRules.InputChain}");
            Assert.Single(rules.Split('\n'), l => l == $"-A OUTPUT -j {NetworkLockRules.OutputChain}");
        }

        // a lock made ready on a locked namespace has nothing to do, and adds no second jump
        using (var again = network.Prepare(Path)!)
        {
            Assert.Equal(0, again.Waiting);
            again.Apply();
        }

        network.Unlock(Path);
        Assert.False(network.IsLocked(Path));
        Assert.DoesNotContain("PODMIG", SavedRules(), StringComparison.Ordinal);
    }

    [Fact]
    public void A_lock_made_ready_and_dropped_changes_nothing_and_its_tools_are_gone()
    {
        Prerequisites.RequirePrograms("iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save");
        var network = new PodNetworkLock();
        var prepared = network.Prepare(Path)!;
        var tools = prepared.Tools.ToList();
        Assert.Equal(2, tools.Count);
        Assert.All(tools, pid => Assert.Contains("tables-restore", File.ReadAllText($"/proc/{pid}/cmdline"), StringComparison.Ordinal));

        prepared.Dispose();

        Assert.All(tools, pid => Assert.False(Directory.Exists($"/proc/{pid}"), $"tool {pid} ended with the lock dropped"));
        Assert.False(network.IsLocked(Path));
        Assert.DoesNotContain("PODMIG", SavedRules(), StringComparison.Ordinal);
        // what a dropped lock (or a dead agent) leaves its tools: an empty input, which they end on by themselves, successfully
        foreach (var tool in new[] { "iptables-restore", "ip6tables-restore" })
        {
            using var started = NetworkNamespaceThread.Run(Path, () => StartedHostCommand.Start(new HostCommand(tool, "-w", "--noflush")));
            var ended = started.Finish("", TimeSpan.FromSeconds(30));
            Assert.True(ended.Succeeded, $"{tool} given nothing: {ended.ExitCode} {ended.Error}");
        }
    }

    [Fact]
    public void A_family_found_locked_when_the_lock_was_made_ready_and_unlocked_since_is_locked_when_it_is_applied()
    {
        Prerequisites.RequirePrograms("iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save");
        var network = new PodNetworkLock();
        network.Lock(Path);
        using var prepared = network.Prepare(Path)!;
        Assert.Equal(0, prepared.Waiting);
        // an earlier migration's rollback lifts the lock meanwhile
        network.Unlock(Path);
        Assert.False(network.IsLocked(Path));

        prepared.Apply();

        Assert.True(network.IsLocked(Path));
        Assert.Single(Prerequisites.Run("ip", "netns", "exec", _name, "iptables-save").Split('\n'), l => l == $"-A INPUT -j {NetworkLockRules.InputChain}");
        network.Unlock(Path);
    }

    [Fact]
    public void A_lock_whose_tool_fails_says_which_command_failed_and_what_it_said()
    {
        var step = new NamespaceStep(new HostCommand("sh", "-c", "cat >/dev/null; echo 'no such table' >&2; exit 3") { Input = "*filter\nCOMMIT\n" });
        var failing = new PreparedNetworkChange(new NamespaceStepRunner(), Path, [step], [StartedHostCommand.Start(step.Command)], $"lock the network of {Path}");

        var error = Assert.Throws<IOException>(failing.Apply);
        failing.Dispose();

        Assert.Equal($"cannot lock the network of {Path}: 'sh -c cat >/dev/null; echo 'no such table' >&2; exit 3' failed (3): no such table", error.Message);
    }

    [Fact]
    public void An_unlock_made_ready_before_the_lock_lifts_the_lock_taken_since_when_applied_and_nothing_before()
    {
        Prerequisites.RequirePrograms("iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save");
        var network = new PodNetworkLock();
        using (var unlock = network.PrepareUnlock(Path)!)
        {
            // the replacement's: its tools start while it waits, before or beside its lock
            Assert.Equal(2, unlock.Waiting);
            network.Lock(Path);
            Assert.True(network.IsLocked(Path));

            unlock.Apply();
        }

        Assert.False(network.IsLocked(Path));
        Assert.DoesNotContain("PODMIG", SavedRules(), StringComparison.Ordinal);

        // on a namespace not locked (its lock failed, or another container's restore lifted it) the unlock has nothing to do, and says nothing
        using (var again = network.PrepareUnlock(Path)!)
        {
            again.Apply();
        }

        Assert.False(network.IsLocked(Path));
    }

    [Fact]
    public void An_unlock_made_ready_and_dropped_leaves_the_lock_and_its_tools_are_gone()
    {
        Prerequisites.RequirePrograms("iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save");
        var network = new PodNetworkLock();
        network.Lock(Path);
        var unlock = network.PrepareUnlock(Path)!;
        var tools = unlock.Tools.ToList();
        Assert.Equal(2, tools.Count);

        unlock.Dispose();

        Assert.All(tools, pid => Assert.False(Directory.Exists($"/proc/{pid}"), $"tool {pid} ended with the unlock dropped"));
        Assert.True(network.IsLocked(Path));
        Assert.Single(Prerequisites.Run("ip", "netns", "exec", _name, "iptables-save").Split('\n'), l => l == $"-A INPUT -j {NetworkLockRules.InputChain}");
        network.Unlock(Path);
    }

    [Fact]
    public void An_unlock_whose_tool_fails_while_the_namespace_stays_locked_says_which_command_failed()
    {
        Prerequisites.RequirePrograms("iptables", "iptables-restore");
        var network = new PodNetworkLock();
        network.Lock(Path);
        var step = new NamespaceStep(new HostCommand("sh", "-c", "cat >/dev/null; echo 'table busy' >&2; exit 4") { Input = NetworkLockRules.UnlockTransaction },
            FailsOnlyIf: NetworkLockRules.IsLocked());
        var failing = new PreparedNetworkChange(new NamespaceStepRunner(), Path, [step], [StartedHostCommand.Start(step.Command)], $"unlock the network of {Path}");

        var error = Assert.Throws<IOException>(failing.Apply);
        failing.Dispose();

        Assert.Equal($"cannot unlock the network of {Path}: 'sh -c cat >/dev/null; echo 'table busy' >&2; exit 4' failed (4): table busy", error.Message);
        Assert.True(network.IsLocked(Path));
        network.Unlock(Path);
    }

    [Fact]
    public void A_lock_cannot_be_made_ready_for_a_namespace_that_is_gone_and_a_runner_of_tests_starts_nothing_ahead()
    {
        Assert.Throws<FileNotFoundException>(() => new PodNetworkLock().Prepare(Path + "-gone"));
        Assert.Throws<FileNotFoundException>(() => new PodNetworkLock().PrepareUnlock(Path + "-gone"));
        var faked = new PodNetworkLock(new NamespaceStepRunner(_ => new HostCommandResult(0, "", "")));
        Assert.Null(faked.Prepare(Path));
        Assert.Null(faked.PrepareUnlock(Path));
    }

    [Fact]
    public void A_claim_s_programs_started_ahead_do_its_work_when_it_runs_and_a_program_it_does_not_use_waits_on()
    {
        using var ahead = CommandsAhead.Start(new NamespaceStepRunner(), Path, AddressHandover.IpBatch, 2)!;
        Assert.Equal(2, ahead.Waiting);
        var address = new Migrate.NodeAgent.Networking.PodAddress("lo", "192.0.2.10/32", null);

        // nothing happens before the plan: they wait for their input
        Thread.Sleep(100);
        Assert.DoesNotContain("192.0.2.10", Prerequisites.Run("ip", "-n", _name, "address", "show", "dev", "lo"), StringComparison.Ordinal);
        new NamespaceStepRunner().Run(Path, AddressHandover.Claim(address), "claim address 192.0.2.10/32", ahead);

        Assert.Equal(0, ahead.Waiting);
        var shown = Prerequisites.Run("ip", "-n", _name, "address", "show", "dev", "lo");
        Assert.Contains("inet 192.0.2.10/32", shown, StringComparison.Ordinal);
        Assert.Contains("UP", shown.Split('\n')[0], StringComparison.Ordinal);
        // a step of another program (or arguments) starts its own: the ones waiting are not used for it
        using var other = CommandsAhead.Start(new NamespaceStepRunner(), Path, AddressHandover.IpBatch, 1)!;
        new NamespaceStepRunner().Run(Path, [new(new HostCommand("ip", "-4", "-batch", "-") { Input = "address add 192.0.2.11/32 dev lo\n" })], "add", other);
        Assert.Equal(1, other.Waiting);
        Assert.Contains("192.0.2.11", Prerequisites.Run("ip", "-n", _name, "address", "show", "dev", "lo"), StringComparison.Ordinal);
    }

    [Fact]
    public void Programs_started_ahead_and_dropped_end_having_done_nothing_and_a_failing_one_says_what_failed()
    {
        var before = Prerequisites.Run("ip", "-n", _name, "address", "show");
        var ahead = CommandsAhead.Start(new NamespaceStepRunner(), Path, AddressHandover.IpBatch, 2)!;
        var pids = Directory.EnumerateDirectories("/proc").Select(System.IO.Path.GetFileName)
            .Where(d => int.TryParse(d, out _) && SafeRead($"/proc/{d}/cmdline") == "ip\0-batch\0-\0" && IsIn($"/proc/{d}/ns/net")).Select(d => int.Parse(d!, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(2, pids.Count);

        ahead.Dispose();

        Assert.All(pids, pid => Assert.False(Directory.Exists($"/proc/{pid}"), $"ip {pid} ended when dropped"));
        Assert.Equal(before, Prerequisites.Run("ip", "-n", _name, "address", "show"));
        using var failing = CommandsAhead.Start(new NamespaceStepRunner(), Path, AddressHandover.IpBatch, 1)!;
        var error = Assert.Throws<IOException>(() => new NamespaceStepRunner().Run(Path, [new(AddressHandover.IpBatch with { Input = "link set dev no-such-link up\n" })], "bring it up", failing));
        Assert.StartsWith("cannot bring it up: 'ip -batch -' failed (1): ", error.Message, StringComparison.Ordinal);
        Assert.Equal(0, failing.Waiting);
        Assert.Null(CommandsAhead.Start(new NamespaceStepRunner(_ => new HostCommandResult(0, "", "")), Path, AddressHandover.IpBatch, 2));
    }

    private bool IsIn(string namespaceLink)
    {
        try
        {
            return new FileInfo(namespaceLink).LinkTarget == NetworkNamespaceThread.Run(Path, NetworkNamespaceThread.Current);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static string SafeRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return "";
        }
        catch (UnauthorizedAccessException)
        {
            return "";
        }
    }
}

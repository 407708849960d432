using System.Globalization;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Networking;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A pod that keeps its address has its network lock made ready when its checkpoint begins: the
/// lock's tools start inside its namespace then and wait, changing nothing, until the freeze gives
/// them the lock, or end unused when the migration ends without one. Real containerd, runc and
/// iptables.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class NetworkLockAheadTests : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("lockahead");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    private Agent.V1.NodeAgent.NodeAgentClient Client => _agent.Client;

    [Fact]
    public async Task The_lock_made_ready_at_the_checkpoints_start_is_what_the_freeze_applies_and_ends_unused_with_the_migration()
    {
        var pod = await _agent.RunPodAsync("lockahead", CheckpointTests.Counter("main", 2));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);

        // a migration ended before its freeze: its tools end, having locked nothing
        var unused = CheckpointTests.Begin("m-lock-unused", pod, _agent.NodeName);
        unused.KeepAddress = true;
        var begun = await Client.BeginCheckpointAsync(unused);
        var network = $"/proc/{begun.Containers[0].Pid}/ns/net";
        var waitingUnused = await ToolsAsync(network, present: true);
        bool lockedWhileWaiting = new PodNetworkLock().IsLocked(network);
        await Client.CleanupAsync(new MigrationRef { MigrationId = unused.MigrationId });
        var leftUnused = await ToolsAsync(network, present: false);
        bool lockedAfterCleanup = new PodNetworkLock().IsLocked(network);

        // a migration that freezes: the tools started at its beginning lock the pod, and end
        var used = CheckpointTests.Begin("m-lock-used", pod, _agent.NodeName);
        used.KeepAddress = true;
        await Client.BeginCheckpointAsync(used);
        var waitingUsed = await ToolsAsync(network, present: true);
        var dump = await Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = used.MigrationId });
        var leftUsed = Tools(network);
        bool lockedWhenFrozen = new PodNetworkLock().IsLocked(network);
        await Client.ResumeAsync(new ResumeRequest { MigrationId = used.MigrationId });
        bool lockedAfterResume = new PodNetworkLock().IsLocked(network);

        Assert.True(begun.KeepsAddress, begun.AddressNote);
        Assert.NotEmpty(waitingUnused);
        Assert.False(lockedWhileWaiting);
        Assert.Empty(leftUnused);
        Assert.False(lockedAfterCleanup);
        Assert.NotEmpty(waitingUsed);
        Assert.Empty(waitingUsed.Intersect(waitingUnused));
        Assert.NotEmpty(dump.Containers);
        Assert.Empty(leftUsed);
        Assert.True(lockedWhenFrozen);
        Assert.False(lockedAfterResume);
        long before = AgentOnNode.LastTick(pod, "main");
        await AgentOnNode.WaitForTicksAsync(pod, "main", (int)before + 3, TimeSpan.FromSeconds(10));
    }

    /// <summary>Waits (10 s at most) until the lock's tools in <paramref name="network"/> are there, or gone; returns them.</summary>
    private static async Task<List<int>> ToolsAsync(string network, bool present)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            var tools = Tools(network);
            if ((tools.Count > 0) == present || DateTime.UtcNow > deadline)
            {
                return tools;
            }

            await Task.Delay(20);
        }
    }

    /// <summary>
    /// This process's children running an iptables family's restore tool (<c>--noflush</c>, as the lock
    /// starts them) inside the network namespace <paramref name="network"/>: other tests' pods have namespaces of their own.
    /// </summary>
    private static List<int> Tools(string network)
    {
        var namespaceId = new FileInfo(network).LinkTarget;
        var tools = new List<int>();
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                continue;
            }

            try
            {
                var stat = File.ReadAllText(Path.Combine(directory, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                var arguments = File.ReadAllText(Path.Combine(directory, "cmdline")).Split('\0');
                if (int.Parse(fields[1], CultureInfo.InvariantCulture) == Environment.ProcessId
                    && arguments.Any(a => a.EndsWith("tables-restore", StringComparison.Ordinal)) && arguments.Contains("--noflush")
                    && new FileInfo(Path.Combine(directory, "ns", "net")).LinkTarget == namespaceId)
                {
                    tools.Add(pid);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // it ended while it was looked at
            }
        }

        return tools;
    }
}

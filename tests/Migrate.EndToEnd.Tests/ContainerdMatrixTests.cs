using Migrate.Api;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>A sandbox whose nodes run newer containerd releases than bookworm's: node-a trixie's 1.7, node-b sid's 2.1 (configuration version 3).</summary>
public sealed class MixedContainerdFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() => Cluster = await SandboxCluster.StartAsync(new SandboxOptions { Containerd = "1.7,2.1" });

    public async Task DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>
/// The product on the containerd releases clusters run today: a pod on a containerd 1.7 node
/// moves live to a containerd 2.1 node (an upgrade scenario: the nodes run different releases),
/// and a checkpoint taken on the 2.1 node is restored on the 1.7 one. The agents find the pods
/// through each release's CRI; the podmig runtime handler is configured in each release's format.
/// </summary>
public sealed class ContainerdMatrixTests(MixedContainerdFixture fixture, ITestOutputHelper output) : IClassFixture<MixedContainerdFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task A_counter_moves_live_from_a_containerd_1_7_node_to_a_2_1_node_and_a_checkpoint_taken_on_2_1_restores_on_1_7()
    {
        var versions = Cluster.Nodes.ToDictionary(n => n.Name, n => n.Containerd.Release.Version());
        output.WriteLine(string.Join(", ", versions.Select(v => $"{v.Key}: containerd {v.Value}")));
        Assert.StartsWith("1.7.", versions["node-a"], StringComparison.Ordinal);
        Assert.StartsWith("2.1.", versions["node-b"], StringComparison.Ordinal);
        Assert.Contains("version = 3", File.ReadAllText(Path.Combine(Cluster.Node("node-b").Containerd.State, "config.toml")), StringComparison.Ordinal);

        // live migration 1.7 -> 2.1
        await Sandbox.RunCounterAsync(Cluster, "mixed", "node-a", 32);
        await Sandbox.WaitForTicksAsync(Cluster, "mixed", "main", 5);
        await Sandbox.ApplyRequestAsync(Cluster, "move-mixed", "mixed", "PreCopy", "node-b");
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-mixed"))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, memory {status.MemoryRestore}");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        var sourceTicks = Cluster.Node("node-a").LoggedTicks("default", "mixed", "main");
        var moved = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 8);
        Sandbox.AssertConsecutive(moved, sourceTicks[^1].Tick + 1);
        Assert.Contains(moved, t => t.VerifiedOk);
        var shim = ShimOf(Cluster.Node("node-b").Containerd);
        output.WriteLine($"node-b's shim: {shim}");
        Assert.StartsWith(Cluster.Node("node-b").Containerd.Release.BinDirectory, shim, StringComparison.Ordinal);

        // a checkpoint on the 2.1 node, restored on the 1.7 node
        await Sandbox.ApplyAsync(Cluster, $"""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: mixed-ck
            spec:
              podName: {status.ReplacementPod}
            """);
        await Sandbox.WaitForPhaseAsync(Cluster, "checkpoint", "mixed-ck", "Ready");
        long taken = (await Sandbox.TicksAsync(Cluster, status.ReplacementPod!))[^1].Tick;
        await Sandbox.ApplyAsync(Cluster, """
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: mixed-back
            spec:
              checkpointName: mixed-ck
              nodeName: node-a
            """);
        await Sandbox.WaitForPhaseAsync(Cluster, "restore", "mixed-back", "Succeeded");
        var restored = await Sandbox.WaitForTicksAsync(Cluster, "mixed-back", "main", 5);
        output.WriteLine($"mixed-back on node-a: first tick {restored[0].Tick} (the checkpoint was Ready at tick {taken})");
        Assert.InRange(restored[0].Tick, moved[0].Tick, taken + 1);
        Sandbox.AssertConsecutive(restored, restored[0].Tick);
        Assert.Contains(restored, t => t.VerifiedOk);

        (await Cluster.Api.KubectlAsync("delete", "restore", "mixed-back")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", status.ReplacementPod!, "mixed-back", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "mixed-ck", "--wait=true", "--timeout=30s")).Succeeded();
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
    }

    /// <summary>The executable of a shim the node's containerd started (found by the node's socket on its command line).</summary>
    private static string ShimOf(ContainerdNode node)
    {
        foreach (var proc in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)))
        {
            try
            {
                var cmdline = File.ReadAllText(Path.Combine(proc, "cmdline")).Replace('\0', ' ');
                if (cmdline.Contains("containerd-shim", StringComparison.Ordinal) && cmdline.Contains(node.SocketPath, StringComparison.Ordinal))
                {
                    return new FileInfo(Path.Combine(proc, "exe")).LinkTarget ?? "";
                }
            }
            catch (IOException)
            {
                // gone meanwhile
            }
        }

        throw new InvalidOperationException($"no shim of {node.Name} runs");
    }
}

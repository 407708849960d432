using System.Text.Json.Nodes;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Cri.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The agent's images are what <c>runc restore</c> needs: restored into a fresh sandbox with the
/// captured file system state put back, the process continues from where it was frozen.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class RestoreWithRuncTests(ITestOutputHelper output) : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("restore");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    [Fact]
    public async Task A_counter_restored_by_runc_continues_from_the_frozen_value_with_its_memory_intact()
    {
        var pod = await _agent.RunPodAsync("counter", CheckpointTests.Counter("main", 16, "--verify-every", "4", "--dirty-percent-per-second", "5"));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 6);
        var (spec, lower) = await SourceFactsAsync(pod, "main");
        var client = _agent.Client;

        var begun = await client.BeginCheckpointAsync(CheckpointTests.Begin("m-runc", pod, _agent.NodeName));
        await client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-runc", Round = 1 });
        // the small tmpfs mounts carried by the agent: plain runc restores them once told where they were built
        await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-runc", CarryTmpfsMounts = true });
        Assert.NotNull(CarriedMounts.Read(Path.Combine(begun.StagingDirectory, StagingLayout.FinalImages("main"))));
        var frozen = Memcounter.Parse(pod.LogLines("main"))[^1];

        await using var restored = await RuncRestore.RestoreAsync(_agent, spec, lower, begun.StagingDirectory, "main");
        var ticks = await restored.WaitForTicksAsync(t => t.Count(x => x.Verified != "-") >= 2);
        output.WriteLine($"frozen at {frozen.Tick}; restored printed {ticks[0].Tick}..{ticks[^1].Tick}");

        Assert.Equal("running", restored.State());
        Assert.Equal(frozen.Tick + 1, ticks[0].Tick);
        Assert.Equal(Enumerable.Range(0, ticks.Count).Select(i => frozen.Tick + 1 + i), ticks.Select(t => t.Tick));
        Assert.All(ticks.Where(t => t.Verified != "-"), t => Assert.True(t.VerifiedOk, $"tick {t.Tick}: the buffer no longer matches its checksum"));
        Assert.True(ticks[0].Dirtied >= frozen.Dirtied, "the dirtied-page count went backwards");

        // the migration succeeded: the frozen source is ended for good
        var finished = await client.FinishAsync(new MigrationRef { MigrationId = "m-runc" });
        Assert.Equal(MigrationPhase.Finished, finished.Phase);
        Assert.Equal(ContainerState.ContainerExited, await WaitForStateAsync(pod.ContainerIds["main"], ContainerState.ContainerExited));
        Assert.Equal(frozen.Tick, AgentOnNode.LastTick(pod, "main"));
    }

    [Fact]
    public async Task Files_in_the_writable_layer_and_an_emptyDir_come_back_with_their_open_offsets()
    {
        var pod = await _agent.RunPodAsync("files", CheckpointTests.Counter("main", 4, "--log-file", "/data/ticks", "--log-file", "/scratch/ticks") with
        {
            EmptyDirMounts = [("scratch", "/scratch")],
        });
        await AgentOnNode.WaitForTicksAsync(pod, "main", 8);
        var (spec, lower) = await SourceFactsAsync(pod, "main");
        var client = _agent.Client;

        var begun = await client.BeginCheckpointAsync(CheckpointTests.Begin("m-files", pod, _agent.NodeName));
        // not asked to carry them: CRIU archives the tmpfs mounts itself, as for a target of an older release
        var dump = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-files" });
        var final = Path.Combine(begun.StagingDirectory, StagingLayout.FinalImages("main"));
        Assert.Null(CarriedMounts.Read(final));
        Assert.NotEmpty(System.IO.Directory.EnumerateFiles(final, "tmpfs-dev-*"));
        long frozen = AgentOnNode.LastTick(pod, "main");
        await using var restored = await RuncRestore.RestoreAsync(_agent, spec, lower, begun.StagingDirectory, "main");
        await restored.WaitForTicksAsync(t => t.Count >= 5);

        // the restored process appends through the descriptors it had open: lines 1..N, none lost or overwritten
        foreach (var file in new[] { Path.Combine(restored.Upper, "data", "ticks"), Path.Combine(restored.Volume("scratch"), "ticks") })
        {
            var ticks = Memcounter.Parse(RuncRestore.ReadShared(file).Split('\n'));
            Assert.True(ticks.Count > frozen + 3, $"{file} holds {ticks.Count} ticks, the source was frozen at {frozen}");
            Assert.Equal(Enumerable.Range(1, ticks.Count).Select(i => (long)i), ticks.Select(t => t.Tick));
            Assert.DoesNotContain('\0', RuncRestore.ReadShared(file));
        }

        Assert.True(dump.VolumeBytes > 0);
        Assert.True(dump.Containers[0].RootfsDiffBytes > 0);
        await client.FinishAsync(new MigrationRef { MigrationId = "m-files" });
    }

    private async Task<(JsonNode Spec, string LowerDirectories)> SourceFactsAsync(RunningTestPod pod, string container)
    {
        var status = await _agent.Node.Cri.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = pod.ContainerIds[container], Verbose = true });
        var info = JsonNode.Parse(status.Info["info"])!;
        var process = new ContainerProcess((int)info["pid"]!);
        var lower = process.RootMount().SuperOption("lowerdir") ?? throw new InvalidOperationException("the source container's root is not overlayfs");
        return (info["runtimeSpec"]!, lower);
    }

    private async Task<ContainerState> WaitForStateAsync(string containerId, ContainerState wanted)
    {
        for (int i = 0; i < 100; i++)
        {
            var state = await _agent.ContainerStateAsync(containerId);
            if (state == wanted)
            {
                return state;
            }

            await Task.Delay(50);
        }

        return await _agent.ContainerStateAsync(containerId);
    }
}

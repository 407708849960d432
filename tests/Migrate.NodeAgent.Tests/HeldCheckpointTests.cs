using System.Diagnostics;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A group member's checkpoint on a real node (containerd, runc, CRIU): once dumped, the pod stays
/// frozen until the group's decision; Thaw keeps it and thaws the pod, Abort (said before or
/// during the hold) and a hold nobody decides thaw the pod and keep nothing.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class HeldCheckpointTests : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("held");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    private Agent.V1.NodeAgent.NodeAgentClient Client => _agent.Client;

    [Fact]
    public async Task A_held_take_keeps_the_pod_frozen_after_its_dump_until_Thaw_then_keeps_the_checkpoint_and_thaws_the_pod()
    {
        var pod = await _agent.RunPodAsync("held-thaw", CheckpointTests.Counter("main", 8));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 3);

        await Client.TakeCheckpointAsync(Take("ck-thaw", pod, holdSeconds: 30));
        var held = await WaitForAsync("ck-thaw", k => k.Held.Length > 0 || k.Ready || k.Operation?.State == OperationState.Failed);
        Assert.Equal(("Dumped", false), (held.Held, held.Ready));
        Assert.True(await IsFrozenAsync(pod), "a held member's pod is not frozen");
        long atHold = AgentOnNode.LastTick(pod, "main");
        var holding = Stopwatch.StartNew();
        await Task.Delay(600);
        Assert.Equal(atHold, AgentOnNode.LastTick(pod, "main")); // it did not run on while held

        var badWord = await AgentOnNode.ExpectErrorAsync(() => Client.ContinueCheckpointAsync(new ContinueCheckpointRequest { CheckpointId = "ck-thaw", Decision = "Commit" }).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, badWord.StatusCode);
        Assert.Contains("decision must be \"Thaw\" or \"Abort\"", badWord.Status.Detail, StringComparison.Ordinal);
        Assert.Equal("Dumped", (await Client.GetCheckpointAsync(new CheckpointRef { CheckpointId = "ck-thaw" })).Held); // the bad word changed nothing

        await Client.ContinueCheckpointAsync(new ContinueCheckpointRequest { CheckpointId = "ck-thaw", Decision = "Thaw" });
        var kept = await WaitForAsync("ck-thaw", k => k.Ready || k.Operation?.State == OperationState.Failed);
        Assert.True(kept.Ready, $"not kept: {kept.Operation?.Reason}: {kept.Operation?.Message}");
        Assert.Equal("", kept.Held);
        Assert.True(kept.FrozenMillis >= holding.ElapsedMilliseconds - 100, $"frozen for {kept.FrozenMillis} ms, held for {holding.ElapsedMilliseconds} ms: the hold is part of the freeze");
        Assert.True(Directory.Exists(kept.Directory));
        // kept, it restores with any CRIU-based runtime: CRIU archived the container's tmpfs mounts itself, and nothing is carried beside them
        var images = Directory.EnumerateFiles(Path.Combine(kept.Directory, KeptCheckpoints.ImagesDirectory), "*", SearchOption.AllDirectories).Select(Path.GetFileName).ToList();
        Assert.Contains(images, f => f!.StartsWith("tmpfs-dev-", StringComparison.Ordinal));
        Assert.DoesNotContain(CarriedMounts.FileName, images);

        // a later word changes nothing: the first one counted
        var after = await Client.ContinueCheckpointAsync(new ContinueCheckpointRequest { CheckpointId = "ck-thaw", Decision = "Abort" });
        Assert.True(after.Ready);
        await AssertRunningAsync(pod);
        await Client.DeleteCheckpointAsync(new CheckpointRef { CheckpointId = "ck-thaw" });
    }

    [Fact]
    public async Task Abort_said_before_the_hold_and_a_hold_nobody_decides_thaw_the_pod_and_keep_nothing()
    {
        var pod = await _agent.RunPodAsync("held-abort", CheckpointTests.Counter("main", 8));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 3);

        // the group failed before this member's take got to its hold: it is rolled back when it does
        var early = await Client.ContinueCheckpointAsync(new ContinueCheckpointRequest { CheckpointId = "ck-abort", Decision = "Abort" });
        Assert.Equal(("ck-abort", false), (early.CheckpointId, early.Ready));
        await Client.TakeCheckpointAsync(Take("ck-abort", pod, holdSeconds: 30));
        var aborted = await WaitForAsync("ck-abort", k => k.Ready || k.Operation?.State == OperationState.Failed);
        Assert.Equal(("GroupRolledBack", false), (aborted.Operation.Reason, aborted.Ready));
        Assert.Contains("rolled back", aborted.Operation.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(_agent.Node.Root, "checkpoints", "ck-abort")), "an aborted member kept its images");
        await AssertRunningAsync(pod);

        // nobody decides: the hold ends at its time, the pod thawed
        await Client.TakeCheckpointAsync(Take("ck-alone", pod, holdSeconds: 2));
        var held = await WaitForAsync("ck-alone", k => k.Held.Length > 0 || k.Operation?.State == OperationState.Failed);
        Assert.Equal("Dumped", held.Held);
        var timedOut = await WaitForAsync("ck-alone", k => k.Operation?.State == OperationState.Failed || k.Ready);
        Assert.Equal("GroupHoldTimedOut", timedOut.Operation.Reason);
        Assert.Contains("did not decide within 2 seconds", timedOut.Operation.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(_agent.Node.Root, "checkpoints", "ck-alone")));
        Assert.Empty((await Client.ListCheckpointsAsync(new ListCheckpointsRequest())).Checkpoints);
        await AssertRunningAsync(pod);
    }

    private TakeCheckpointRequest Take(string id, RunningTestPod pod, uint holdSeconds) => new()
    {
        CheckpointId = id,
        Pod = new PodRef { Namespace = pod.Namespace, Name = pod.Name, Uid = pod.Uid },
        NodeName = _agent.NodeName,
        GroupHold = true,
        HoldTimeoutSeconds = holdSeconds,
    };

    private async Task<KeptCheckpoint> WaitForAsync(string id, Func<KeptCheckpoint, bool> until)
    {
        var clock = Stopwatch.StartNew();
        KeptCheckpoint kept;
        do
        {
            kept = await Client.GetCheckpointAsync(new CheckpointRef { CheckpointId = id });
            if (until(kept))
            {
                return kept;
            }

            await Task.Delay(25);
        }
        while (clock.Elapsed < TimeSpan.FromSeconds(60));

        Assert.Fail($"checkpoint {id}: still {kept.Operation?.State} (held '{kept.Held}')");
        return kept;
    }

    private async Task<bool> IsFrozenAsync(RunningTestPod pod)
    {
        var described = await new PodLocator(_agent.Node.Cri).DescribeAsync(pod.ContainerIds["main"], CancellationToken.None);
        return CgroupFreezer.ForProcess(described.Pid).IsFrozen;
    }

    /// <summary>Thawed and counting on, every tick once.</summary>
    private async Task AssertRunningAsync(RunningTestPod pod)
    {
        Assert.False(await IsFrozenAsync(pod), "the pod was left frozen");
        long last = AgentOnNode.LastTick(pod, "main");
        var ticks = await AgentOnNode.WaitForTicksAsync(pod, "main", (int)last + 3, TimeSpan.FromSeconds(10));
        Assert.Equal(Enumerable.Range(1, ticks.Count).Select(i => (long)i), ticks.Select(t => t.Tick));
    }
}

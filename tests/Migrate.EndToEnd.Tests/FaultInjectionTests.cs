using k8s;
using Migrate.Criu.Lazy;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// A sandbox whose agents send images at 8 MB/s, and whose lazy restores fill memory at 8 MB/s, so that
/// a 32 MiB Cold migration spends seconds in Transferring, and its replacement seconds running before
/// its memory is all in place: long enough to hit it there. A post-copy page server tries for 6 s to
/// reach a restarted agent again (the product's default is 60 s), so a test can outlast it.
/// </summary>
public sealed class SlowTransferSandboxFixture : IAsyncLifetime
{
    public const long BytesPerSecond = 8_000_000;

    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() =>
        Cluster = await SandboxCluster.StartAsync(new SandboxOptions
        {
            TransferBytesPerSecond = BytesPerSecond, LazyPagesBytesPerSecond = BytesPerSecond, LazyPagesReconnectSeconds = ReconnectSeconds,
            CheckpointAgentGraceSeconds = CheckpointAgentGraceSeconds,
        });

    /// <summary>How long the operator waits for a silent agent holding a deleted checkpoint (the product's 30 s, shortened).</summary>
    public const int CheckpointAgentGraceSeconds = 8;

    /// <summary>How long the sandbox's post-copy page servers try to reach a restarted agent again.</summary>
    public const int ReconnectSeconds = 6;

    public async Task DisposeAsync()
    {
        if (Cluster is not null)
        {
            await Cluster.DisposeAsync(); // (null when it could not start: that failure is the one to see)
        }
    }
}

/// <summary>
/// Faults in the middle of a real migration. Every one before cut-over ends RolledBack with the
/// source pod running and counting on from where it was (never from 1), no replacement and no
/// staged images on either node; an operator crash ends Succeeded, once.
/// </summary>
public sealed class FaultInjectionTests(SlowTransferSandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SlowTransferSandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task The_target_agent_killed_mid_transfer_rolls_back_and_its_images_go_when_it_is_back()
    {
        var (request, pod) = await StartMigrationAsync("agent-crash");
        await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.Phase == MigrationPhases.Transferring && IncomingBytes("node-b") > 1 << 20);
        await Cluster.Node("node-b").KillAgentAsync();

        // the source agent gives up on the dead target after its retries and thaws the pod itself (nothing was
        // committed); the request ends RolledBack without waiting, and the target's images go once its agent is back
        var rollingBack = await Sandbox.WaitForRequestAsync(Cluster, request,
            r => r?.Status?.Conditions.Any(c => c.Type == "RollingBack" && c.Status == "True") == true || MigrationPhases.IsFinal(r?.Status?.Phase));
        output.WriteLine($"after the kill: {rollingBack!.Status!.Phase} {rollingBack.Status.Reason}: {rollingBack.Status.Message}");
        await Cluster.Node("node-b").StartAgentAsync();

        var status = (await Sandbox.WaitForFinalAsync(Cluster, request))!.Status!;
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        Assert.True(status.Reason is "HandoffFailed" or "TargetAgentUnreachable", $"{status.Reason}: {status.Message}");
        await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.PendingCleanup is null);
        await AssertSourceRunsOnAsync(pod, status);
    }

    [Fact]
    public async Task An_image_corrupted_on_the_target_disk_is_refused_before_the_commit_and_the_pod_runs_on()
    {
        var (request, pod) = await StartMigrationAsync("corrupt");
        await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.Phase == MigrationPhases.Transferring && IncomingBytes("node-b") > 8 << 20);

        FlipByteOfLargestPages("node-b");

        var status = (await Sandbox.WaitForFinalAsync(Cluster, request))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        // the target reads every file back from its disk before it counts as staged: the commit never happens
        Assert.Equal("HandoffFailed", status.Reason);
        Assert.Contains("does not match its XXH3-128 (read back from this node's disk)", status.Message, StringComparison.Ordinal);
        Assert.Contains("The pod was thawed and runs on.", status.Message, StringComparison.Ordinal);
        await AssertSourceRunsOnAsync(pod, status);
    }

    [Fact]
    public async Task A_StatefulSet_pod_whose_replacement_fails_is_restored_on_its_own_node_under_its_name()
    {
        var owner = await Sandbox.CreateStatefulSetAsync(Cluster, "web");
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(Sandbox.StatefulSetPod("web-0", "node-a", 32, owner), "default");
        var source = await Cluster.WaitForPodRunningAsync("web-0");
        await Sandbox.WaitForTicksAsync(Cluster, "web-0", "main", 5);
        await Sandbox.ApplyRequestAsync(Cluster, "move-web", "web-0", "PreCopy", "node-b");
        // the pre-copy round arrives, is read back and stamped; then a byte of it flips on node-b's disk
        // (node-b's agent held still meanwhile, so that the final images are not staged before it)
        var node = Cluster.Node("node-b");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!Directory.Exists(node.IncomingDirectory) || !Directory.EnumerateFiles(node.IncomingDirectory, StagingLayout.StagedFile, SearchOption.AllDirectories).Any())
        {
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(1), "the pre-copy round was not staged on node-b within a minute");
            await Task.Delay(5);
        }

        Prerequisites.Run("kill", "-STOP", node.Agent.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        try
        {
            FlipByteOfLargestPages("node-b");
        }
        finally
        {
            Prerequisites.Run("kill", "-CONT", node.Agent.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-web"))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        Assert.Equal("RestoreFailed", status.Reason);
        Assert.Contains("Pod web-0 was restored on node-a under its name.", status.Message, StringComparison.Ordinal);
        var pod = await Cluster.Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal(("node-a", "Running"), (pod.Spec.NodeName, pod.Status.Phase));
        Assert.Equal(2, Cluster.Node("node-a").Kubelet.StartedPods.Count(p => p == "default/web-0")); // the source, then its restored self
        var frozen = Cluster.Node("node-a").LoggedTicks("default", "web-0", "main", source.Metadata.Uid)[^1].Tick;
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, "web-0", "main", 5);
        Sandbox.AssertConsecutive(ticks, frozen + 1); // the restored pod counts on from its checkpoint
        Assert.Contains(ticks, t => t.VerifiedOk);
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "pod", "web-0", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "migrationrequest", "move-web")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "statefulset", "web", "--cascade=orphan")).Succeeded();
    }

    [Fact]
    public async Task A_replacement_whose_lazy_memory_stops_arriving_is_removed_and_the_frozen_source_thawed()
    {
        var (request, pod) = await StartMigrationAsync("lazy-fill");
        // the replacement runs while its memory arrives (slowly, here): the request waits in Restoring
        var restoring = await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.MemoryRestore == "Lazy" || MigrationPhases.IsFinal(r?.Status?.Phase));
        Assert.Equal((MigrationPhases.Restoring, "Lazy"), (restoring!.Status!.Phase, restoring.Status.MemoryRestore));
        int server = HoldPageServer(Cluster.Node("node-b"));
        try
        {
            var frozenAt = (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick;
            await Task.Delay(TimeSpan.FromSeconds(2));
            Assert.Equal(MigrationPhases.Restoring, (await Sandbox.GetRequestAsync(Cluster, request))?.Status?.Phase);
            Assert.Equal(frozenAt, (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick); // the source stays frozen, not ended
        }
        finally
        {
            // the page server dies without a word: zero-filled pages would follow, so the replacement must go
            Prerequisites.Run("kill", "-KILL", server.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        var status = (await Sandbox.WaitForFinalAsync(Cluster, request))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        Assert.Equal("RestoreFailed", status.Reason);
        Assert.Contains("ran before its memory was in place, and not all of it arrived: the lazy-memory helper (page server or memory filler) ended without reporting", status.Message, StringComparison.Ordinal);
        await AssertSourceRunsOnAsync(pod, status);
    }

    [Fact]
    public async Task The_target_agent_gone_during_post_copy_for_longer_than_its_page_server_waits_ends_the_replacement_and_thaws_the_source()
    {
        const string pod = "post-crash";
        var frozenAt = await StartPostCopyAsync(pod);

        // the target's agent, which fetches the pages from the source, dies: no page can arrive any more, and
        // while it is gone nobody can say the memory is all there, so the source stays frozen and nothing is decided
        var (target, server) = await KillTargetAgentMidFillAsync(Cluster, TimeSpan.FromSeconds(3));
        Assert.Equal(MigrationPhases.Restoring, (await Sandbox.GetRequestAsync(Cluster, "move-" + pod))?.Status?.Phase);
        Assert.Equal(frozenAt, (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick);

        // the page server tries to reach it again for its window, then gives up; the agent comes back after that
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (LazyRestoreHelpers.IsHelper(server))
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(SlowTransferSandboxFixture.ReconnectSeconds + 30), $"the page server {server} still runs {waited.Elapsed.TotalSeconds:0} s after its agent died");
            await Task.Delay(200);
        }

        await target.StartAgentAsync();
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-" + pod))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        Assert.Equal("RestoreFailed", status.Reason);
        Assert.Contains("not all of it arrived", status.Message, StringComparison.Ordinal);
        Assert.Contains("does not answer", status.Message, StringComparison.Ordinal);
        // the source goes on from the tick it was frozen at, with its memory intact, and the replacement is gone
        var after = await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 3, after: frozenAt);
        Assert.Equal(frozenAt + 1, after.First(t => t.Tick > frozenAt).Tick);
        await AssertSourceRunsOnAsync(pod, status);
    }

    [Fact]
    public async Task The_target_agent_restarted_during_post_copy_relays_again_and_the_move_completes()
    {
        const string pod = "post-restart";
        var frozenAt = await StartPostCopyAsync(pod);

        // the target's agent is replaced, as in a DaemonSet rollout, while pages are still on the source
        var (target, server) = await KillTargetAgentMidFillAsync(Cluster, TimeSpan.FromSeconds(2));
        Assert.True(LazyRestoreHelpers.IsHelper(server), "the page server must wait for the agent, not end");
        await target.StartAgentAsync();

        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-" + pod))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; {status.PostCopyBytes} bytes left on the source");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Contains("listening again for the page server of a post-copy restore", target.Agent.LogTail(1_000_000), StringComparison.Ordinal);

        // the replacement counts on from the source's last tick, and its whole buffer checks out (every 5 ticks)
        var after = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 12);
        Sandbox.AssertConsecutive(after, frozenAt + 1);
        Assert.Contains(after, t => t.VerifiedOk);
        Assert.DoesNotContain(after, t => t.Verified == "BAD");
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "pod", status.ReplacementPod!, "--wait=true")).Succeeded();
    }

    /// <summary>A 32 MiB counter moved PostCopy, once its replacement runs on node-b with its memory still on the frozen source; returns the tick it was frozen at.</summary>
    private async Task<long> StartPostCopyAsync(string pod)
    {
        await Sandbox.RunCounterAsync(Cluster, pod, "node-a", 32);
        await Sandbox.ApplyRequestAsync(Cluster, "move-" + pod, pod, "PostCopy", "node-b");
        var restoring = await Sandbox.WaitForRequestAsync(Cluster, "move-" + pod, r => r?.Status?.MemoryRestore == "Lazy" || MigrationPhases.IsFinal(r?.Status?.Phase));
        output.WriteLine($"{restoring!.Status!.Phase} {restoring.Status.Reason}: {restoring.Status.Message}; {restoring.Status.PostCopyBytes} bytes left on the source");
        Assert.Equal((MigrationPhases.Restoring, "Lazy"), (restoring.Status.Phase, restoring.Status.MemoryRestore));
        return (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick;
    }

    /// <summary>Kills node-b's agent while its lazy restore's page server runs, and waits <paramref name="down"/>; returns the node and the page server's PID.</summary>
    private static async Task<(SandboxNode Target, int PageServer)> KillTargetAgentMidFillAsync(SandboxCluster cluster, TimeSpan down)
    {
        var target = cluster.Node("node-b");
        var server = PageServerOf(target);
        await target.KillAgentAsync();
        await Task.Delay(down);
        return (target, server);
    }

    /// <summary>The PID of the page server of the lazy restore under way on <paramref name="node"/>.</summary>
    private static int PageServerOf(SandboxNode node) =>
        Directory.EnumerateFiles(node.IncomingDirectory, LazyRestoreHelpers.PidsFile, SearchOption.AllDirectories)
            .Select(f => LazyRestoreHelpers.RecordedPageServer(Path.GetDirectoryName(f)!)).Single(p => p is not null)!.Value;

    [Fact]
    public async Task A_post_copy_page_corrupted_on_its_way_is_refused_and_the_source_that_kept_its_pages_thawed()
    {
        const string pod = "post-corrupt";
        var source = Cluster.Node("node-a");
        await Sandbox.RunCounterAsync(Cluster, pod, "node-a", 32);
        // the source's agent flips a bit of every piece of pages it serves, after taking its checksum
        await source.KillAgentAsync();
        await source.StartAgentAsync("--Agent:CorruptServedPagesForTesting=true");
        try
        {
            await Sandbox.ApplyRequestAsync(Cluster, "move-" + pod, pod, "PostCopy", "node-b");
            var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-" + pod))!.Status!;
            output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");

            // the target's agent refused each such piece: no corrupted page reached the replacement, which was ended
            // (its restore fails when a refusal comes while CRIU restores, its fill when one comes after);
            // either way the status says why, not only that CRIU killed what it restored
            Assert.Equal(MigrationPhases.RolledBack, status.Phase);
            Assert.Equal("RestoreFailed", status.Reason);
            Assert.Contains("do not match their checksum: refused", status.Message, StringComparison.Ordinal);
            Assert.Contains("do not match their checksum: refused", Cluster.Node("node-b").Agent.LogTail(1_000_000), StringComparison.Ordinal);

            // the source, frozen with every page it kept, goes on from its last tick with its memory's checksum intact
            await AssertSourceRunsOnAsync(pod, status);
        }
        finally
        {
            await source.KillAgentAsync();
            await source.StartAgentAsync();
        }
    }

    [Fact]
    public async Task A_checkpoint_deleted_while_its_agent_is_down_goes_and_its_images_go_when_the_agent_is_back()
    {
        await Sandbox.RunCounterAsync(Cluster, "orphan", "node-a", 8);
        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: orphan-1
            spec:
              podName: orphan
            """, "apply", "-f", "-")).Succeeded();
        (await Cluster.Api.KubectlAsync("wait", "--for=jsonpath={.status.phase}=Ready", "checkpoint/orphan-1", "--timeout=120s")).Succeeded();
        var location = (await Cluster.Api.KubectlAsync("get", "checkpoint", "orphan-1", "-o", "jsonpath={.status.location}")).Succeeded().Output.Trim();
        var directory = location["node-a:".Length..];
        Assert.True(Directory.Exists(directory), $"{directory} is not on node-a");

        var node = Cluster.Node("node-a");
        await node.KillAgentAsync();
        try
        {
            // the finalizer waits for the agent, then lets go (the Checkpoint is deleted, bounded in time) and says so
            var clock = System.Diagnostics.Stopwatch.StartNew();
            (await Cluster.Api.KubectlAsync("delete", "checkpoint", "orphan-1", "--wait=true", "--timeout=120s")).Succeeded();
            output.WriteLine($"deleted after {clock.Elapsed.TotalSeconds:0} s with the agent down");
            Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(SlowTransferSandboxFixture.CheckpointAgentGraceSeconds - 1), $"let go after {clock.Elapsed.TotalSeconds:0.0} s, before the agent grace");
            // (the Event is recorded right after the finalizer went)
            var events = "";
            for (int i = 0; i < 50 && !events.Contains("ImagesLeft", StringComparison.Ordinal); i++, await Task.Delay(200))
            {
                events = (await Cluster.Api.KubectlAsync("get", "events", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}")).Succeeded().Output;
            }

            Assert.Contains($"ImagesLeft: The agent on node-a did not answer for {SlowTransferSandboxFixture.CheckpointAgentGraceSeconds} seconds; the checkpoint's images in {location} are removed once it answers.", events, StringComparison.Ordinal);
            Assert.True(Directory.Exists(directory), "nobody could have removed the images with the agent down");
        }
        finally
        {
            await node.StartAgentAsync();
        }

        var removed = System.Diagnostics.Stopwatch.StartNew();
        while (Directory.Exists(directory))
        {
            Assert.True(removed.Elapsed < TimeSpan.FromMinutes(1), $"{directory} is still on node-a a minute after its agent came back");
            await Task.Delay(200);
        }

        output.WriteLine($"images removed {removed.Elapsed.TotalSeconds:0.0} s after the agent came back");
        (await Cluster.Api.KubectlAsync("delete", "pod", "orphan", "--wait=true")).Succeeded();
    }

    [Fact]
    public async Task The_operator_killed_mid_migration_and_restarted_finishes_it_exactly_once()
    {
        var (request, pod) = await StartMigrationAsync("operator-crash");
        await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.Phase == MigrationPhases.Transferring && IncomingBytes("node-b") > 1 << 20);
        await Cluster.Operator!.KillAsync();
        await Task.Delay(TimeSpan.FromSeconds(1));
        Assert.Equal(MigrationPhases.Transferring, (await Sandbox.GetRequestAsync(Cluster, request))!.Status!.Phase);
        await Cluster.StartOperatorAsync();

        var status = (await Sandbox.WaitForFinalAsync(Cluster, request))!.Status!;
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        var frozen = Cluster.Node("node-a").LoggedTicks("default", pod, "main")[^1].Tick;
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 5);
        Sandbox.AssertConsecutive(ticks, frozen + 1);

        Assert.Equal([$"default/{status.ReplacementPod}"], Cluster.Node("node-b").Kubelet.StartedPods.Where(p => p.StartsWith($"default/{pod}", StringComparison.Ordinal)));
        var events = await Sandbox.EventsAsync(Cluster, "MigrationRequest", request);
        Assert.Equal(1, events.Where(e => e.Reason == "Restoring").Sum(e => e.Count ?? 1));
        Assert.Equal(1, events.Where(e => e.Reason == "Migrated").Sum(e => e.Count ?? 1));
        Assert.DoesNotContain(await Sandbox.PodsAsync(Cluster), p => p.Metadata.Name == pod);
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "pod", status.ReplacementPod!, "--wait=true")).Succeeded();
    }

    [Fact]
    public async Task Deleting_the_request_mid_flight_rolls_the_migration_back_before_the_request_goes()
    {
        var (request, pod) = await StartMigrationAsync("deleted");
        var inFlight = await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.Phase == MigrationPhases.Transferring);
        (await Cluster.Api.KubectlAsync("delete", "migrationrequest", request, "--wait=false")).Succeeded();

        await Sandbox.WaitForRequestAsync(Cluster, request, r => r is null);
        var events = await Sandbox.EventsAsync(Cluster, "MigrationRequest", request);
        var rolledBack = Assert.Single(events, e => e.Reason == "Deleted");
        Assert.Equal("The MigrationRequest was deleted while in flight; the migration was rolled back.", rolledBack.Message);
        await AssertSourceRunsOnAsync(pod, inFlight!.Status!);
    }

    [Fact]
    public async Task The_target_node_turning_NotReady_mid_way_rolls_back()
    {
        var (request, pod) = await StartMigrationAsync("not-ready");
        await Sandbox.WaitForRequestAsync(Cluster, request, r => r?.Status?.Phase == MigrationPhases.Transferring);
        var kubelet = Cluster.Node("node-b").Kubelet;
        await kubelet.SetReadyAsync(false);
        try
        {
            var status = (await Sandbox.WaitForFinalAsync(Cluster, request))!.Status!;
            output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
            Assert.Equal(MigrationPhases.RolledBack, status.Phase);
            Assert.Equal("TargetNodeNotReady", status.Reason);
            Assert.StartsWith("Target node node-b became NotReady during ", status.Message, StringComparison.Ordinal);
            await AssertSourceRunsOnAsync(pod, status);
        }
        finally
        {
            await kubelet.SetReadyAsync(true);
        }
    }

    /// <summary>A 32 MiB counter on node-a and a Cold request to move it to node-b (all of its memory crosses in Transferring).</summary>
    private async Task<(string Request, string Pod)> StartMigrationAsync(string name)
    {
        await Sandbox.RunCounterAsync(Cluster, name, "node-a", 32);
        await Sandbox.ApplyRequestAsync(Cluster, "move-" + name, name, "Cold", "node-b");
        return ("move-" + name, name);
    }

    /// <summary>SIGSTOPs the page server of the lazy restore under way on <paramref name="node"/>; returns its PID.</summary>
    private static int HoldPageServer(SandboxNode node)
    {
        var pid = PageServerOf(node);
        Assert.True(LazyRestoreHelpers.IsHelper(pid), $"the page server {pid} on {node.Name} has already ended: its memory arrived too fast for this test");
        Prerequisites.Run("kill", "-STOP", pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return pid;
    }

    /// <summary>A byte the receiver already hashed (and found right) flips on the node's disk afterwards.</summary>
    private void FlipByteOfLargestPages(string node)
    {
        var pages = Directory.EnumerateFiles(Cluster.Node(node).IncomingDirectory, "pages-*.img", SearchOption.AllDirectories)
            .OrderByDescending(f => new FileInfo(f).Length).First();
        // (with dd: the receiver holds the file locked against other .NET writers while it writes)
        Prerequisites.Run("bash", "-c", """
            byte=$(od -An -tu1 -j4096 -N1 "$1") && printf "\\$(printf %03o $(( byte ^ 255 )))" | dd of="$1" bs=1 seek=4096 conv=notrunc status=none
            """, "flip", pages);
    }

    private long IncomingBytes(string node) =>
        Directory.Exists(Cluster.Node(node).IncomingDirectory)
            ? Directory.EnumerateFiles(Cluster.Node(node).IncomingDirectory, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length)
            : 0;

    /// <summary>The source pod still runs on node-a, counting on from before the migration without a restart; nothing of the migration is left.</summary>
    private async Task AssertSourceRunsOnAsync(string pod, MigrationRequestStatus status)
    {
        var before = (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick;
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 5, after: before);
        Sandbox.AssertConsecutive(ticks, 1);
        Assert.Contains(ticks, t => t.Tick > before && t.VerifiedOk);
        var pods = await Sandbox.PodsAsync(Cluster);
        var source = Assert.Single(pods, p => p.Metadata.Name == pod);
        Assert.Equal("Running", source.Status.Phase);
        Assert.Equal("node-a", source.Spec.NodeName);
        Assert.DoesNotContain(pods, p => p.Metadata.Name.StartsWith(pod + "-m", StringComparison.Ordinal));
        Assert.Equal(["default/" + pod], Cluster.Node("node-a").Kubelet.StartedPods.Where(p => p == "default/" + pod));
        Assert.NotNull(status.SourceNode);
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "pod", pod, "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "migrationrequest", "move-" + pod, "--ignore-not-found")).Succeeded();
    }
}

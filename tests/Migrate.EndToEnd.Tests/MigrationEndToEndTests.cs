using k8s;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>One sandbox cluster (two nodes, real agents and operator as processes) for the happy paths and the bad inputs.</summary>
public sealed class SandboxFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() => Cluster = await SandboxCluster.StartAsync(new SandboxOptions());

    public async Task DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>
/// The whole product on one machine, as a user drives it: the API emulator as control plane,
/// containerd nodes with the podmig runtime handler and emulated kubelets, the real node agents
/// and the real operator as processes, requests through kubectl apply, state checked through
/// kubectl logs.
/// </summary>
public sealed class MigrationEndToEndTests(SandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task A_forked_child_keeps_its_memory_shared_with_its_parent_and_the_pages_they_share_travel_once()
    {
        // a parent holding 64 MiB and a child forked after the buffer was filled: CRIU dumps the
        // shared pages once per process, the transfer sends them once
        await Sandbox.RunCounterAsync(Cluster, "forked", "node-a", 64, "--children", "1");
        await Sandbox.ApplyRequestAsync(Cluster, "move-forked", "forked", "PreCopy");
        var request = await Sandbox.WaitForFinalAsync(Cluster, "move-forked");
        var status = request!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, {status.ImageBytes} bytes staged, {status.BytesTransferred} sent");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");

        var parentAfter = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 12);
        var childAfter = await Sandbox.TicksAsync(Cluster, status.ReplacementPod!, children: true);
        var parentBefore = Cluster.Node("node-a").LoggedTicks("default", "forked", "main");
        var childBefore = Cluster.Node("node-a").LoggedTicks("default", "forked", "main", children: true);
        Sandbox.AssertConsecutive(parentAfter, parentBefore[^1].Tick + 1);
        Assert.True(childBefore.Count > 0 && childAfter.Count > 0, $"the child printed {childBefore.Count} ticks before the move and {childAfter.Count} after");
        Sandbox.AssertConsecutive(childAfter, childBefore[^1].Tick + 1);
        // the child checks its whole buffer every 5 ticks (and on the first tick after a pause over 600 ms, which a fast
        // move no longer makes): its first check after the move says whether its memory came back
        var childChecked = childAfter.FirstOrDefault(t => t.Verified != "-");
        Assert.True(childChecked is not null, $"the child checked its buffer in none of its {childAfter.Count} ticks after the move");
        Assert.Equal("ok", childChecked.Verified);
        Assert.DoesNotContain(childAfter, t => t.Verified == "BAD");
        Assert.Contains(parentAfter, t => t.VerifiedOk);
        Assert.Equal(parentAfter[0].Pid, childAfter[0].ParentPid);

        // restored in full, so that CRIU kept the pages shared: on node-b the two processes still share most of the buffer
        Assert.Equal(MemoryRestoreModes.Full, status.MemoryRestore);
        var restored = Directory.EnumerateDirectories("/proc").Select(d => int.TryParse(Path.GetFileName(d), out int pid) ? pid : 0)
            .Where(pid => pid > 0 && ReadOrEmpty($"/proc/{pid}/cmdline").Contains("--children\01\0", StringComparison.Ordinal)).ToList();
        long shared = Migrate.NodeAgent.Checkpointing.CopyOnWriteSharing.Measure(restored);
        Assert.True(restored.Count == 2 && shared >= 40L << 20, $"the {restored.Count} restored processes share {shared} bytes of their 64 MiB");

        // both processes' memory is in the images; the child's copy of the parent's pages did not travel again
        Assert.True(status.ImageBytes > 2 * (64L << 20), $"imageBytes {status.ImageBytes}");
        Assert.True(status.BytesTransferred < status.ImageBytes * 6 / 10, $"{status.BytesTransferred} bytes went to the target for {status.ImageBytes} staged");
        Assert.True(status.BytesTransferred > 64L << 20, $"bytesTransferred {status.BytesTransferred}: the parent's memory itself must travel");
        Figures.Record(nameof(MigrationEndToEndTests), "forked 2x64MiB images", status.ImageBytes ?? -1, "B");
        Figures.Record(nameof(MigrationEndToEndTests), "forked 2x64MiB bytes transferred", status.BytesTransferred ?? -1, "B");
        await DeletePodAsync(status.ReplacementPod!);
    }

    private static string ReadOrEmpty(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    [Fact]
    public async Task A_256_MiB_workload_moves_in_the_default_mode_by_pre_copy_with_its_memory_checksum_and_counter_intact()
    {
        await Sandbox.RunCounterAsync(Cluster, "big", "node-a", 256);
        var applied = DateTime.UtcNow;
        await Sandbox.ApplyRequestAsync(Cluster, "move-big", "big", mode: null);
        var request = await Sandbox.WaitForFinalAsync(Cluster, "move-big");
        var totalMs = (DateTime.UtcNow - applied).TotalMilliseconds;
        var status = request!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, total {totalMs:0} ms, " +
            $"{status.ImageBytes} bytes staged, {status.BytesTransferred} sent, {status.PreCopyRounds} rounds");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        // no mode: Auto took rounds, and the idle counter's last one left so little that it was sent while frozen
        var chosen = status.Condition(ConditionTypes.ModeChosen)!;
        output.WriteLine($"mode {status.Mode}: {chosen.Reason}: {chosen.Message}");
        Assert.Equal(MigrationModes.Auto, request.Spec.Mode);
        Assert.Equal(MigrationModes.PreCopy, status.Mode);
        Assert.Equal(("True", ModeReasons.RoundsConverged), (chosen.Status, chosen.Reason));
        Assert.Null(status.PostCopyBytes is > 0 ? status.PostCopyBytes : null);

        var replacementTicks = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 12);
        var sourceTicks = Cluster.Node("node-a").LoggedTicks("default", "big", "main");
        Sandbox.AssertConsecutive(sourceTicks, 1);
        Sandbox.AssertConsecutive(replacementTicks, sourceTicks[^1].Tick + 1);
        Assert.Contains(replacementTicks, t => t.VerifiedOk);
        Assert.All(replacementTicks, t => Assert.Equal(256, t.Mib));

        var pods = await Sandbox.PodsAsync(Cluster);
        Assert.DoesNotContain(pods, p => p.Metadata.Name == "big");
        var replacement = Assert.Single(pods, p => p.Metadata.Name == status.ReplacementPod);
        Assert.Equal("node-b", replacement.Spec.NodeName);
        Assert.Equal("Running", replacement.Status.Phase);
        Assert.Equal("node-a", status.SourceNode);
        Assert.Equal("node-b", status.TargetNode);
        Assert.True(status.DowntimeMillis > 0);
        Assert.True(status.ImageBytes > 256L << 20, $"imageBytes {status.ImageBytes}");
        Assert.True(status.BytesTransferred >= 256L << 20, $"bytesTransferred {status.BytesTransferred}");
        Assert.True(status.PreCopyRounds >= 1);
        // this node's CRIU has userfaultfd: the replacement ran before its memory was in place, and the checksum above still held
        Assert.Equal(MemoryRestoreModes.Lazy, status.MemoryRestore);
        // and this kernel has async write-protection: the rounds after the first and the frozen capture read only written pages
        Assert.Equal(MemoryTrackingMethods.WriteProtect, status.MemoryTracking);
        // its images were transient: the source staged them in memory (the sandbox's agents have a memory staging
        // directory on /dev/shm), reckoning 1.5x the pod's resident memory and 64 MiB; the check below that no
        // images are left covers that directory too
        var staged = System.Text.RegularExpressions.Regex.Match(Cluster.Node("node-a").Agent.LogTail(1_000_000),
            $@"Migration {request.Metadata.Uid}: images staged in memory: needs about (\d+) MiB");
        Assert.True(staged.Success, "the source's agent did not say it staged the images in memory");
        Assert.Equal(ImageStagingMedia.Memory, status.ImageStaging);
        Assert.InRange(int.Parse(staged.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), 256 * 3 / 2 + 64, 300 * 3 / 2 + 64);
        // once node-b had staged round 1, node-a gave its pages back (its writes tracked, the final memory lazy): the
        // checksum above held all the same, read through round 1's copy on node-b
        var given = System.Text.RegularExpressions.Regex.Match(Cluster.Node("node-a").Agent.LogTail(1_000_000),
            $@"Migration {request.Metadata.Uid}: (\d+) MiB of pre-copy rounds' pages given back on this node \(rounds 1-1 are staged on node-b");
        Assert.True(given.Success, "the source's agent did not say it gave round 1's pages back");
        Assert.InRange(int.Parse(given.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), 256, 300);
        Assert.NotNull(status.StartTime);
        Assert.NotNull(status.CompletionTime);
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        Figures.Record(nameof(MigrationEndToEndTests), "256MiB pre-copy downtime ms", status.DowntimeMillis ?? -1, "ms");
        Figures.Record(nameof(MigrationEndToEndTests), "256MiB pre-copy total ms", totalMs, "ms");
        await DeletePodAsync(status.ReplacementPod!);
    }

    [Fact]
    public async Task A_pod_whose_images_do_not_fit_the_memory_staging_budget_is_staged_on_disk_and_moves_all_the_same()
    {
        const string pod = "on-disk";
        var source = Cluster.Node("node-a");
        await source.KillAgentAsync();
        await source.StartAgentAsync("--Agent:MemoryStagingMaxBytes=1048576");
        try
        {
            await Sandbox.RunCounterAsync(Cluster, pod, "node-a", 32);
            await Sandbox.ApplyRequestAsync(Cluster, "move-" + pod, pod, "PreCopy", "node-b");
            var request = await Sandbox.WaitForFinalAsync(Cluster, "move-" + pod);
            var status = request!.Status!;
            output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
            Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
            Assert.Matches($@"Migration {request.Metadata.Uid}: images staged on disk: needs about \d+ MiB, and the memory staging budget \(Agent:MemoryStagingMaxBytes\) has \d+ MiB left",
                source.Agent.LogTail(1_000_000));
            Assert.Equal(ImageStagingMedia.Disk, status.ImageStaging);

            var replacementTicks = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 5);
            var sourceTicks = source.LoggedTicks("default", pod, "main");
            Sandbox.AssertConsecutive(replacementTicks, sourceTicks[^1].Tick + 1);
            Assert.Contains(replacementTicks, t => t.VerifiedOk);
            await Sandbox.AssertNoImagesLeftAsync(Cluster);
            await DeletePodAsync(status.ReplacementPod!);
        }
        finally
        {
            await source.KillAgentAsync();
            await source.StartAgentAsync();
        }
    }

    /// <summary>
    /// PostCopy, and Auto with no time allowed for sending frozen what the rounds leave
    /// (frozenSendLimitMillis 0): Auto then runs as Hybrid, rounds and then post-copy for what was
    /// written since the last one (the path of mode Hybrid, which differs only in being named).
    /// </summary>
    [Theory]
    [InlineData("PostCopy")]
    [InlineData("Auto")]
    public async Task A_workload_moved_post_copy_runs_on_the_target_before_its_memory_arrives_from_the_frozen_source(string mode)
    {
        string pod = "post-" + mode.ToLowerInvariant();
        await Sandbox.RunCounterAsync(Cluster, pod, "node-a", 96);
        await Sandbox.ApplyRequestAsync(Cluster, "move-" + pod, pod, mode, "node-b", spec: mode == "Auto" ? "  preCopy: {frozenSendLimitMillis: 0}" : null);
        var moved = (await Sandbox.WaitForFinalAsync(Cluster, "move-" + pod))!;
        var status = moved.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, {status.ImageBytes} bytes staged, " +
            $"{status.BytesTransferred} sent, {status.PostCopyBytes} left on the source, {status.PreCopyRounds} rounds");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");

        // the counter goes on from the source's last tick, and its whole 96 MiB checks out on the target
        var after = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 12);
        var before = Cluster.Node("node-a").LoggedTicks("default", pod, "main");
        Sandbox.AssertConsecutive(after, before[^1].Tick + 1);
        Assert.Contains(after, t => t.VerifiedOk);
        Assert.DoesNotContain(after, t => t.Verified == "BAD");
        Assert.Equal(MemoryRestoreModes.Lazy, status.MemoryRestore);

        // pages were left on the source and fetched from there: with no rounds all of the buffer, after rounds only what was written since
        Assert.True(status.PostCopyBytes > 0, $"postCopyBytes {status.PostCopyBytes}");
        if (mode == "PostCopy")
        {
            Assert.Null(status.PreCopyRounds is > 0 ? status.PreCopyRounds : null);
            Assert.True(status.PostCopyBytes >= 96L << 20, $"postCopyBytes {status.PostCopyBytes}: the whole buffer stays on the source");
            Assert.True(status.BytesTransferred < 32L << 20, $"bytesTransferred {status.BytesTransferred}: the memory must not cross before the restore");
        }
        else
        {
            var chosen = status.Condition(ConditionTypes.ModeChosen)!;
            output.WriteLine($"mode {status.Mode}: {chosen.Reason}: {chosen.Message}");
            Assert.Equal((MigrationModes.Hybrid, "True", ModeReasons.WritesOutpaceRounds), (status.Mode, chosen.Status, chosen.Reason));
            Assert.Contains("over the 0 ms limit", chosen.Message, StringComparison.Ordinal);
            Assert.True(status.PreCopyRounds >= 1, $"{status.PreCopyRounds} rounds");
            Assert.True(status.PostCopyBytes < 32L << 20, $"postCopyBytes {status.PostCopyBytes}: only what was written since the last round stays on the source");
            Assert.True(status.BytesTransferred >= 96L << 20, $"bytesTransferred {status.BytesTransferred}: the rounds carried the buffer");
            // the rounds' pages were given back on node-a once node-b had them: the pages left on the source
            // came from the frozen processes, and the count and checksum above held all the same
            Assert.Matches($@"Migration {moved.Metadata.Uid}: [1-9]\d* MiB of pre-copy rounds' pages given back on this node \(rounds 1-",
                Cluster.Node("node-a").Agent.LogTail(1_000_000));
        }

        // the target's agent fetched them from the source's agent, which read them from the frozen processes
        // (each agent says so once the page server has closed its connection, which may be just after the request ended)
        await Cluster.Node("node-a").Agent.WaitUntilAsync(() => Task.FromResult(
                System.Text.RegularExpressions.Regex.IsMatch(Cluster.Node("node-a").Agent.LogTail(1_000_000), @"served [1-9]\d* pages of container main left on this node to the target")),
            TimeSpan.FromSeconds(20), "the source's agent to say it served the pages");
        // most of them streamed on the pages lane, in the background; the restored process's faults fetched the rest at once
        // (the target's agent says so when its lane ends, which may come just after the source's line)
        await Cluster.Node("node-b").Agent.WaitUntilAsync(() => Task.FromResult(
                System.Text.RegularExpressions.Regex.IsMatch(Cluster.Node("node-b").Agent.LogTail(1_000_000), @"streamed \d+ pages of container main from the source on the pages lane")),
            TimeSpan.FromSeconds(20), "the target's agent to say it streamed the pages");
        var targetLog = Cluster.Node("node-b").Agent.LogTail(1_000_000);
        foreach (var line in targetLog.Split('\n').Where(l => l.Contains("pages of container main from the source", StringComparison.Ordinal)))
        {
            output.WriteLine(line);
        }

        var lines = System.Text.RegularExpressions.Regex.Matches(targetLog, @"migration [^:]*: streamed (\d+) pages of container main from the source on the pages lane");
        Assert.True(lines.Count > 0, "the target's agent must say it streamed the pages");
        var streamed = lines[^1];
        Assert.True(long.Parse(streamed.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) * 4096 >= status.PostCopyBytes * 9 / 10,
            $"{streamed.Groups[1].Value} pages streamed of {status.PostCopyBytes} bytes left on the source");

        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        Figures.Record(nameof(MigrationEndToEndTests), $"96MiB {mode} downtime ms", status.DowntimeMillis ?? -1, "ms");
        Figures.Record(nameof(MigrationEndToEndTests), $"96MiB {mode} bytes left on the source", status.PostCopyBytes ?? -1, "B");
        await DeletePodAsync(status.ReplacementPod!);
    }

    [Fact]
    public async Task A_two_container_pod_keeps_its_open_file_in_the_writable_layer_and_its_shared_emptyDir()
    {
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new k8s.Models.V1Pod
        {
            Metadata = new k8s.Models.V1ObjectMeta { Name = "pair" },
            Spec = new k8s.Models.V1PodSpec
            {
                NodeName = "node-b",
                Volumes = [new k8s.Models.V1Volume { Name = "shared", EmptyDir = new k8s.Models.V1EmptyDirVolumeSource() }],
                Containers =
                [
                    Counter("main", 16, "--log-file", "/data/ticks", "--log-file", "/shared/main-ticks"),
                    Counter("side", 8, "--log-file", "/shared/side-ticks"),
                ],
            },
        }, "default");
        await Cluster.WaitForPodRunningAsync("pair");
        await Sandbox.WaitForTicksAsync(Cluster, "pair", "side", 5);
        await Sandbox.WaitForTicksAsync(Cluster, "pair", "main", 5);

        await Sandbox.ApplyRequestAsync(Cluster, "move-pair", "pair", "Cold", "node-a");
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-pair"))!.Status!;
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");

        var replacement = status.ReplacementPod!;
        var main = await Sandbox.WaitForTicksAsync(Cluster, replacement, "main", 8);
        var side = await Sandbox.WaitForTicksAsync(Cluster, replacement, "side", 8);
        Sandbox.AssertConsecutive(main, Cluster.Node("node-b").LoggedTicks("default", "pair", "main")[^1].Tick + 1);
        Sandbox.AssertConsecutive(side, Cluster.Node("node-b").LoggedTicks("default", "pair", "side")[^1].Tick + 1);

        // the files the processes kept open: every tick from 1 on, in order, past the freeze — contents and offsets came back
        var running = Cluster.Node("node-a").Kubelet.Running["default/" + replacement];
        var writableLayer = ContainerFile(Cluster.Node("node-a"), running.ContainerIds["main"], "data/ticks");
        var shared = running.EmptyDir("shared");
        foreach (var (file, container, frozenAt) in new[] { (writableLayer, "main", main[0].Tick - 1), (Path.Combine(shared, "main-ticks"), "main", main[0].Tick - 1), (Path.Combine(shared, "side-ticks"), "side", side[0].Tick - 1) })
        {
            var ticks = Memcounter.Parse(ReadShared(file).Split('\n'));
            output.WriteLine($"{file}: {ticks.Count} ticks ({container} froze at {frozenAt})");
            Sandbox.AssertConsecutive(ticks, 1);
            Assert.True(ticks[^1].Tick > frozenAt, $"{file} stops at {ticks[^1].Tick}, the container froze at {frozenAt}");
        }

        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        await DeletePodAsync(replacement);
    }

    [Fact]
    public async Task A_StatefulSet_pod_moves_under_its_own_name_and_the_webhook_keeps_others_from_taking_it()
    {
        var owner = await Sandbox.CreateStatefulSetAsync(Cluster, "db");
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(Sandbox.StatefulSetPod("db-0", "node-a", 16, owner), "default");
        await Cluster.WaitForPodRunningAsync("db-0");
        await Sandbox.WaitForTicksAsync(Cluster, "db-0", "main", 5);

        await Sandbox.ApplyRequestAsync(Cluster, "move-db", "db-0", "PreCopy", "node-b");
        await Sandbox.WaitForRequestAsync(Cluster, "move-db", r => r?.Status?.Phase is MigrationPhases.Checkpointing or MigrationPhases.Transferring || MigrationPhases.IsFinal(r?.Status?.Phase));
        // what the StatefulSet controller does when its pod is gone: create it again from the template
        var intruder = await Assert.ThrowsAsync<k8s.Autorest.HttpOperationException>(() =>
            Cluster.Client.CoreV1.CreateNamespacedPodAsync(Sandbox.StatefulSetPod("db-0", "node-b", 4, owner), "default"));
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-db"))!.Status!;

        Assert.Equal(System.Net.HttpStatusCode.Conflict, intruder.Response.StatusCode);
        Assert.Contains("is being moved by MigrationRequest move-db; until the move ends only its replacement may take this name", intruder.Response.Content, StringComparison.Ordinal);
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal("db-0", status.ReplacementPod);
        var pod = await Cluster.Client.CoreV1.ReadNamespacedPodAsync("db-0", "default");
        Assert.Equal(("node-b", "Running"), (pod.Spec.NodeName, pod.Status.Phase));
        Assert.Equal("StatefulSet", Assert.Single(pod.Metadata.OwnerReferences).Kind);
        Assert.Equal("db-0", pod.Metadata.Labels["statefulset.kubernetes.io/pod-name"]);
        var frozen = Cluster.Node("node-a").LoggedTicks("default", "db-0", "main")[^1].Tick;
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, "db-0", "main", 8, after: frozen);
        Sandbox.AssertConsecutive([.. ticks.Where(t => t.Tick > frozen)], frozen + 1);
        Assert.Contains(ticks, t => t.Tick > frozen && t.VerifiedOk);
        await Sandbox.AssertNoImagesLeftAsync(Cluster);

        // once the move has ended the name is anyone's again
        await DeletePodAsync("db-0");
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(Sandbox.StatefulSetPod("db-0", "node-b", 4, owner), "default");
        await DeletePodAsync("db-0");
        await Cluster.Client.AppsV1.DeleteNamespacedStatefulSetAsync("db", "default", new k8s.Models.V1DeleteOptions { PropagationPolicy = "Orphan" });
    }

    private static k8s.Models.V1Container Counter(string name, int mib, params string[] extra) => new()
    {
        Name = name,
        Image = TestImages.Memcounter,
        Command = ["/bin/memcounter"],
        Args = ["--mib", mib.ToString(System.Globalization.CultureInfo.InvariantCulture), "--interval-ms", "100", "--verify-every", "5", .. extra],
        VolumeMounts = [new k8s.Models.V1VolumeMount { Name = "shared", MountPath = "/shared" }],
    };

    /// <summary>A file in a running container's root file system, as containerd has it mounted.</summary>
    private static string ContainerFile(SandboxNode node, string containerId, string path) =>
        Path.Combine(node.Containerd.State, "containerd", "io.containerd.runtime.v2.task", "k8s.io", containerId, "rootfs", path);

    private static string ReadShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    [Fact]
    public async Task A_server_pod_moves_to_a_new_address_with_its_listening_socket_and_its_Service_follows_it()
    {
        // CRIU 4.1 could not dump a process holding any IPv4 socket on kernels 6.16 and later: a pod
        // like this one could not move before the nodes ran CRIU 4.2
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new k8s.Models.V1Pod
        {
            Metadata = new k8s.Models.V1ObjectMeta { Name = "server", Labels = new Dictionary<string, string> { ["app"] = "server" } },
            Spec = new k8s.Models.V1PodSpec
            {
                NodeName = "node-a",
                Containers = [new k8s.Models.V1Container { Name = "main", Image = TestImages.Memcounter, Command = ["/bin/seqstream"], Args = ["--listen", "7000"] }],
            },
        }, "default");
        var source = await Cluster.WaitForPodRunningAsync("server");
        await WaitForLogAsync("server", "listening on port 7000");
        var clusterIp = await CreateServiceAsync("server", 7000);

        // a new address (asked for): the pod moves with its listening socket, and its Service follows it at cut-over
        await Sandbox.ApplyRequestAsync(Cluster, "move-server", "server", "Cold", "node-b", keepAddress: false);
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-server"))!.Status!;
        output.WriteLine($"move-server: {status.Phase} {status.Reason} {status.Message}");
        Assert.Equal(MigrationPhases.Succeeded, status.Phase);
        var replacement = await Cluster.WaitForPodRunningAsync(status.ReplacementPod!);
        var address = replacement.Status.PodIP;
        output.WriteLine($"server: {source.Status.PodIP} on node-a, now {address} on node-b");
        Assert.NotEqual(source.Status.PodIP, address);

        // a client on node-b's pod network connects through the Service to the restored listener and exchanges records both ways
        using var segment = L2Segment.OnBridge(Cluster.Node("node-b").Containerd.Bridge);
        var client = segment.Add("client", address[..(address.LastIndexOf('.') + 1)] + "250/24");
        await using var routes = ServiceRoutes.Start(Cluster.Client, client.NamespacePath, "default", "server");
        await WaitUntilAsync(() => routes.History.Count > 0 && routes.History[^1].Endpoints == $"{address}:7000({status.ReplacementPod})", "the Service's endpoint to be the replacement at its new address");
        var log = Path.Combine(Cluster.Directory, "seqstream-client.log");
        File.WriteAllText(log, "");
        using var process = L2Segment.Start(client, log, Workloads.Build("seqstream"), "--connect", clusterIp + ":80");
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!System.Text.RegularExpressions.Regex.IsMatch(File.ReadAllText(log), @"received [1-9]\d+ maxgap") && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            var text = File.ReadAllText(log);
            output.WriteLine(text);
            Assert.DoesNotContain("error", text, StringComparison.Ordinal);
            Assert.Matches(@"sent \d+ received [1-9]\d+ maxgap", text);
            await WaitForLogAsync(status.ReplacementPod!, "connected pid");
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
                await process.WaitForExitAsync();
            }
        }

        await DeletePodAsync(status.ReplacementPod!);
        (await Cluster.Api.KubectlAsync("delete", "service", "server")).Succeeded();
    }

    [Fact]
    public async Task A_pod_keeping_its_address_moves_with_its_established_connection_after_a_failed_attempt_rolled_back_and_a_pod_that_does_not_is_refused()
    {
        // a client on the pod network's segment, outside every pod (as on a third machine), keeps a
        // sequence-numbered stream both ways with a server pod on node-a
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new k8s.Models.V1Pod
        {
            Metadata = new k8s.Models.V1ObjectMeta { Name = "keeper", Labels = new Dictionary<string, string> { ["app"] = "keeper" } },
            Spec = new k8s.Models.V1PodSpec
            {
                NodeName = "node-a",
                Containers =
                [
                    new k8s.Models.V1Container { Name = "main", Image = TestImages.Memcounter, Command = ["/bin/seqstream"], Args = ["--listen", "7001"] },
                    // a connection between two of the pod's own processes, over its loopback, and a UDP socket: they move with them
                    new k8s.Models.V1Container
                    {
                        Name = "peers", Image = TestImages.Memcounter,
                        Command = ["/bin/sh", "-c", "/bin/seqstream --udp-echo 9001 & sleep 600 | nc -l -p 9000 > /dev/null & sleep 1; sleep 600 | nc 127.0.0.1 9000 > /dev/null & wait"],
                    },
                ],
            },
        }, "default");
        var source = await Cluster.WaitForPodRunningAsync("keeper");
        await WaitForLogAsync("keeper", "listening on port 7001");
        var address = source.Status.PodIP;
        await WaitUntilAsync(async () => await InPodConnectionEndsAsync(Cluster.Node("node-a"), "keeper") == 2, "the pod's own connection on port 9000");

        // the client reaches the pod through its Service: a cluster IP routed in the client's namespace to the Service's endpoints
        var clusterIp = await CreateServiceAsync("keeper", 7001);
        using var segment = L2Segment.OnBridge(Cluster.Network!.Bridge);
        var client = segment.Add("client", Cluster.Network.ClientAddress(251));
        await using var routes = ServiceRoutes.Start(Cluster.Client, client.NamespacePath, "default", "keeper");
        await WaitUntilAsync(() => routes.History.Any(h => h.Endpoints == $"{address}:7001(keeper)"), "the Service's route to keeper");
        var log = Path.Combine(Cluster.Directory, "seqstream-keeper-client.log");
        File.WriteAllText(log, "");
        using var process = L2Segment.Start(client, log, Workloads.Build("seqstream"), "--connect", clusterIp + ":80");
        try
        {
            long before = await WaitForReceivedAsync(log, process, atLeast: 50);
            Assert.Equal("udp 5 ok", await UdpAskAsync(client, address + ":9001"));

            // without keepAddress the agent refuses the pod: its connection could not survive a new address; nothing changes
            await Sandbox.ApplyRequestAsync(Cluster, "move-keeper-plain", "keeper", "Cold", "node-b", keepAddress: false);
            var refused = (await Sandbox.WaitForFinalAsync(Cluster, "move-keeper-plain"))!.Status!;
            output.WriteLine($"move-keeper-plain: {refused.Phase} {refused.Reason} {refused.Message}");
            Assert.Equal(MigrationPhases.RolledBack, refused.Phase);
            Assert.Contains("established TCP connection", refused.Message, StringComparison.Ordinal);
            Assert.Contains("keepAddress", refused.Message, StringComparison.Ordinal);
            long afterRefusal = await WaitForReceivedAsync(log, process, atLeast: before + 50);

            // a move that fails on the target after the source locked its network, released the address and the
            // target claimed it: port 7001 is taken in the replacement's namespace, so its restore fails; the target
            // gives the address up, the source takes it back and thaws, and the connection carries on there
            await Sandbox.ApplyRequestAsync(Cluster, "move-keeper-blocked", "keeper", "Cold", "node-b", keepAddress: true);
            var nodeB = Cluster.Node("node-b");
            var waiting = await Sandbox.WaitForRequestAsync(Cluster, "move-keeper-blocked", r => r?.Status?.ReplacementPod is not null || MigrationPhases.IsFinal(r?.Status?.Phase));
            var replacementName = waiting!.Status!.ReplacementPod!;
            System.Diagnostics.Process blocker;
            // node-b's agent holds still until the port is taken: nothing can be committed there before
            Prerequisites.Run("kill", "-STOP", nodeB.Agent.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
            try
            {
                int pause = await SandboxPidAsync(nodeB, replacementName);
                var blockerLog = Path.Combine(Cluster.Directory, "seqstream-blocker.log");
                blocker = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("nsenter",
                    [$"--net=/proc/{pause}/ns/net", Workloads.Build("seqstream"), "--listen", "7001"]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
                var clock = System.Diagnostics.Stopwatch.StartNew();
                while (!(await blocker.StandardOutput.ReadLineAsync() ?? "").Contains("listening", StringComparison.Ordinal))
                {
                    Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10) && !blocker.HasExited, "the blocker did not listen on 7001 in the replacement's namespace");
                }
            }
            finally
            {
                Prerequisites.Run("kill", "-CONT", nodeB.Agent.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }

            using (blocker)
            {
                var rolledBack = (await Sandbox.WaitForFinalAsync(Cluster, "move-keeper-blocked"))!.Status!;
                output.WriteLine($"move-keeper-blocked: {rolledBack.Phase} {rolledBack.Reason} {rolledBack.Message}");
                blocker.Kill();
                await blocker.WaitForExitAsync();
                Assert.Equal(MigrationPhases.RolledBack, rolledBack.Phase);
                Assert.Equal("RestoreFailed", rolledBack.Reason);
            }

            var stayed = await Cluster.Client.CoreV1.ReadNamespacedPodAsync("keeper", "default");
            Assert.Equal(("node-a", "Running", address), (stayed.Spec.NodeName, stayed.Status.Phase, stayed.Status.PodIP));
            afterRefusal = await WaitForReceivedAsync(log, process, atLeast: afterRefusal + 200);
            output.WriteLine($"client after the rollback: {File.ReadAllLines(log)[^1]}");

            // with keepAddress: the address moves to node-b with the pod, and the connection carries on; meanwhile
            // 100 short-lived connections, one every 50 ms, each checking 5 records echoed back, before, during and after
            var shortLog = Path.Combine(Cluster.Directory, "seqstream-keeper-short.log");
            File.WriteAllText(shortLog, "");
            using var shorts = L2Segment.Start(client, shortLog, Workloads.Build("seqstream"), "--short", clusterIp + ":80", "--connections", "100", "--interval-ms", "50");
            await Task.Delay(500);
            await Sandbox.ApplyRequestAsync(Cluster, "move-keeper", "keeper", "PreCopy", "node-b", keepAddress: true);
            var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-keeper"))!.Status!;
            output.WriteLine($"move-keeper: {status.Phase} {status.Reason} {status.Message} downtime {status.DowntimeMillis} ms");
            Assert.Equal(MigrationPhases.Succeeded, status.Phase);
            var replacement = await Cluster.WaitForPodRunningAsync(status.ReplacementPod!);
            Assert.Equal("node-b", replacement.Spec.NodeName);
            Assert.Equal(address, replacement.Status.PodIP);
            Assert.Equal(address, replacement.Metadata.Annotations[Annotations.PinnedAddress]);
            // the pod's own connection came with it: both ends established in the replacement's namespace; its UDP socket answers at the same address
            Assert.Equal(2, await InPodConnectionEndsAsync(Cluster.Node("node-b"), status.ReplacementPod!));
            Assert.Equal("udp 5 ok", await UdpAskAsync(client, address + ":9001"));

            // 200 more records (2 s) over the same connection, none lost, repeated or reset, in either direction
            long afterMove = await WaitForReceivedAsync(log, process, atLeast: afterRefusal + 200);
            var text = File.ReadAllText(log);
            Assert.DoesNotContain("error", text, StringComparison.Ordinal);
            var gap = System.Text.RegularExpressions.Regex.Matches(text, @"maxgap (\d+)").Last().Groups[1].Value;
            output.WriteLine($"client: received {before} before, {afterMove} after the move; longest gap {gap} ms");
            Figures.Record(nameof(MigrationEndToEndTests), "kept address: longest gap the client saw over a rollback and a PreCopy move ms", double.Parse(gap, System.Globalization.CultureInfo.InvariantCulture), "ms");
            using (var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
            {
                await shorts.WaitForExitAsync(limit.Token);
            }

            var shortText = File.ReadAllText(shortLog);
            output.WriteLine($"short-lived connections: {shortText.Trim()}");
            Assert.Contains("short 100 ok 100 failed 0", shortText, StringComparison.Ordinal);
            // the Service's endpoint moved to the replacement, at the same address: its traffic never went anywhere else
            await WaitUntilAsync(() => routes.History[^1].Endpoints == $"{address}:7001({status.ReplacementPod})", "the Service's endpoint to be the replacement");
            output.WriteLine($"the Service's endpoints over the test: {string.Join(" | ", routes.History.Select(h => h.Endpoints))}");
            Assert.All(routes.History, h => Assert.All(h.Endpoints.Split(','), e => Assert.StartsWith(address + ":7001(", e, StringComparison.Ordinal)));
            var serverLog = (await Cluster.Api.KubectlAsync("logs", status.ReplacementPod!)).Output;
            Assert.DoesNotContain("error", serverLog, StringComparison.Ordinal);
            Assert.False(process.HasExited, "the client is still connected");
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
                await process.WaitForExitAsync();
            }
        }

        await DeletePodAsync((await Sandbox.GetRequestAsync(Cluster, "move-keeper"))?.Status?.ReplacementPod ?? "keeper");
        (await Cluster.Api.KubectlAsync("delete", "service", "keeper")).Succeeded();
    }

    /// <summary>A Service named and selecting app=<paramref name="app"/>, port 80 to <paramref name="targetPort"/>, on a cluster IP of its own; returns the IP.</summary>
    private async Task<string> CreateServiceAsync(string app, int targetPort)
    {
        var clusterIp = $"10.96.{System.Security.Cryptography.RandomNumberGenerator.GetInt32(1, 250)}.{System.Security.Cryptography.RandomNumberGenerator.GetInt32(1, 250)}";
        await Cluster.Client.CoreV1.CreateNamespacedServiceAsync(new k8s.Models.V1Service
        {
            Metadata = new k8s.Models.V1ObjectMeta { Name = app },
            Spec = new k8s.Models.V1ServiceSpec
            {
                ClusterIP = clusterIp,
                Selector = new Dictionary<string, string> { ["app"] = app },
                Ports = [new k8s.Models.V1ServicePort { Port = 80, TargetPort = targetPort, Protocol = "TCP" }],
            },
        }, "default");
        return clusterIp;
    }

    private static Task WaitUntilAsync(Func<bool> condition, string what) => WaitUntilAsync(() => Task.FromResult(condition()), what);

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!await condition())
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"waited 30 s for {what}");
            await Task.Delay(50);
        }
    }

    /// <summary>Five datagrams to <paramref name="target"/> from the client's namespace, each to be echoed; the client's last line.</summary>
    private async Task<string> UdpAskAsync(SegmentMember client, string target)
    {
        var log = Path.Combine(Cluster.Directory, "seqstream-udp-" + Guid.NewGuid().ToString("N")[..8] + ".log");
        File.WriteAllText(log, "");
        using var asking = L2Segment.Start(client, log, Workloads.Build("seqstream"), "--udp-ask", target);
        using (var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            await asking.WaitForExitAsync(limit.Token);
        }

        return File.ReadAllLines(log).LastOrDefault() ?? "";
    }

    /// <summary>Established TCP sockets on port 9000 (either end) in the network namespace of <paramref name="pod"/> on <paramref name="node"/>.</summary>
    private static async Task<int> InPodConnectionEndsAsync(SandboxNode node, string pod)
    {
        int pid = await SandboxPidAsync(node, pod);
        var sockets = Prerequisites.Run("nsenter", $"--net=/proc/{pid}/ns/net", "ss", "-Htn", "state", "established");
        return sockets.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(line => line.Contains(":9000 ", StringComparison.Ordinal));
    }

    /// <summary>The PID of a pod's sandbox (pause) process on a node, once the sandbox is ready (30 s at most).</summary>
    private static async Task<int> SandboxPidAsync(SandboxNode node, string pod)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            var sandboxes = await node.Containerd.Cri.Runtime.ListPodSandboxAsync(new Migrate.Cri.V1.ListPodSandboxRequest());
            if (sandboxes.Items.FirstOrDefault(s => s.Metadata.Name == pod && s.State == Migrate.Cri.V1.PodSandboxState.SandboxReady) is { } sandbox)
            {
                var status = await node.Containerd.Cri.Runtime.PodSandboxStatusAsync(new Migrate.Cri.V1.PodSandboxStatusRequest { PodSandboxId = sandbox.Id, Verbose = true });
                return System.Text.Json.JsonDocument.Parse(status.Info["info"]).RootElement.GetProperty("pid").GetInt32();
            }

            await Task.Delay(20);
        }

        Assert.Fail($"no ready sandbox of pod {pod} on {node.Name} within 30 s");
        return 0;
    }

    /// <summary>Waits until seqstream's log says it received at least <paramref name="atLeast"/> records (30 s at most) and returns the count.</summary>
    private static async Task<long> WaitForReceivedAsync(string log, System.Diagnostics.Process process, long atLeast)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long received = 0;
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            var text = File.ReadAllText(log);
            Assert.DoesNotContain("error", text, StringComparison.Ordinal);
            var last = System.Text.RegularExpressions.Regex.Matches(text, @"received (\d+) maxgap").LastOrDefault();
            received = last is null ? 0 : long.Parse(last.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            if (received >= atLeast)
            {
                return received;
            }

            Assert.False(process.HasExited, $"the client ended: {text}");
            await Task.Delay(100);
        }

        Assert.Fail($"the client received {received} records, not {atLeast}, within 30 s: {File.ReadAllText(log)}");
        return received;
    }

    private async Task WaitForLogAsync(string pod, string text)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string logs = "";
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            logs = (await Cluster.Api.KubectlAsync("logs", pod)).Output;
            if (logs.Contains(text, StringComparison.Ordinal))
            {
                return;
            }

            await Task.Delay(200);
        }

        Assert.Fail($"pod {pod} did not log '{text}' within 30 s: {logs}");
    }

    private async Task DeletePodAsync(string name) =>
        (await Cluster.Api.KubectlAsync("delete", "pod", name, "--wait=true", "--timeout=60s")).Succeeded();
}

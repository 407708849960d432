using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Cri.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The restore runtime (native podmig-runc) as containerd's "podmig" runtime handler on a second
/// node: plain containers run as with runc; a container of a pod marked for restore comes back
/// from the images the source node's agent staged, inside a normal CRI pod.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class RestoreRuntimeTests(ITestOutputHelper output) : IAsyncLifetime
{
    private AgentOnNode _source = null!;
    private AgentOnNode _target = null!;

    public async Task InitializeAsync()
    {
        _source = await AgentOnNode.StartAsync("source");
        _target = await AgentOnNode.StartAsync("target", withRestoreRuntime: true);
    }

    public async Task DisposeAsync()
    {
        await _target.DisposeAsync();
        await _source.DisposeAsync();
    }

    [Fact]
    public async Task A_pod_of_the_handler_without_the_mark_runs_exactly_like_runc()
    {
        var pod = await TestPods.RunAsync(_target.Node, "default", "plain", [CheckpointTests.Counter("main", 2)], ContainerdNode.RestoreHandler);
        var ticks = await AgentOnNode.WaitForTicksAsync(pod, "main", 5);
        var id = pod.ContainerIds["main"];

        Assert.Equal(Enumerable.Range(1, ticks.Count).Select(i => (long)i), ticks.Select(t => t.Tick));
        Assert.Equal(ContainerState.ContainerRunning, await _target.ContainerStateAsync(id));
        await _target.Node.Cri.Runtime.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = 5 });
        Assert.Equal(ContainerState.ContainerExited, await _target.ContainerStateAsync(id));
        await _target.Node.Cri.Runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id });
        var left = await _target.Node.Cri.Runtime.ListContainersAsync(new ListContainersRequest { Filter = new ContainerFilter { Id = id } });
        Assert.Empty(left.Containers);
    }

    [Fact]
    public async Task A_marked_pod_continues_the_frozen_counter_with_its_files_and_its_logs_in_the_new_log()
    {
        // a third log in the container's /dev: a tmpfs the agent carries itself, not CRIU
        var container = CheckpointTests.Counter("main", 16, "--verify-every", "4", "--log-file", "/data/ticks", "--log-file", "/scratch/ticks", "--log-file", "/dev/ticks") with
        {
            EmptyDirMounts = [("scratch", "/scratch")],
        };
        var source = await _source.RunPodAsync("counter", container);
        await AgentOnNode.WaitForTicksAsync(source, "main", 6);
        var begun = await _source.Client.BeginCheckpointAsync(CheckpointTests.Begin("m-shim", source, _source.NodeName));
        await _source.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-shim", CarryTmpfsMounts = true });
        long frozen = AgentOnNode.LastTick(source, "main");
        var final = Path.Combine(begun.StagingDirectory, StagingLayout.FinalImages("main"));
        var carried = CarriedMounts.Read(final);
        Assert.NotNull(carried);
        Assert.Contains(carried.Mounts, m => m.MountPoint == "/dev" && m.Entries.Any(e => e.Path == "ticks" && e.Content is not null));
        Assert.Empty(System.IO.Directory.EnumerateFiles(final, "tmpfs-*"));
        StageAsTransferred(begun.StagingDirectory, _target.Node.IncomingDirectory, "m-shim");

        var started = DateTime.UtcNow;
        var replacement = await TestPods.RunAsync(_target.Node, "default", "counter", [container], ContainerdNode.RestoreHandler,
            new Dictionary<string, string> { [Annotations.RestoreFrom] = "m-shim" });
        var restoreMillis = (DateTime.UtcNow - started).TotalMilliseconds;
        var ticks = await AgentOnNode.WaitForTicksAsync(replacement, "main", 5);
        output.WriteLine($"frozen at {frozen}; the replacement logged {ticks[0].Tick}..{ticks[^1].Tick}; pod up in {restoreMillis:0} ms");

        var id = replacement.ContainerIds["main"];
        Assert.Equal(ContainerState.ContainerRunning, await _target.ContainerStateAsync(id));
        Assert.Equal(frozen + 1, ticks[0].Tick);
        Assert.Equal(Enumerable.Range(0, ticks.Count).Select(i => frozen + 1 + i), ticks.Select(t => t.Tick));
        var verified = await AgentOnNode.WaitForTicksAsync(replacement, "main", 12);
        Assert.Contains(verified, t => t.VerifiedOk);
        Assert.DoesNotContain(verified, t => t.Verified == "BAD");
        var scratch = Memcounter.Parse(RuncRestore.ReadShared(Path.Combine(replacement.EmptyDir("scratch"), "ticks")).Split('\n'));
        Assert.Equal(Enumerable.Range(1, scratch.Count).Select(i => (long)i), scratch.Select(t => t.Tick));
        Assert.True(scratch.Count > frozen, $"the emptyDir log holds {scratch.Count} ticks, the source froze at {frozen}");
        // the log in /dev came back under its open descriptor, in a /dev that is the container's own tmpfs with its device nodes
        int pid = await PidOfAsync(id);
        var inDev = Memcounter.Parse(RuncRestore.ReadShared($"/proc/{pid}/root/dev/ticks").Split('\n'));
        Assert.Equal(Enumerable.Range(1, inDev.Count).Select(i => (long)i), inDev.Select(t => t.Tick));
        Assert.True(inDev.Count > frozen, $"the log in /dev holds {inDev.Count} ticks, the source froze at {frozen}");
        Assert.Contains(MountInfoEntry.Read($"/proc/{pid}/mountinfo"), m => m.MountPoint == "/dev" && m.FileSystemType == "tmpfs" && m.SuperOption("size") == "65536k");
        Assert.Equal((FileStatus.CharacterDevice, 1u, 3u), FileStatus.Of($"/proc/{pid}/root/dev/null") is { } null_ ? (null_.Type, null_.NodeMajor, null_.NodeMinor) : default);
        Figures.Record(nameof(RestoreRuntimeTests), "16MiB replacement pod up ms", restoreMillis, "ms");
        // it wrote /data/ticks into its writable layer: put back whole, with an unmount
        Assert.DoesNotContain("without file content", StepsOf("m-shim"), StringComparison.Ordinal);

        await _source.Client.FinishAsync(new MigrationRef { MigrationId = "m-shim" });
        await _target.Node.Cri.Runtime.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = 5 });
        Assert.Equal(ContainerState.ContainerExited, await _target.ContainerStateAsync(id));
        await _target.Node.Cri.Runtime.RemoveContainerAsync(new RemoveContainerRequest { ContainerId = id });
    }

    [Theory]
    [InlineData("pages-*.img", 4096 * 3, StagedDigestKind.Sha256)]
    [InlineData("pages-*.img", 4096 * 5, StagedDigestKind.Xxh128)] // staged as an upload between agents leaves it
    [InlineData("pagemap-*.img", 12, StagedDigestKind.Sha256)] // the page map itself unreadable: the digest check still names it
    public async Task A_corrupted_image_set_fails_creation_with_the_reason_and_leaves_nothing_running(string image, int offset, StagedDigestKind kind)
    {
        var name = (image.StartsWith("pages-", StringComparison.Ordinal) ? "broken" : "broken-map") + (kind == StagedDigestKind.Xxh128 ? "-xxh" : "");
        var migration = "m-" + name;
        var container = CheckpointTests.Counter("main", 4);
        var source = await _source.RunPodAsync(name, container);
        await AgentOnNode.WaitForTicksAsync(source, "main", 3);
        var begun = await _source.Client.BeginCheckpointAsync(CheckpointTests.Begin(migration, source, _source.NodeName));
        await _source.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = migration });
        StageAsTransferred(begun.StagingDirectory, _target.Node.IncomingDirectory, migration, kind: kind);
        var pages = Directory.GetFiles(Path.Combine(_target.Node.IncomingDirectory, migration, "files", "containers", "main", "final"), image)[0];
        using (var file = new FileStream(pages, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = offset;
            int b = file.ReadByte();
            file.Position = offset;
            file.WriteByte((byte)(b ^ 0xff));
        }

        var error = await Assert.ThrowsAsync<RpcException>(() => TestPods.RunAsync(_target.Node, "default", name, [container], ContainerdNode.RestoreHandler,
            new Dictionary<string, string> { [Annotations.RestoreFrom] = migration }));

        Assert.Contains($"does not match its {(kind == StagedDigestKind.Sha256 ? "SHA-256" : "XXH3-128")}", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains(image[..image.IndexOf('*', StringComparison.Ordinal)], error.Status.Detail, StringComparison.Ordinal);
        var containers = await _target.Node.Cri.Runtime.ListContainersAsync(new ListContainersRequest());
        Assert.DoesNotContain(containers.Containers, c => c.State == ContainerState.ContainerRunning && c.Metadata.Name == "main" && c.Labels["io.kubernetes.pod.name"] == name);
        Assert.DoesNotContain("memcounter", RunningCommands(), StringComparer.Ordinal);
        Assert.True(File.Exists(pages), "the staged images were removed; they stay for diagnosis");
        await _source.Client.ResumeAsync(new ResumeRequest { MigrationId = migration });
        await AgentOnNode.WaitForTicksAsync(source, "main", (int)AgentOnNode.LastTick(source, "main") + 2);
    }

    [Theory]
    [InlineData(16)]
    [InlineData(256)]
    public async Task Restore_time_through_the_handler(int mib)
    {
        var container = CheckpointTests.Counter("main", mib, "--dirty-percent-per-second", "0.5");
        var source = await _source.RunPodAsync($"size-{mib}", container);
        await AgentOnNode.WaitForTicksAsync(source, "main", 3);
        var migration = $"m-size-{mib}";
        var begun = await _source.Client.BeginCheckpointAsync(CheckpointTests.Begin(migration, source, _source.NodeName));
        var dump = await _source.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = migration });
        long frozen = AgentOnNode.LastTick(source, "main");
        StageAsTransferred(begun.StagingDirectory, _target.Node.IncomingDirectory, migration);

        var plainClock = System.Diagnostics.Stopwatch.StartNew();
        var plain = await TestPods.RunAsync(_target.Node, "default", $"plain-{mib}", [CheckpointTests.Counter("main", 2)], ContainerdNode.RestoreHandler);
        double plainMillis = plainClock.Elapsed.TotalMilliseconds;
        var restoreClock = System.Diagnostics.Stopwatch.StartNew();
        var replacement = await TestPods.RunAsync(_target.Node, "default", $"size-{mib}", [container], ContainerdNode.RestoreHandler,
            new Dictionary<string, string> { [Annotations.RestoreFrom] = migration });
        double restoreMillis = restoreClock.Elapsed.TotalMilliseconds;
        var ticks = await AgentOnNode.WaitForTicksAsync(replacement, "main", 2);

        output.WriteLine($"{mib} MiB: dump {dump.DumpMillis} ms, image {dump.FinalImageBytes} B; plain pod up {plainMillis:0} ms, restored pod up {restoreMillis:0} ms");
        Assert.Equal(frozen + 1, ticks[0].Tick);
        Assert.Equal(ContainerState.ContainerRunning, await _target.ContainerStateAsync(replacement.ContainerIds["main"]));
        Figures.Record(nameof(RestoreRuntimeTests), $"{mib}MiB restored pod up ms", restoreMillis, "ms");
        Figures.Record(nameof(RestoreRuntimeTests), $"{mib}MiB plain pod up ms (same handler)", plainMillis, "ms");
        await _source.Client.FinishAsync(new MigrationRef { MigrationId = migration });
        await TestPods.RemoveAsync(_target.Node, plain);
        await TestPods.RemoveAsync(_target.Node, replacement);
    }

    /// <summary>
    /// Puts a source migration's staged directory where the target's agent would have staged it
    /// after a transfer (files and the verified manifest) and, unless told otherwise, marks it
    /// committed, as the source agent's commit does.
    /// </summary>
    internal static void StageAsTransferred(string sourceStaging, string incoming, string migration, bool commit = true, StagedDigestKind kind = StagedDigestKind.Sha256)
    {
        var files = Path.Combine(incoming, migration, ImageReceiver.FilesDirectory);
        Directory.CreateDirectory(files);
        Prerequisites.Run("cp", "-a", sourceStaging + "/.", files);
        File.Delete(Path.Combine(files, Checkpointing.MigrationRecord.FileName));
        File.WriteAllText(Path.Combine(incoming, migration, ImageReceiver.StagedFile), JsonFormatter.Default.Format(ImageSender.BuildManifest(files, kind: kind)));
        if (commit)
        {
            File.WriteAllText(Path.Combine(incoming, migration, StagingLayout.CommittedFile), "test");
        }
    }

    [Fact]
    public async Task A_marked_pod_waits_ready_for_the_commit_and_fails_once_the_migration_is_aborted_so_the_source_can_resume()
    {
        var (source, _, creating) = await ReplacementWaitingAsync("waiter", "m-wait");
        var aborted = await _target.Client.AbortRestoreAsync(new MigrationRef { MigrationId = "m-wait" });
        var error = await Assert.ThrowsAsync<RpcException>(() => creating);
        var resumed = await _source.Client.ResumeAsync(new ResumeRequest { MigrationId = "m-wait" });

        Assert.True(aborted.Incoming.Aborted);
        Assert.False(aborted.Incoming.RestoreBegan);
        Assert.Contains("was aborted on this node", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(MigrationPhase.Resumed, resumed.Phase);
        await AgentOnNode.WaitForTicksAsync(source, "main", (int)AgentOnNode.LastTick(source, "main") + 2);
        Assert.DoesNotContain("memcounter", RunningCommands(), StringComparer.Ordinal);
        // the runc begun ahead, which waited at its gate, read the abort and ended: no restore runs, no bind of the root is left
        Assert.Empty(RestoresRunning());
        Assert.DoesNotContain(MountInfoEntry.Read("/proc/self/mountinfo"), m => m.MountPoint.StartsWith(_target.Node.RuncRoot, StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_marked_pod_restores_the_moment_its_images_are_committed_and_an_abort_after_that_is_refused()
    {
        var (_, frozen, creating) = await ReplacementWaitingAsync("committer", "m-commit");
        Commit("m-commit");
        var replacement = await creating;
        var ticks = await AgentOnNode.WaitForTicksAsync(replacement, "main", 2);
        var restored = await WaitForAsync(async () => (await _target.Client.GetMigrationAsync(new MigrationRef { MigrationId = "m-commit" })).Incoming?.Restores.FirstOrDefault(r => r.Restored));
        var late = await _target.Client.AbortRestoreAsync(new MigrationRef { MigrationId = "m-commit" });

        Assert.Equal(frozen + 1, ticks[0].Tick);
        Assert.True(restored!.RestoredUnixMillis > 0);
        Assert.True(late.Incoming.RestoreBegan);
        Assert.False(late.Incoming.Aborted);
        // runc was begun while the pod waited, and restored the images linked into its gate
        Assert.Contains("runc restore", StepsOf("m-commit"), StringComparison.Ordinal);
        Assert.Contains("(begun ahead: the images linked in", StepsOf("m-commit"), StringComparison.Ordinal);
        // the counter wrote no file: its writable layer (the root, and the mount points runc made: etc/hosts, ...)
        // was set in place without an unmount, the replacement's root as the source's was (owner, mode, modification time)
        var archived = MetadataArchive.Read(Path.Combine(_target.Node.IncomingDirectory, "m-commit", ImageReceiver.FilesDirectory, StagingLayout.RootfsArchive("main")));
        Assert.Contains("the writable layer without file content: set in place", StepsOf("m-commit"), StringComparison.Ordinal);
        Assert.NotNull(archived);
        var top = archived.Single(e => e.Path == ".");
        var root = FileStatus.Of($"/proc/{await PidOfAsync(replacement.ContainerIds["main"])}/root/")!.Value;
        Assert.Equal((top.Owner, top.Group, top.Mode, top.Modified), (root.Owner, root.Group, root.Permissions, (root.ModifiedSeconds, (long)root.ModifiedNanoseconds)));
        await _source.Client.FinishAsync(new MigrationRef { MigrationId = "m-commit" });
        await TestPods.RemoveAsync(_target.Node, replacement);
    }

    [Fact]
    public async Task A_runc_begun_for_lazy_memory_is_stopped_and_started_again_for_images_that_hold_all_of_it()
    {
        // what ExpectImages writes when the operator asks the source for lazy memory; this dump was not asked
        var (_, frozen, creating) = await ReplacementWaitingAsync("guessed", "m-guess",
            staged: directory => File.WriteAllText(Path.Combine(directory, StagingLayout.LazyMemoryExpectedFile), "test"));
        Commit("m-guess");
        var replacement = await creating;
        var ticks = await AgentOnNode.WaitForTicksAsync(replacement, "main", 2);

        Assert.Equal(frozen + 1, ticks[0].Tick);
        Assert.Contains("(the runc begun ahead was stopped in", StepsOf("m-guess"), StringComparison.Ordinal);
        Assert.Contains("it was begun for lazy memory, and the images hold all of it", StepsOf("m-guess"), StringComparison.Ordinal);
        Assert.DoesNotContain("begun ahead:", StepsOf("m-guess"), StringComparison.Ordinal);
        Assert.Empty(RestoresRunning());
        Assert.DoesNotContain(MountInfoEntry.Read("/proc/self/mountinfo"), m => m.MountPoint.EndsWith("/criu-root", StringComparison.Ordinal) && m.MountPoint.StartsWith(_target.Node.RuncRoot, StringComparison.Ordinal));
        await _source.Client.FinishAsync(new MigrationRef { MigrationId = "m-guess" });
        await TestPods.RemoveAsync(_target.Node, replacement);
    }

    /// <summary>
    /// A counter pod frozen and dumped on the source (its last tick returned), its images staged on the
    /// target but not committed (<paramref name="staged"/> may add to them), and its replacement being
    /// created there, returned once the target's agent reports its restore waiting for the commit.
    /// </summary>
    private async Task<(RunningTestPod Source, long Frozen, Task<RunningTestPod> Creating)> ReplacementWaitingAsync(string pod, string migration,
        Action<string>? staged = null)
    {
        var container = CheckpointTests.Counter("main", 4);
        var source = await _source.RunPodAsync(pod, container);
        await AgentOnNode.WaitForTicksAsync(source, "main", 3);
        var begun = await _source.Client.BeginCheckpointAsync(CheckpointTests.Begin(migration, source, _source.NodeName));
        await _source.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = migration });
        long frozen = AgentOnNode.LastTick(source, "main");
        StageAsTransferred(begun.StagingDirectory, _target.Node.IncomingDirectory, migration, commit: false);
        staged?.Invoke(Path.Combine(_target.Node.IncomingDirectory, migration));

        var creating = TestPods.RunAsync(_target.Node, "default", pod, [container], ContainerdNode.RestoreHandler,
            new Dictionary<string, string> { [Annotations.RestoreFrom] = migration });
        await WaitForAsync(async () => (await _target.Client.GetMigrationAsync(new MigrationRef { MigrationId = migration })).Incoming?.Restores
            .FirstOrDefault(r => r.Container == "main" && r.Waiting));
        return (source, frozen, creating);
    }

    /// <summary>The process of a container on the target, as the runtime reports it.</summary>
    private async Task<int> PidOfAsync(string containerId)
    {
        var status = await _target.Node.Cri.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = containerId, Verbose = true });
        return System.Text.Json.JsonDocument.Parse(status.Info["info"]).RootElement.GetProperty("pid").GetInt32();
    }

    /// <summary>What the image receiver does once the last image arrived: a waiting restore may begin.</summary>
    private void Commit(string migration) =>
        File.WriteAllText(Path.Combine(_target.Node.IncomingDirectory, migration, StagingLayout.CommittedFile), "test");

    /// <summary>What the restore runtime reported of a container's restore on the target (its steps and their figures).</summary>
    private string StepsOf(string migration) =>
        File.ReadAllText(Path.Combine(_target.Node.IncomingDirectory, migration, StagingLayout.RestoredFile("main")));

    /// <summary>runc restores running on this machine for the target node.</summary>
    private List<string> RestoresRunning() =>
        [.. Directory.EnumerateDirectories("/proc")
            .Where(d => int.TryParse(Path.GetFileName(d), out _))
            .Select(d => SafeRead(Path.Combine(d, "cmdline")).Replace('\0', ' '))
            .Where(c => c.Contains(" restore ", StringComparison.Ordinal) && c.Contains(_target.Node.IncomingDirectory, StringComparison.Ordinal))];

    private static async Task<T> WaitForAsync<T>(Func<Task<T?>> probe)
        where T : class
    {
        for (int i = 0; i < 300; i++)
        {
            try
            {
                if (await probe() is { } found)
                {
                    return found;
                }
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
            {
                // not there yet
            }

            await Task.Delay(50);
        }

        throw new TimeoutException("the agent never reported it");
    }

    /// <summary>Commands of the processes in the target node's pods other than the source's (which runs memcounters of its own).</summary>
    private List<string> RunningCommands() =>
        [.. Directory.EnumerateDirectories("/proc")
            .Where(d => int.TryParse(Path.GetFileName(d), out _))
            .Where(d => File.Exists(Path.Combine(d, "cgroup")) && SafeRead(Path.Combine(d, "cgroup")).Contains(_target.Node.CgroupParent + "/", StringComparison.Ordinal))
            .Select(d => SafeRead(Path.Combine(d, "comm")).Trim())];

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
    }
}

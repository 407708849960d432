using System.Text.Json;
using k8s;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// Checkpoints kept and restored ("time travel") on the sandbox, driven with kubectl: checkpoints of
/// a running counter that keeps counting, restores of an older one on another node and on its own
/// node (two independent pods, both resuming from that checkpoint's count), refusals that create
/// nothing, and deleting a Checkpoint removing its images from the node.
/// </summary>
public sealed class CheckpointEndToEndTests(SandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task Three_checkpoints_of_a_running_counter_and_the_first_restored_twice_resumes_from_its_count_while_the_original_runs_on()
    {
        var original = await Sandbox.RunCounterAsync(Cluster, "tt", "node-a", 16);
        var taken = new List<(string Name, long Before, long After, JsonElement Status)>();
        foreach (var name in new[] { "tt-1", "tt-2", "tt-3" })
        {
            long before = (await Sandbox.WaitForTicksAsync(Cluster, "tt", "main", 3, after: taken.Count > 0 ? taken[^1].After : 0))[^1].Tick;
            await ApplyAsync($"""
                apiVersion: podmigration.io/v1alpha1
                kind: Checkpoint
                metadata:
                  name: {name}
                spec:
                  podName: tt
                """);
            var status = await WaitForPhaseAsync("checkpoint", name, "Ready");
            long after = (await Sandbox.TicksAsync(Cluster, "tt"))[^1].Tick;
            output.WriteLine($"{name}: ticks {before}..{after}; {status.GetProperty("message").GetString()} at {status.GetProperty("location").GetString()}");
            taken.Add((name, before, after, status));
        }

        foreach (var (name, _, _, status) in taken)
        {
            Assert.Equal("node-a", status.GetProperty("nodeName").GetString());
            Assert.True(status.GetProperty("sizeBytes").GetInt64() > 16L << 20, $"{name} keeps less than the counter's 16 MiB");
            Assert.True(status.GetProperty("freezeMillis").GetInt64() > 0);
            Assert.StartsWith("4.", status.GetProperty("criuVersion").GetString(), StringComparison.Ordinal);
            var container = Assert.Single(status.GetProperty("containers").EnumerateArray());
            Assert.Equal("main", container.GetProperty("name").GetString());
            Assert.Matches("^sha256:[0-9a-f]{64}$", container.GetProperty("digest").GetString());
            Assert.True(Directory.Exists(CheckpointDirectory("node-a", status)), $"{name}'s images are not on node-a");
        }

        Assert.Equal(3, taken.Select(t => t.Status.GetProperty("containers")[0].GetProperty("digest").GetString()).Distinct().Count());

        // each later one is a delta on the one before: it wrote only what changed, and links the rest
        Assert.False(taken[0].Status.TryGetProperty("parent", out _), "tt-1 has no earlier checkpoint");
        Assert.Equal(1, taken[0].Status.GetProperty("chainLength").GetInt32());
        for (int i = 1; i < 3; i++)
        {
            var status = taken[i].Status;
            Assert.Equal(taken[i - 1].Name, status.GetProperty("parent").GetProperty("name").GetString());
            Assert.Equal(i + 1, status.GetProperty("chainLength").GetInt32());
            long own = status.GetProperty("ownBytes").GetInt64(), size = status.GetProperty("sizeBytes").GetInt64();
            Assert.True(own * 4 < taken[0].Status.GetProperty("ownBytes").GetInt64(), $"{taken[i].Name} added {own} bytes of its own, not far fewer than tt-1's full checkpoint");
            Assert.True(size > 16L << 20 && own < size, $"{taken[i].Name}: {own} of {size} bytes its own");
        }
        var listed = (await Cluster.Api.KubectlAsync("get", "checkpoints")).Succeeded().Output;
        output.WriteLine(listed);
        Assert.Contains("tt-3", listed, StringComparison.Ordinal);

        // the original counted on through all three, never restarted
        var originalTicks = await Sandbox.WaitForTicksAsync(Cluster, "tt", "main", 3, after: taken[^1].After);
        Sandbox.AssertConsecutive(originalTicks, 1);
        Assert.Equal(["default/tt"], Cluster.Node("node-a").Kubelet.StartedPods.Where(p => p == "default/tt"));

        // the first checkpoint, restored on node-b (asked for) and on its own node (the operator's choice)
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: tt-back-b
            spec:
              checkpointName: tt-1
              nodeName: node-b
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: tt-back-a
            spec:
              checkpointName: tt-1
              podName: tt-again
            """);
        var onB = await WaitForPhaseAsync("restore", "tt-back-b", "Succeeded");
        var onA = await WaitForPhaseAsync("restore", "tt-back-a", "Succeeded");
        output.WriteLine($"tt-back-b: {onB.GetProperty("message").GetString()} ({onB.GetProperty("bytesTransferred").GetInt64()} bytes sent, restore {onB.GetProperty("restoreMillis").GetInt64()} ms)");
        output.WriteLine($"tt-back-a: {onA.GetProperty("message").GetString()} ({onA.GetProperty("bytesTransferred").GetInt64()} bytes staged, restore {onA.GetProperty("restoreMillis").GetInt64()} ms)");
        Assert.Equal(("node-a", "node-b", "tt-back-b"), (onB.GetProperty("sourceNode").GetString(), onB.GetProperty("nodeName").GetString(), onB.GetProperty("podName").GetString()));
        Assert.Equal(("node-a", "tt-again"), (onA.GetProperty("nodeName").GetString(), onA.GetProperty("podName").GetString()));

        var (_, before1, after1, _) = taken[0];
        foreach (var (pod, node) in new[] { ("tt-back-b", "node-b"), ("tt-again", "node-a") })
        {
            var ticks = await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 5);
            long first = ticks[0].Tick;
            output.WriteLine($"{pod} on {node}: first tick {first} (tt-1 was taken between ticks {before1} and {after1}; tt-2 after {taken[1].Before})");
            // it counts on from tt-1's count: not from 1, not from a later checkpoint's
            Assert.InRange(first, before1 + 1, after1 + 1);
            Assert.True(first <= taken[1].Before, $"{pod} resumed at {first}, after tt-2 was asked for at {taken[1].Before}");
            Sandbox.AssertConsecutive(ticks, first);
            Assert.Contains(ticks, t => t.VerifiedOk); // its 16 MiB buffer came back with the checksum it had
            var restored = (await Sandbox.PodsAsync(Cluster)).Single(p => p.Metadata.Name == pod);
            Assert.Equal((node, "Running"), (restored.Spec.NodeName, restored.Status.Phase));
            Assert.Equal("tt-1", restored.Metadata.Labels["podmigration.io/restored-from"]);
            Assert.False(restored.Metadata.Labels.ContainsKey("app"), "a restored pod must not carry the original's labels (a controller would adopt it)");
        }

        // the restore on the checkpoint's own node linked the kept images instead of streaming them to itself
        var linked = await File.ReadAllTextAsync(Path.Combine(Cluster.Directory, "logs", "agent-node-a.log"));
        Assert.Matches(@"Restore [0-9a-f-]+: checkpoint [0-9a-f-]+'s images linked on this node \(\d+ bytes", linked);

        // the original is untouched and still counting
        var still = await Sandbox.WaitForTicksAsync(Cluster, "tt", "main", 3, after: originalTicks[^1].Tick);
        Sandbox.AssertConsecutive(still, 1);
        Assert.Equal(original.Metadata.Uid, (await Sandbox.PodsAsync(Cluster)).Single(p => p.Metadata.Name == "tt").Metadata.Uid);
        await Sandbox.AssertNoImagesLeftAsync(Cluster); // the restores' copies went once they ran

        // deleting a Checkpoint removes its images from the node (the finalizer waits for the agent)
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "tt-2", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.False(Directory.Exists(CheckpointDirectory("node-a", taken[1].Status)), "tt-2's images are still on node-a");
        Assert.True(Directory.Exists(CheckpointDirectory("node-a", taken[0].Status)));

        // tt-3, a delta on the deleted tt-2, still restores: it holds links to every image of its chain
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: tt-3-back
            spec:
              checkpointName: tt-3
              nodeName: node-b
            """);
        await WaitForPhaseAsync("restore", "tt-3-back", "Succeeded");
        var (_, before3, after3, _) = taken[2];
        var third = await Sandbox.WaitForTicksAsync(Cluster, "tt-3-back", "main", 5);
        output.WriteLine($"tt-3-back on node-b: first tick {third[0].Tick} (tt-3 was taken between ticks {before3} and {after3})");
        Assert.InRange(third[0].Tick, before3 + 1, after3 + 1);
        Sandbox.AssertConsecutive(third, third[0].Tick);
        Assert.Contains(third, t => t.VerifiedOk);

        (await Cluster.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "tt", "tt-back-b", "tt-again", "tt-3-back", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "--all", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.Empty(Directory.EnumerateDirectories(CheckpointRoot("node-a")));
    }

    [Fact]
    public async Task Three_pods_on_two_nodes_are_checkpointed_as_one_cut_and_a_group_with_a_pod_that_cannot_be_rolls_back_whole()
    {
        (string Pod, string Node)[] ring = [("gc-0", "node-a"), ("gc-1", "node-a"), ("gc-2", "node-b")];
        foreach (var (pod, node) in ring)
        {
            await Sandbox.RunCounterAsync(Cluster, pod, node, 16);
            (await Cluster.Api.KubectlAsync("label", "pod", pod, "ckgroup=ring")).Succeeded();
        }

        long appliedMicros = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() * 1000;
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: gc
            spec:
              podSelector:
                ckgroup: ring
            """);
        var group = await WaitForPhaseAsync("checkpoint", "gc", "Ready");
        output.WriteLine(group.GetProperty("message").GetString());
        var members = group.GetProperty("group").GetProperty("members").EnumerateArray().ToList();
        Assert.Equal("Thaw", group.GetProperty("group").GetProperty("decision").GetString());
        Assert.Equal(ring.Select(r => ((string?)$"gc-{r.Pod}", (string?)r.Pod, (string?)r.Node, (string?)"Ready")),
            members.Select(m => (m.GetProperty("name").GetString(), m.GetProperty("podName").GetString(), m.GetProperty("nodeName").GetString(), m.GetProperty("phase").GetString())));

        // by the agents' clocks every member was frozen at once: the last freeze came before the first thaw
        var windows = new List<(string Pod, DateTime Frozen, DateTime Thawed)>();
        foreach (var (pod, node) in ring)
        {
            var member = await WaitForPhaseAsync("checkpoint", $"gc-{pod}", "Ready");
            var frozen = member.GetProperty("checkpointTime").GetDateTime();
            windows.Add((pod, frozen, frozen.AddMilliseconds(member.GetProperty("freezeMillis").GetInt64())));
            Assert.True(Directory.Exists(CheckpointDirectory(node, member)), $"gc-{pod}'s images are not on {node}");
            output.WriteLine($"gc-{pod} on {node}: frozen {frozen:HH:mm:ss.fff} for {member.GetProperty("freezeMillis").GetInt64()} ms");
        }

        Assert.True(windows.Max(w => w.Frozen) < windows.Min(w => w.Thawed), $"the members' freezes do not overlap: {string.Join("; ", windows)}");
        long spread = group.GetProperty("group").GetProperty("spreadMillis").GetInt64();
        long measured = (long)(windows.Max(w => w.Thawed) - windows.Min(w => w.Frozen)).TotalMilliseconds;
        Assert.InRange(spread, measured - 2, measured + 2);

        // by the workloads' own clocks too: each one's pause covers an instant common to all, and no tick was lost
        var pauses = new List<(long Before, long After)>();
        foreach (var (pod, _) in ring)
        {
            await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 3, after: (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick);
            var all = await Sandbox.TicksAsync(Cluster, pod);
            Sandbox.AssertConsecutive(all, 1);
            var gap = all.Zip(all.Skip(1)).Where(p => p.First.AtMicros >= appliedMicros).MaxBy(p => p.Second.AtMicros - p.First.AtMicros);
            pauses.Add((gap.First.AtMicros, gap.Second.AtMicros));
            output.WriteLine($"{pod} paused from tick {gap.First.Tick} to {gap.Second.Tick}: {(gap.Second.AtMicros - gap.First.AtMicros) / 1000} ms");
        }

        Assert.True(pauses.Max(p => p.Before) < pauses.Min(p => p.After), $"the workloads' pauses do not overlap: {string.Join("; ", pauses)}");
        Figures.Record(nameof(CheckpointEndToEndTests), "3-pod group checkpoint: first frozen to last thawed", spread, "ms");

        // a member is an ordinary checkpoint: it restores; the group itself is not restored whole
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: gc-2-back
            spec:
              checkpointName: gc-gc-2
              nodeName: node-a
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: gc-whole
            spec:
              checkpointName: gc
            """);
        var back = await WaitForPhaseAsync("restore", "gc-2-back", "Succeeded");
        var whole = await WaitForPhaseAsync("restore", "gc-whole", "Failed");
        Assert.Equal("CheckpointIsGroup", whole.GetProperty("reason").GetString());
        Assert.Contains("restore its members one by one (gc-gc-0, gc-gc-1, gc-gc-2)", whole.GetProperty("message").GetString(), StringComparison.Ordinal);
        var resumed = await Sandbox.WaitForTicksAsync(Cluster, "gc-2-back", "main", 3);
        var before = (await Sandbox.TicksAsync(Cluster, "gc-2")).Single(t => t.AtMicros == pauses[2].Before).Tick;
        // it resumes from the cut: the tick after the last one before the pause (or that one, when the freeze caught it between its clock and its print)
        Assert.InRange(resumed[0].Tick, before, before + 1);
        output.WriteLine($"gc-gc-2 restored on node-a ({back.GetProperty("message").GetString()}): first tick {resumed[0].Tick}");

        // a group with a pod whose node cannot checkpoint it (a hostPath volume): every member rolled back, nothing kept
        var held = Directory.EnumerateDirectories(CheckpointRoot("node-a")).Order(StringComparer.Ordinal).ToList();
        var counter = Sandbox.Counter(16, []);
        counter.VolumeMounts = [new k8s.Models.V1VolumeMount { Name = "host", MountPath = "/host" }];
        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new k8s.Models.V1Pod
        {
            Metadata = new k8s.Models.V1ObjectMeta { Name = "gc-host" },
            Spec = new k8s.Models.V1PodSpec
            {
                NodeName = "node-b",
                Containers = [counter],
                Volumes = [new k8s.Models.V1Volume { Name = "host", HostPath = new k8s.Models.V1HostPathVolumeSource { Path = Path.Combine(Cluster.Directory, "gc-host"), Type = "DirectoryOrCreate" } }],
            },
        }, "default");
        await Cluster.WaitForPodRunningAsync("gc-host");
        long gc0Before = (await Sandbox.TicksAsync(Cluster, "gc-0"))[^1].Tick;
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: gc-bad
            spec:
              pods: [gc-0, gc-host]
            """);
        var failed = await WaitForPhaseAsync("checkpoint", "gc-bad", "Failed");
        var message = failed.GetProperty("message").GetString()!;
        output.WriteLine(message);
        Assert.Equal(("GroupRolledBack", "Abort"), (failed.GetProperty("reason").GetString(), failed.GetProperty("group").GetProperty("decision").GetString()));
        Assert.Contains("every member was rolled back (thawed, nothing kept): member gc-bad-gc-host (pod gc-host) failed: CheckpointRefused", message, StringComparison.Ordinal);
        Assert.Contains("hostPath", message, StringComparison.Ordinal);
        await WaitForAsync(async () => (await ScheduledAsync("podmigration.io/group=gc-bad")).Count == 0 ? "gone" : null, "gc-bad's members to be deleted");
        Assert.Equal(held, Directory.EnumerateDirectories(CheckpointRoot("node-a")).Order(StringComparer.Ordinal).ToList());
        var gc0 = await Sandbox.WaitForTicksAsync(Cluster, "gc-0", "main", 3, after: gc0Before);
        Sandbox.AssertConsecutive(await Sandbox.TicksAsync(Cluster, "gc-0"), 1); // thawed, counting on
        Assert.True(gc0[^1].Tick > gc0Before);

        // schema: a group and a single pod at once, and an export of a group, are refused before anything is stored
        var both = await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: gc-both
            spec:
              podName: gc-0
              pods: [gc-1]
            """, "apply", "-f", "-");
        Assert.NotEqual(0, both.ExitCode);
        Assert.Contains("exactly one of podName (take a checkpoint), pods or podSelector", both.Error, StringComparison.Ordinal);
        var exported = await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: gc-export
            spec:
              pods: [gc-1]
              export: {}
            """, "apply", "-f", "-");
        Assert.NotEqual(0, exported.ExitCode);
        Assert.Contains("export is for a single pod's checkpoint", exported.Error, StringComparison.Ordinal);

        // deleting the group deletes its members, and they their images
        (await Cluster.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "gc", "gc-bad", "--wait=true", "--timeout=30s")).Succeeded();
        await WaitForAsync(async () => (await ScheduledAsync("podmigration.io/group=gc")).Count == 0 ? "gone" : null, "gc's members to be deleted");
        (await Cluster.Api.KubectlAsync("delete", "pod", "gc-0", "gc-1", "gc-2", "gc-host", "gc-2-back", "--wait=true")).Succeeded();
        await WaitForAsync(() => Task.FromResult(Directory.EnumerateDirectories(CheckpointRoot("node-a")).Any() || Directory.EnumerateDirectories(CheckpointRoot("node-b")).Any() ? null : "empty"),
            "the members' images to be removed");
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
    }

    [Fact]
    public async Task A_group_checkpoint_whose_operator_dies_while_a_member_is_held_finishes_once_when_it_is_back()
    {
        // a small member is held frozen while the large one is still copied (pre-dump) before its freeze
        await Sandbox.RunCounterAsync(Cluster, "gk-small", "node-a", 8);
        await Sandbox.RunCounterAsync(Cluster, "gk-large", "node-b", 1024);
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: gk
            spec:
              pods: [gk-small, gk-large]
            """);
        var seen = await WaitForAsync(async () =>
        {
            var got = await Cluster.Api.KubectlAsync("get", "checkpoint", "gk", "-o", "jsonpath={.status.phase} {.status.group.decision} {.status.group.members[*].reason}");
            var text = got.Output.Trim();
            return text.StartsWith("Ready", StringComparison.Ordinal) || text.StartsWith("Failed", StringComparison.Ordinal) || text.Contains("Dumped", StringComparison.Ordinal) ? text : null;
        }, "a member of gk to be held");
        Assert.True(seen.StartsWith("Checkpointing", StringComparison.Ordinal) && !seen.Contains("Thaw", StringComparison.Ordinal), $"gk was not seen with a member held and no decision: {seen}");
        await Cluster.Operator!.KillAsync();
        output.WriteLine($"operator killed at: {seen}");
        await Task.Delay(TimeSpan.FromSeconds(1));
        await Cluster.StartOperatorAsync();

        var group = await WaitForPhaseAsync("checkpoint", "gk", "Ready");
        output.WriteLine(group.GetProperty("message").GetString());
        Assert.Equal("Thaw", group.GetProperty("group").GetProperty("decision").GetString());
        var events = await Sandbox.EventsAsync(Cluster, "Checkpoint", "gk");
        Assert.Equal(1, events.Where(e => e.Reason == "Checkpointed").Sum(e => e.Count ?? 1));
        foreach (var pod in new[] { "gk-small", "gk-large" })
        {
            var member = await WaitForPhaseAsync("checkpoint", $"gk-{pod}", "Ready");
            output.WriteLine($"gk-{pod}: frozen for {member.GetProperty("freezeMillis").GetInt64()} ms");
            await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 3, after: (await Sandbox.TicksAsync(Cluster, pod))[^1].Tick);
            Sandbox.AssertConsecutive(await Sandbox.TicksAsync(Cluster, pod), 1);
        }

        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "gk", "--wait=true", "--timeout=30s")).Succeeded();
        await WaitForAsync(async () => (await ScheduledAsync("podmigration.io/group=gk")).Count == 0 ? "gone" : null, "gk's members to be deleted");
        (await Cluster.Api.KubectlAsync("delete", "pod", "gk-small", "gk-large", "--wait=true")).Succeeded();
        await WaitForAsync(() => Task.FromResult(Directory.EnumerateDirectories(CheckpointRoot("node-a")).Any() || Directory.EnumerateDirectories(CheckpointRoot("node-b")).Any() ? null : "empty"),
            "the members' images to be removed");
    }

    [Fact]
    public async Task Bad_checkpoints_and_restores_fail_with_the_reason_and_create_nothing()
    {
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: of-nothing
            spec:
              podName: no-such-pod
            """);
        var missing = await WaitForPhaseAsync("checkpoint", "of-nothing", "Failed");
        Assert.Equal("PodNotFound", missing.GetProperty("reason").GetString());
        Assert.Equal("Pod default/no-such-pod does not exist.", missing.GetProperty("message").GetString());

        // the schema refuses what is not supported, before anything is stored
        var refused = await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: stop-it
            spec:
              podName: whatever
              leaveRunning: false
            """, "apply", "-f", "-");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("leaveRunning: false is not supported yet", refused.Error, StringComparison.Ordinal);

        await Sandbox.RunCounterAsync(Cluster, "bad-in", "node-a", 8);
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: bad-in-1
            spec:
              podName: bad-in
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: to-nowhere
            spec:
              checkpointName: bad-in-1
              nodeName: node-z
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: of-no-checkpoint
            spec:
              checkpointName: never-taken
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: onto-the-original
            spec:
              checkpointName: bad-in-1
              podName: bad-in
            """);
        var nowhere = await WaitForPhaseAsync("restore", "to-nowhere", "Failed");
        Assert.Equal(("TargetNotFound", "Node node-z does not exist."), (nowhere.GetProperty("reason").GetString(), nowhere.GetProperty("message").GetString()));
        var none = await WaitForPhaseAsync("restore", "of-no-checkpoint", "Failed");
        Assert.Equal(("CheckpointNotFound", "Checkpoint default/never-taken does not exist."), (none.GetProperty("reason").GetString(), none.GetProperty("message").GetString()));
        var taken = await WaitForPhaseAsync("restore", "onto-the-original", "Failed");
        Assert.Equal("NameTaken", taken.GetProperty("reason").GetString());

        var pods = await Sandbox.PodsAsync(Cluster);
        Assert.Equal(["bad-in"], pods.Select(p => p.Metadata.Name).Where(n => n.StartsWith("bad-in", StringComparison.Ordinal) || n is "to-nowhere" or "of-no-checkpoint"));
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "--all", "--wait=true", "--timeout=30s")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "bad-in", "--wait=true")).Succeeded();
    }

    [Fact]
    public async Task A_schedule_keeps_the_newest_checkpoints_and_the_pinned_one_and_removes_the_others_from_the_node()
    {
        await Sandbox.RunCounterAsync(Cluster, "sched", "node-a", 8);
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: CheckpointSchedule
            metadata:
              name: often
            spec:
              selector:
                matchLabels: {app: sched}
              intervalSeconds: 2
              retention:
                maxCount: 2
            """);
        // the first one made is pinned as soon as it is Ready
        var first = await WaitForAsync(async () => (await ScheduledAsync()).FirstOrDefault(c => c.Phase == "Ready").Name, "a Ready scheduled checkpoint");
        (await Cluster.Api.KubectlAsync("label", "checkpoint", first, "podmigration.io/pinned=true")).Succeeded();
        await WaitForAsync(async () => await ScheduleStatusAsync("removed") >= 2 ? "ok" : null, "the retention to remove two checkpoints");
        (await Cluster.Api.KubectlAsync("patch", "checkpointschedule", "often", "--type=merge", "-p", "{\"spec\":{\"suspend\":true}}")).Succeeded();

        // once nothing is being taken: the pinned one and the two newest, on the node and in the API alike
        var left = await WaitForAsync(async () =>
        {
            var now = await ScheduledAsync();
            return now.All(c => c.Phase is "Ready" or "Failed") && now.Count(c => c.Name != first) == 2 ? now : null;
        }, "the schedule to settle on three checkpoints");
        output.WriteLine(string.Join("\n", left.Select(c => $"{c.Name} {c.Phase} {c.Location}")));
        Assert.Contains(left, c => c.Name == first);
        Assert.All(left, c => Assert.Equal("Ready", c.Phase));
        var kept = left.Select(c => c.Location[(c.Location.IndexOf(':', StringComparison.Ordinal) + 1)..]).Order(StringComparer.Ordinal).ToList();
        await WaitForAsync(() => Task.FromResult(Directory.EnumerateDirectories(CheckpointRoot("node-a")).Order(StringComparer.Ordinal).SequenceEqual(kept) ? "ok" : null),
            "node-a to keep exactly the three checkpoints' images");
        Assert.Equal(3, await ScheduleStatusAsync("checkpoints"));
        var table = (await Cluster.Api.KubectlAsync("get", "checkpointschedules")).Succeeded().Output;
        output.WriteLine(table);
        Sandbox.AssertConsecutive(await Sandbox.TicksAsync(Cluster, "sched"), 1); // never stopped counting

        (await Cluster.Api.KubectlAsync("delete", "checkpointschedule", "often")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "-l", "podmigration.io/schedule=often", "--wait=true", "--timeout=60s")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "sched", "--wait=true")).Succeeded();
        Assert.Empty(Directory.EnumerateDirectories(CheckpointRoot("node-a")));
    }

    [Fact]
    public async Task A_namespace_wide_limit_keeps_that_many_checkpoints_of_all_the_schedules_pods_and_the_newest_of_each()
    {
        await Sandbox.RunPodAsync(Cluster, "default", "pair-1", "node-a", new() { ["app"] = "pair" });
        await Sandbox.RunPodAsync(Cluster, "default", "pair-2", "node-b", new() { ["app"] = "pair" });
        await ApplyAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: CheckpointSchedule
            metadata:
              name: pairs
            spec:
              selector:
                matchLabels: {app: pair}
              intervalSeconds: 2
              retention:
                maxCount: 5
                namespace: {maxCount: 3}
            """);
        await WaitForAsync(async () => await ScheduleStatusAsync("removed", "pairs") >= 2 ? "ok" : null, "the namespace-wide retention to remove two checkpoints");
        (await Cluster.Api.KubectlAsync("patch", "checkpointschedule", "pairs", "--type=merge", "-p", "{\"spec\":{\"suspend\":true}}")).Succeeded();

        // once nothing is being taken: three Ready ones in all (the per-pod limit of 5 was never reached), each pod's newest among them
        var left = await WaitForAsync(async () =>
        {
            var now = await ScheduledAsync("podmigration.io/schedule=pairs");
            return now.All(c => c.Phase is "Ready" or "Failed") && now.Count(c => c.Phase == "Ready") == 3 ? now : null;
        }, "the schedule to settle on three checkpoints");
        output.WriteLine(string.Join("\n", left.Select(c => $"{c.Name} {c.Phase} {c.Location}")));
        foreach (var pod in new[] { "pair-1", "pair-2" })
        {
            Assert.Contains(await ScheduledAsync($"podmigration.io/schedule=pairs,podmigration.io/pod={pod}"), c => c.Phase == "Ready");
        }

        var events = await Sandbox.EventsAsync(Cluster, "CheckpointSchedule", "pairs");
        Assert.Contains(events, e => e.Reason == "CheckpointRemoved" && e.Message.EndsWith("removed by the namespace-wide retention.", StringComparison.Ordinal));

        (await Cluster.Api.KubectlAsync("delete", "checkpointschedule", "pairs")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "-l", "podmigration.io/schedule=pairs", "--wait=true", "--timeout=60s")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "pair-1", "pair-2", "--wait=true")).Succeeded();
    }

    private async Task<List<(string Name, string Phase, string Location)>> ScheduledAsync(string selector = "podmigration.io/schedule=often")
    {
        var json = (await Cluster.Api.KubectlAsync("get", "checkpoints", "-l", selector, "-o", "json")).Succeeded().Output;
        using var document = JsonDocument.Parse(json);
        return [.. document.RootElement.GetProperty("items").EnumerateArray()
            .Where(i => !i.GetProperty("metadata").TryGetProperty("deletionTimestamp", out _))
            .Select(i => (
                i.GetProperty("metadata").GetProperty("name").GetString()!,
                i.TryGetProperty("status", out var s) && s.TryGetProperty("phase", out var p) ? p.GetString()! : "Pending",
                i.TryGetProperty("status", out var t) && t.TryGetProperty("location", out var l) ? l.GetString()! : ""))];
    }

    private async Task<long> ScheduleStatusAsync(string field, string schedule = "often")
    {
        var text = (await Cluster.Api.KubectlAsync("get", "checkpointschedule", schedule, "-o", $"jsonpath={{.status.{field}}}")).Succeeded().Output.Trim();
        return long.TryParse(text, out var value) ? value : 0;
    }

    private static async Task<T> WaitForAsync<T>(Func<Task<T?>> probe, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            if (await probe() is { } found)
            {
                return found;
            }

            await Task.Delay(200);
        }

        throw new TimeoutException($"waited two minutes for {what}");
    }

    private Task ApplyAsync(string yaml) => Sandbox.ApplyAsync(Cluster, yaml);

    private Task<JsonElement> WaitForPhaseAsync(string kind, string name, string phase) => Sandbox.WaitForPhaseAsync(Cluster, kind, name, phase);

    private string CheckpointRoot(string node) => Path.Combine(Path.GetDirectoryName(Cluster.Node(node).StagingDirectory)!, "checkpoints");

    /// <summary>Where a checkpoint's status says its images are (checked to be under the node's checkpoint root).</summary>
    private string CheckpointDirectory(string node, JsonElement status)
    {
        var location = status.GetProperty("location").GetString()!;
        Assert.StartsWith(node + ":", location, StringComparison.Ordinal);
        var directory = location[(node.Length + 1)..];
        Assert.StartsWith(CheckpointRoot(node) + "/", directory, StringComparison.Ordinal);
        return directory;
    }
}

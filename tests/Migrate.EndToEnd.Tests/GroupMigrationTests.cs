using System.Globalization;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// Three nodes whose agents send images at 8 MB/s and whose lazy restores fill memory at 8 MB/s, so
/// that a group of pods spends seconds between its gates: long enough to kill an agent or the
/// operator there.
/// </summary>
public sealed class GroupSandboxFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() =>
        Cluster = await SandboxCluster.StartAsync(new SandboxOptions { Nodes = 3, TransferBytesPerSecond = 8_000_000, LazyPagesBytesPerSecond = 8_000_000 });

    public async Task DisposeAsync()
    {
        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
    }
}

/// <summary>
/// Gang migration end to end: three pods on two nodes pass a sequence-numbered token around a TCP
/// ring (each member checks every token it receives is the previous one plus three, and stops on
/// any reset); they move as one group, and nothing may be lost, repeated or reset on the way.
/// </summary>
public sealed partial class GroupMigrationTests(GroupSandboxFixture fixture, ITestOutputHelper output) : IClassFixture<GroupSandboxFixture>
{
    private const int Port = 7100;

    private SandboxCluster Cluster => fixture.Cluster;

    private static readonly (string Pod, string Node, bool Start)[] Ring = [("ring-0", "node-a", true), ("ring-1", "node-a", false), ("ring-2", "node-b", false)];

    [Fact]
    public async Task A_TCP_ring_of_three_pods_rolls_back_whole_when_a_target_agent_dies_and_then_moves_as_one_group_through_an_operator_crash()
    {
        var addresses = await StartRingAsync();
        long hops = await WaitForHopsAsync(Ring.Select(r => r.Pod).ToList(), atLeast: 30);
        output.WriteLine($"ring running over {string.Join(", ", addresses)}; {hops} hops");

        // 1. a member's target agent dies while the group is frozen: every member goes back, the ring goes on
        await ApplyGroupAsync("ring-fail", "Cold", [("ring-0", "node-b"), ("ring-1", "node-c"), ("ring-2", "node-c")]);
        var inProtocol = await Sandbox.WaitForRequestAsync(Cluster, "ring-fail", r => r?.Status?.Group?.Gate is GroupGates.Freeze or GroupGates.Dump
            || MigrationPhases.IsFinal(r?.Status?.Phase) || r?.Status?.Group?.Gate is GroupGates.Commit or GroupGates.Release or GroupGates.RollBack);
        Assert.True(inProtocol!.Status!.Group!.Gate is GroupGates.Freeze or GroupGates.Dump, $"the group was not seen frozen: {Describe(inProtocol)}");
        await Cluster.Node("node-c").KillAgentAsync();
        output.WriteLine($"node-c's agent killed at gate {inProtocol.Status.Group.Gate}");
        var failed = (await Sandbox.WaitForFinalAsync(Cluster, "ring-fail"))!;
        output.WriteLine(Describe(failed));
        await Cluster.Node("node-c").StartAgentAsync();
        Assert.Equal(MigrationPhases.RolledBack, failed.Status!.Phase);
        Assert.Equal(Reasons.GroupRolledBack, failed.Status.Reason);
        Assert.All(failed.Status.Group!.Members, m => Assert.Equal(MigrationPhases.RolledBack, m.Phase));
        Assert.Contains(failed.Status.Group.Members, m => m.Reason is "HandoffFailed" or "TargetAgentUnreachable");
        foreach (var (pod, node, _) in Ring)
        {
            var stayed = await Cluster.Client.CoreV1.ReadNamespacedPodAsync(pod, "default");
            Assert.Equal((node, "Running"), (stayed.Spec.NodeName, stayed.Status.Phase));
        }

        hops = await WaitForHopsAsync(Ring.Select(r => r.Pod).ToList(), atLeast: hops + 60);
        output.WriteLine($"after the rollback the ring went on: {hops} hops");
        // node-c's agent, back, removes what it staged for the failed group (the operator reaches it again)
        foreach (var member in failed.Status.Group.Members)
        {
            await Sandbox.WaitForRequestAsync(Cluster, member.Request!, r => r?.Status?.PendingCleanup is null);
        }

        // 2. the group moves; the operator is killed once every member's images are staged, before any is restored
        await ApplyGroupAsync("ring-move", "PreCopy", [("ring-0", "node-b"), ("ring-1", "node-c"), ("ring-2", "node-c")]);
        var committing = await Sandbox.WaitForRequestAsync(Cluster, "ring-move", r => r?.Status?.Group?.Gate is GroupGates.Commit or GroupGates.Release or GroupGates.RollBack
            || MigrationPhases.IsFinal(r?.Status?.Phase), TimeSpan.FromMinutes(3));
        Assert.True(committing!.Status!.Group!.Gate == GroupGates.Commit, $"the group was not seen between all staged and all restored: {Describe(committing)}");
        await Cluster.Operator!.KillAsync();
        await Task.Delay(TimeSpan.FromSeconds(1));
        await Cluster.StartOperatorAsync();
        var moved = (await Sandbox.WaitForFinalAsync(Cluster, "ring-move"))!;
        output.WriteLine(Describe(moved));
        Assert.True(moved.Status!.Phase == MigrationPhases.Succeeded, Describe(moved));
        Assert.Equal(GroupGates.Release, moved.Status.Group!.Gate);

        // every replacement on its target, at its pod's address, started once; the sources are gone
        var replacements = new List<string>();
        foreach (var member in moved.Status.Group.Members)
        {
            var request = (await Sandbox.GetRequestAsync(Cluster, member.Request!))!.Status!;
            Assert.Equal(MigrationPhases.Succeeded, request.Phase);
            var replacement = await Cluster.WaitForPodRunningAsync(request.ReplacementPod!);
            Assert.Equal(member.TargetNode, replacement.Spec.NodeName);
            Assert.Equal(addresses[Array.FindIndex(Ring, r => r.Pod == member.PodName)], replacement.Status.PodIP);
            Assert.Equal([$"default/{request.ReplacementPod}"], Cluster.Node(member.TargetNode!).Kubelet.StartedPods.Where(p => p == $"default/{request.ReplacementPod}"));
            replacements.Add(request.ReplacementPod!);
        }

        var events = await Sandbox.EventsAsync(Cluster, "MigrationRequest", "ring-move");
        // (events are best effort, recorded after the status they tell of: the operator killed between
        // its write of the release and the event loses the event, and its successor, finding the gate
        // open, does not tell it again; it is never told twice)
        Assert.InRange(events.Where(e => e.Reason == "GroupRelease").Sum(e => e.Count ?? 1), 0, 1);
        Assert.Equal(1, events.Where(e => e.Reason == Reasons.GroupMigrated).Sum(e => e.Count ?? 1));
        Assert.DoesNotContain(await Sandbox.PodsAsync(Cluster), p => Ring.Any(r => r.Pod == p.Metadata.Name));

        // the ring goes on in the replacements: no token lost (the ring would stop), repeated or skipped, no reset
        long after = await WaitForHopsAsync(replacements, atLeast: hops + 60);
        output.WriteLine($"after the move: {after} hops; members frozen for at most {moved.Status.Group.DowntimeMillis} ms");
        foreach (var pod in replacements)
        {
            var log = (await Cluster.Api.KubectlAsync("logs", pod)).Output;
            Assert.DoesNotContain("error", log, StringComparison.Ordinal);
        }

        Figures.Record(nameof(GroupMigrationTests), "3-pod ring group: longest member downtime ms", moved.Status.Group.DowntimeMillis ?? -1, "ms");
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        foreach (var pod in replacements)
        {
            (await Cluster.Api.KubectlAsync("delete", "pod", pod, "--wait=true")).Succeeded();
        }
    }

    [Fact]
    public async Task A_NodeDrain_moves_the_pods_of_a_migration_group_together_as_one_group_request()
    {
        // two pods of group "pair" (one on the drained node, one elsewhere) and a pod on its own, all opted in
        static Dictionary<string, string> LabelsOf(string? migrationGroup)
        {
            var labels = new Dictionary<string, string> { [Labels.Migrate] = "true", ["app"] = "pair" };
            if (migrationGroup is not null)
            {
                labels[Labels.MigrationGroup] = migrationGroup;
            }

            return labels;
        }

        var pods = new[] { ("pair-0", "node-a", (string?)"pair"), ("pair-1", "node-b", "pair"), ("solo", "node-a", null) };
        var uids = new Dictionary<string, string>();
        foreach (var (pod, node, migrationGroup) in pods)
        {
            uids[pod] = (await Sandbox.RunPodAsync(Cluster, "default", pod, node, LabelsOf(migrationGroup))).Metadata.Uid;
            await Sandbox.WaitForTicksAsync(Cluster, pod, "main", 3);
        }

        await Sandbox.ApplyAsync(Cluster, """
            apiVersion: podmigration.io/v1alpha1
            kind: NodeDrain
            metadata: {name: drain-pair}
            spec: {nodeName: node-a, reason: group test}
            """);
        await Sandbox.WaitForPhaseAsync(Cluster, "nodedrain", "drain-pair", NodeDrainStatus.Drained);

        // one group request for the pair (its pod on node-b moved too), one request for the pod on its own
        var group = (await Sandbox.GetRequestAsync(Cluster, "drain-drain-pair-pair-1"))!;
        output.WriteLine(Describe(group));
        Assert.Equal(MigrationPhases.Succeeded, group.Status!.Phase);
        Assert.Equal(new Dictionary<string, string> { [Labels.MigrationGroup] = "pair" }, group.Spec.PodSelector);
        Assert.Equal(["pair-0", "pair-1"], group.Status.Group!.Members.Select(m => m.PodName));
        Assert.Equal(MigrationPhases.Succeeded, (await Sandbox.GetRequestAsync(Cluster, "drain-drain-pair-solo-1"))!.Status!.Phase);
        foreach (var member in group.Status.Group.Members)
        {
            var request = (await Sandbox.GetRequestAsync(Cluster, member.Request!))!.Status!;
            Assert.NotEqual("node-a", request.TargetNode);
            var source = pods.Single(p => p.Item1 == member.PodName).Item2;
            var frozenAt = Cluster.Node(source).LoggedTicks("default", member.PodName, "main", uids[member.PodName])[^1].Tick;
            Sandbox.AssertConsecutive(await Sandbox.WaitForTicksAsync(Cluster, request.ReplacementPod!, "main", 3), frozenAt + 1);
        }

        // kubectl migrate shows the group: its pods in the list, its gate and members in describe
        var bin = Sandbox.CreatePluginDirectory();
        try
        {
            var (listed, table) = await Sandbox.KubectlMigrateAsync(bin, Cluster.KubeconfigPath, output, "list");
            Assert.Equal(0, listed);
            Assert.Matches(@"drain-drain-pair-pair-1\s+pair-0,pair-1\s+", table);
            var (described, description) = await Sandbox.KubectlMigrateAsync(bin, Cluster.KubeconfigPath, output, "describe", "drain-drain-pair-pair-1");
            Assert.Equal(0, described);
            Assert.Contains("Gate:         Release", description, StringComparison.Ordinal);
            Assert.Matches(@"pair-0\s+Succeeded\s+Released\s+node-a -> node-[bc]\s+drain-drain-pair-pair-1-pair-0", description);
            Assert.Contains("GroupMigrated", description, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(bin, recursive: true);
        }

        (await Cluster.Api.KubectlAsync("delete", "nodedrain", "drain-pair", "--wait=true")).Succeeded();
        foreach (var pod in (await Sandbox.PodsAsync(Cluster)).Where(p => p.Metadata.Labels?.TryGetValue("app", out var app) == true && app == "pair"))
        {
            (await Cluster.Api.KubectlAsync("delete", "pod", pod.Metadata.Name, "--wait=true")).Succeeded();
        }
    }

    /// <summary>Starts the three ring pods, then tells each its successor's address (its emptyDir, as a file); returns their addresses.</summary>
    private async Task<string[]> StartRingAsync()
    {
        foreach (var (pod, node, start) in Ring)
        {
            string[] args = ["--listen", Port.ToString(CultureInfo.InvariantCulture), "--next-file", "/ring/next", "--members", "3", "--interval-ms", "20", .. start ? new[] { "--start" } : []];
            // memory to dump and send: seconds at the sandbox's 8 MB/s, long enough to find the group between its gates
            var ballast = Sandbox.Counter(16, []);
            ballast.Name = "ballast";
            await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
            {
                Metadata = new V1ObjectMeta { Name = pod, Labels = new Dictionary<string, string> { ["app"] = "ring" } },
                Spec = new V1PodSpec
                {
                    NodeName = node,
                    TerminationGracePeriodSeconds = 2,
                    Volumes = [new V1Volume { Name = "ring", EmptyDir = new V1EmptyDirVolumeSource() }],
                    Containers =
                    [
                        new V1Container { Name = "main", Image = TestImages.Memcounter, Command = ["/bin/ring"], Args = args, VolumeMounts = [new V1VolumeMount { Name = "ring", MountPath = "/ring" }] },
                        ballast,
                    ],
                },
            }, "default");
        }

        var addresses = new string[Ring.Length];
        for (int i = 0; i < Ring.Length; i++)
        {
            addresses[i] = (await Cluster.WaitForPodRunningAsync(Ring[i].Pod)).Status.PodIP;
        }

        for (int i = 0; i < Ring.Length; i++)
        {
            var running = Cluster.Node(Ring[i].Node).Kubelet.Running["default/" + Ring[i].Pod];
            File.WriteAllText(Path.Combine(running.EmptyDir("ring"), "next"), $"{addresses[(i + 1) % Ring.Length]}:{Port}\n");
        }

        return addresses;
    }

    private async Task ApplyGroupAsync(string name, string mode, (string Pod, string Target)[] members)
    {
        var pods = string.Join("\n", members.Select(m => $"    - {{podName: {m.Pod}, targetNode: {m.Target}}}"));
        (await Cluster.Api.KubectlInAsync($"""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {"{"}name: {name}, namespace: default{"}"}
            spec:
              mode: {mode}
              keepAddress: true
              timeoutSeconds: 300
              pods:
            {pods}
            """, "apply", "-f", "-")).Succeeded();
    }

    /// <summary>Waits (60 s at most) until every pod's ring member logged at least <paramref name="atLeast"/> hops, with no error; returns the least.</summary>
    private async Task<long> WaitForHopsAsync(IReadOnlyList<string> pods, long atLeast)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long least = 0;
        while (clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            least = long.MaxValue;
            foreach (var pod in pods)
            {
                var log = (await Cluster.Api.KubectlAsync("logs", pod, "-c", "main")).Output;
                Assert.DoesNotContain("error", log, StringComparison.Ordinal);
                var last = HopsLine().Matches(log).LastOrDefault();
                least = Math.Min(least, last is null ? 0 : long.Parse(last.Groups[1].Value, CultureInfo.InvariantCulture));
            }

            if (least >= atLeast)
            {
                return least;
            }

            await Task.Delay(250);
        }

        Assert.Fail($"the ring did not reach {atLeast} hops at every member within 60 s (the least: {least})");
        return least;
    }

    private static string Describe(MigrationRequest request) =>
        $"{request.Metadata.Name}: {request.Status?.Phase} gate {request.Status?.Group?.Gate} ({request.Status?.Reason}: {request.Status?.Message}); members: "
        + string.Join("; ", request.Status?.Group?.Members.Select(m => $"{m.PodName} {m.Phase}/{m.Step} {m.SourceNode}->{m.TargetNode} {m.Reason}") ?? []);

    [GeneratedRegex(@"hops (\d+) last")]
    private static partial Regex HopsLine();
}

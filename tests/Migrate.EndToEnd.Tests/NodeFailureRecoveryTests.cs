using System.Globalization;
using System.Text.Json;
using k8s;
using Migrate.Cri.V1;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

public sealed class NodeFailureSandboxFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    // (the old pod's checkpoints, deleted while its node is down, are let go after this grace instead of the product's 30 s)
    public async Task InitializeAsync() => Cluster = await SandboxCluster.StartAsync(new SandboxOptions { CheckpointAgentGraceSeconds = 8 });

    public async Task DisposeAsync()
    {
        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
    }
}

/// <summary>
/// Recovery after a node failure, on a sandbox of its own (a node of it is crashed): a pod under a
/// CheckpointSchedule with recoverOnNodeFailure whose node dies (its pods' processes, shims,
/// containerd and agent killed, the node NotReady) resumes on another node from its last exported
/// checkpoint, once, under its own name; when the node comes back its agent removes the stale copy,
/// which never runs again.
/// </summary>
public sealed class NodeFailureRecoveryTests(NodeFailureSandboxFixture fixture, ITestOutputHelper output) : IClassFixture<NodeFailureSandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task A_scheduled_pod_whose_node_fails_resumes_once_on_another_node_from_its_last_checkpoint_and_the_old_copy_never_runs_again()
    {
        var original = await Sandbox.RunPodAsync(Cluster, "default", "db", "node-a", new() { ["app"] = "db" }, mib: 16);
        await Sandbox.ApplyAsync(Cluster, """
            apiVersion: podmigration.io/v1alpha1
            kind: CheckpointSchedule
            metadata: {name: guard, namespace: default}
            spec:
              selector: {matchLabels: {app: db}}
              intervalSeconds: 2
              recoverOnNodeFailure: true
              nodeFailureGraceSeconds: 3
              retention: {maxCount: 2}
            """);
        var exported = await WaitForAsync("two exported checkpoints of db", async () =>
        {
            var ready = (await CheckpointsAsync()).Where(c => c.Phase == "Ready" && c.Exported).ToList();
            return ready.Count >= 2 ? ready : null;
        });
        output.WriteLine("exported: " + string.Join(", ", exported.Select(c => $"{c.Name} at {c.Time:HH:mm:ss.fff}")));

        // node-a fails as a host does: its pods' processes, shims and containerd killed, its agent too, and it turns NotReady
        var nodeA = Cluster.Node("node-a");
        await nodeA.KillAgentAsync();
        nodeA.Containerd.Crash();
        var failedAt = DateTime.UtcNow;
        await nodeA.Kubelet.SetReadyAsync(false);
        var logged = TimedTicks(nodeA, original.Metadata.Uid);
        long lastTick = logged[^1].Tick;
        var newest = (await CheckpointsAsync()).Where(c => c.Phase == "Ready" && c.Exported && c.PodUid == original.Metadata.Uid).MaxBy(c => c.Time)!;
        long tickAtCheckpoint = logged.Where(t => t.Time <= newest.Time).Select(t => t.Tick).DefaultIfEmpty(0).Max();
        output.WriteLine($"node-a failed at {failedAt:HH:mm:ss.fff} after tick {lastTick}; newest exported checkpoint {newest.Name} at {newest.Time:HH:mm:ss.fff} (tick {tickAtCheckpoint})");

        // recovered: the newest exported checkpoint imported onto node-b and restored there as "db", once
        var recovery = "db-recovered-" + new string(original.Metadata.Uid.Where(char.IsAsciiLetterOrDigit).Take(8).ToArray());
        var restored = await Sandbox.WaitForPhaseAsync(Cluster, "restore", recovery, "Succeeded");
        var imported = await Sandbox.WaitForPhaseAsync(Cluster, "checkpoint", recovery, "Ready");
        output.WriteLine($"{recovery}: {imported.GetProperty("message").GetString()}");
        output.WriteLine($"{recovery}: {restored.GetProperty("message").GetString()} (recovered {(DateTime.UtcNow - failedAt).TotalSeconds:0.0} s after the failure)");
        Assert.Equal("default/" + newest.Name, imported.GetProperty("importedFrom").GetProperty("path").GetString());
        var pods = (await Sandbox.PodsAsync(Cluster)).Where(p => p.Metadata.Name == "db").ToList();
        var recovered = Assert.Single(pods);
        Assert.Equal(("node-b", "Running", "db"), (recovered.Spec.NodeName, recovered.Status.Phase, recovered.Metadata.Labels["app"]));
        Assert.NotEqual(original.Metadata.Uid, recovered.Metadata.Uid);

        var ticks = await Sandbox.WaitForTicksAsync(Cluster, "db", "main", 5);
        output.WriteLine($"db on node-b: first tick {ticks[0].Tick}; the checkpoint was taken after tick {tickAtCheckpoint}; node-a had reached {lastTick}");
        Assert.InRange(ticks[0].Tick, tickAtCheckpoint, tickAtCheckpoint + 2); // from the last checkpoint: not from 1, not from a later state
        Sandbox.AssertConsecutive(ticks, ticks[0].Tick);
        Assert.Contains(ticks, t => t.VerifiedOk);

        var events = (await Cluster.Api.KubectlAsync("get", "events", "--field-selector", "involvedObject.name=guard", "-o", "json")).Succeeded().Output;
        using (var document = JsonDocument.Parse(events))
        {
            var messages = document.RootElement.GetProperty("items").EnumerateArray().Select(e => $"{e.GetProperty("reason").GetString()}: {e.GetProperty("message").GetString()}").ToList();
            output.WriteLine(string.Join("\n", messages));
            Assert.Contains(messages, m => m.StartsWith("NodeFailed: Pod db: node node-a has not been Ready for", StringComparison.Ordinal) && m.Contains(newest.Name, StringComparison.Ordinal));
            Assert.Contains(messages, m => m.StartsWith("Recovering: Pod db is being restored from checkpoint " + recovery, StringComparison.Ordinal) && m.Contains("seconds old", StringComparison.Ordinal));
        }

        // the old pod's checkpoints, deleted while node-a is still down: after the agent grace their finalizer lets go,
        // and their exports are removed from the shared archive storage through node-b's agent
        var old = (await CheckpointsAsync()).Where(c => c.PodUid == original.Metadata.Uid).Select(c => c.Name).ToList();
        Assert.NotEmpty(old);
        (await Cluster.Api.KubectlAsync(["delete", "checkpoint", .. old, "--wait=true", "--timeout=90s"])).Succeeded();
        foreach (var name in old)
        {
            Assert.False(Directory.Exists(Path.Combine(Cluster.ArchiveDirectory, "default", name)), $"the export of {name} is still in the archive storage");
        }

        // node-a comes back: containerd and the agent start again, the node is Ready; its agent removes the stale copy
        await nodeA.Containerd.RestartAsync();
        await nodeA.StartAgentAsync();
        await nodeA.Kubelet.SetReadyAsync(true);
        await WaitForAsync("node-a's stale copy of db removed and the fence lifted", async () =>
        {
            var filter = new PodSandboxFilter();
            filter.LabelSelector["io.kubernetes.pod.uid"] = original.Metadata.Uid;
            var left = await nodeA.Containerd.Cri.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = filter });
            var node = await Cluster.Client.CoreV1.ReadNodeAsync("node-a");
            return left.Items.Count == 0 && node.Metadata.Annotations?.ContainsKey(Annotations.FencedPods) != true ? "" : null;
        });
        Assert.Contains("Fenced pod " + original.Metadata.Uid, await File.ReadAllTextAsync(Path.Combine(Cluster.Directory, "logs", "operator.log")), StringComparison.Ordinal);

        // it never ran again on node-a: no tick past the failure, started there once; the recovered one counts on, still the only db
        var later = await Sandbox.WaitForTicksAsync(Cluster, "db", "main", 3, after: ticks[^1].Tick);
        Sandbox.AssertConsecutive(later, ticks[0].Tick); // the whole log of the recovered pod: no restart, no gap
        Assert.Equal(lastTick, TimedTicks(nodeA, original.Metadata.Uid)[^1].Tick);
        Assert.Single(nodeA.Kubelet.StartedPods, p => p == "default/db");
        Assert.Single(await Sandbox.PodsAsync(Cluster), p => p.Metadata.Name == "db");
        var restores = (await Cluster.Api.KubectlAsync("get", "restores", "-l", "podmigration.io/recovers", "-o", "name")).Succeeded().Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["restore.podmigration.io/" + recovery], restores);
        var schedule = (await Cluster.Api.KubectlAsync("get", "checkpointschedule", "guard", "-o", "jsonpath={.status.recoveries}")).Succeeded().Output;
        Assert.Equal("1", schedule.Trim());

        (await Cluster.Api.KubectlAsync("delete", "checkpointschedule", "guard")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "db", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "--all", "--wait=true", "--timeout=60s")).Succeeded();
    }

    private sealed record Taken(string Name, string? Phase, DateTime? Time, bool Exported, string? PodUid);

    private async Task<List<Taken>> CheckpointsAsync()
    {
        var json = (await Cluster.Api.KubectlAsync("get", "checkpoints", "-l", "podmigration.io/schedule=guard", "-o", "json")).Succeeded().Output;
        using var document = JsonDocument.Parse(json);
        return [.. document.RootElement.GetProperty("items").EnumerateArray().Select(c =>
        {
            var status = c.TryGetProperty("status", out var s) ? s : default;
            string? Text(string key) => status.ValueKind == JsonValueKind.Object && status.TryGetProperty(key, out var v) ? v.ToString() : null;
            return new Taken(c.GetProperty("metadata").GetProperty("name").GetString()!, Text("phase"),
                Text("checkpointTime") is { } time ? DateTime.Parse(time, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal) : null,
                status.ValueKind == JsonValueKind.Object && status.TryGetProperty("export", out _), Text("podUID"));
        })];
    }

    /// <summary>The ticks db printed on a node, with the time the runtime logged each (from the CRI log file).</summary>
    private static List<(DateTime Time, long Tick)> TimedTicks(SandboxNode node, string uid)
    {
        var ticks = node.TimedTicks("default", "db", "main", uid);
        Assert.NotEmpty(ticks);
        return [.. ticks.Select(t => (t.At, t.Tick.Tick)).OrderBy(t => t.Item2)];
    }

    private static async Task<T> WaitForAsync<T>(string what, Func<Task<T?>> probe)
        where T : class
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            if (await probe() is { } found)
            {
                return found;
            }

            await Task.Delay(250);
        }

        throw new TimeoutException($"waited two minutes for {what}");
    }
}

using System.Text.Json;
using k8s;
using k8s.Models;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// Draining a node of the sandbox with a NodeDrain: opted-in pods move with their state, the others
/// are evicted through the Eviction API (budgets apply), DaemonSet pods stay, nothing is killed
/// that could not be moved.
/// </summary>
public sealed class NodeDrainTests(SandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task A_NodeDrain_migrates_opted_in_pods_evicts_the_others_and_leaves_DaemonSet_pods()
    {
        await CleanupAsync();
        (await Cluster.Api.KubectlInAsync($"""
            apiVersion: v1
            kind: Namespace
            metadata:
              name: opted
              labels:
                {Labels.Migrate}: "true"
            """, "apply", "-f", "-")).Succeeded();
        var uids = new Dictionary<string, string>
        {
            ["default/keeper"] = (await RunAsync("default", "keeper", "node-a", optedIn: true)).Metadata.Uid,
            ["opted/by-namespace"] = (await RunAsync("opted", "by-namespace", "node-a")).Metadata.Uid,
        };
        await RunAsync("default", "plain", "node-a", labels: new() { ["app"] = "web" });
        await RunAsync("default", "loose", "node-a");
        var daemonSet = await CreateDaemonSetAsync();
        await RunAsync("default", "logs-agent", "node-a", labels: new() { ["app"] = "logs" },
            owner: new V1OwnerReference { ApiVersion = "apps/v1", Kind = "DaemonSet", Name = "logs", Uid = daemonSet, Controller = true });
        await Cluster.Client.PolicyV1.CreateNamespacedPodDisruptionBudgetAsync(new V1PodDisruptionBudget
        {
            Metadata = new V1ObjectMeta { Name = "web" },
            Spec = new V1PodDisruptionBudgetSpec { MaxUnavailable = 1, Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "web" } } },
        }, "default");
        var before = new Dictionary<string, long>
        {
            ["default/keeper"] = (await Sandbox.WaitForTicksAsync(Cluster, "keeper", "main", 3)).Count,
            ["opted/by-namespace"] = (await TicksAsync("opted", "by-namespace")).Count,
        };

        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: NodeDrain
            metadata: {name: maintenance-a}
            spec: {nodeName: node-a, reason: kernel upgrade, maxParallel: 1}
            """, "apply", "-f", "-")).Succeeded();
        int mostInFlight = 0;
        NodeDrainStatus? status = null;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (status?.Phase != NodeDrainStatus.Drained && clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            mostInFlight = Math.Max(mostInFlight, (await DrainRequestsAsync("maintenance-a")).Count(r => !MigrationPhases.IsFinal(r.Status?.Phase)));
            status = (await GetDrainAsync("maintenance-a"))?.Status;
            await Task.Delay(50);
        }

        output.WriteLine($"{status?.Phase}: {status?.Message}");
        Assert.Equal(NodeDrainStatus.Drained, status?.Phase);
        Assert.Equal((2, 2, 0, 0), (status!.Migrated, status.Evicted, status.Failed, status.Remaining));
        Assert.Equal(1, mostInFlight);
        var node = await Cluster.Client.CoreV1.ReadNodeAsync("node-a");
        Assert.True(node.Spec.Unschedulable);
        var left = (await Cluster.Client.CoreV1.ListPodForAllNamespacesAsync(fieldSelector: "spec.nodeName=node-a")).Items;
        Assert.Equal(["logs-agent"], left.Select(p => p.Metadata.Name));
        Assert.Equal("Running", left[0].Status.Phase);
        foreach (var request in await DrainRequestsAsync("maintenance-a"))
        {
            var ns = request.Metadata.NamespaceProperty;
            Assert.Equal(MigrationPhases.Succeeded, request.Status!.Phase);
            var frozen = Cluster.Node("node-a").LoggedTicks(ns, request.Spec.PodName, "main", uids[$"{ns}/{request.Spec.PodName}"])[^1].Tick;
            Assert.True(frozen >= before[$"{ns}/{request.Spec.PodName}"]);
            var ticks = await TicksAsync(ns, request.Status.ReplacementPod!);
            Sandbox.AssertConsecutive(ticks, frozen + 1);
        }

        foreach (var gone in new[] { "plain", "loose" })
        {
            Assert.Empty((await Cluster.Client.CoreV1.ListNamespacedPodAsync("default", fieldSelector: "metadata.name=" + gone)).Items);
        }

        var events = (await Cluster.Client.CoreV1.ListNamespacedEventAsync("default")).Items.Where(e => e.InvolvedObject.Kind == NodeDrain.KindName).ToList();
        Assert.Contains(events, e => e.Reason == "Drained");
        Assert.Equal(2, events.Count(e => e.Reason == "Migrating"));

        (await Cluster.Api.KubectlAsync("delete", "nodedrain", "maintenance-a", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.NotEqual(true, (await Cluster.Client.CoreV1.ReadNodeAsync("node-a")).Spec.Unschedulable);
        await CleanupAsync();
    }

    [Fact]
    public async Task A_drain_that_cannot_move_or_evict_reports_the_blocking_pods_and_kills_nothing()
    {
        await CleanupAsync();
        await RunAsync("default", "stuck", "node-a", optedIn: true);
        await RunAsync("default", "guarded", "node-a", labels: new() { ["app"] = "guarded" });
        await Cluster.Client.PolicyV1.CreateNamespacedPodDisruptionBudgetAsync(new V1PodDisruptionBudget
        {
            Metadata = new V1ObjectMeta { Name = "guarded" },
            Spec = new V1PodDisruptionBudgetSpec { MinAvailable = 1, Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "guarded" } } },
        }, "default");

        // no node carries the label the targets must have
        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: NodeDrain
            metadata: {name: nowhere}
            spec: {nodeName: node-a, maxAttempts: 2, targetNodeSelector: {pool: does-not-exist}}
            """, "apply", "-f", "-")).Succeeded();
        NodeDrain? drain = null;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (drain?.Status?.Phase != NodeDrainStatus.Blocked && clock.Elapsed < TimeSpan.FromMinutes(1))
        {
            drain = await GetDrainAsync("nowhere");
            await Task.Delay(100);
        }

        var status = drain!.Status!;
        output.WriteLine($"{status.Phase}: {status.Message}; " + string.Join("; ", status.BlockingPods.Select(b => $"{b.Name}: {b.Reason}")));
        Assert.Equal(NodeDrainStatus.Blocked, status.Phase);
        Assert.Equal((0, 0, 1, 2), (status.Migrated, status.Evicted, status.Failed, status.Remaining));
        var stuck = Assert.Single(status.BlockingPods, b => b.Name == "stuck");
        Assert.StartsWith("2 migration(s) failed, the last with NoEligibleTarget: ", stuck.Reason, StringComparison.Ordinal);
        var guarded = Assert.Single(status.BlockingPods, b => b.Name == "guarded");
        Assert.Equal("eviction refused: Cannot evict pod as it would violate the pod's disruption budget.", guarded.Reason);
        var attempts = await DrainRequestsAsync("nowhere");
        Assert.Equal(2, attempts.Count);
        Assert.All(attempts, a => Assert.Equal(MigrationPhases.Failed, a.Status!.Phase));
        foreach (var name in new[] { "stuck", "guarded" })
        {
            var pod = await Cluster.Client.CoreV1.ReadNamespacedPodAsync(name, "default");
            Assert.Equal(("node-a", "Running"), (pod.Spec.NodeName, pod.Status.Phase));
            Assert.Null(pod.Metadata.DeletionTimestamp);
        }

        var before = (await TicksAsync("default", "stuck")).Count;
        await Sandbox.WaitForTicksAsync(Cluster, "stuck", "main", before + 3);
        (await Cluster.Api.KubectlAsync("delete", "nodedrain", "nowhere", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.NotEqual(true, (await Cluster.Client.CoreV1.ReadNodeAsync("node-a")).Spec.Unschedulable);
        await Cluster.Client.PolicyV1.DeleteNamespacedPodDisruptionBudgetAsync("guarded", "default");
        await CleanupAsync();
    }

    [Fact]
    public async Task Kubectl_drain_has_opted_in_pods_migrated_and_evicts_the_others()
    {
        await CleanupAsync();
        var daemonSet = await CreateDaemonSetAsync();
        // kubectl drain only removes pods that a controller recreates
        var replicaSet = await Cluster.Client.AppsV1.CreateNamespacedReplicaSetAsync(new V1ReplicaSet
        {
            Metadata = new V1ObjectMeta { Name = "web" },
            Spec = new V1ReplicaSetSpec
            {
                Replicas = 2,
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "web" } },
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = "web" } },
                    Spec = new V1PodSpec { Containers = [new V1Container { Name = "main", Image = TestImages.Memcounter }] },
                },
            },
        }, "default");
        var managed = new V1OwnerReference { ApiVersion = "apps/v1", Kind = "ReplicaSet", Name = "web", Uid = replicaSet.Metadata.Uid, Controller = true };
        var keeper = await RunAsync("default", "keeper", "node-a", optedIn: true, labels: new() { ["app"] = "web" }, owner: managed);
        await RunAsync("default", "plain", "node-a", labels: new() { ["app"] = "web" }, owner: managed);
        await RunAsync("default", "logs-agent", "node-a", labels: new() { ["app"] = "logs" },
            owner: new V1OwnerReference { ApiVersion = "apps/v1", Kind = "DaemonSet", Name = "logs", Uid = daemonSet, Controller = true });
        await Cluster.Client.PolicyV1.CreateNamespacedPodDisruptionBudgetAsync(new V1PodDisruptionBudget
        {
            Metadata = new V1ObjectMeta { Name = "web" },
            Spec = new V1PodDisruptionBudgetSpec { MaxUnavailable = 1, Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "web" } } },
        }, "default");
        await Sandbox.WaitForTicksAsync(Cluster, "keeper", "main", 3);

        var drain = await Cluster.Api.KubectlAsync("drain", "node-a", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=50s");
        output.WriteLine(drain.Output + drain.Error);

        drain.Succeeded();
        Assert.Contains("is being migrated to another node by MigrationRequest evict-keeper-1 instead of being evicted", drain.Error, StringComparison.Ordinal);
        Assert.Contains("node/node-a drained", drain.Output, StringComparison.Ordinal);
        // the drain ends when the source pod is gone; the request records its success a moment after
        var request = (await Sandbox.WaitForFinalAsync(Cluster, "evict-keeper-1"))!;
        Assert.Equal(MigrationPhases.Succeeded, request.Status!.Phase);
        var frozen = Cluster.Node("node-a").LoggedTicks("default", "keeper", "main", keeper.Metadata.Uid)[^1].Tick;
        Sandbox.AssertConsecutive(await TicksAsync("default", request.Status.ReplacementPod!), frozen + 1);
        var replacement = await Cluster.Client.CoreV1.ReadNamespacedPodAsync(request.Status.ReplacementPod, "default");
        Assert.Equal(("node-b", replicaSet.Metadata.Uid), (replacement.Spec.NodeName, Assert.Single(replacement.Metadata.OwnerReferences).Uid));
        var left = (await Cluster.Client.CoreV1.ListPodForAllNamespacesAsync(fieldSelector: "spec.nodeName=node-a")).Items;
        Assert.Equal(["logs-agent"], left.Select(p => p.Metadata.Name));
        Assert.True((await Cluster.Client.CoreV1.ReadNodeAsync("node-a")).Spec.Unschedulable);
        (await Cluster.Api.KubectlAsync("uncordon", "node-a")).Succeeded();
        await CleanupAsync();
    }

    [Fact]
    public async Task Deleting_an_eviction_triggered_migration_cancels_it_and_the_next_eviction_is_an_ordinary_one()
    {
        await CleanupAsync();
        await RunAsync("default", "cancelme", "node-a", optedIn: true, mib: 96);
        await Sandbox.WaitForTicksAsync(Cluster, "cancelme", "main", 3);

        var refused = await Assert.ThrowsAsync<k8s.Autorest.HttpOperationException>(() => EvictAsync("cancelme"));
        (await Cluster.Api.KubectlAsync("delete", "migrationrequest", "evict-cancelme-1", "--wait=true", "--timeout=60s")).Succeeded();
        var pod = await Cluster.Client.CoreV1.ReadNamespacedPodAsync("cancelme", "default");
        var before = (await TicksAsync("default", "cancelme")).Count;
        await Sandbox.WaitForTicksAsync(Cluster, "cancelme", "main", before + 3);
        await EvictAsync("cancelme");

        Assert.Equal(429, (int)refused.Response.StatusCode);
        Assert.Contains("MigrationRequest evict-cancelme-1", refused.Response.Content, StringComparison.Ordinal);
        Assert.Equal(("node-a", "Running"), (pod.Spec.NodeName, pod.Status.Phase));
        Assert.Equal("evict-cancelme-1", pod.Metadata.Annotations[Annotations.EvictionMigrationCancelled]);
        await Sandbox.WaitForRequestAsync(Cluster, "evict-cancelme-2", r => r is null, TimeSpan.FromSeconds(1)); // no new migration
        var gone = System.Diagnostics.Stopwatch.StartNew();
        while ((await Cluster.Client.CoreV1.ListNamespacedPodAsync("default", fieldSelector: "metadata.name=cancelme")).Items.Count > 0)
        {
            Assert.True(gone.Elapsed < TimeSpan.FromSeconds(30), "the evicted pod did not go");
            await Task.Delay(100);
        }

        await CleanupAsync();
    }

    private Task<V1Eviction> EvictAsync(string pod) =>
        Cluster.Client.CoreV1.CreateNamespacedPodEvictionAsync(new V1Eviction { Metadata = new V1ObjectMeta { Name = pod, NamespaceProperty = "default" } }, pod, "default");

    private async Task<string> CreateDaemonSetAsync()
    {
        var daemonSet = await Cluster.Client.AppsV1.CreateNamespacedDaemonSetAsync(new V1DaemonSet
        {
            Metadata = new V1ObjectMeta { Name = "logs" },
            Spec = new V1DaemonSetSpec
            {
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "logs" } },
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = "logs" } },
                    Spec = new V1PodSpec { Containers = [new V1Container { Name = "main", Image = TestImages.Memcounter }] },
                },
            },
        }, "default");
        return daemonSet.Metadata.Uid;
    }

    private Task<V1Pod> RunAsync(string ns, string name, string node, bool optedIn = false, Dictionary<string, string>? labels = null, V1OwnerReference? owner = null, int mib = 8)
    {
        labels ??= [];
        if (optedIn)
        {
            labels[Labels.Migrate] = "true";
        }

        return Sandbox.RunPodAsync(Cluster, ns, name, node, labels, owner, mib);
    }

    private async Task<IReadOnlyList<MemcounterTick>> TicksAsync(string ns, string pod) =>
        Memcounter.Parse((await Cluster.Api.KubectlAsync("logs", pod, "-n", ns)).Succeeded().Output.Split('\n'));

    private async Task<NodeDrain?> GetDrainAsync(string name)
    {
        try
        {
            var raw = await Cluster.Client.CustomObjects.GetClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, name);
            return KubernetesJson.Deserialize<NodeDrain>(((JsonElement)raw).GetRawText());
        }
        catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private async Task<IReadOnlyList<MigrationRequest>> DrainRequestsAsync(string drain)
    {
        var raw = await Cluster.Client.CustomObjects.ListClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, MigrationRequest.Plural,
            labelSelector: $"{Labels.Drain}={drain}");
        return [.. KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText()).Items];
    }

    /// <summary>Every drain, pod and request a test made goes (at its start too, in case the one before failed half-way).</summary>
    private async Task CleanupAsync()
    {
        await Cluster.Api.KubectlAsync("delete", "nodedrains", "--all", "--wait=true", "--timeout=30s");
        foreach (var ns in new[] { "default", "opted" })
        {
            await Cluster.Api.KubectlAsync("delete", "migrationrequests", "--all", "-n", ns, "--wait=true", "--timeout=60s");
            await Cluster.Api.KubectlAsync("delete", "pods", "--all", "-n", ns, "--wait=true", "--timeout=60s");
        }

        await Cluster.Api.KubectlAsync("delete", "pdb", "--all", "-n", "default");
        await Cluster.Api.KubectlAsync("delete", "daemonsets,replicasets", "--all", "-n", "default", "--cascade=orphan");
        await Cluster.Api.KubectlAsync("uncordon", "node-a");
    }
}

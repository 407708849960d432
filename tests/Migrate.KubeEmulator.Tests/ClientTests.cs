using System.Net;
using k8s;
using k8s.Autorest;
using k8s.LeaderElection;
using k8s.LeaderElection.ResourceLock;
using k8s.Models;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>The real KubernetesClient against the emulator: what the operator does.</summary>
public sealed class ClientTests(EmulatorFixture fx) : IClassFixture<EmulatorFixture>
{
    private static V1ConfigMap ConfigMap(string name, string value) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = "watched" } },
        Data = new Dictionary<string, string> { ["v"] = value },
    };

    private async Task<string> NamespaceAsync(string name)
    {
        await fx.Client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = name } });
        return name;
    }

    [Fact]
    public async Task A_watch_sees_additions_modifications_and_deletions_in_order()
    {
        var ns = await NamespaceAsync("client-watch");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var seen = new List<(WatchEventType Type, string Name, string? Value)>();
        var watching = Task.Run(async () =>
        {
            await foreach (var (type, cm) in fx.Client.CoreV1.WatchListNamespacedConfigMapAsync(ns, labelSelector: "app=watched", cancellationToken: cts.Token))
            {
                seen.Add((type, cm.Metadata.Name, cm.Data is { } data && data.TryGetValue("v", out var v) ? v : null));
                if (type == WatchEventType.Deleted)
                {
                    return;
                }
            }
        }, cts.Token);
        await Task.Delay(300);

        await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(ConfigMap("a", "1"), ns);
        await fx.Client.CoreV1.PatchNamespacedConfigMapAsync(new V1Patch("{\"data\":{\"v\":\"2\"}}", V1Patch.PatchType.MergePatch), "a", ns);
        await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap { Metadata = new V1ObjectMeta { Name = "unlabelled" } }, ns);
        await fx.Client.CoreV1.DeleteNamespacedConfigMapAsync("a", ns);
        await watching;

        Assert.Equal([(WatchEventType.Added, "a", "1"), (WatchEventType.Modified, "a", "2"), (WatchEventType.Deleted, "a", "2")], seen);
    }

    [Fact]
    public async Task A_watch_resumed_from_a_resource_version_gets_exactly_the_later_changes()
    {
        var ns = await NamespaceAsync("client-resume");
        await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(ConfigMap("before", "0"), ns);
        var list = await fx.Client.CoreV1.ListNamespacedConfigMapAsync(ns);
        var from = list.Metadata.ResourceVersion;
        await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(ConfigMap("after-1", "1"), ns);
        await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(ConfigMap("after-2", "2"), ns);
        await fx.Client.CoreV1.DeleteNamespacedConfigMapAsync("before", ns);

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var seen = new List<string>();
        await foreach (var (type, cm) in fx.Client.CoreV1.WatchListNamespacedConfigMapAsync(ns, resourceVersion: from, cancellationToken: cts.Token))
        {
            seen.Add($"{type} {cm.Metadata.Name}");
            if (seen.Count == 3)
            {
                break;
            }
        }

        Assert.Equal(["Added after-1", "Added after-2", "Deleted before"], seen);
        Assert.True(long.Parse(from, CultureInfo) > 0);
    }

    [Fact]
    public async Task Optimistic_concurrency_refuses_a_stale_replace_with_409()
    {
        var ns = await NamespaceAsync("client-conflict");
        var created = await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(ConfigMap("c", "1"), ns);
        await fx.Client.CoreV1.PatchNamespacedConfigMapAsync(new V1Patch("{\"data\":{\"v\":\"2\"}}", V1Patch.PatchType.MergePatch), "c", ns);

        created.Data["v"] = "stale";
        var error = await Assert.ThrowsAsync<HttpOperationException>(() => fx.Client.CoreV1.ReplaceNamespacedConfigMapAsync(created, "c", ns));

        Assert.Equal(HttpStatusCode.Conflict, error.Response.StatusCode);
        Assert.Equal("2", (await fx.Client.CoreV1.ReadNamespacedConfigMapAsync("c", ns)).Data["v"]);
    }

    [Fact]
    public async Task Leader_election_on_a_Lease_has_one_leader_and_hands_over_when_it_stops()
    {
        var ns = await NamespaceAsync("client-election");
        var leaders = new List<string>();
        var firstLeads = new TaskCompletionSource();
        var secondLeads = new TaskCompletionSource();
        LeaderElector Elector(string identity, TaskCompletionSource leads)
        {
            var elector = new LeaderElector(new LeaderElectionConfig(new LeaseLock(fx.Client, ns, "operator", identity))
            {
                LeaseDuration = TimeSpan.FromSeconds(2),
                RenewDeadline = TimeSpan.FromSeconds(1.5),
                RetryPeriod = TimeSpan.FromMilliseconds(200),
            });
            elector.OnStartedLeading += () =>
            {
                lock (leaders)
                {
                    leaders.Add(identity);
                }

                leads.TrySetResult();
            };
            return elector;
        }

        using var firstStop = new CancellationTokenSource();
        using var secondStop = new CancellationTokenSource();
        using var first = Elector("replica-a", firstLeads);
        var firstRun = first.RunUntilLeadershipLostAsync(firstStop.Token);
        await firstLeads.Task.WaitAsync(TimeSpan.FromSeconds(10));
        using var second = Elector("replica-b", secondLeads);
        var secondRun = second.RunAndTryToHoldLeadershipForeverAsync(secondStop.Token);

        await Task.Delay(3000); // longer than the lease: replica-a keeps renewing, replica-b must not lead
        Assert.Equal(["replica-a"], leaders);
        var lease = await fx.Client.CoordinationV1.ReadNamespacedLeaseAsync("operator", ns);
        Assert.Equal("replica-a", lease.Spec.HolderIdentity);

        await firstStop.CancelAsync();
        await Task.WhenAny(firstRun, Task.Delay(5000));
        await secondLeads.Task.WaitAsync(TimeSpan.FromSeconds(15));
        await secondStop.CancelAsync();
        await Task.WhenAny(secondRun, Task.Delay(5000));

        Assert.Equal(["replica-a", "replica-b"], leaders);
        Assert.Equal("replica-b", (await fx.Client.CoordinationV1.ReadNamespacedLeaseAsync("operator", ns)).Spec.HolderIdentity);
    }

    private static readonly IFormatProvider CultureInfo = System.Globalization.CultureInfo.InvariantCulture;
}

/// <summary>Watch history is bounded: a watch from a version older than it is told 410.</summary>
public sealed class WatchHistoryTests(ShortHistoryEmulatorFixture fx) : IClassFixture<ShortHistoryEmulatorFixture>
{
    [Fact]
    public async Task A_watch_from_a_compacted_resource_version_gets_410_Gone()
    {
        var first = await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap { Metadata = new V1ObjectMeta { Name = "first" } }, "default");
        for (int i = 0; i < 30; i++)
        {
            await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap { Metadata = new V1ObjectMeta { Name = $"cm-{i}" } }, "default");
        }

        Exception? error = null;
        var delivered = 0;
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
        {
            await foreach (var _ in fx.Client.CoreV1.WatchListNamespacedConfigMapAsync("default", resourceVersion: first.Metadata.ResourceVersion,
                               onError: e => error ??= e, cancellationToken: cts.Token))
            {
                delivered++;
            }
        }
        var kubectl = await fx.RunKubectlAsync(null, fx.Emulator.KubeconfigPath, "get", "--raw",
            $"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={first.Metadata.ResourceVersion}");

        Assert.Equal(0, delivered);
        var status = Assert.IsType<KubernetesException>(error).Status;
        Assert.Equal(410, status.Code);
        Assert.Contains("too old resource version", status.Message, StringComparison.Ordinal);
        Assert.Contains("\"code\":410", kubectl.Output, StringComparison.Ordinal);
        Assert.Contains("\"reason\":\"Expired\"", kubectl.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_watch_that_asks_for_bookmarks_gets_them_with_the_current_resource_version()
    {
        var latest = await fx.Client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap { Metadata = new V1ObjectMeta { Name = "marker" } }, "default");

        var raw = await fx.RunKubectlAsync(null, fx.Emulator.KubeconfigPath, "get", "--raw",
            $"/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={latest.Metadata.ResourceVersion}");

        var bookmarks = raw.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!)
            .Where(e => e["type"]!.GetValue<string>() == "BOOKMARK")
            .ToList();
        Assert.True(bookmarks.Count >= 2, $"expected bookmarks every 300 ms over 2 s, got {bookmarks.Count}: {raw.Output}");
        Assert.All(bookmarks, b => Assert.True(
            long.Parse(b["object"]!["metadata"]!["resourceVersion"]!.GetValue<string>(), CultureInfo) >= long.Parse(latest.Metadata.ResourceVersion, CultureInfo)));
    }

    private static readonly IFormatProvider CultureInfo = System.Globalization.CultureInfo.InvariantCulture;
}

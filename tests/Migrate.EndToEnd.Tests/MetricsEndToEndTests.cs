using System.Globalization;
using k8s;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>/metrics (Prometheus exposition) of the operator and both agents, before and after a migration in the sandbox.</summary>
public sealed class MetricsEndToEndTests(SandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SandboxFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task After_a_migration_the_operator_and_both_agents_expose_its_figures()
    {
        var operatorUrl = new Uri($"http://{Cluster.OperatorAddress}/metrics");
        var sourceUrl = new Uri($"http://{Cluster.Node("node-a").ProbeAddress}/metrics");
        var targetUrl = new Uri($"http://{Cluster.Node("node-b").ProbeAddress}/metrics");
        var before = (Operator: await ScrapeAsync(operatorUrl), Source: await ScrapeAsync(sourceUrl), Target: await ScrapeAsync(targetUrl));

        await Sandbox.RunCounterAsync(Cluster, "measured", "node-a", 32);
        await Sandbox.ApplyRequestAsync(Cluster, "move-measured", "measured", "Cold", "node-b");
        var request = await Sandbox.WaitForFinalAsync(Cluster, "move-measured");
        Assert.Equal(MigrationPhases.Succeeded, request!.Status!.Phase);
        double Delta(Dictionary<string, double> a, Dictionary<string, double> b, string name, params string[] labels) => Sum(a, name, labels) - Sum(b, name, labels);

        // the operator counts an outcome right after it stored it: a scrape may come a moment earlier
        var after = (Operator: await ScrapeAsync(operatorUrl), Source: await ScrapeAsync(sourceUrl), Target: await ScrapeAsync(targetUrl));
        for (int i = 0; i < 50 && Delta(after.Operator, before.Operator, "podmig_operator_migrations_total", "outcome=\"Succeeded\"", "reason=\"Migrated\"") < 1; i++)
        {
            await Task.Delay(100);
            after = (await ScrapeAsync(operatorUrl), await ScrapeAsync(sourceUrl), await ScrapeAsync(targetUrl));
        }

        Assert.Equal(1, Delta(after.Operator, before.Operator, "podmig_operator_migrations_total", "outcome=\"Succeeded\"", "reason=\"Migrated\""));
        Assert.Equal(1, Delta(after.Operator, before.Operator, "podmig_operator_downtime_milliseconds_count"));
        Assert.Equal(request.Status.DowntimeMillis!.Value, Delta(after.Operator, before.Operator, "podmig_operator_downtime_milliseconds_sum"));
        Assert.Equal(1, Delta(after.Operator, before.Operator, "podmig_operator_migration_duration_milliseconds_count", "outcome=\"Succeeded\""));
        Assert.True(Delta(after.Operator, before.Operator, "podmig_operator_migration_duration_milliseconds_sum") > 0);
        Assert.Contains(after.Operator.Keys, k => k.StartsWith("podmig_operator_migrations_in_flight", StringComparison.Ordinal));

        var sent = Delta(after.Source, before.Source, "podmig_agent_transfer_bytes_total", "direction=\"out\"");
        var received = Delta(after.Target, before.Target, "podmig_agent_transfer_bytes_total", "direction=\"in\"");
        output.WriteLine($"sent {sent} bytes, received {received} bytes, status says {request.Status.BytesTransferred}");
        Assert.Equal(request.Status.BytesTransferred!.Value, sent);
        Assert.Equal(sent, received);
        Assert.Equal(1, Delta(after.Source, before.Source, "podmig_agent_dump_duration_milliseconds_count"));
        Assert.Equal(1, Delta(after.Source, before.Source, "podmig_agent_frozen_duration_milliseconds_count"));
        Assert.Contains(after.Target.Keys, k => k.StartsWith("podmig_agent_migrations_staged", StringComparison.Ordinal));
        await Cluster.Client.CoreV1.DeleteNamespacedPodAsync(request.Status.ReplacementPod, "default", new k8s.Models.V1DeleteOptions { GracePeriodSeconds = 0 });
    }

    [Fact]
    public async Task A_kept_checkpoint_is_counted_with_its_freeze_and_size_and_the_storage_it_keeps()
    {
        var operatorUrl = new Uri($"http://{Cluster.OperatorAddress}/metrics");
        var before = await ScrapeAsync(operatorUrl);
        await Sandbox.RunCounterAsync(Cluster, "metered", "node-a", 8);
        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: metered-1
            spec:
              podName: metered
            """, "apply", "-f", "-")).Succeeded();
        (await Cluster.Api.KubectlAsync("wait", "--for=jsonpath={.status.phase}=Ready", "checkpoint/metered-1", "--timeout=120s")).Succeeded();
        var freeze = long.Parse((await Cluster.Api.KubectlAsync("get", "checkpoint", "metered-1", "-o", "jsonpath={.status.freezeMillis}")).Succeeded().Output, CultureInfo.InvariantCulture);
        var size = long.Parse((await Cluster.Api.KubectlAsync("get", "checkpoint", "metered-1", "-o", "jsonpath={.status.sizeBytes}")).Succeeded().Output, CultureInfo.InvariantCulture);

        var after = await ScrapeAsync(operatorUrl);
        for (int i = 0; i < 50 && Sum(after, "podmig_operator_checkpoints_total", "outcome=\"Ready\"") - Sum(before, "podmig_operator_checkpoints_total", "outcome=\"Ready\"") < 1; i++)
        {
            await Task.Delay(100);
            after = await ScrapeAsync(operatorUrl);
        }

        double Delta(string name, params string[] labels) => Sum(after, name, labels) - Sum(before, name, labels);
        Assert.Equal(1, Delta("podmig_operator_checkpoints_total", "outcome=\"Ready\"", "reason=\"Kept\""));
        Assert.Equal(freeze, Delta("podmig_operator_checkpoint_freeze_milliseconds_sum"));
        Assert.Equal(size, Delta("podmig_operator_checkpoint_size_bytes_sum"));
        Assert.True(Sum(after, "podmig_operator_checkpoint_storage_bytes") >= size, "the storage gauge must count the checkpoint's bytes");

        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "metered-1", "--wait=true", "--timeout=30s")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "metered", "--wait=true")).Succeeded();
    }

    /// <summary>Every sample line of a scrape: "name{labels}" to value.</summary>
    private static async Task<Dictionary<string, double>> ScrapeAsync(Uri url)
    {
        using var http = new HttpClient();
        using var response = await http.GetAsync(url);
        Assert.True(response.IsSuccessStatusCode, $"{url}: {(int)response.StatusCode}");
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.MediaType ?? "", StringComparison.Ordinal);
        var samples = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var line in (await response.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            // name{labels} value [timestamp], or name value [timestamp]
            int close = line.LastIndexOf('}');
            var key = close >= 0 ? line[..(close + 1)] : line[..line.IndexOf(' ', StringComparison.Ordinal)];
            var value = line[key.Length..].Trim().Split(' ')[0];
            samples[key] = double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture);
        }

        return samples;
    }

    /// <summary>The sum of a metric's series that carry all the given labels.</summary>
    private static double Sum(Dictionary<string, double> samples, string name, params string[] labels) =>
        samples.Where(s => (s.Key == name || s.Key.StartsWith(name + "{", StringComparison.Ordinal)) && labels.All(l => s.Key.Contains(l, StringComparison.Ordinal)))
            .Sum(s => s.Value);
}

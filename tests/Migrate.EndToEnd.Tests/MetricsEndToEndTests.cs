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

        // The operator counts an outcome right after it stored it, and an agent counts a call's
        // figures as the call ends, which may be a moment after its caller moved on: scrape until
        // every figure the test checks has arrived (or 10 s have passed), then check them all.
        var after = (Operator: await ScrapeAsync(operatorUrl), Source: await ScrapeAsync(sourceUrl), Target: await ScrapeAsync(targetUrl));
        bool Arrived() =>
            Delta(after.Operator, before.Operator, "podmig_operator_migrations_total", "outcome=\"Succeeded\"", "reason=\"Migrated\"") >= 1
            && Delta(after.Operator, before.Operator, "podmig_operator_migration_duration_milliseconds_count", "outcome=\"Succeeded\"") >= 1
            && Delta(after.Source, before.Source, "podmig_agent_transfer_bytes_total", "direction=\"out\"") >= request.Status.BytesTransferred!.Value
            && Delta(after.Target, before.Target, "podmig_agent_transfer_bytes_total", "direction=\"in\"") >= request.Status.BytesTransferred!.Value
            && Delta(after.Source, before.Source, "podmig_agent_dump_duration_milliseconds_count") >= 1
            && Delta(after.Source, before.Source, "podmig_agent_frozen_duration_milliseconds_count") >= 1;
        for (int i = 0; i < 100 && !Arrived(); i++)
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

    [Fact]
    public async Task A_real_Prometheus_scrapes_the_operator_and_the_agents_answers_for_the_migration_s_downtime_and_evaluates_the_chart_s_alerts()
    {
        await using var prometheus = await PrometheusServer.StartAsync([Cluster.OperatorAddress ?? throw new InvalidOperationException("the sandbox runs no operator")], Cluster.Nodes.Select(n => n.ProbeAddress));
        output.WriteLine($"Prometheus pid {prometheus.Pid} at {prometheus.Address}");
        var up = await PollAsync(prometheus, "up", r => r.Count == 1 + Cluster.Nodes.Count && r.All(s => s.Value == 1), "every target up");
        Assert.Equal(Cluster.Nodes.Count, up.Count(s => s.Labels["job"] == PrometheusServer.AgentJob));
        // (the counter's series appears with the operator's first migration outcome; until then "no data" is 0)
        double before = (await prometheus.QueryAsync("sum(podmig_operator_downtime_milliseconds_sum)")).Sum(s => s.Value);

        await Sandbox.RunCounterAsync(Cluster, "scraped", "node-a", 16);
        await Sandbox.ApplyRequestAsync(Cluster, "move-scraped", "scraped", "Cold", "node-b");
        var request = await Sandbox.WaitForFinalAsync(Cluster, "move-scraped");
        Assert.Equal(MigrationPhases.Succeeded, request!.Status!.Phase);
        long downtime = request.Status.DowntimeMillis!.Value;

        var after = await PollAsync(prometheus, "sum(podmig_operator_downtime_milliseconds_sum)", r => r.Count == 1 && r[0].Value - before >= downtime, "the migration's downtime");
        output.WriteLine($"downtime: status {downtime} ms; Prometheus: {after[0].Value - before} ms more in podmig_operator_downtime_milliseconds_sum");
        Assert.Equal(downtime, after[0].Value - before);
        var staging = await PollAsync(prometheus, "podmig_agent_staging_available_bytes / podmig_agent_staging_capacity_bytes", r => r.Count == Cluster.Nodes.Count, "the staging gauges");
        Assert.All(staging, s => Assert.InRange(s.Value, 0.0001, 1));
        // the sandbox's agents stage in memory too: its file system's free bytes, and nothing reserved once the move is cleaned up
        var memory = await PollAsync(prometheus, "podmig_agent_memory_staging_available_bytes", r => r.Count == Cluster.Nodes.Count, "the memory staging gauge");
        Assert.All(memory, s => Assert.True(s.Value > 64 << 20, $"{s.Value} bytes free for memory staging"));
        await PollAsync(prometheus, "podmig_agent_memory_staging_reserved_bytes", r => r.Count == Cluster.Nodes.Count && r.All(s => s.Value == 0), "nothing reserved in memory after the move");
        var oldest = await prometheus.QueryAsync("podmig_operator_migrations_oldest_seconds");
        Assert.Single(oldest);

        // the chart's alerts, evaluated on the real series: every expression works, none fires
        var rules = await prometheus.RulesAsync();
        output.WriteLine(string.Join("; ", rules.Select(r => $"{r.Name} {r.Health} {r.State}")));
        Assert.Equal(6, rules.Count);
        Assert.All(rules, r => Assert.Equal("ok", r.Health));
        Assert.DoesNotContain(rules, r => r.Name is "PodMigrationAgentDown" or "PodMigrationOperatorDown" or "PodMigrationStagingDiskFilling" && r.State != "inactive");
        await Cluster.Client.CoreV1.DeleteNamespacedPodAsync(request.Status.ReplacementPod, "default", new k8s.Models.V1DeleteOptions { GracePeriodSeconds = 0 });
    }

    private static async Task<IReadOnlyList<(Dictionary<string, string> Labels, double Value)>> PollAsync(PrometheusServer prometheus, string query,
        Func<IReadOnlyList<(Dictionary<string, string> Labels, double Value)>, bool> done, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<(Dictionary<string, string> Labels, double Value)> result = [];
        while (clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            result = await prometheus.QueryAsync(query);
            if (done(result))
            {
                return result;
            }

            await Task.Delay(500);
        }

        throw new TimeoutException($"Prometheus did not show {what} within 60 s: {query} = {string.Join(", ", result.Select(r => $"{string.Join(",", r.Labels.Select(l => l.Key + "=" + l.Value))} {r.Value}"))}");
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

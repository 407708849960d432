using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using Migrate.TestSupport.Helm;

namespace Migrate.TestSupport;

/// <summary>
/// A real Prometheus (bookworm's) scraping the sandbox's operator and agents the way the chart's
/// ServiceMonitor has the Prometheus Operator scrape them: one job per Service (named as the
/// chart names them), /metrics over plain HTTP, with the chart's PrometheusRule alerts loaded.
/// Scrapes and evaluates every second. Stopped by PID; its directory removed.
/// </summary>
public sealed class PrometheusServer : IAsyncDisposable
{
    /// <summary>The job names the chart's ServiceMonitor gives (the Services' names at the default namePrefix).</summary>
    public const string OperatorJob = "podmig-operator";

    public const string AgentJob = "podmig-agent";

    private readonly ChildProcess _process;
    private readonly string _directory;
    private readonly HttpClient _http;

    private PrometheusServer(ChildProcess process, string directory, Uri address)
    {
        _process = process;
        _directory = directory;
        Address = address;
        _http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(10) };
    }

    public Uri Address { get; }

    /// <summary>Its configuration, rules, data and log.</summary>
    public string Directory => _directory;

    public int Pid => _process.Pid;

    /// <summary>Starts Prometheus on a free loopback port, scraping <paramref name="operatorTargets"/> and <paramref name="agentTargets"/> (host:port).</summary>
    public static async Task<PrometheusServer> StartAsync(IEnumerable<string> operatorTargets, IEnumerable<string> agentTargets)
    {
        var directory = System.IO.Directory.CreateTempSubdirectory("podmig-prometheus-").FullName;
        try
        {
            var rules = Path.Combine(directory, "podmig-alerts.json");
            WriteChartRules(rules);
            var config = Path.Combine(directory, "prometheus.yml");
            // (JSON is YAML)
            File.WriteAllText(config, JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["global"] = new Dictionary<string, string> { ["scrape_interval"] = "1s", ["evaluation_interval"] = "1s", ["scrape_timeout"] = "1s" },
                ["rule_files"] = new[] { rules },
                ["scrape_configs"] = new[]
                {
                    Job(OperatorJob, operatorTargets),
                    Job(AgentJob, agentTargets),
                },
            }));
            int port = Ports.Free();
            var address = new Uri($"http://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}/");
            var process = ChildProcess.Start("prometheus", PrometheusTools.Prometheus,
            [
                "--config.file=" + config, "--storage.tsdb.path=" + Path.Combine(directory, "data"),
                "--web.listen-address=127.0.0.1:" + port.ToString(CultureInfo.InvariantCulture), "--log.level=warn",
            ], Path.Combine(directory, "prometheus.log"));
            var server = new PrometheusServer(process, directory, address);
            try
            {
                await process.WaitUntilAsync(async () =>
                {
                    try
                    {
                        return (await server._http.GetAsync(new Uri("-/ready", UriKind.Relative))).IsSuccessStatusCode;
                    }
                    catch (HttpRequestException)
                    {
                        return false;
                    }
                }, TimeSpan.FromSeconds(30), "Prometheus to be ready");
                return server;
            }
            catch
            {
                await server.DisposeAsync();
                throw;
            }
        }
        catch
        {
            if (System.IO.Directory.Exists(directory))
            {
                System.IO.Directory.Delete(directory, recursive: true);
            }

            throw;
        }
    }

    /// <summary>The rule groups of the chart's PrometheusRule (rendered at default values with the rule on), as a rule file.</summary>
    public static void WriteChartRules(string path)
    {
        var chart = new HelmChart(RepositoryLayout.InRepository("charts", "pod-migration"))
            .Render("podmig", "podmig-system", HelmChart.Merge([], HelmChart.Set("metrics.prometheusRule.enabled=true")));
        var rule = chart.Manifests.Single(o => DeployManifests.Kind(o) == "PrometheusRule");
        File.WriteAllText(path, JsonSerializer.Serialize(rule["spec"]));
    }

    /// <summary>An instant PromQL query: each series' labels and value.</summary>
    public async Task<IReadOnlyList<(Dictionary<string, string> Labels, double Value)>> QueryAsync(string promql)
    {
        using var response = await _http.GetAsync(new Uri("api/v1/query?query=" + Uri.EscapeDataString(promql), UriKind.Relative));
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        if (body.GetProperty("status").GetString() != "success")
        {
            throw new InvalidOperationException($"Prometheus refused '{promql}': {body}");
        }

        return [.. body.GetProperty("data").GetProperty("result").EnumerateArray().Select(r => (
            r.GetProperty("metric").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? ""),
            double.Parse(r.GetProperty("value")[1].GetString()!, CultureInfo.InvariantCulture)))];
    }

    /// <summary>The loaded alerting rules: name and health ("ok", or "err" with the error).</summary>
    public async Task<IReadOnlyList<(string Name, string Health, string State)>> RulesAsync()
    {
        var body = await _http.GetFromJsonAsync<JsonElement>(new Uri("api/v1/rules?type=alert", UriKind.Relative));
        return [.. body.GetProperty("data").GetProperty("groups").EnumerateArray()
            .SelectMany(g => g.GetProperty("rules").EnumerateArray())
            .Select(r => (r.GetProperty("name").GetString()!, r.GetProperty("health").GetString()!, r.GetProperty("state").GetString()!))];
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _process.StopAsync(TimeSpan.FromSeconds(10));
        await _process.DisposeAsync();
        if (System.IO.Directory.Exists(_directory))
        {
            System.IO.Directory.Delete(_directory, recursive: true);
        }
    }

    private static Dictionary<string, object> Job(string name, IEnumerable<string> targets) => new()
    {
        ["job_name"] = name,
        ["metrics_path"] = "/metrics",
        ["static_configs"] = new[] { new Dictionary<string, object> { ["targets"] = targets.ToArray() } },
    };
}

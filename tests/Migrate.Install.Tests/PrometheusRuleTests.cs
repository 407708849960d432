using System.Diagnostics;
using System.Text.Json;
using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Install.Tests;

/// <summary>
/// The chart's PrometheusRule alerts, checked by the real promtool: the rules are valid PromQL with
/// valid templates (check rules), and fire when they should, with the labels and sentences they
/// should, and not otherwise (test rules, against the series in prometheus/alerts.test.yaml).
/// </summary>
public sealed class PrometheusRuleTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-rules-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void The_chart_s_alert_rules_pass_promtool_check_rules_and_its_rule_tests()
    {
        var chart = new HelmChart(RepositoryLayout.InRepository("charts", "pod-migration"))
            .Render("podmig", "podmig-system", HelmChart.Merge(new Dictionary<string, object?>(), HelmChart.Set("metrics.prometheusRule.enabled=true")));
        var rule = Assert.Single(chart.Manifests, o => DeployManifests.Kind(o) == "PrometheusRule");
        Assert.Equal("podmig", DeployManifests.Name(rule));
        // (JSON is YAML: promtool reads the rule groups as the Prometheus Operator hands them over)
        var rules = Path.Combine(_directory, "podmig-alerts.json");
        File.WriteAllText(rules, JsonSerializer.Serialize(rule["spec"]));
        File.Copy(RepositoryLayout.InRepository("tests", "Migrate.Install.Tests", "prometheus", "alerts.test.yaml"), Path.Combine(_directory, "alerts.test.yaml"));

        var (checkCode, check) = Promtool("check", "rules", rules);
        output.WriteLine(check);
        Assert.True(checkCode == 0, check);
        Assert.Contains("SUCCESS: 6 rules found", check, StringComparison.Ordinal);

        var (testCode, test) = Promtool("test", "rules", "alerts.test.yaml");
        output.WriteLine(test);
        Assert.True(testCode == 0, test);
        Assert.Contains("SUCCESS", test, StringComparison.Ordinal);
    }

    [Fact]
    public void At_default_values_there_is_no_PrometheusRule_and_a_bad_threshold_is_refused()
    {
        var chart = new HelmChart(RepositoryLayout.InRepository("charts", "pod-migration"));
        Assert.DoesNotContain(chart.Render("podmig", "podmig-system", []).Manifests, o => DeployManifests.Kind(o) == "PrometheusRule");
        var error = Assert.ThrowsAny<Exception>(() => chart.Render("podmig", "podmig-system",
            HelmChart.Merge(new Dictionary<string, object?>(), HelmChart.Set("metrics.prometheusRule.stagingFreeRatio=2"))));
        Assert.Contains("stagingFreeRatio", error.Message, StringComparison.Ordinal);
    }

    private (int Code, string Output) Promtool(params string[] arguments)
    {
        var start = new ProcessStartInfo(PrometheusTools.Promtool, arguments)
        {
            WorkingDirectory = _directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout + stderr.Result);
    }
}

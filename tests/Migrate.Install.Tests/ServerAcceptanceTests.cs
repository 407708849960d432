using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>
/// The install manifests against an API server (the emulator, checked with the real kubectl):
/// <c>kubectl apply --dry-run=server -k deploy/</c> and the chart's output are accepted object by
/// object, and a dry run changes nothing.
/// </summary>
public sealed class ServerAcceptanceTests(EmulatorFixture api) : IClassFixture<EmulatorFixture>
{
    private async Task CreateNamespaceAsync() =>
        (await api.KubectlAsync("apply", "-f", RepositoryLayout.InRepository("deploy", "namespace.yaml"))).Succeeded();

    [Fact]
    public async Task Kustomize_renders_deploy_and_a_server_dry_run_accepts_every_object()
    {
        var objects = (await DeployManifests.RenderAsync()).Objects;
        Assert.Equal(24, objects.Count);
        await CreateNamespaceAsync();

        var result = (await api.KubectlAsync("apply", "--dry-run=server", "-k", RepositoryLayout.InRepository("deploy"))).Succeeded();
        var lines = result.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(objects.Count, lines.Length);
        Assert.All(lines, line => Assert.Matches(@" (created|configured|unchanged) \(server dry run\)$", line));
        foreach (var o in objects.Where(o => DeployManifests.Kind(o) is "Deployment" or "DaemonSet" or "ClusterRole"))
        {
            Assert.Contains(lines, l => l.Contains($"/{DeployManifests.Name(o)} ", StringComparison.Ordinal) && l.StartsWith(DeployManifests.Kind(o).ToLowerInvariant(), StringComparison.Ordinal));
        }

        // a dry run stores nothing
        var stored = (await api.KubectlAsync("get", "deployments,daemonsets,serviceaccounts", "-n", "podmig-system", "-o", "name")).Succeeded();
        Assert.DoesNotContain("podmig", stored.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_charts_output_is_accepted_by_a_server_dry_run_with_every_option_the_server_knows()
    {
        await CreateNamespaceAsync();
        var chart = new HelmChart(RepositoryLayout.InRepository("charts", "pod-migration"));
        (await api.KubectlAsync("apply", "-f", RepositoryLayout.InRepository("crds"))).Succeeded();
        var overrides = HelmChart.Merge(HelmChart.Set("agent.installNodeConfiguration=true"), HelmChart.Set("operator.replicas=3"));
        var rendered = chart.Render("podmig", "podmig-system", overrides);
        var result = (await api.KubectlInAsync(rendered.Text, "apply", "--dry-run=server", "-f", "-")).Succeeded();
        Assert.Equal(rendered.Manifests.Count, result.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Contains("daemonset.apps/podmig-agent created (server dry run)", result.Output, StringComparison.Ordinal);
    }
}

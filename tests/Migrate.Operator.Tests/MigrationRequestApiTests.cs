using System.Text.Json;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>The MigrationRequest API (crds/) as users meet it: kubectl apply, explain, get, against the API emulator.</summary>
public sealed class MigrationRequestApiTests(EmulatorFixture cluster) : IClassFixture<EmulatorFixture>, IAsyncLifetime
{
    public async Task InitializeAsync() => await cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");

    public Task DisposeAsync() => Task.CompletedTask;

    private static string Request(string name, string spec) => $"""
        apiVersion: podmigration.io/v1alpha1
        kind: MigrationRequest
        metadata:
          name: {name}
          namespace: default
        spec:
        {spec}
        """;

    [Fact]
    public async Task A_request_gets_its_defaults_and_shows_pod_source_target_phase_downtime_and_age()
    {
        (await cluster.KubectlInAsync(Request("move-db", "  podName: db-0\n  targetNode: node-b"), "apply", "-f", "-")).Succeeded();
        (await cluster.KubectlAsync("patch", "migrationrequest", "move-db", "--subresource=status", "--type=merge",
            "-p", """{"status":{"phase":"Transferring","mode":"PreCopy","sourceNode":"node-a","targetNode":"node-b","downtimeMillis":412}}""")).Succeeded();

        var json = (await cluster.KubectlAsync("get", "mr", "move-db", "-o", "json")).Succeeded().Output;
        var table = (await cluster.KubectlAsync("get", "migrationrequests")).Succeeded().Output;

        using var document = JsonDocument.Parse(json);
        var spec = document.RootElement.GetProperty("spec");
        Assert.Equal("Auto", spec.GetProperty("mode").GetString());
        Assert.Equal(600, spec.GetProperty("timeoutSeconds").GetInt32());
        var header = table.Split('\n')[0];
        Assert.Equal(["NAME", "POD", "SOURCE", "TARGET", "MODE", "PHASE", "DOWNTIME", "AGE"], header.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        Assert.Matches(@"move-db\s+db-0\s+node-a\s+node-b\s+PreCopy\s+Transferring\s+412\s+\S+", table);
    }

    [Theory]
    [InlineData("  targetNode: node-b", "name one pod (podName) or a group (pods or podSelector), not both and not neither")]
    [InlineData("  podName: db-0\n  pods:\n  - podName: db-1", "name one pod (podName) or a group (pods or podSelector), not both and not neither")]
    [InlineData("  pods:\n  - podName: db-1\n  podSelector:\n    app: db", "a group is named by pods or by podSelector, not both")]
    [InlineData("  pods:\n  - targetNode: node-b", "spec.pods[0].podName")]
    [InlineData("  podName: db-0\n  mode: Hot", "spec.mode")]
    [InlineData("  podName: db-0\n  timeoutSeconds: 1", "spec.timeoutSeconds")]
    [InlineData("  podName: Not_A_Name", "spec.podName")]
    [InlineData("  podName: db-0\n  preCopy:\n    maxRounds: 50", "spec.preCopy.maxRounds")]
    [InlineData("  podName: db-0\n  preCopy:\n    frozenSendLimitMillis: -1", "spec.preCopy.frozenSendLimitMillis")]
    [InlineData("  podName: db-0\n  checkpointPath: CRI\n  mode: Hybrid", "set mode: Cold or leave it Auto")]
    public async Task Schema_violations_are_refused_by_kubectl_apply_with_the_field_named(string spec, string field)
    {
        var error = (await cluster.KubectlInAsync(Request("bad", spec), "apply", "-f", "-")).Failed();

        Assert.Contains(field, error, StringComparison.Ordinal);
        Assert.Equal(1, (await cluster.KubectlAsync("get", "mr", "bad")).ExitCode);
    }

    [Fact]
    public async Task The_spec_cannot_change_once_created()
    {
        (await cluster.KubectlInAsync(Request("fixed", "  podName: web-1"), "apply", "-f", "-")).Succeeded();

        var error = (await cluster.KubectlInAsync(Request("fixed", "  podName: web-2"), "apply", "-f", "-")).Failed();
        var kept = (await cluster.KubectlAsync("get", "mr", "fixed", "-o", "jsonpath={.spec.podName}")).Succeeded().Output;

        Assert.Contains("spec is immutable", error, StringComparison.Ordinal);
        Assert.Equal("web-1", kept);
    }

    [Fact]
    public async Task Kubectl_explain_describes_the_fields()
    {
        var spec = (await cluster.KubectlAsync("explain", "migrationrequest.spec")).Succeeded().Output;
        var mode = (await cluster.KubectlAsync("explain", "migrationrequest.spec.mode")).Succeeded().Output;
        var status = (await cluster.KubectlAsync("explain", "migrationrequest.status.phase")).Succeeded().Output;

        Assert.Contains("Immutable once created", spec, StringComparison.Ordinal);
        Assert.Contains("podName", spec, StringComparison.Ordinal);
        Assert.Contains("PreCopy copies memory in rounds", mode, StringComparison.Ordinal);
        Assert.Contains("RolledBack", status, StringComparison.Ordinal);
    }
}

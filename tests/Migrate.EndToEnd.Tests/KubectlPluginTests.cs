using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Migrate.KubeEmulator.Auth;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// kubectl migrate (the kubectl-migrate plugin, found by the real kubectl on PATH) against the
/// sandbox: a migration followed to its summary, list, describe, cancel, drain, and the errors a
/// user meets (no such pod or node, bad usage, pod-migration not installed, no permission).
/// </summary>
public sealed partial class KubectlPluginTests(SandboxFixture fixture, ITestOutputHelper output) : IClassFixture<SandboxFixture>, IDisposable
{
    private readonly string _bin = CreatePluginDirectory();

    private SandboxCluster Cluster => fixture.Cluster;

    /// <summary>A directory with kubectl-migrate (running the build's plugin), to put first on PATH.</summary>
    private static string CreatePluginDirectory()
    {
        var bin = Directory.CreateTempSubdirectory("kubectl-plugins-").FullName;
        var script = Path.Combine(bin, "kubectl-migrate");
        File.WriteAllText(script, $"#!/bin/sh\nexec dotnet '{RepositoryLayout.Program("Migrate.Kubectl", "kubectl-migrate")}' \"$@\"\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        return bin;
    }

    /// <summary>kubectl migrate ARGS, output redirected (not a terminal), against a kubeconfig.</summary>
    private async Task<(int ExitCode, string Output)> MigrateAsync(string kubeconfig, params string[] args)
    {
        var result = await Sandbox.RunAsync("kubectl", ["migrate", .. args], new Dictionary<string, string>
        {
            ["PATH"] = $"{_bin}:{Environment.GetEnvironmentVariable("PATH")}",
            ["KUBECONFIG"] = kubeconfig,
        });
        output.WriteLine($"$ kubectl migrate {string.Join(' ', args)}  -> {result.ExitCode}\n{result.Output}");
        return result;
    }

    [Fact]
    public async Task Pod_with_wait_follows_the_migration_and_its_summary_matches_the_status()
    {
        await Sandbox.RunCounterAsync(Cluster, "plugged", "node-a", 64);
        var (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "plugged", "--to", "node-b", "--mode", "cold", "--wait");

        Assert.Equal(0, code);
        Assert.DoesNotContain('\r', text);
        Assert.DoesNotContain('\u001b', text);
        var name = Regex.Match(text, @"migrationrequest\.podmigration\.io/(\S+) created").Groups[1].Value;
        var status = (await Sandbox.GetRequestAsync(Cluster, name))!.Status!;
        Assert.Equal(MigrationPhases.Succeeded, status.Phase);
        Assert.Contains($"Succeeded: pod default/{status.ReplacementPod} runs on node-b (moved from node-a).", text, StringComparison.Ordinal);
        Assert.Contains($"  downtime  {status.DowntimeMillis} ms", text, StringComparison.Ordinal);
        Assert.Contains($"  total     {(status.CompletionTime!.Value - status.StartTime!.Value).TotalMilliseconds:0} ms", text, StringComparison.Ordinal);
        foreach (var phase in new[] { "Checkpointing:", "Transferring:", "Restoring:" })
        {
            Assert.Contains(phase, text, StringComparison.Ordinal);
        }

        var (listed, table) = await MigrateAsync(Cluster.KubeconfigPath, "list");
        Assert.Equal(0, listed);
        Assert.Matches($@"{name}\s+plugged\s+node-a\s+node-b\s+Succeeded\s+{status.DowntimeMillis}ms", table);

        var (described, description) = await MigrateAsync(Cluster.KubeconfigPath, "describe", name);
        Assert.Equal(0, described);
        Assert.Contains("Phase:        Succeeded", description, StringComparison.Ordinal);
        Assert.Contains($"Memory:       {status.MemoryRestore}", description, StringComparison.Ordinal);
        Assert.Contains($"Replacement:  {status.ReplacementPod}", description, StringComparison.Ordinal);
        Assert.Contains("Migrated", description, StringComparison.Ordinal);

        var (cancelled, said) = await MigrateAsync(Cluster.KubeconfigPath, "cancel", name);
        Assert.Equal(0, cancelled);
        Assert.Contains("had already ended: Succeeded", said, StringComparison.Ordinal);
        await Sandbox.WaitForRequestAsync(Cluster, name, r => r is null);

        // the moved pod is not opted in: a drain of its node evicts it
        var (drained, drainText) = await MigrateAsync(Cluster.KubeconfigPath, "drain", "node-b", "--max-parallel", "2", "--wait");
        Assert.Equal(0, drained);
        Assert.Contains("Drained: 0 migrated, 1 evicted, 0 failed, 0 remaining", drainText, StringComparison.Ordinal);
        var drain = Regex.Match(drainText, @"nodedrain\.podmigration\.io/(\S+) created").Groups[1].Value;
        (await Cluster.Api.KubectlAsync("delete", "nodedrain", drain, "--wait=true", "--timeout=30s")).Succeeded();
    }

    [Fact]
    public async Task Each_mistake_gets_its_message_and_exit_code()
    {
        var (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "no-such-pod");
        Assert.Equal((1, "error: pod \"no-such-pod\" not found in namespace \"default\""), (code, text.Trim()));

        await Sandbox.RunCounterAsync(Cluster, "stays", "node-a", 8);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "stays", "--to", "node-z");
        Assert.Equal((1, "error: node \"node-z\" not found"), (code, text.Trim()));
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "stays", "--mode", "warm");
        Assert.Equal(2, code);
        Assert.Contains("error: --mode must be cold or precopy, not 'warm'", text, StringComparison.Ordinal);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "describe", "never-made");
        Assert.Equal((1, "error: MigrationRequest \"never-made\" not found in namespace \"default\""), (code, text.Trim()));
        (code, _) = await MigrateAsync(Cluster.KubeconfigPath, "teleport");
        Assert.Equal(2, code);
        var requests = (System.Text.Json.JsonElement)await Cluster.Client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version,
            "default", MigrationRequest.Plural);
        Assert.DoesNotContain("\"podName\":\"stays\"", requests.GetRawText(), StringComparison.Ordinal);

        // a cluster without pod-migration
        var bare = new EmulatorFixture();
        await bare.InitializeAsync();
        try
        {
            (code, text) = await MigrateAsync(bare.Emulator.KubeconfigPath, "list");
            Assert.Equal(1, code);
            Assert.Contains("does not serve podmigration.io/v1alpha1: pod-migration is not installed", text, StringComparison.Ordinal);
        }
        finally
        {
            await bare.DisposeAsync();
        }

        // a user RBAC gives nothing
        var strict = new ConfiguredEmulatorFixture(o => o.Rbac = true);
        await strict.InitializeAsync();
        try
        {
            await strict.ApplyRepositoryFileAsync("crds");
            strict.Emulator.Server.Authenticator.AddStaticToken("nobody-token", new UserInfo("nobody", ["system:authenticated"]));
            var kubeconfig = Path.Combine(_bin, "nobody.kubeconfig");
            strict.Emulator.WriteKubeconfig(kubeconfig, "nobody-token", "nobody");
            (code, text) = await MigrateAsync(kubeconfig, "pod", "anything");
            Assert.Equal(1, code);
            Assert.Contains("error: not allowed: pods \"anything\" is forbidden: User \"nobody\" cannot get resource \"pods\"", text, StringComparison.Ordinal);
        }
        finally
        {
            await strict.DisposeAsync();
        }
    }

    public void Dispose() => Directory.Delete(_bin, recursive: true);
}

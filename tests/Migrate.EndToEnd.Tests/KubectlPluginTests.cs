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

    private static string CreatePluginDirectory() => Sandbox.CreatePluginDirectory();

    /// <summary>kubectl migrate ARGS, output redirected (not a terminal), against a kubeconfig.</summary>
    private Task<(int ExitCode, string Output)> MigrateAsync(string kubeconfig, params string[] args) => Sandbox.KubectlMigrateAsync(_bin, kubeconfig, output, args);

    [Fact]
    public async Task Pod_with_wait_follows_the_migration_and_its_summary_matches_the_status()
    {
        await Sandbox.RunCounterAsync(Cluster, "plugged", "node-a", 64);
        var (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "plugged", "--to", "node-b", "--mode", "cold", "--checkpoint-path", "runtimeclass", "--wait");

        Assert.Equal(0, code);
        Assert.DoesNotContain('\r', text);
        Assert.DoesNotContain('\u001b', text);
        var name = Regex.Match(text, @"migrationrequest\.podmigration\.io/(\S+) created").Groups[1].Value;
        var status = (await Sandbox.GetRequestAsync(Cluster, name))!.Status!;
        Assert.Equal(MigrationPhases.Succeeded, status.Phase);
        Assert.Contains($"Succeeded: pod default/{status.ReplacementPod} runs on node-b (moved from node-a).", text, StringComparison.Ordinal);
        Assert.Contains($"  downtime  {status.DowntimeMillis} ms", text, StringComparison.Ordinal);
        Assert.True(status.RestoreMillis is > 0 && status.RestoreMillis <= status.DowntimeMillis, $"restoreMillis {status.RestoreMillis} must be set, within the downtime {status.DowntimeMillis}");
        Assert.Contains($"  restore   {status.RestoreMillis} ms on node-b, from the committed images to the processes running", text, StringComparison.Ordinal);
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
        Assert.Contains("Path:         RuntimeClass", description, StringComparison.Ordinal);
        Assert.Contains($"Restore:      {status.RestoreMillis} ms from the committed images to the processes running", description, StringComparison.Ordinal);
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
    public async Task Checkpoint_checkpoints_and_restore_keep_a_pod_and_bring_it_back_as_a_new_one()
    {
        await Sandbox.RunCounterAsync(Cluster, "kept", "node-a", 8);
        await Sandbox.WaitForTicksAsync(Cluster, "kept", "main", 3);
        var (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "checkpoint", "kept", "--name", "kept-1", "--export", "plugin/kept-1", "--wait");
        Assert.Equal(0, code);
        Assert.Contains("checkpoint.podmigration.io/kept-1 created: checkpointing pod default/kept", text, StringComparison.Ordinal);
        Assert.Matches(@"Ready: Pod kept checkpointed on node-a: \d+ bytes kept, frozen for \d+ ms, exported to plugin/kept-1 \(\d+ bytes, sha256:[0-9a-f]{64}\)\. Taken at \S+; kept in node-a:/\S+/checkpoints/[0-9a-f-]+\. Exported to plugin/kept-1 \(sha256:[0-9a-f]{64}\)\.", text);

        // the export, imported back onto node-b as a Checkpoint of its own
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "import", "plugin/kept-1", "--name", "kept-imported", "--to", "node-b", "--wait");
        Assert.Equal(0, code);
        Assert.Contains("checkpoint.podmigration.io/kept-imported created: importing plugin/kept-1 from the archive storage", text, StringComparison.Ordinal);
        Assert.Contains("Ready: Checkpoint of pod default/kept imported from plugin/kept-1 onto node-b: ", text, StringComparison.Ordinal);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "import", "../etc", "--name", "escape", "--no-wait");
        Assert.Equal(1, code);
        Assert.Contains("spec.source.path", text, StringComparison.Ordinal); // refused by the schema: nothing created

        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "checkpoints");
        Assert.Equal(0, code);
        Assert.Matches(@"(?m)^NAME +POD +NODE +PHASE +SIZE +FREEZE +TAKEN$", text);
        Assert.Matches(@"(?m)^kept-1 +kept +node-a +Ready +\d+\.\d MiB +\d+ ms +\S+$", text);
        Assert.Matches(@"(?m)^kept-imported +kept +node-b +Ready ", text); // the pod the export was taken of

        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "restore", "kept-1", "--to", "node-b", "--as", "kept-again", "--wait");
        Assert.Equal(0, code);
        Assert.Contains("Succeeded: Pod kept-again runs on node-b, resumed from checkpoint kept-1 taken at ", text, StringComparison.Ordinal);
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, "kept-again", "main", 3);
        Assert.True(ticks[0].Tick > 3, $"the restored pod counts from {ticks[0].Tick}, not from where the checkpoint left it");

        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "restore", "no-such-checkpoint");
        Assert.Equal((1, "error: Checkpoint \"no-such-checkpoint\" not found in namespace \"default\""), (code, text.Trim()));

        // two pods on two nodes as one group; a group with an export, or with names and a selector, is bad usage
        await Sandbox.RunCounterAsync(Cluster, "kept-b", "node-b", 8);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "checkpoint", "kept", "kept-b", "--name", "kept-pair", "--wait");
        Assert.True(code == 0, text);
        Assert.Contains("checkpoint.podmigration.io/kept-pair created: checkpointing pods default/kept, default/kept-b as one group", text, StringComparison.Ordinal);
        Assert.Matches(@"Ready: 2 pods on 2 nodes checkpointed as one cut: \d+ bytes kept, the longest freeze \d+ ms, \d+ ms from the first member frozen to the last thawed\. Taken at \S+; kept in kept-pair-kept on node-a, kept-pair-kept-b on node-b\.", text);
        foreach (var bad in new[] { new[] { "checkpoint", "kept", "kept-b", "--export", "plugin/pair" }, ["checkpoint", "kept", "-l", "app=kept"], ["checkpoint", "-l", "app"] })
        {
            (code, text) = await MigrateAsync(Cluster.KubeconfigPath, bad);
            Assert.True(code == 2, $"{string.Join(' ', bad)}: exit {code}: {text}");
        }

        Assert.Contains("-l takes label=value pairs separated by commas (such as app=ring), not 'app'", text, StringComparison.Ordinal);
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "kept-pair", "--wait=true", "--timeout=30s")).Succeeded();

        (await Cluster.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "kept", "kept-again", "kept-b", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "kept-1", "kept-imported", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.False(Directory.Exists(Path.Combine(Cluster.ArchiveDirectory, "plugin", "kept-1")), "the export went with its Checkpoint");
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
        Assert.Contains("error: --mode must be auto, cold, precopy, postcopy or hybrid, not 'warm'", text, StringComparison.Ordinal);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "stays", "--checkpoint-path", "rsync");
        Assert.Equal(2, code);
        Assert.Contains("error: --checkpoint-path must be auto, runtimeclass or cri, not 'rsync'", text, StringComparison.Ordinal);
        (code, text) = await MigrateAsync(Cluster.KubeconfigPath, "pod", "stays", "--checkpoint-path", "cri", "--mode", "precopy");
        Assert.Equal(2, code);
        Assert.Contains("error: --checkpoint-path cri takes one checkpoint while the pod is frozen", text, StringComparison.Ordinal);
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

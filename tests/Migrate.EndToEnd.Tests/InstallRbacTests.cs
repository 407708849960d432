using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Models;
using Migrate.KubeEmulator.Auth;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>A sandbox installed from deploy/: RBAC on, operator and agents under their ServiceAccounts.</summary>
public sealed class InstalledSandboxFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync() => Cluster = await SandboxCluster.StartAsync(new SandboxOptions { AsInstalled = true });

    public async Task DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>
/// Least privilege, proven: the operator and the agents run with exactly the ServiceAccounts,
/// roles and environment of deploy/ (RBAC enforced by the API emulator), a migration and a drain
/// succeed, no request of theirs is refused, and every rule of their roles was the only rule
/// allowing some request they made, so removing any one rule makes that request fail.
/// </summary>
public sealed class InstallRbacTests(InstalledSandboxFixture fixture, ITestOutputHelper output) : IClassFixture<InstalledSandboxFixture>
{
    private const string Namespace = SandboxOptions.InstallNamespace;
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task Under_deploy_rbac_a_migration_a_checkpoint_restore_and_a_drain_succeed_and_every_rule_is_needed()
    {
        // the agents announced themselves and read the certificates the operator made for their nodes
        foreach (var node in Cluster.Nodes)
        {
            var annotations = (await Cluster.Client.CoreV1.ReadNodeAsync(node.Name)).Metadata.Annotations;
            Assert.Equal(node.AgentAddress, annotations?[Annotations.AgentEndpoint]);
            var secret = await Cluster.Client.CoreV1.ReadNamespacedSecretAsync("podmig-agent-" + node.Name, Namespace);
            using var certificate = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(System.Text.Encoding.ASCII.GetString(secret.Data["tls.crt"]));
            Assert.Equal(node.Name, certificate.GetNameInfo(System.Security.Cryptography.X509Certificates.X509NameType.SimpleName, false));
        }

        // a ReplicaSet's pod moves (its labels and owner are held back until cut-over: pods are patched)
        var replicaSet = await Sandbox.CreateReplicaSetAsync(Cluster, "web");
        await Sandbox.RunPodAsync(Cluster, "default", "web-1", "node-a", new() { ["app"] = "web" }, new V1OwnerReference { ApiVersion = "apps/v1", Kind = "ReplicaSet", Name = "web", Uid = replicaSet, Controller = true });
        var before = await Sandbox.WaitForTicksAsync(Cluster, "web-1", "main", 3);
        await Sandbox.ApplyRequestAsync(Cluster, "move-web", "web-1", "PreCopy", "node-b");
        var moved = await Sandbox.WaitForFinalAsync(Cluster, "move-web");
        output.WriteLine($"move-web: {moved?.Status?.Phase} {moved?.Status?.Reason} {moved?.Status?.Message}");
        Assert.Equal(MigrationPhases.Succeeded, moved?.Status?.Phase);
        var frozen = Cluster.Node("node-a").LoggedTicks("default", "web-1", "main")[^1].Tick;
        Assert.True(frozen >= before[^1].Tick);
        Sandbox.AssertConsecutive(await Sandbox.WaitForTicksAsync(Cluster, moved!.Status!.ReplacementPod!, "main", 3, frozen), frozen + 1);

        // a checkpoint of the moved pod (finalizer and saved pod: patches; status), restored on node-a (status), then deleted
        (await Cluster.Api.KubectlInAsync($"""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata:
              name: rbac-checkpoint
            spec:
              podName: {moved.Status.ReplacementPod}
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata:
              name: rbac-restore
            spec:
              checkpointName: rbac-checkpoint
              nodeName: node-a
            """, "apply", "-f", "-")).Succeeded();
        (await Cluster.Api.KubectlAsync("wait", "--for=jsonpath={.status.phase}=Succeeded", "restore/rbac-restore", "--timeout=120s")).Succeeded();
        // a schedule (selecting no pod here: its status is written all the same)
        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: CheckpointSchedule
            metadata:
              name: rbac-schedule
            spec:
              selector:
                matchLabels: {app: nobody}
              intervalSeconds: 3600
            """, "apply", "-f", "-")).Succeeded();
        (await Cluster.Api.KubectlAsync("wait", "--for=jsonpath={.status.checkpoints}=0", "checkpointschedule/rbac-schedule", "--timeout=60s")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpointschedule", "rbac-schedule")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "pod", "rbac-restore", "--wait=true")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "restore", "rbac-restore")).Succeeded();
        (await Cluster.Api.KubectlAsync("delete", "checkpoint", "rbac-checkpoint", "--wait=true", "--timeout=30s")).Succeeded();

        // a drain of node-b: an opted-in pod moves, the others are evicted (through the eviction webhook, which reads the namespace)
        await Sandbox.RunPodAsync(Cluster, "default", "keeper", "node-b", new() { [Labels.Migrate] = "true" });
        (await Cluster.Api.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: NodeDrain
            metadata: {name: rbac-drain}
            spec: {nodeName: node-b, reason: rbac test}
            """, "apply", "-f", "-")).Succeeded();
        NodeDrain? drain = null;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (drain?.Status?.Phase != NodeDrainStatus.Drained && clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            var raw = await Cluster.Client.CustomObjects.GetClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, "rbac-drain");
            drain = KubernetesJson.Deserialize<NodeDrain>(((JsonElement)raw).GetRawText());
            await Task.Delay(100);
        }

        output.WriteLine($"rbac-drain: {drain?.Status?.Phase} {drain?.Status?.Message}");
        Assert.Equal(NodeDrainStatus.Drained, drain?.Status?.Phase);
        Assert.Equal((1, 1, 0), (drain!.Status!.Migrated, drain.Status.Evicted, drain.Status.Failed));
        (await Cluster.Api.KubectlAsync("delete", "nodedrain", "rbac-drain", "--wait=true", "--timeout=30s")).Succeeded();

        var manifests = Cluster.Manifests!;
        AssertEveryRuleNeeded(manifests, "podmig-operator");
        AssertEveryRuleNeeded(manifests, "podmig-agent");
    }

    /// <summary>
    /// No request of the account was refused, and each rule of its ClusterRole and Role (same
    /// name as the account) is the only one that allowed at least one request it made.
    /// </summary>
    private void AssertEveryRuleNeeded(DeployManifests manifests, string account)
    {
        var user = $"system:serviceaccount:{Namespace}:{account}";
        var requests = Cluster.AccessLog.Where(e => e.Request.User.Name == user).ToList();
        var refused = requests.Where(e => !e.Allowed).Select(e => e.Request.ForbiddenMessage()).Distinct().ToList();
        Assert.True(refused.Count == 0, $"{account} was refused: " + string.Join("; ", refused));

        var rules = new List<(string Role, int Index, JsonObject Rule, string? Scope)>();
        foreach (var (kind, scope) in new[] { ("ClusterRole", (string?)null), ("Role", Namespace) })
        {
            var role = HelmChart.ToJson(manifests.Find(kind, account))!.AsObject();
            var list = role["rules"]!.AsArray().Select(r => r!.AsObject()).ToList();
            rules.AddRange(list.Select((rule, i) => ($"{kind}/{account}", i, rule, scope)));
        }

        var counts = new Dictionary<(string, int), int>();
        var unused = new List<string>();
        foreach (var (request, _) in requests)
        {
            var allowing = rules.Where(r => (r.Scope is null || r.Scope == request.Namespace) && RbacAuthorizer.RuleAllows(r.Rule, request)).ToList();
            if (allowing.Count == 1)
            {
                counts[(allowing[0].Role, allowing[0].Index)] = counts.GetValueOrDefault((allowing[0].Role, allowing[0].Index)) + 1;
            }
        }

        foreach (var (role, index, rule, _) in rules)
        {
            var description = $"{role} rule {index} ({rule.ToJsonString()})";
            int only = counts.GetValueOrDefault((role, index));
            output.WriteLine($"{description}: sole grant of {only} request(s)");
            if (only == 0)
            {
                unused.Add(description);
            }

            foreach (var verb in rule["verbs"]!.AsArray().Select(v => v!.GetValue<string>()))
            {
                if (!requests.Any(e => e.Request.Verb == verb && RbacAuthorizer.RuleAllows(rule, e.Request)))
                {
                    output.WriteLine($"  verb {verb} not used in this run");
                }
            }
        }

        Assert.True(unused.Count == 0, $"rules of {account} that no request needed (remove them or exercise them): " + string.Join("; ", unused));
    }
}

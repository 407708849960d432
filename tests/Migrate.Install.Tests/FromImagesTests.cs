using System.Globalization;
using System.Net;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Api;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Install.Tests;

/// <summary>
/// The project as deploy/ runs it, from the images make images built: the node agents as the
/// DaemonSet's pods (privileged, in the node's PID namespace, with the hostPath volumes, service
/// account token and environment the manifest gives them) and the operator as the Deployment's
/// two pods (non-root, read-only root, one leader), on a sandbox installed from deploy/ with RBAC
/// enforced. An eviction of an opted-in pod reaches the operator's webhook through its Service
/// and becomes a migration, which the agents carry out with the pod's state.
/// </summary>
[Collection(ImageBuild.Name)]
public sealed class FromImagesTests(BuiltImages built, ITestOutputHelper output)
{
    private const string Namespace = SandboxOptions.InstallNamespace;

    [Fact]
    public async Task The_operator_and_agents_from_the_built_images_turn_an_eviction_into_a_migration_with_the_pods_state()
    {
        built.AssertBuilt();
        await using var cluster = await SandboxCluster.StartAsync(new SandboxOptions { AsInstalled = true, FromImages = true }, output.WriteLine);
        try
        {
            // one agent pod per node, made by the DaemonSet from the image built here, announcing its pod's address
            var daemonSet = await cluster.Client.AppsV1.ReadNamespacedDaemonSetAsync("podmig-agent", Namespace);
            var agents = (await cluster.Client.CoreV1.ListNamespacedPodAsync(Namespace, labelSelector: "app.kubernetes.io/name=podmig-agent")).Items;
            Assert.Equal(cluster.Nodes.Select(n => n.Name).Order(StringComparer.Ordinal), agents.Select(p => p.Spec.NodeName).Order(StringComparer.Ordinal));
            foreach (var pod in agents)
            {
                Assert.Equal("DaemonSet", pod.Metadata.OwnerReferences.Single().Kind);
                Assert.Equal(daemonSet.Spec.Template.Spec.Containers[0].Image, pod.Status.ContainerStatuses.Single().Image);
                Assert.Equal($"{pod.Status.PodIP}:7070", (await cluster.Client.CoreV1.ReadNodeAsync(pod.Spec.NodeName)).Metadata.Annotations[Annotations.AgentEndpoint]);
            }

            // the operator's two replicas, spread over the nodes, from its image, running as the Deployment's non-root user
            var deployment = await cluster.Client.AppsV1.ReadNamespacedDeploymentAsync("podmig-operator", Namespace);
            var operators = (await cluster.Client.CoreV1.ListNamespacedPodAsync(Namespace, labelSelector: "app.kubernetes.io/name=podmig-operator")).Items;
            Assert.Equal(deployment.Spec.Replicas, operators.Count);
            Assert.Equal(operators.Count, operators.Select(p => p.Spec.NodeName).Distinct().Count());
            Assert.All(operators, p => Assert.Equal(deployment.Spec.Template.Spec.Containers[0].Image, p.Status.ContainerStatuses.Single().Image));
            var users = OperatorProcessUsers();
            output.WriteLine($"operator processes' users: {string.Join(", ", users)}");
            Assert.Equal(Enumerable.Repeat("65532", operators.Count), users);
            Assert.Equal((2, 2), ((await cluster.Client.AppsV1.ReadNamespacedDaemonSetAsync("podmig-agent", Namespace)).Status.DesiredNumberScheduled,
                (await cluster.Client.AppsV1.ReadNamespacedDeploymentAsync("podmig-operator", Namespace)).Status.Replicas));

            // an opted-in counter on node-a: its eviction is refused by the operator's webhook (reached through the Service's endpoints)
            await Sandbox.RunPodAsync(cluster, "default", "counter", "node-a", new() { [Labels.Migrate] = "true" });
            var before = await Sandbox.WaitForTicksAsync(cluster, "counter", "main", 3);
            var refusal = await Assert.ThrowsAsync<HttpOperationException>(() => cluster.Client.CoreV1.CreateNamespacedPodEvictionAsync(
                new V1Eviction { Metadata = new V1ObjectMeta { Name = "counter", NamespaceProperty = "default" } }, "counter", "default"));
            output.WriteLine($"eviction: {(int)refusal.Response.StatusCode} {refusal.Response.Content}");
            Assert.Equal((HttpStatusCode)429, refusal.Response.StatusCode);

            // ... and the migration it started moves the counter to node-b, every tick once
            var request = await WaitForRequestOfAsync(cluster, "counter");
            var moved = await Sandbox.WaitForFinalAsync(cluster, request);
            output.WriteLine($"{request}: {moved?.Status?.Phase} {moved?.Status?.Reason} {moved?.Status?.Message}; downtime {moved?.Status?.DowntimeMillis} ms");
            Assert.Equal(MigrationPhases.Succeeded, moved?.Status?.Phase);
            Assert.Equal("node-b", moved!.Status!.TargetNode);
            var frozen = cluster.Node("node-a").LoggedTicks("default", "counter", "main")[^1].Tick;
            Assert.True(frozen >= before[^1].Tick);
            Sandbox.AssertConsecutive(await Sandbox.WaitForTicksAsync(cluster, moved.Status.ReplacementPod!, "main", 3, frozen), frozen + 1);
        }
        finally
        {
            foreach (var node in cluster.Nodes)
            {
                foreach (var (key, running) in node.Kubelet.Running.Where(r => r.Key.StartsWith(Namespace + "/", StringComparison.Ordinal)))
                {
                    foreach (var container in running.ContainerIds.Keys)
                    {
                        output.WriteLine($"--- {key} {container} on {node.Name} (last lines)\n" + string.Join("\n", running.LogLines(container).TakeLast(25)));
                    }
                }
            }
        }
    }

    /// <summary>The real user of each process running the operator's program from its image (/app/migrate-operator).</summary>
    private static List<string> OperatorProcessUsers() =>
        [.. Directory.EnumerateDirectories("/proc")
            .Where(d => int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out _))
            .Select(d =>
            {
                try
                {
                    return File.ReadAllText(Path.Combine(d, "cmdline")).StartsWith("/app/migrate-operator\0", StringComparison.Ordinal)
                        ? File.ReadAllLines(Path.Combine(d, "status")).First(l => l.StartsWith("Uid:", StringComparison.Ordinal)).Split('\t')[1]
                        : null;
                }
                catch (IOException)
                {
                    return null; // gone meanwhile
                }
            })
            .Where(u => u is not null)
            .Select(u => u!)];

    /// <summary>The MigrationRequest the eviction started for <paramref name="pod"/>.</summary>
    private static async Task<string> WaitForRequestOfAsync(SandboxCluster cluster, string pod)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            var raw = await cluster.Client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
            if (KubernetesJson.Deserialize<MigrationRequestList>(((JsonElement)raw).GetRawText()).Items.FirstOrDefault(r => r.Spec.PodName == pod) is { } request)
            {
                return request.Metadata.Name;
            }

            await Task.Delay(200);
        }

        throw new TimeoutException($"no MigrationRequest for pod {pod} within 30 s of its eviction");
    }
}

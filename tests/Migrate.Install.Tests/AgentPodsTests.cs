using k8s;
using k8s.Models;
using Migrate.Api;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Install.Tests;

/// <summary>
/// The node agent as deploy/ runs it: the DaemonSet's pods, from the image make images built,
/// privileged in the node's PID namespace with the hostPath volumes, service account token and
/// environment the manifest gives them, on a sandbox installed from deploy/ with RBAC enforced.
/// A pod migrates between two nodes through these agents with its state.
/// </summary>
[Collection(ImageBuild.Name)]
public sealed class AgentPodsTests(BuiltImages built, ITestOutputHelper output)
{
    [Fact]
    public async Task The_daemonsets_agents_from_the_built_image_migrate_a_pod_with_its_state()
    {
        built.AssertBuilt();
        await using var cluster = await SandboxCluster.StartAsync(new SandboxOptions { AsInstalled = true, AgentsAsPods = true }, output.WriteLine);
        try
        {
            // one agent pod per node, made by the DaemonSet from the image built here, announcing its pod's address
            var daemonSet = await cluster.Client.AppsV1.ReadNamespacedDaemonSetAsync("podmig-agent", SandboxOptions.InstallNamespace);
            var image = daemonSet.Spec.Template.Spec.Containers[0].Image;
            var pods = (await cluster.Client.CoreV1.ListNamespacedPodAsync(SandboxOptions.InstallNamespace, labelSelector: "app.kubernetes.io/name=podmig-agent")).Items;
            Assert.Equal(cluster.Nodes.Select(n => n.Name).Order(StringComparer.Ordinal), pods.Select(p => p.Spec.NodeName).Order(StringComparer.Ordinal));
            foreach (var node in cluster.Nodes)
            {
                var pod = pods.Single(p => p.Spec.NodeName == node.Name);
                Assert.Equal("DaemonSet", pod.Metadata.OwnerReferences.Single().Kind);
                Assert.Equal(image, pod.Status.ContainerStatuses.Single().Image);
                Assert.Equal($"{pod.Status.PodIP}:7070", (await cluster.Client.CoreV1.ReadNodeAsync(node.Name)).Metadata.Annotations[Annotations.AgentEndpoint]);
                // the agent's own process runs the image's program, in the node's PID namespace (hostPID), and only there
                var running = node.Kubelet.Running[$"{SandboxOptions.InstallNamespace}/{pod.Metadata.Name}"];
                var log = string.Join("\n", running.LogLines("agent"));
                output.WriteLine($"{node.Name}: agent pod {pod.Metadata.Name} at {pod.Status.PodIP}; first lines:\n" + string.Join("\n", running.LogLines("agent").Take(5)));
                Assert.DoesNotContain("Unhandled exception", log, StringComparison.Ordinal);
            }

            var status = (await cluster.Client.AppsV1.ReadNamespacedDaemonSetAsync("podmig-agent", SandboxOptions.InstallNamespace)).Status;
            Assert.Equal((2, 2), (status.DesiredNumberScheduled, status.CurrentNumberScheduled));

            // a counter moves from node-a to node-b through them, every tick once
            await Sandbox.RunCounterAsync(cluster, "counter", "node-a", 64);
            var before = await Sandbox.WaitForTicksAsync(cluster, "counter", "main", 3);
            await Sandbox.ApplyRequestAsync(cluster, "move-counter", "counter", "Cold", "node-b");
            var moved = await Sandbox.WaitForFinalAsync(cluster, "move-counter");
            output.WriteLine($"move-counter: {moved?.Status?.Phase} {moved?.Status?.Reason} {moved?.Status?.Message}; downtime {moved?.Status?.DowntimeMillis} ms");
            Assert.Equal(MigrationPhases.Succeeded, moved?.Status?.Phase);
            var frozen = cluster.Node("node-a").LoggedTicks("default", "counter", "main")[^1].Tick;
            Assert.True(frozen >= before[^1].Tick);
            Sandbox.AssertConsecutive(await Sandbox.WaitForTicksAsync(cluster, moved!.Status!.ReplacementPod!, "main", 3, frozen), frozen + 1);
        }
        finally
        {
            foreach (var node in cluster.Nodes.Where(n => n.AgentPod is not null))
            {
                var key = node.AgentPod!;
                if (node.Kubelet.Running.TryGetValue(key, out var running))
                {
                    output.WriteLine($"--- {key} on {node.Name} (last lines)\n" + string.Join("\n", running.LogLines("agent").TakeLast(40)));
                }
            }
        }
    }
}

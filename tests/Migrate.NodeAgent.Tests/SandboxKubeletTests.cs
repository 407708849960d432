using k8s;
using k8s.Models;
using Migrate.Cri.V1;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The sandbox's emulated kubelet: pods of the API emulator run on a real containerd node and report back.</summary>
[Collection(RealNodes.Name)]
public sealed class SandboxKubeletTests : IAsyncLifetime
{
    private readonly EmulatorFixture _cluster = new();
    private ContainerdNode _node = null!;
    private SandboxKubelet _kubelet = null!;

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        _node = await ContainerdNode.StartAsync("kubelet", RepositoryLayout.RestoreRuntime);
        TestImages.ImportInto(_node);
        _kubelet = await SandboxKubelet.StartAsync(_cluster.Client, _node, "node-a");
    }

    public async Task DisposeAsync()
    {
        await _kubelet.DisposeAsync();
        await _node.DisposeAsync();
        await _cluster.DisposeAsync();
    }

    [Fact]
    public async Task A_pod_bound_to_the_node_runs_on_containerd_reports_Running_and_goes_when_deleted()
    {
        await _cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "counter", Labels = new Dictionary<string, string> { ["app"] = "counter" } },
            Spec = new V1PodSpec
            {
                NodeName = "node-a",
                Volumes = [new V1Volume { Name = "scratch", EmptyDir = new V1EmptyDirVolumeSource() }],
                Containers = [new V1Container
                {
                    Name = "main",
                    Image = TestImages.Memcounter,
                    Command = ["/bin/memcounter"],
                    Args = ["--mib", "2", "--interval-ms", "50", "--log-file", "/scratch/ticks"],
                    VolumeMounts = [new V1VolumeMount { Name = "scratch", MountPath = "/scratch" }],
                }],
            },
        }, "default");

        (await _cluster.KubectlAsync("wait", "pod/counter", "--for=condition=Ready", "--timeout=60s")).Succeeded();
        var pod = await _cluster.Client.CoreV1.ReadNamespacedPodAsync("counter", "default");
        var running = _kubelet.Running["default/counter"];
        await AgentOnNode.WaitForTicksAsync(running, "main", 3);

        Assert.Equal("Running", pod.Status.Phase);
        Assert.StartsWith("10.", pod.Status.PodIP, StringComparison.Ordinal);
        Assert.Equal(pod.Metadata.Uid, running.Uid);
        Assert.True(File.Exists(Path.Combine(running.EmptyDir("scratch"), "ticks")));

        (await _cluster.KubectlAsync("delete", "pod", "counter", "--wait=true", "--timeout=60s")).Succeeded();
        var sandboxes = await _node.Cri.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest());
        Assert.Empty(sandboxes.Items);
    }

    [Fact]
    public async Task A_pod_whose_restore_fails_shows_the_runtimes_reason_in_its_status()
    {
        await _cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "replacement", Annotations = new Dictionary<string, string> { [Annotations.RestoreFrom] = "m-never-staged" } },
            Spec = new V1PodSpec
            {
                NodeName = "node-a",
                RuntimeClassName = ContainerdNode.RestoreHandler,
                Containers = [new V1Container { Name = "main", Image = TestImages.Memcounter, Command = ["/bin/memcounter"] }],
            },
        }, "default");

        // while its containers start the pod shows ContainerCreating (as a kubelet's does); then the runtime's error
        V1ContainerStateWaiting? waiting = null;
        for (int i = 0; i < 100 && waiting?.Reason is null or "ContainerCreating"; i++)
        {
            await Task.Delay(100);
            var pod = await _cluster.Client.CoreV1.ReadNamespacedPodAsync("replacement", "default");
            waiting = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Waiting;
        }

        Assert.NotNull(waiting);
        Assert.Equal("RunContainerError", waiting.Reason);
        Assert.Contains("images of migration m-never-staged are not staged on this node", waiting.Message, StringComparison.Ordinal);
    }
}

using System.Net;
using k8s;
using k8s.Models;
using Migrate.Api;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// Two containerd 2.1 nodes and a real OCI registry: the container runtimes' own checkpoint and
/// restore (CRI CheckpointContainer, a container created from a checkpoint image), the pods'
/// images pulled from the registry as a kubelet pulls them.
/// </summary>
public sealed class CriPathFixture : IAsyncLifetime
{
    public SandboxCluster Cluster { get; private set; } = null!;

    /// <summary>The counter image as the registry serves it.</summary>
    public string CounterImage { get; private set; } = "";

    public async Task InitializeAsync()
    {
        Cluster = await SandboxCluster.StartAsync(new SandboxOptions { Containerd = "2.1", Registry = true });
        CounterImage = Cluster.Registry!.Host + "/podmig/memcounter:1";
        OciRegistryServer.Push(Cluster.Node("node-a").Containerd, TestImages.Memcounter, CounterImage);
    }

    public async Task DisposeAsync() => await Cluster.DisposeAsync();
}

/// <summary>
/// checkpointPath CRI: the pod is frozen on its node, its runtime checkpoints each container, the
/// archive is published as a checkpoint image, and the replacement is created from that image on
/// the other node, where containerd restores it. The counter continues with no tick lost or repeated;
/// the images are deleted afterwards. What the path cannot carry is refused before anything freezes.
/// </summary>
public sealed class CriPathTests(CriPathFixture fixture, ITestOutputHelper output) : IClassFixture<CriPathFixture>
{
    private SandboxCluster Cluster => fixture.Cluster;

    [Fact]
    public async Task A_counter_moves_through_containerd_2_1s_own_checkpoint_and_restore_with_its_state()
    {
        await RunCounterAsync("cri-counter", volume: false);
        var before = await Sandbox.WaitForTicksAsync(Cluster, "cri-counter", "main", 10);
        // no mode: Auto, which on this path is Cold
        await ApplyAsync("move-cri", "cri-counter", null);
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-cri"))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; path {status.CheckpointPath}, downtime {status.DowntimeMillis} ms, {status.ImageBytes} bytes");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(CheckpointPaths.Cri, status.CheckpointPath);
        Assert.Equal(MigrationModes.Cold, status.Mode);
        Assert.Equal(ModeReasons.CriPath, status.Condition(ConditionTypes.ModeChosen)?.Reason);
        var image = Assert.Single(status.CheckpointImages!);
        Assert.StartsWith(Cluster.CheckpointRegistry + "/default/cri-counter@sha256:", image, StringComparison.Ordinal);

        // the replacement was created from the checkpoint image, under the source's runtime class (none), not podmig's
        var replacement = await Cluster.Client.CoreV1.ReadNamespacedPodAsync(status.ReplacementPod!, "default");
        Assert.Equal("node-b", replacement.Spec.NodeName);
        Assert.Equal(image, replacement.Spec.Containers[0].Image);
        Assert.Null(replacement.Spec.RuntimeClassName);

        // state continued: the first tick after the source's last, then every one
        var sourceTicks = Cluster.Node("node-a").LoggedTicks("default", "cri-counter", "main");
        long last = sourceTicks[^1].Tick;
        var moved = await Sandbox.WaitForTicksAsync(Cluster, status.ReplacementPod!, "main", 8, after: last);
        var after = moved.Where(t => t.Tick > last).ToList();
        Sandbox.AssertConsecutive(after, last + 1);
        Assert.Contains(after, t => t.VerifiedOk);
        var pause = MemcounterTick.PauseMillis(sourceTicks, after);
        output.WriteLine($"the counter's own pause: {pause:0} ms, status.downtimeMillis {status.DowntimeMillis} ms (ticks {before[0].Tick}..{last} on node-a, {after[0].Tick}.. on node-b)");
        Assert.NotNull(pause);

        // the source is gone and the checkpoint image with it
        Assert.DoesNotContain(await Sandbox.PodsAsync(Cluster), p => p.Metadata.Name == "cri-counter");
        var repository = image[(Cluster.Registry!.Host.Length + 1)..image.IndexOf('@', StringComparison.Ordinal)];
        var digest = image[(image.IndexOf('@', StringComparison.Ordinal) + 1)..];
        await WaitForAsync(async () => await ManifestStatusAsync(repository, digest) == HttpStatusCode.NotFound, "the checkpoint image to be deleted from the registry");
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
        (await Cluster.Api.KubectlAsync("delete", "pod", status.ReplacementPod!, "--wait=true")).Succeeded();
    }

    [Fact]
    public async Task The_CRI_path_refuses_pre_copy_at_the_API_and_a_pod_whose_emptyDir_it_cannot_carry_before_freezing_it()
    {
        // mode PreCopy is refused by the API server, naming the fix
        var refused = await Cluster.Api.KubectlInAsync(Request("cri-precopy", "anything", "PreCopy"), "apply", "-f", "-");
        output.WriteLine(refused.Error);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("checkpointPath CRI takes one checkpoint while the pod is frozen", refused.Error, StringComparison.Ordinal);

        // an emptyDir: the runtime's checkpoint would leave it behind, so the handoff is refused and the pod runs on, never frozen
        await RunCounterAsync("cri-volume", volume: true);
        await ApplyAsync("move-cri-volume", "cri-volume", "Cold");
        var status = (await Sandbox.WaitForFinalAsync(Cluster, "move-cri-volume"))!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}");
        Assert.Equal(MigrationPhases.RolledBack, status.Phase);
        Assert.Contains("emptyDir volume scratch would be lost", status.Message, StringComparison.Ordinal);
        Assert.False(status.Is(ConditionTypes.Frozen));
        long at = (await Sandbox.TicksAsync(Cluster, "cri-volume"))[^1].Tick;
        var ticks = await Sandbox.WaitForTicksAsync(Cluster, "cri-volume", "main", 3, after: at);
        Sandbox.AssertConsecutive(ticks, ticks[0].Tick);
        (await Cluster.Api.KubectlAsync("delete", "pod", "cri-volume", "--wait=true")).Succeeded();
        await Sandbox.AssertNoImagesLeftAsync(Cluster);
    }

    private async Task RunCounterAsync(string name, bool volume)
    {
        var counter = Sandbox.Counter(16, []);
        counter.Image = fixture.CounterImage;
        if (volume)
        {
            counter.VolumeMounts = [new V1VolumeMount { Name = "scratch", MountPath = "/scratch" }];
        }

        await Cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = name } },
            Spec = new V1PodSpec
            {
                NodeName = "node-a",
                Containers = [counter],
                Volumes = volume ? [new V1Volume { Name = "scratch", EmptyDir = new V1EmptyDirVolumeSource() }] : null,
            },
        }, "default");
        await Cluster.WaitForPodRunningAsync(name);
        await Sandbox.WaitForTicksAsync(Cluster, name, "main", 5);
    }

    private async Task ApplyAsync(string name, string pod, string? mode) =>
        (await Cluster.Api.KubectlInAsync(Request(name, pod, mode), "apply", "-f", "-")).Succeeded();

    private static string Request(string name, string pod, string? mode) => $"""
        apiVersion: podmigration.io/v1alpha1
        kind: MigrationRequest
        metadata: {"{"}name: {name}, namespace: default{"}"}
        spec:
          podName: {pod}
          targetNode: node-b
          checkpointPath: CRI{(mode is null ? "" : "\n  mode: " + mode)}
        """;

    private async Task<HttpStatusCode> ManifestStatusAsync(string repository, string digest)
    {
        using var http = new HttpClient();
        using var head = new HttpRequestMessage(HttpMethod.Head, $"http://{Cluster.Registry!.Host}/v2/{repository}/manifests/{digest}");
        head.Headers.Accept.ParseAdd("application/vnd.oci.image.manifest.v1+json");
        using var response = await http.SendAsync(head);
        return response.StatusCode;
    }

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("waited 30 s for " + what);
            }

            await Task.Delay(200);
        }
    }
}

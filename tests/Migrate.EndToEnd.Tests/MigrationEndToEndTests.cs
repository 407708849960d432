using System.Collections.Concurrent;
using Grpc.Net.Client;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Agent.Contracts.Security;
using Migrate.Operator.Api;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// The whole product on one machine: the API emulator as control plane, two containerd nodes with
/// the podmig runtime handler, the emulated kubelet on each, the real node agents (mutual TLS,
/// operator-signed tokens) and the real operator. A running counter pod moves from node-a to
/// node-b and keeps counting.
/// </summary>
public sealed class MigrationEndToEndTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private readonly EmulatorFixture _cluster = new();
    private readonly TestPki _pki = new();
    private readonly List<IAsyncDisposable> _cleanup = [];
    private readonly ConcurrentDictionary<string, GrpcChannel> _channels = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ContainerdNode> _nodes = [];
    private AgentTls _operatorTls = null!;

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        await _cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
        foreach (var name in new[] { "node-a", "node-b" })
        {
            var node = await ContainerdNode.StartAsync(name, RepositoryLayout.RestoreRuntime);
            _cleanup.Add(node);
            _nodes[name] = node;
            TestImages.ImportInto(node);
            var agent = await TlsAgent.StartAsync(_pki, name, node.Root, $"--Agent:CriSocket={node.SocketPath}");
            _cleanup.Add(agent);
            _cleanup.Add(await SandboxKubelet.StartAsync(_cluster.Client, node, name,
                new Dictionary<string, string> { [AnnotatedAgentDirectory.EndpointAnnotation] = agent.Address }));
        }

        var identity = _pki.Issue("operator");
        _operatorTls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, _pki.AuthorityFile);
    }

    public async Task DisposeAsync()
    {
        foreach (var channel in _channels.Values)
        {
            channel.Dispose();
        }

        _operatorTls.Dispose();
        foreach (var item in Enumerable.Reverse(_cleanup))
        {
            await item.DisposeAsync();
        }

        await _cluster.DisposeAsync();
    }

    public void Dispose() => _pki.Dispose();

    [Fact]
    public async Task A_running_counter_moves_to_the_other_node_and_keeps_counting()
    {
        await _cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "counter", Labels = new Dictionary<string, string> { ["app"] = "counter" } },
            Spec = new V1PodSpec
            {
                NodeName = "node-a",
                Containers = [new V1Container { Name = "main", Image = TestImages.Memcounter, Command = ["/bin/memcounter"], Args = ["--mib", "32", "--interval-ms", "50", "--verify-every", "5", "--dirty-percent-per-second", "1"] }],
            },
        }, "default");
        (await _cluster.KubectlAsync("wait", "pod/counter", "--for=condition=Ready", "--timeout=60s")).Succeeded();
        var sourceLog = Directory.GetFiles(_nodes["node-a"].PodLogDirectory, "0.log", SearchOption.AllDirectories).Single();
        await WaitForTicksAsync(sourceLog, 5);

        (await _cluster.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {name: move-counter, namespace: default}
            spec: {podName: counter, mode: PreCopy}
            """, "apply", "-f", "-")).Succeeded();
        var agents = new AnnotatedAgentDirectory(endpoint => _channels.GetOrAdd(endpoint,
            e => GrpcChannel.ForAddress("https://" + e, new GrpcChannelOptions { HttpHandler = _operatorTls.CreateHandler(expectedPeer: null) })));
        using var controller = new MigrationController(_cluster.Client, agents, new AlwaysLeader(), NullLogger<MigrationController>.Instance, TimeProvider.System,
            new MigrationExecutor(_cluster.Client, agents, _pki.Mint, TimeProvider.System, new EventRecorder(_cluster.Client, TimeProvider.System)));
        MigrationRequest? request = null;
        for (int pass = 0; pass < 100 && !MigrationPhases.IsFinal(request?.Status?.Phase); pass++)
        {
            await controller.ReconcileAllAsync(CancellationToken.None);
            request = await GetAsync("move-counter");
        }

        var status = request!.Status!;
        output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, {status.BytesTransferred} bytes, {status.PreCopyRounds} rounds");
        Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");
        var frozen = Memcounter.Parse(ReadShared(sourceLog).Split('\n').Select(Content))[^1];
        var targetLog = Directory.GetFiles(_nodes["node-b"].PodLogDirectory, "0.log", SearchOption.AllDirectories).Single();
        var ticks = await WaitForTicksAsync(targetLog, 8);

        Assert.Equal("node-b", status.TargetNode);
        Assert.Equal(frozen.Tick + 1, ticks[0].Tick);
        Assert.Contains(ticks, t => t.VerifiedOk);
        Assert.DoesNotContain(ticks, t => t.Verified == "BAD");
        var pods = await _cluster.Client.CoreV1.ListNamespacedPodAsync("default");
        var replacement = Assert.Single(pods.Items);
        Assert.Equal(status.ReplacementPod, replacement.Metadata.Name);
        Assert.Equal("node-b", replacement.Spec.NodeName);
        Assert.Equal("Running", replacement.Status.Phase);
        Figures.Record(nameof(MigrationEndToEndTests), "32MiB pre-copy downtime ms", status.DowntimeMillis ?? -1, "ms");
    }

    private async Task<MigrationRequest> GetAsync(string name)
    {
        var raw = await _cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
        return KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
    }

    private static string Content(string line) => line.Split(' ', 4) is { Length: 4 } parts ? parts[3] : line;

    private static async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(string log, int count)
    {
        for (int i = 0; i < 300; i++)
        {
            var ticks = Memcounter.Parse(ReadShared(log).Split('\n').Select(Content));
            if (ticks.Count >= count)
            {
                return ticks;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"{log}: {ReadShared(log)}");
    }

    private static string ReadShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}

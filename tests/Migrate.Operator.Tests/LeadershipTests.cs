using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>Agents that count how often a controller asked them.</summary>
public sealed class CountingAgents : IAgentDirectory
{
    private int _calls;

    public int Calls => _calls;

    public Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node node, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _calls);
        return Task.FromResult<GetCapabilitiesResponse?>(FakeAgents.Capabilities());
    }
}

/// <summary>Two replicas on one Lease: only the leader acts; when it goes, the other takes over. And the real host, wired up.</summary>
public sealed class LeadershipTests : IAsyncLifetime
{
    private readonly EmulatorFixture _cluster = new();

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        await _cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
        foreach (var name in new[] { "node-a", "node-b" })
        {
            var node = await _cluster.Client.CoreV1.CreateNodeAsync(new V1Node { Metadata = new V1ObjectMeta { Name = name } });
            node.Status = new V1NodeStatus
            {
                Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("4"), ["memory"] = new("8Gi") },
                Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
            };
            await _cluster.Client.CoreV1.ReplaceNodeStatusAsync(node, name);
        }

        foreach (var name in new[] { "db-0", "db-1" })
        {
            var pod = await _cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
            {
                Metadata = new V1ObjectMeta { Name = name },
                Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "memcounter" }] },
            }, "default");
            pod.Status = new V1PodStatus { Phase = "Running" };
            await _cluster.Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, name, "default");
        }
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task Only_the_lease_holder_reconciles_and_the_other_replica_takes_over_when_it_stops()
    {
        var (gateA, operatorA, agentsA, stopA) = await StartReplicaAsync("replica-a");
        await WaitAsync(() => gateA.IsLeader, "replica-a never led");
        var (gateB, operatorB, agentsB, stopB) = await StartReplicaAsync("replica-b");
        try
        {
            await CreateAsync("first");
            await WaitForPhaseAsync("first");
            await Task.Delay(1000);

            Assert.True(gateA.IsLeader);
            Assert.False(gateB.IsLeader);
            Assert.True(agentsA.Calls > 0);
            Assert.Equal(0, agentsB.Calls);

            await operatorA.DisposeAsync();
            await gateA.StopAsync(CancellationToken.None);
            await WaitAsync(() => gateB.IsLeader, "replica-b did not take over");
            await CreateAsync("second", "db-1");
            await WaitForPhaseAsync("second");

            Assert.True(agentsB.Calls > 0);
        }
        finally
        {
            await stopA.CancelAsync();
            await stopB.CancelAsync();
            await operatorA.DisposeAsync();
            await operatorB.DisposeAsync();
            await gateB.StopAsync(CancellationToken.None);
            gateA.Dispose();
            gateB.Dispose();
        }
    }

    [Fact]
    public async Task The_operator_host_elects_itself_and_admits_requests()
    {
        int port = Ports.Free();
        var host = OperatorHost.Build([$"--Operator:Kubeconfig={_cluster.Emulator.KubeconfigPath}", "--Operator:LeaseNamespace=default",
            "--Operator:Identity=host-test", "--urls", $"http://127.0.0.1:{port}", "--Logging:LogLevel:Default=Warning"]);
        await host.StartAsync();
        try
        {
            await CreateAsync("via-host");
            var status = await WaitForPhaseAsync("via-host");
            using var http = new HttpClient();
            var health = await http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/healthz"));
            var lease = await _cluster.Client.CoordinationV1.ReadNamespacedLeaseAsync("podmig-operator", "default");

            // the nodes carry no agent endpoint annotation: nothing could checkpoint the pod
            Assert.Equal(MigrationPhases.Failed, status.Phase);
            Assert.Equal("SourceHasNoAgent", status.Reason);
            Assert.Equal("Healthy", health);
            Assert.Equal("host-test", lease.Spec.HolderIdentity);
        }
        finally
        {
            await host.StopAsync();
            await host.DisposeAsync();
        }
    }

    private async Task<(LeaseLeaderGate Gate, OperatorUnderTest Operator, CountingAgents Agents, CancellationTokenSource Stop)> StartReplicaAsync(string identity)
    {
        var client = EmulatorFixture.ClientFor(_cluster.Emulator.KubeconfigPath);
        var gate = new LeaseLeaderGate(client, "default", "podmig-operator", identity, NullLogger<LeaseLeaderGate>.Instance)
        {
            LeaseDuration = TimeSpan.FromSeconds(3),
            RenewDeadline = TimeSpan.FromSeconds(2),
            RetryPeriod = TimeSpan.FromMilliseconds(300),
        };
        var agents = new CountingAgents();
        var stop = new CancellationTokenSource();
        await gate.StartAsync(stop.Token);
        var running = await OperatorUnderTest.StartAsync(client, agents, new MigrationPolicy { MaxConcurrentMigrations = 0 }, gate);
        return (gate, running, agents, stop);
    }

    private async Task CreateAsync(string name, string pod = "db-0") =>
        await _cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(
            new MigrationRequest { Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" }, Spec = new MigrationRequestSpec { PodName = pod, TargetNode = "node-b" } },
            MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);

    private async Task<MigrationRequestStatus> WaitForPhaseAsync(string name)
    {
        for (int i = 0; i < 200; i++)
        {
            var raw = await _cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
            var request = KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
            if (request.Status?.Phase is { } phase && phase != "")
            {
                return request.Status;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"MigrationRequest {name} got no phase");
    }

    private static async Task WaitAsync(Func<bool> condition, string failure)
    {
        for (int i = 0; i < 150 && !condition(); i++)
        {
            await Task.Delay(100);
        }

        Assert.True(condition(), failure);
    }
}

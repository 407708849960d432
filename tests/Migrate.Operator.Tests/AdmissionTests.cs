using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>Agents as the tests want them: capabilities per node, or none.</summary>
public sealed class FakeAgents : IAgentDirectory
{
    public Dictionary<string, GetCapabilitiesResponse?> Nodes { get; } = [];

    public static GetCapabilitiesResponse Capabilities(string criu = "4.1.1") => FakeCapabilities.Of(criu);

    public Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node node, CancellationToken cancellationToken) =>
        Task.FromResult(Nodes.GetValueOrDefault(node.Metadata.Name));
}

/// <summary>
/// New MigrationRequests against the API emulator: bad ones fail at once with a reason and a
/// sentence, touching nothing; good ones are accepted with their source and (chosen) target.
/// </summary>
public sealed class AdmissionTests : IAsyncLifetime, IDisposable
{
    private readonly EmulatorFixture _cluster = new();
    private readonly FakeAgents _agents = new();
    private OperatorUnderTest? _operator;

    private k8s.Kubernetes Client => _cluster.Client;

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        await _cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
        await NodeAsync("node-a", agent: FakeAgents.Capabilities());
        await NodeAsync("node-b", agent: FakeAgents.Capabilities());
        await NodeAsync("node-c", ready: false, agent: FakeAgents.Capabilities());
        await NodeAsync("node-d", cordoned: true, agent: FakeAgents.Capabilities());
        await NodeAsync("node-e", agent: FakeAgents.Capabilities("3.17.1"));
        await NodeAsync("node-f", agent: null);
        await PodAsync("db-0", "node-a", "Running");
        await PodAsync("db-1", "node-a", "Running");
        await PodAsync("job-0", "node-a", "Pending");
        await PodAsync("web-0", "node-a", "Running", new V1OwnerReference { ApiVersion = "apps/v1", Kind = "StatefulSet", Name = "web", Uid = Guid.NewGuid().ToString(), Controller = true });
        await PodAsync("logs-x7k2p", "node-a", "Running", new V1OwnerReference { ApiVersion = "apps/v1", Kind = "DaemonSet", Name = "logs", Uid = Guid.NewGuid().ToString(), Controller = true });
    }

    public async Task DisposeAsync()
    {
        if (_operator is not null)
        {
            await _operator.DisposeAsync();
        }

        await _cluster.DisposeAsync();
    }

    public void Dispose()
    {
    }

    /// <summary>The controller, with no slot for a migration to start in: admitted requests stay Pending.</summary>
    private async Task StartOperatorAsync() =>
        _operator ??= await OperatorUnderTest.StartAsync(Client, _agents, new MigrationPolicy { MaxConcurrentMigrations = 0, PollInterval = TimeSpan.FromMilliseconds(200) });

    [Theory]
    [InlineData("ghost", null, "PodNotFound", "Pod default/ghost does not exist.")]
    [InlineData("job-0", null, "PodNotRunning", "Pod default/job-0 is Pending; only a Running pod can be moved.")]
    [InlineData("web-0", null, "PodOwnedByStatefulSet", "Pod default/web-0 belongs to StatefulSet web, whose pods keep their names; label its pod template podmigration.io/keep-name=true (with the operator's pod webhook installed) to move it.")]
    [InlineData("logs-x7k2p", null, "PodOwnedByDaemonSet", "Pod default/logs-x7k2p belongs to DaemonSet logs, which runs one pod on each node; it cannot move to another node.")]
    [InlineData("db-0", "node-x", "TargetNotFound", "Node node-x does not exist.")]
    [InlineData("db-0", "node-a", "TargetIsSource", "Node node-a is the node pod db-0 already runs on.")]
    [InlineData("db-0", "node-c", "TargetNotReady", "Node node-c is not Ready.")]
    [InlineData("db-0", "node-d", "TargetUnschedulable", "Node node-d is cordoned (unschedulable).")]
    [InlineData("db-0", "node-e", "TargetIncompatible", "Node node-e has CRIU 3.17.1, older than the source's 4.1.1.")]
    [InlineData("db-0", "node-f", "TargetHasNoAgent", "Node node-f runs no pod-migration agent.")]
    public async Task A_bad_request_fails_at_once_with_its_reason_and_the_pod_is_untouched(string pod, string? target, string reason, string message)
    {
        var before = await PodVersionsAsync();
        await RequestAsync("bad", pod, target);

        await PassesAsync();
        var status = (await GetAsync("bad")).Status!;

        Assert.Equal(MigrationPhases.Failed, status.Phase);
        Assert.Equal(reason, status.Reason);
        Assert.Equal(message, status.Message);
        Assert.NotNull(status.CompletionTime);
        var ready = Assert.Single(status.Conditions);
        Assert.Equal(("Ready", "False", reason), (ready.Type, ready.Status, ready.Reason));
        Assert.Equal(1, ready.ObservedGeneration);
        Assert.Equal(before, await PodVersionsAsync());
    }

    [Fact]
    public async Task Without_a_target_the_only_eligible_node_is_chosen()
    {
        await RequestAsync("move-db", "db-0", null);

        await PassesAsync("move-db");
        var status = (await GetAsync("move-db")).Status!;

        Assert.Equal(MigrationPhases.Pending, status.Phase);
        Assert.Equal("node-a", status.SourceNode);
        Assert.Equal("node-b", status.TargetNode);
        Assert.Equal(("True", "Validated"), (status.Condition(ConditionTypes.Validated)!.Status, status.Condition(ConditionTypes.Validated)!.Reason));
    }

    [Fact]
    public async Task A_second_request_for_a_pod_already_moving_fails_and_the_first_goes_on()
    {
        await RequestAsync("first", "db-1", "node-b");
        await Task.Delay(1100); // creation timestamps have a resolution of one second
        await RequestAsync("second", "db-1", "node-b");

        await PassesAsync("first");
        await PassesAsync("second");

        Assert.Equal(MigrationPhases.Pending, (await GetAsync("first")).Status!.Phase);
        var second = (await GetAsync("second")).Status!;
        Assert.Equal(MigrationPhases.Failed, second.Phase);
        Assert.Equal("PodAlreadyMigrating", second.Reason);
        Assert.Equal("Pod default/db-1 is already being moved by MigrationRequest first.", second.Message);
    }

    [Fact]
    public async Task The_running_controller_answers_a_kubectl_apply_and_kubectl_shows_the_outcome()
    {
        await StartOperatorAsync();
        (await _cluster.KubectlInAsync("""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {name: applied, namespace: default}
            spec: {podName: ghost}
            """, "apply", "-f", "-")).Succeeded();

        var waited = await _cluster.KubectlAsync("wait", "mr/applied", "--for=jsonpath={.status.phase}=Failed", "--timeout=30s");
        var reason = await _cluster.KubectlAsync("get", "mr", "applied", "-o", "jsonpath={.status.reason}");

        waited.Succeeded();
        Assert.Equal("PodNotFound", reason.Succeeded().Output);
    }

    /// <summary>The running controller puts the finalizer on a new request, then admits it: waits until it has a phase.</summary>
    private async Task PassesAsync(string name = "bad")
    {
        await StartOperatorAsync();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while ((await GetAsync(name)).Status?.Phase is null)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"{name} was not admitted within 20 s");
            await Task.Delay(50);
        }
    }

    private async Task NodeAsync(string name, bool ready = true, bool cordoned = false, GetCapabilitiesResponse? agent = null)
    {
        _agents.Nodes[name] = agent;
        var node = await Client.CoreV1.CreateNodeAsync(new V1Node
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["kubernetes.io/hostname"] = name } },
            Spec = new V1NodeSpec { Unschedulable = cordoned },
        });
        node.Status = new V1NodeStatus
        {
            Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("4"), ["memory"] = new("8Gi"), ["pods"] = new("110") },
            Conditions = [new V1NodeCondition { Type = "Ready", Status = ready ? "True" : "False", Reason = ready ? "KubeletReady" : "KubeletNotReady" }],
        };
        await Client.CoreV1.ReplaceNodeStatusAsync(node, name);
    }

    private async Task PodAsync(string name, string node, string phase, V1OwnerReference? owner = null)
    {
        var pod = await Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = name }, OwnerReferences = owner is null ? null : [owner] },
            Spec = new V1PodSpec
            {
                NodeName = node,
                Containers = [new V1Container { Name = "main", Image = "docker.io/podmig/memcounter:1", Resources = new V1ResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("500m"), ["memory"] = new("512Mi") } } }],
            },
        }, "default");
        pod.Status = new V1PodStatus { Phase = phase };
        await Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, name, "default");
    }

    private async Task RequestAsync(string name, string pod, string? target)
    {
        var request = new MigrationRequest
        {
            Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" },
            Spec = new MigrationRequestSpec { PodName = pod, TargetNode = target },
        };
        await Client.CustomObjects.CreateNamespacedCustomObjectAsync(request, MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
    }

    private async Task<MigrationRequest> GetAsync(string name)
    {
        var raw = await Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
        return KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
    }

    private async Task<string> PodVersionsAsync()
    {
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        return string.Join(",", pods.Items.OrderBy(p => p.Metadata.Name, StringComparer.Ordinal).Select(p => $"{p.Metadata.Name}@{p.Metadata.ResourceVersion}"));
    }
}

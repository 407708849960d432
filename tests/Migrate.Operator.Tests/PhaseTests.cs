using System.Text.Json.Nodes;
using Grpc.Core;
using Grpc.Net.Client;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Operator.Admission;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>
/// Requests driven through their phases against the API emulator, with agents behind real gRPC
/// (fakes that record calls) and a stand-in kubelet that runs, or fails, replacement pods.
/// </summary>
public sealed class PhaseTests : IAsyncLifetime, IDisposable
{
    private static readonly string[] RequestEventReasons = ["Validated", "Checkpointing", "Transferring", "Restoring", "CuttingOver", "Migrated"];
    private readonly EmulatorFixture _cluster = new();
    private readonly Dictionary<string, FakeAgentServer> _agents = [];
    private readonly CancellationTokenSource _stop = new();
    private Task _kubelet = Task.CompletedTask;

    /// <summary>When set, the kubelet reports replacement containers as failing to start with this reason.</summary>
    private string? _failReplacementsWith;
    private string? _failReplacementsOn;

    /// <summary>While true, the kubelet leaves new pods alone (they stay Pending).</summary>
    private volatile bool _kubeletPaused;

    private Kubernetes Client => _cluster.Client;

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        await _cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
        foreach (var name in new[] { "node-a", "node-b" })
        {
            var agent = await FakeAgentServer.StartAsync(name);
            _agents[name] = agent;
            var node = await Client.CoreV1.CreateNodeAsync(new V1Node
            {
                Metadata = new V1ObjectMeta { Name = name, Annotations = new Dictionary<string, string> { [Annotations.AgentEndpoint] = agent.Endpoint } },
            });
            node.Status = new V1NodeStatus
            {
                Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("4"), ["memory"] = new("8Gi") },
                Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
            };
            await Client.CoreV1.ReplaceNodeStatusAsync(node, name);
        }

        foreach (var name in new[] { "db-0", "db-1" })
        {
            var pod = await Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
            {
                Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = "db" } },
                Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "docker.io/podmig/memcounter:1" }] },
            }, "default");
            pod.Status = new V1PodStatus { Phase = "Running" };
            await Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, name, "default");
        }
        _kubelet = RunKubeletAsync(_stop.Token);
    }

    public async Task DisposeAsync()
    {
        await _stop.CancelAsync();
        await _kubelet;
        foreach (var agent in _agents.Values)
        {
            await agent.DisposeAsync();
        }

        await _cluster.DisposeAsync();
    }

    public void Dispose() => _stop.Dispose();

    private FakeAgentState Source => _agents["node-a"].State;

    private FakeAgentState Target => _agents["node-b"].State;

    [Fact]
    public async Task A_migration_goes_through_every_phase_and_the_source_is_deleted_only_after_the_replacement_runs()
    {
        var phases = new List<string>();
        var request = await CreateAsync("move-db", "PreCopy");

        var done = await DriveAsync(request, phases);

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal(["Pending", "Checkpointing", "Transferring", "Restoring", "CuttingOver", "Succeeded"], phases.Distinct());
        var id = done.Metadata.Uid;
        // the pre-copy rounds are sent before the freeze, the final dump's difference after it
        Assert.Equal(["BeginCheckpoint", "PreDump", "PreDump", "SendImages", "FinalDump", "SendImages", "Finish", "Cleanup"], Source.Names);
        Assert.Equal(["ExpectImages", "ExpectImages", "Cleanup"], Target.Names);
        Assert.Contains($"SendImages {id} node-b {_agents["node-b"].Endpoint}", Source.Calls);
        Assert.Equal(2, done.Status.PreCopyRounds);
        Assert.Equal(100_000_000, done.Status.BytesTransferred);
        Assert.Equal(50_000_000, done.Status.ImageBytes);
        Assert.True(done.Status.DowntimeMillis >= 0);
        Assert.Equal("node-b", done.Status.TargetNode);

        var replacement = await Client.CoreV1.ReadNamespacedPodAsync(done.Status.ReplacementPod, "default");
        Assert.Equal("node-b", replacement.Spec.NodeName);
        Assert.Equal("podmig", replacement.Spec.RuntimeClassName);
        Assert.Equal(id, replacement.Metadata.Annotations[Annotations.RestoreFrom]);
        Assert.Equal("db", replacement.Metadata.Labels["app"]);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.DoesNotContain(pods.Items, p => p.Metadata.Name == "db-0");

        var events = (await Client.CoreV1.ListNamespacedEventAsync("default")).Items;
        // (events created within a second have no order the API keeps)
        Assert.Equal(RequestEventReasons.Order(StringComparer.Ordinal),
            events.Where(e => e.InvolvedObject.Name == "move-db").Select(e => e.Reason).Order(StringComparer.Ordinal));
        Assert.Contains(events, e => e.InvolvedObject is { Kind: "Pod", Name: "db-0" } && e.Reason == "Migrating");
        Assert.Contains(events, e => e.InvolvedObject.Kind == "Pod" && e.InvolvedObject.Name == done.Status.ReplacementPod && e.Reason == "Migrated");
    }

    [Theory]
    [InlineData("Checkpointing")]
    [InlineData("Transferring")]
    [InlineData("Restoring")]
    public async Task An_operator_killed_in_the_middle_of_a_phase_finishes_it_exactly_once_after_restarting(string phase)
    {
        // the phase's step hangs (a slow final dump, a replacement that does not start yet) and the operator dies in it
        if (phase == "Checkpointing")
        {
            Source.Delays["FinalDump"] = TimeSpan.FromSeconds(3);
        }
        else if (phase == "Transferring")
        {
            Source.Delays["SendImages"] = TimeSpan.FromSeconds(3);
        }
        else
        {
            _kubeletPaused = true;
        }

        var request = await CreateAsync("crashy", "Cold");
        await DriveAsync(request, [], until: r => r.Status?.Phase == phase);
        await PassKilledMidwayAsync();

        // a kill is not a failure: nothing was rolled back
        Assert.Equal(phase, (await GetAsync("crashy")).Status!.Phase);

        Source.Delays.Clear();
        _kubeletPaused = false;
        var done = await DriveAsync(await GetAsync("crashy"), []);

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal(phase == "Checkpointing" ? 2 : 1, Source.Names.Count(n => n == "FinalDump"));
        Assert.Equal(phase == "Transferring" ? 2 : 1, Source.Names.Count(n => n == "SendImages"));
        Assert.Single(Source.Names, n => n == "Finish");
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal([done.Status.ReplacementPod, "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_running_transfer_shows_its_progress_in_the_status_at_most_once_a_second()
    {
        Source.Delays["SendImages"] = TimeSpan.FromSeconds(3.5);
        var request = await CreateAsync("watched", "Cold");
        var seen = new List<MigrationProgress>();
        var driving = DriveAsync(request, []);
        while (!driving.IsCompleted)
        {
            var current = (await GetAsync("watched")).Status;
            if (current?.Phase == MigrationPhases.Transferring && current.Progress is { } progress && (seen.Count == 0 || seen[^1].UpdateTime != progress.UpdateTime))
            {
                seen.Add(progress);
            }

            await Task.Delay(20);
        }

        var done = await driving;
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.InRange(seen.Count, 3, 5);
        Assert.All(seen, p => Assert.Equal((MigrationPhases.Transferring, 50_000_000L), (p.Phase, p.BytesTotal)));
        Assert.True(seen.Zip(seen.Skip(1)).All(p => p.Second.BytesSent > p.First.BytesSent), string.Join(", ", seen.Select(p => p.BytesSent)));
        Assert.True(seen.Zip(seen.Skip(1)).All(p => p.Second.UpdateTime - p.First.UpdateTime >= TimeSpan.FromSeconds(1)),
            string.Join(", ", seen.Select(p => p.UpdateTime.ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture))));
        // once staged, the last figures stay: everything sent
        Assert.Equal(50_000_000L, done.Status.Progress!.BytesSent);
    }

    [Fact]
    public async Task An_agent_unreachable_for_a_moment_is_retried_and_the_migration_succeeds()
    {
        Source.TransientFailures["FinalDump"] = 2;

        var done = await DriveAsync(await CreateAsync("bumpy", "Cold"), []);

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal(3, Source.Names.Count(n => n == "FinalDump"));
    }

    [Fact]
    public async Task Calls_to_an_agent_that_keeps_failing_are_paused_by_its_circuit_breaker()
    {
        Source.Failures["Resume"] = StatusCode.Unavailable;
        using var channels = new ChannelCache();
        var directory = new AnnotatedAgentDirectory(channels.For) { Retries = 2 };
        var agent = directory.Connect(await Client.CoreV1.ReadNodeAsync("node-a"))!.Value.Client;
        var errors = new List<RpcException>();

        for (int i = 0; i < 4; i++)
        {
            errors.Add(await Assert.ThrowsAsync<RpcException>(() => agent.ResumeAsync(new Agent.V1.MigrationRef { MigrationId = "m" }).ResponseAsync));
        }

        Assert.Equal(6, Source.Names.Count(n => n == "Resume"));
        Assert.Contains("injected", errors[0].Status.Detail, StringComparison.Ordinal);
        Assert.Contains("calls to it are paused", errors[^1].Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_phase_that_runs_out_of_time_is_rolled_back()
    {
        Source.Delays["FinalDump"] = TimeSpan.FromSeconds(5);

        var done = await DriveAsync(await CreateAsync("slow", "Cold"), [], phaseTimeout: TimeSpan.FromSeconds(1));

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("PhaseTimedOut", done.Status.Reason);
        Assert.Equal("Checkpointing took longer than 1 seconds.", done.Status.Message);
        Assert.Contains("Resume", Source.Names);
    }

    [Theory]
    [InlineData("Checkpointing", "FinalDump")]
    [InlineData("Transferring", "SendImages")]
    [InlineData("Restoring", null)]
    public async Task A_failure_before_cut_over_rolls_back_and_the_source_runs_on(string phase, string? failingCall)
    {
        if (failingCall is not null)
        {
            Source.Failures[failingCall] = StatusCode.Internal;
        }
        else
        {
            _failReplacementsWith = "RunContainerError";
        }

        var done = await DriveAsync(await CreateAsync("doomed", "Cold"), []);

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal($"{phase}Failed".Replace("RestoringFailed", "RestoreFailed", StringComparison.Ordinal), done.Status.Reason);
        Assert.Contains("Resume", Source.Names);
        Assert.Contains("Cleanup", Source.Names);
        Assert.DoesNotContain("Finish", Source.Names);
        var source = await Client.CoreV1.ReadNamespacedPodAsync("db-0", "default");
        Assert.Equal("Running", source.Status.Phase);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_ReplicaSet_pod_is_replaced_without_its_owner_counting_two_pods_until_cut_over()
    {
        var owner = new V1OwnerReference { ApiVersion = "apps/v1", Kind = "ReplicaSet", Name = "web-5d4f", Uid = Guid.NewGuid().ToString(), Controller = true, BlockOwnerDeletion = true };
        var labels = new Dictionary<string, string> { ["app"] = "web", ["pod-template-hash"] = "5d4f" };
        var pod = await Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "web-5d4f-x2", Labels = labels, OwnerReferences = [owner] },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "docker.io/podmig/memcounter:1" }] },
        }, "default");
        pod.Status = new V1PodStatus { Phase = "Running" };
        await Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, pod.Metadata.Name, "default");
        Source.Failures["Finish"] = StatusCode.Internal; // holds the migration inside cut-over for a look

        var held = await DriveAsync(await CreateAsync("move-web", "Cold", "web-5d4f-x2"), [],
            until: r => r.Status?.Phase == MigrationPhases.CuttingOver && Source.Names.Contains("Finish"));
        var restored = await Client.CoreV1.ReadNamespacedPodAsync(held.Status!.ReplacementPod, "default");
        var source = await Client.CoreV1.ReadNamespacedPodAsync("web-5d4f-x2", "default");
        var ownedBefore = await OwnedPodsAsync(owner, labels);
        Source.Failures.TryRemove("Finish", out _);
        var done = await DriveAsync(held, []);
        var replacement = await Client.CoreV1.ReadNamespacedPodAsync(done.Status!.ReplacementPod, "default");

        // until cut-over: the owner sees one pod, the source, and would remove it first if it saw two
        Assert.Equal("Running", restored.Status.Phase);
        Assert.Equal(new Dictionary<string, string> { [Labels.ReplacementOf] = "web-5d4f-x2" }, restored.Metadata.Labels);
        Assert.True(restored.Metadata.OwnerReferences is null or { Count: 0 });
        Assert.Equal(["web-5d4f-x2"], ownedBefore);
        Assert.Equal("-2147483648", source.Metadata.Annotations[Annotations.PodDeletionCost]);
        // after it: the replacement is the owner's pod, with the source's labels
        Assert.Equal(MigrationPhases.Succeeded, done.Status.Phase);
        Assert.Equal(labels, replacement.Metadata.Labels);
        var owned = Assert.Single(replacement.Metadata.OwnerReferences);
        Assert.Equal((owner.Uid, true, "ReplicaSet"), (owned.Uid, owned.Controller == true, owned.Kind));
        Assert.DoesNotContain(replacement.Metadata.Annotations.Keys, k => k.Contains("/held-", StringComparison.Ordinal));
        Assert.False(replacement.Metadata.Annotations.ContainsKey(Annotations.PodDeletionCost));
        Assert.Equal([replacement.Metadata.Name], await OwnedPodsAsync(owner, labels));
    }

    [Fact]
    public async Task A_StatefulSet_pod_that_opted_in_is_retired_before_its_namesake_replacement_is_created()
    {
        await CreateStatefulSetPodAsync();

        var done = await DriveAsync(await CreateAsync("move-web", "Cold", "web-0"), []);

        Assert.True(done.Status!.Phase == MigrationPhases.Succeeded, $"{done.Status.Phase} {done.Status.Reason}: {done.Status.Message}");
        Assert.Equal("web-0", done.Status.ReplacementPod);
        Assert.Contains(done.Status.Conditions, c => c.Type == ConditionTypes.KeepsName && c.Status == "True");
        Assert.Contains(done.Status.Conditions, c => c.Type == "SourceRetired" && c.Status == "True");
        // Finish before the replacement exists (it ends the frozen source), and once more, idempotently, at cut-over
        Assert.Equal(["BeginCheckpoint", "FinalDump", "SendImages", "Finish", "Finish", "Cleanup"], Source.Names);
        var pod = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal(("node-b", done.Metadata.Uid), (pod.Spec.NodeName, pod.Metadata.Annotations[Annotations.RestoreFrom]));
        Assert.Equal("StatefulSet", Assert.Single(pod.Metadata.OwnerReferences).Kind);
        Assert.Equal("web-0", pod.Metadata.Labels["statefulset.kubernetes.io/pod-name"]);
        Assert.Contains(Annotations.SourcePod, done.Metadata.Annotations.Keys);
    }

    [Fact]
    public async Task A_StatefulSet_pod_whose_replacement_fails_after_the_source_was_retired_is_restored_on_its_own_node()
    {
        await CreateStatefulSetPodAsync();
        _failReplacementsOn = "node-b";
        _failReplacementsWith = "RunContainerError";

        var done = await DriveAsync(await CreateAsync("move-web", "Cold", "web-0"), []);

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("RestoreFailed", done.Status.Reason);
        Assert.EndsWith("Pod web-0 was restored on node-a under its name.", done.Status.Message, StringComparison.Ordinal);
        var id = done.Metadata.Uid;
        // the checkpoint went to the source node's own agent, and the pod was restored there
        Assert.Contains($"SendImages {id} node-a {_agents["node-a"].Endpoint}", Source.Calls);
        Assert.Contains("ExpectImages", Source.Names);
        Assert.DoesNotContain("Resume", Source.Names);
        var pod = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal(("node-a", id, "Running"), (pod.Spec.NodeName, pod.Metadata.Annotations[Annotations.RestoreFrom], pod.Status.Phase));
    }

    [Fact]
    public async Task The_pod_webhook_keeps_a_moving_pods_name_for_its_replacement_only()
    {
        await CreateStatefulSetPodAsync();
        var request = await CreateAsync("move-web", "Cold", "web-0");
        var inFlight = await DriveAsync(request, [], until: r => r.Status?.Phase == MigrationPhases.Checkpointing);
        JsonObject Pod(string name, string? restoreFrom) => JsonNode.Parse(KubernetesJson.Serialize(new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                Annotations = restoreFrom is null ? null : new Dictionary<string, string> { [Annotations.RestoreFrom] = restoreFrom },
            },
        }))!.AsObject();

        var stranger = await PodNameGuard.RefusalAsync(Client, "default", Pod("web-0", null), CancellationToken.None);
        var forged = await PodNameGuard.RefusalAsync(Client, "default", Pod("web-0", "another-migration"), CancellationToken.None);
        var replacement = await PodNameGuard.RefusalAsync(Client, "default", Pod("web-0", inFlight.Metadata.Uid), CancellationToken.None);
        var otherName = await PodNameGuard.RefusalAsync(Client, "default", Pod("web-1", null), CancellationToken.None);
        var otherNamespace = await PodNameGuard.RefusalAsync(Client, "kube-system", Pod("web-0", null), CancellationToken.None);
        var done = await DriveAsync(inFlight, []);
        var afterwards = await PodNameGuard.RefusalAsync(Client, "default", Pod("web-0", null), CancellationToken.None);

        Assert.Equal("pod default/web-0 is being moved by MigrationRequest move-web; until the move ends only its replacement may take this name", stranger);
        Assert.Equal(stranger, forged);
        Assert.Null(replacement);
        Assert.Null(otherName);
        Assert.Null(otherNamespace);
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Null(afterwards);
    }

    [Fact]
    public async Task An_operator_killed_after_retiring_a_StatefulSet_pod_finishes_the_move_with_the_replacement_it_made()
    {
        await CreateStatefulSetPodAsync();
        _kubeletPaused = true;
        await DriveAsync(await CreateAsync("crashy-web", "Cold", "web-0"), [], until: r => r.Status?.Phase == MigrationPhases.Restoring);
        await PassKilledMidwayAsync(); // retires the source, creates the replacement, dies waiting for it
        var made = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");

        _kubeletPaused = false;
        var done = await DriveAsync(await GetAsync("crashy-web"), []);

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal("node-b", made.Spec.NodeName);
        var pod = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal((made.Metadata.Uid, "Running"), (pod.Metadata.Uid, pod.Status.Phase));
        Assert.Single(Source.Names, n => n == "FinalDump");
        Assert.Single(Source.Names, n => n == "SendImages");
    }

    /// <summary>One pass of a fresh operator, killed (cancelled) half a second in, while a step hangs.</summary>
    private async Task PassKilledMidwayAsync()
    {
        using var crash = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
        using var channels = new ChannelCache();
        var agents = new AnnotatedAgentDirectory(channels.For);
        using var dying = new MigrationController(Client, agents, new AlwaysLeader(), NullLogger<MigrationController>.Instance, TimeProvider.System,
            new MigrationExecutor(Client, agents, claims => "token", TimeProvider.System) { RestoreTimeout = TimeSpan.FromSeconds(20) });
        try
        {
            await dying.ReconcileAllAsync(crash.Token);
        }
        catch (OperationCanceledException)
        {
            // killed mid-call
        }

        Assert.True(crash.IsCancellationRequested, "the pass finished before it could be killed");
    }

    private async Task CreateStatefulSetPodAsync()
    {
        var pod = await Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = "web-0",
                Labels = new Dictionary<string, string> { ["app"] = "web", ["statefulset.kubernetes.io/pod-name"] = "web-0", [Labels.KeepName] = "true" },
                OwnerReferences = [new V1OwnerReference { ApiVersion = "apps/v1", Kind = "StatefulSet", Name = "web", Uid = Guid.NewGuid().ToString(), Controller = true }],
            },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "docker.io/podmig/memcounter:1" }] },
        }, "default");
        pod.Status = new V1PodStatus { Phase = "Running" };
        await Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, pod.Metadata.Name, "default");
    }

    /// <summary>What a ReplicaSet counts as its pods: those it controls whose labels match its selector.</summary>
    private async Task<List<string>> OwnedPodsAsync(V1OwnerReference owner, Dictionary<string, string> selector) =>
        [.. (await Client.CoreV1.ListNamespacedPodAsync("default")).Items
            .Where(p => p.Metadata.OwnerReferences?.Any(o => o.Uid == owner.Uid && o.Controller == true) == true
                && selector.All(l => p.Metadata.Labels?.TryGetValue(l.Key, out var v) == true && v == l.Value))
            .Select(p => p.Metadata.Name)];

    [Fact]
    public async Task A_target_node_that_turns_NotReady_mid_way_rolls_the_migration_back()
    {
        var request = await CreateAsync("stranded", "Cold");
        await DriveAsync(request, [], until: r => r.Status?.Phase == MigrationPhases.Transferring);
        var node = await Client.CoreV1.ReadNodeAsync("node-b");
        node.Status.Conditions = [new V1NodeCondition { Type = "Ready", Status = "False", Reason = "KubeletNotReady" }];
        await Client.CoreV1.ReplaceNodeStatusAsync(node, "node-b");

        var done = await DriveAsync(request, []);

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("TargetNodeNotReady", done.Status.Reason);
        Assert.Equal("Target node node-b became NotReady during Transferring.", done.Status.Message);
        Assert.DoesNotContain(Source.Names, n => n == "SendImages");
        Assert.Equal(["BeginCheckpoint", "FinalDump", "Resume", "Cleanup"], Source.Names);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Deleting_an_in_flight_request_rolls_it_back_before_it_goes()
    {
        var request = await CreateAsync("abandoned", "Cold");
        await DriveAsync(request, [], until: r => r.Status?.Phase == MigrationPhases.Transferring);

        await Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, "abandoned");
        var gone = await DriveUntilGoneAsync("abandoned");

        Assert.True(gone, "the request was never released by the operator");
        Assert.Equal(["BeginCheckpoint", "FinalDump", "Resume", "Cleanup"], Source.Names);
        Assert.Equal(["Cleanup"], Target.Names);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Beyond_the_concurrency_limit_a_request_waits_in_Pending_and_runs_when_a_slot_frees()
    {
        var first = await CreateAsync("first", "Cold");
        await Task.Delay(1100);
        await CreateAsync("second", "Cold", pod: "db-1");
        var options = new OperatorOptions { MaxConcurrentMigrations = 1 };

        await DriveAsync(first, [], options: options, until: r => r.Status?.Phase == MigrationPhases.Restoring);
        var waiting = await GetAsync("second");
        var done = await DriveAsync(await GetAsync("second"), [], options: options);

        Assert.Equal(MigrationPhases.Pending, waiting.Status!.Phase);
        Assert.Equal("Queued", waiting.Status.Reason);
        Assert.Equal("Waiting: 1 migrations are in flight, the limit is 1.", waiting.Status.Message);
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal(MigrationPhases.Succeeded, (await GetAsync("first")).Status!.Phase);
    }

    [Fact]
    public async Task An_operator_restarted_between_every_step_finishes_the_migration_exactly_once()
    {
        var request = await CreateAsync("restarted", "PreCopy");

        var done = await DriveAsync(request, [], restartEachPass: true);

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Single(Source.Names, n => n == "FinalDump");
        Assert.Single(Source.Names, n => n == "Finish");
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal([done.Status.ReplacementPod, "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    /// <summary>Runs controller passes until the request is final, recording the phases it went through.</summary>
    private async Task<MigrationRequest> DriveAsync(MigrationRequest request, List<string> phases, bool restartEachPass = false,
        OperatorOptions? options = null, Func<MigrationRequest, bool>? until = null, TimeSpan? phaseTimeout = null)
    {
        using var channels = new ChannelCache();
        MigrationController? controller = null;
        try
        {
            for (int pass = 0; pass < 60; pass++)
            {
                if (controller is null || restartEachPass)
                {
                    controller?.Dispose();
                    var agents = new AnnotatedAgentDirectory(channels.For);
                    var executor = new MigrationExecutor(Client, agents, claims => $"token-for-{claims.MigrationId}", TimeProvider.System, new EventRecorder(Client, TimeProvider.System))
                    {
                        RestoreTimeout = TimeSpan.FromSeconds(20),
                        PhaseTimeout = phaseTimeout ?? TimeSpan.FromMinutes(1),
                    };
                    controller = new MigrationController(Client, agents, new AlwaysLeader(), NullLogger<MigrationController>.Instance, TimeProvider.System, executor, options);
                }

                await controller.ReconcileAllAsync(CancellationToken.None);
                var current = await GetAsync(request.Metadata.Name);
                if (until?.Invoke(current) == true)
                {
                    return current;
                }

                if (current.Status?.Phase is { } phase)
                {
                    phases.Add(phase);
                    if (until is null && MigrationPhases.IsFinal(phase))
                    {
                        return current;
                    }
                }
            }
        }
        finally
        {
            controller?.Dispose();
        }

        throw new TimeoutException($"{request.Metadata.Name} never finished: {string.Join(",", phases)}");
    }

    /// <summary>Runs passes until the deleted request is gone (the operator removed its finalizer).</summary>
    private async Task<bool> DriveUntilGoneAsync(string name)
    {
        using var channels = new ChannelCache();
        var agents = new AnnotatedAgentDirectory(channels.For);
        using var controller = new MigrationController(Client, agents, new AlwaysLeader(), NullLogger<MigrationController>.Instance, TimeProvider.System,
            new MigrationExecutor(Client, agents, claims => "token", TimeProvider.System));
        for (int pass = 0; pass < 20; pass++)
        {
            await controller.ReconcileAllAsync(CancellationToken.None);
            try
            {
                await GetAsync(name);
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                return true;
            }
        }

        return false;
    }

    private async Task<MigrationRequest> CreateAsync(string name, string mode, string pod = "db-0")
    {
        await Client.CustomObjects.CreateNamespacedCustomObjectAsync(
            new MigrationRequest { Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" }, Spec = new MigrationRequestSpec { PodName = pod, Mode = mode, TargetNode = "node-b" } },
            MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
        return await GetAsync(name);
    }

    private async Task<MigrationRequest> GetAsync(string name)
    {
        var raw = await Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
        return KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
    }

    /// <summary>The kubelet's part: pods of the podmig runtime class bound to a node start (or fail to).</summary>
    private async Task RunKubeletAsync(CancellationToken cancellationToken)
    {
        using var kubelet = EmulatorFixture.ClientFor(_cluster.Emulator.KubeconfigPath);
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var pods = await kubelet.CoreV1.ListNamespacedPodAsync("default", cancellationToken: cancellationToken);
                foreach (var pod in (_kubeletPaused ? [] : pods.Items).Where(p => p.Spec.RuntimeClassName == "podmig" && p.Status?.Phase is null or "Pending" && p.Status?.ContainerStatuses is null))
                {
                    pod.Status = _failReplacementsWith is { } reason && (_failReplacementsOn is null || _failReplacementsOn == pod.Spec.NodeName)
                        ? new V1PodStatus { Phase = "Pending", ContainerStatuses = [new V1ContainerStatus { Name = "main", Image = "x", ImageID = "x", Ready = false, RestartCount = 0, State = new V1ContainerState { Waiting = new V1ContainerStateWaiting { Reason = reason, Message = "restore failed: images corrupted" } } }] }
                        : new V1PodStatus { Phase = "Running" };
                    await kubelet.CoreV1.ReplaceNamespacedPodStatusAsync(pod, pod.Metadata.Name, "default", cancellationToken: cancellationToken);
                }

                await Task.Delay(50, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (k8s.Autorest.HttpOperationException)
            {
                // a pod went away or changed meanwhile
            }
        }
    }

    private sealed class ChannelCache : IDisposable
    {
        private readonly Dictionary<string, GrpcChannel> _channels = [];

        public GrpcChannel For(string endpoint)
        {
            lock (_channels)
            {
                if (!_channels.TryGetValue(endpoint, out var channel))
                {
                    channel = GrpcChannel.ForAddress("http://" + endpoint);
                    _channels[endpoint] = channel;
                }

                return channel;
            }
        }

        public void Dispose()
        {
            foreach (var channel in _channels.Values)
            {
                channel.Dispose();
            }
        }
    }
}

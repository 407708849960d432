using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Grpc.Core;
using Grpc.Net.Client;
using k8s;
using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Admission;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>
/// Requests driven through their phases by the running controller (informers, work queue,
/// workers) against the API emulator, with agents behind real gRPC (fakes that model a
/// migration's state as real agents keep it) and a stand-in kubelet whose replacement pods wait,
/// as podmig-runc does, for the images to be committed before they run.
/// </summary>
public sealed class PhaseTests : IAsyncLifetime, IDisposable
{
    private static readonly string[] RequestEventReasons = ["Validated", "Checkpointing", "Transferring", "Restoring", "CuttingOver", "Migrated"];
    private readonly EmulatorFixture _cluster = new();
    private readonly ConcurrentDictionary<string, FakeAgentState> _peers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, FakeAgentServer> _agents = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly ChannelCache _channels = new();
    private Task _kubelet = Task.CompletedTask;
    private OperatorUnderTest? _operator;

    /// <summary>When set, the kubelet reports replacement containers as failing to start with this reason.</summary>
    private string? _failReplacementsWith;
    private string? _failReplacementsOn;

    /// <summary>While true, the kubelet leaves new pods alone (they stay Pending).</summary>
    private volatile bool _kubeletPaused;

    private k8s.Kubernetes Client => _cluster.Client;

    private FakeAgentState Source => _agents["node-a"].State;

    private FakeAgentState Target => _agents["node-b"].State;

    public async Task InitializeAsync()
    {
        await _cluster.InitializeAsync();
        await _cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
        foreach (var name in new[] { "node-a", "node-b", "node-c" })
        {
            var agent = await FakeAgentServer.StartAsync(name, _peers);
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

        foreach (var (name, node) in new[] { ("db-0", "node-a"), ("db-1", "node-a"), ("cache-0", "node-c") })
        {
            await RunningPodAsync(name, node);
        }

        _kubelet = RunKubeletAsync(_stop.Token);
    }

    public async Task DisposeAsync()
    {
        if (_operator is not null)
        {
            await _operator.DisposeAsync();
        }

        await _stop.CancelAsync();
        await _kubelet;
        foreach (var agent in _agents.Values)
        {
            await agent.DisposeAsync();
        }

        await _cluster.DisposeAsync();
    }

    public void Dispose()
    {
        _stop.Dispose();
        _channels.Dispose();
    }

    [Fact]
    public async Task A_migration_prepares_its_target_before_the_freeze_goes_through_every_phase_and_deletes_the_source_only_after_the_replacement_runs()
    {
        await StartOperatorAsync();
        var done = await RunAsync("move-db", "PreCopy");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        var id = done.Metadata.Uid;
        // pre-copy sends its rounds while the pod runs; the replacement waits for the images before the freeze
        Assert.Equal(["BeginCheckpoint", "StartPreCopy", "StartHandoff", "Finish", "Cleanup"], Source.Names);
        Assert.Equal(["ExpectImages", "Cleanup"], Target.Names);
        // the target's restore runtime builds carried tmpfs mounts (as every agent of this release says), so the source carries them
        Assert.Contains($"StartHandoff {id} node-b {_agents["node-b"].Endpoint} carrying tmpfs mounts", Source.Calls);
        Assert.True(Target.Migration(id).Restores.IsEmpty, "the target was cleaned up");
        Assert.Equal(2, done.Status.PreCopyRounds);
        Assert.Equal(MemoryTrackingMethods.WriteProtect, done.Status.MemoryTracking); // as the agent reported its rounds
        Assert.Equal(ImageStagingMedia.Memory, done.Status.ImageStaging); // as the agent reported where it staged them
        Assert.Equal(150_000_000, done.Status.BytesTransferred);
        Assert.Equal(50_000_000, done.Status.ImageBytes);
        Assert.InRange(done.Status.DowntimeMillis ?? -1, 0, 10_000);
        Assert.Equal("node-b", done.Status.TargetNode);
        Assert.Null(done.Status.PendingCleanup);

        var replacement = await Client.CoreV1.ReadNamespacedPodAsync(done.Status.ReplacementPod, "default");
        Assert.Equal("node-b", replacement.Spec.NodeName);
        Assert.Equal("podmig", replacement.Spec.RuntimeClassName);
        Assert.Equal(id, replacement.Metadata.Annotations[Annotations.RestoreFrom]);
        Assert.Equal("db", replacement.Metadata.Labels["app"]);
        Assert.Equal("Running", replacement.Status.Phase);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.DoesNotContain(pods.Items, p => p.Metadata.Name == "db-0");

        var events = (await Client.CoreV1.ListNamespacedEventAsync("default")).Items;
        // (events created within a second have no order the API keeps)
        Assert.Equal(RequestEventReasons.Order(StringComparer.Ordinal),
            events.Where(e => e.InvolvedObject.Name == "move-db").Select(e => e.Reason).Order(StringComparer.Ordinal));
        Assert.Contains(events, e => e.InvolvedObject is { Kind: "Pod", Name: "db-0" } && e.Reason == "Migrating");
        Assert.Contains(events, e => e.InvolvedObject.Kind == "Pod" && e.InvolvedObject.Name == done.Status.ReplacementPod && e.Reason == "Migrated");
    }

    [Fact]
    public async Task The_freeze_begins_only_once_the_replacement_waits_for_the_images()
    {
        _kubeletPaused = true;
        await StartOperatorAsync();
        await CreateAsync("prepared", "Cold");

        await WaitForAsync("prepared", r => r.Status?.ReplacementPod is not null && r.Status.Phase == MigrationPhases.Checkpointing);
        await Task.Delay(1500);
        var calls = Source.Names;
        var waiting = await GetAsync("prepared");
        _kubeletPaused = false;
        var done = await WaitForFinalAsync("prepared");

        Assert.DoesNotContain("StartHandoff", calls);
        Assert.Equal(MigrationPhases.Checkpointing, waiting.Status!.Phase);
        Assert.False(waiting.Status.Is(ConditionTypes.Frozen));
        Assert.StartsWith("Preparing the replacement pod", waiting.Status.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
    }

    [Theory]
    [InlineData("Checkpointing")]
    [InlineData("Transferring")]
    [InlineData("Restoring")]
    public async Task An_operator_killed_in_the_middle_of_a_phase_finishes_it_exactly_once_after_restarting(string phase)
    {
        // the phase's work takes a while (a slow pre-copy, a slow transfer, a replacement that does not start yet) and the operator dies meanwhile
        if (phase == "Checkpointing")
        {
            Source.Delays["PreCopy"] = TimeSpan.FromSeconds(3);
        }
        else
        {
            Source.Delays["Send"] = TimeSpan.FromSeconds(phase == "Transferring" ? 3 : 1);
        }

        await StartOperatorAsync();
        await CreateAsync("crashy", "PreCopy");
        if (phase == "Restoring")
        {
            // the replacement already waits for the images; from here it does not start until the operator died
            await WaitForAsync("crashy", r => r.Status?.Phase == MigrationPhases.Transferring);
            _kubeletPaused = true;
        }

        await WaitForAsync("crashy", r => r.Status?.Phase == phase);

        await RestartOperatorAsync(TimeSpan.FromMilliseconds(800));
        // a kill is not a failure: nothing was rolled back
        Assert.Equal(phase, (await GetAsync("crashy")).Status!.Phase);
        _kubeletPaused = false;
        var done = await WaitForFinalAsync("crashy");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Single(Source.Names, n => n == "StartPreCopy");
        Assert.Single(Source.Names, n => n == "StartHandoff");
        Assert.Single(Source.Names, n => n == "Finish");
        Assert.DoesNotContain("Resume", Source.Names);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["cache-0", done.Status.ReplacementPod, "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task An_operator_restarted_again_and_again_finishes_the_migration_exactly_once()
    {
        Source.Delays["Handoff"] = TimeSpan.FromMilliseconds(600);
        await StartOperatorAsync();
        await CreateAsync("restarted", "PreCopy");
        for (int i = 0; i < 12 && !MigrationPhases.IsFinal((await GetAsync("restarted")).Status?.Phase); i++)
        {
            await RestartOperatorAsync(TimeSpan.FromMilliseconds(300));
        }

        var done = await WaitForFinalAsync("restarted");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Single(Source.Names, n => n == "StartHandoff");
        Assert.Single(Source.Names, n => n == "Finish");
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["cache-0", done.Status.ReplacementPod, "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_running_transfer_shows_its_progress_in_the_status_at_most_once_a_second()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(3.5);
        await StartOperatorAsync();
        await CreateAsync("watched", "Cold");
        var seen = new List<MigrationProgress>();
        while (true)
        {
            var current = (await GetAsync("watched")).Status;
            if (MigrationPhases.IsFinal(current?.Phase))
            {
                break;
            }

            if (current?.Phase == MigrationPhases.Transferring && current.Progress is { } progress && (seen.Count == 0 || seen[^1].UpdateTime != progress.UpdateTime))
            {
                seen.Add(progress);
            }

            await Task.Delay(20);
        }

        var done = await GetAsync("watched");
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.InRange(seen.Count, 3, 5);
        Assert.All(seen, p => Assert.Equal((MigrationPhases.Transferring, 50_000_000L), (p.Phase, p.BytesTotal)));
        Assert.True(seen.Zip(seen.Skip(1)).All(p => p.Second.BytesSent > p.First.BytesSent), string.Join(", ", seen.Select(p => p.BytesSent)));
        Assert.True(seen.Zip(seen.Skip(1)).All(p => p.Second.UpdateTime - p.First.UpdateTime >= TimeSpan.FromSeconds(1)),
            string.Join(", ", seen.Select(p => p.UpdateTime.ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture))));
    }

    [Fact]
    public async Task An_agent_unreachable_for_a_moment_is_retried_and_the_migration_succeeds()
    {
        Source.TransientFailures["StartHandoff"] = 2;
        await StartOperatorAsync();

        var done = await RunAsync("bumpy", "Cold");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.True(Source.Names.Count(n => n == "StartHandoff") >= 3);
    }

    [Fact]
    public async Task Calls_to_an_agent_that_keeps_failing_are_paused_by_its_circuit_breaker()
    {
        Source.Failures["Resume"] = StatusCode.Unavailable;
        var directory = new AnnotatedAgentDirectory(_channels.For) { Retries = 2 };
        var agent = directory.Connect(await Client.CoreV1.ReadNodeAsync("node-a"))!.Value.Client;
        var errors = new List<RpcException>();

        for (int i = 0; i < 4; i++)
        {
            errors.Add(await Assert.ThrowsAsync<RpcException>(() => agent.ResumeAsync(new ResumeRequest { MigrationId = "m" }).ResponseAsync));
        }

        Assert.Equal(6, Source.Names.Count(n => n == "Resume"));
        Assert.Contains("injected", errors[0].Status.Detail, StringComparison.Ordinal);
        Assert.Contains("calls to it are paused", errors[^1].Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_phase_that_runs_out_of_time_is_rolled_back()
    {
        Source.Delays["Handoff"] = TimeSpan.FromSeconds(5);
        await StartOperatorAsync(new MigrationPolicy { PhaseTimeout = TimeSpan.FromSeconds(1), PollInterval = TimeSpan.FromMilliseconds(200) });

        var done = await RunAsync("slow", "Cold");

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("PhaseTimedOut", done.Status.Reason);
        Assert.Equal("Checkpointing took longer than 1 seconds.", done.Status.Message);
        Assert.Contains("Resume", Source.Names);
    }

    [Theory]
    [InlineData("Handoff", "HandoffFailed")]
    [InlineData("Send", "HandoffFailed")]
    [InlineData("PreCopy", "PreCopyFailed")]
    [InlineData(null, "RestoreFailed")]
    public async Task A_failure_before_cut_over_rolls_back_and_the_source_runs_on(string? failing, string reason)
    {
        if (failing is not null)
        {
            Source.Failures[failing] = StatusCode.Internal;
        }
        else
        {
            _failReplacementsWith = "RunContainerError";
        }

        await StartOperatorAsync();
        var done = await RunAsync("doomed", "PreCopy");

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal(reason, done.Status.Reason);
        // thawed by the operator, or (a handoff that failed before its commit) by the agent itself
        Assert.True(Source.Migration(done.Metadata.Uid).Thawed, string.Join(",", Source.Names));
        Assert.Contains("Cleanup", Source.Names);
        Assert.DoesNotContain("Finish", Source.Names);
        Assert.Null(done.Status.PendingCleanup);
        var source = await Client.CoreV1.ReadNamespacedPodAsync("db-0", "default");
        Assert.Equal("Running", source.Status.Phase);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["cache-0", "db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_target_agent_gone_for_good_mid_transfer_rolls_back_within_its_grace_and_its_images_go_once_it_is_back()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(2);
        await StartOperatorAsync(new MigrationPolicy { AgentGrace = TimeSpan.FromSeconds(2), RollbackGrace = TimeSpan.FromSeconds(2), PollInterval = TimeSpan.FromMilliseconds(200) });
        await CreateAsync("orphaned", "Cold");
        await WaitForAsync("orphaned", r => r.Status?.Phase == MigrationPhases.Transferring);
        Target.Down = true;
        var clock = System.Diagnostics.Stopwatch.StartNew();

        var done = await WaitForFinalAsync("orphaned");
        var ended = clock.Elapsed;
        Target.Down = false;
        var cleaned = await WaitForAsync("orphaned", r => r.Status?.PendingCleanup is null);

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.True(ended < TimeSpan.FromSeconds(20), $"ended after {ended}");
        Assert.True(done.Status.Reason is "HandoffFailed" or "TargetAgentUnreachable", done.Status.Reason);
        Assert.Equal(["node-b"], done.Status.PendingCleanup);
        Assert.DoesNotContain("Finish", Source.Names);
        Assert.Contains("Cleanup", Source.Names);
        Assert.Contains("Cleanup", Target.Names);
        Assert.Null(cleaned.Status!.PendingCleanup);
        Assert.Equal("Running", (await Client.CoreV1.ReadNamespacedPodAsync("db-0", "default")).Status.Phase);
    }

    [Fact]
    public async Task A_deleted_target_node_rolls_its_migration_back_while_an_unrelated_one_succeeds()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(3);
        await StartOperatorAsync();
        await CreateAsync("doomed-node", "Cold");
        await WaitForAsync("doomed-node", r => r.Status?.Phase == MigrationPhases.Transferring);
        await Client.CoreV1.DeleteNodeAsync("node-b");
        await CreateAsync("unrelated", "Cold", pod: "cache-0", target: "node-a");

        var doomed = await WaitForFinalAsync("doomed-node");
        var unrelated = await WaitForFinalAsync("unrelated");

        Assert.Equal((MigrationPhases.RolledBack, "TargetNodeGone"), (doomed.Status!.Phase, doomed.Status.Reason));
        Assert.Equal(MigrationPhases.Succeeded, unrelated.Status!.Phase);
        Assert.Equal("Running", (await Client.CoreV1.ReadNamespacedPodAsync("db-0", "default")).Status.Phase);
    }

    [Fact]
    public async Task A_request_whose_passes_throw_retries_with_its_reason_while_another_migration_completes()
    {
        var broken = new BrokenForNode(new AnnotatedAgentDirectory(_channels.For), "node-b");
        await StartOperatorAsync(agents: broken);
        await CreateAsync("unlucky", "Cold");
        await CreateAsync("lucky", "Cold", pod: "cache-0", target: "node-a");

        var lucky = await WaitForFinalAsync("lucky");
        var unlucky = await WaitForAsync("unlucky", r => r.Status?.Is(MigrationController.ReconcileErrorCondition) == true);

        Assert.Equal(MigrationPhases.Succeeded, lucky.Status!.Phase);
        Assert.False(MigrationPhases.IsFinal(unlucky.Status!.Phase));
        var condition = unlucky.Status.Condition(MigrationController.ReconcileErrorCondition)!;
        Assert.Equal(nameof(InvalidOperationException), condition.Reason);
        Assert.Contains("the agent directory broke (injected)", condition.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Two_migrations_run_at_once_and_neither_waits_for_the_other()
    {
        Source.Delays["PreCopy"] = TimeSpan.FromSeconds(3);
        await StartOperatorAsync();
        await CreateAsync("long", "PreCopy");
        await WaitForAsync("long", r => r.Status?.Phase == MigrationPhases.Checkpointing);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await CreateAsync("short", "Cold", pod: "cache-0", target: "node-a");

        var shorter = await WaitForFinalAsync("short");
        var whileLongRan = (await GetAsync("long")).Status!.Phase;
        var longer = await WaitForFinalAsync("long");

        Assert.Equal(MigrationPhases.Succeeded, shorter.Status!.Phase);
        Assert.Equal(MigrationPhases.Checkpointing, whileLongRan);
        Assert.True(clock.Elapsed > TimeSpan.FromSeconds(1));
        Assert.Equal(MigrationPhases.Succeeded, longer.Status!.Phase);
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

        await StartOperatorAsync();
        await CreateAsync("move-web", "Cold", "web-5d4f-x2");
        var held = await WaitForAsync("move-web", r => r.Status?.Phase == MigrationPhases.CuttingOver && Source.Names.Contains("Finish"));
        var restored = await Client.CoreV1.ReadNamespacedPodAsync(held.Status!.ReplacementPod, "default");
        var source = await Client.CoreV1.ReadNamespacedPodAsync("web-5d4f-x2", "default");
        var ownedBefore = await OwnedPodsAsync(owner, labels);
        Source.Failures.TryRemove("Finish", out _);
        var done = await WaitForFinalAsync("move-web");
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
        await StartOperatorAsync();

        var done = await RunAsync("move-web", "Cold", "web-0");

        Assert.True(done.Status!.Phase == MigrationPhases.Succeeded, $"{done.Status.Phase} {done.Status.Reason}: {done.Status.Message}");
        Assert.Equal("web-0", done.Status.ReplacementPod);
        Assert.True(done.Status.Is(ConditionTypes.KeepsName));
        Assert.True(done.Status.Is(ConditionTypes.SourceRetired));
        // the images are committed first, the source is ended before its namesake exists
        Assert.Equal(["BeginCheckpoint", "StartHandoff", "Finish", "Cleanup"], Source.Names);
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
        await StartOperatorAsync();

        var done = await RunAsync("move-web", "Cold", "web-0");

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("RestoreFailed", done.Status.Reason);
        Assert.EndsWith("Pod web-0 was restored on node-a under its name.", done.Status.Message, StringComparison.Ordinal);
        var id = done.Metadata.Uid;
        // the checkpoint went to the source node's own agent, and the pod was restored there
        Assert.Contains($"StartTransfer {id} node-a", Source.Calls);
        Assert.Contains("ExpectImages", Source.Names);
        Assert.DoesNotContain("Resume", Source.Names);
        var pod = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal(("node-a", id, "Running"), (pod.Spec.NodeName, pod.Metadata.Annotations[Annotations.RestoreFrom], pod.Status.Phase));
    }

    [Fact]
    public async Task The_pod_webhook_keeps_a_moving_pods_name_for_its_replacement_only()
    {
        await CreateStatefulSetPodAsync();
        Source.Delays["Handoff"] = TimeSpan.FromSeconds(1);
        await StartOperatorAsync();
        await CreateAsync("move-web", "Cold", "web-0");
        var inFlight = await WaitForAsync("move-web", r => r.Status?.Phase == MigrationPhases.Checkpointing && MigrationExecutor.KeepsName(r));
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
        var done = await WaitForFinalAsync("move-web");
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
        await StartOperatorAsync();
        await CreateAsync("crashy-web", "Cold", "web-0");
        await WaitForAsync("crashy-web", r => r.Status?.Phase == MigrationPhases.Restoring);
        var made = await WaitForPodAsync("web-0", p => p.Spec.NodeName == "node-b");
        await RestartOperatorAsync(TimeSpan.FromMilliseconds(500));

        _kubeletPaused = false;
        var done = await WaitForFinalAsync("crashy-web");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        var pod = await Client.CoreV1.ReadNamespacedPodAsync("web-0", "default");
        Assert.Equal((made.Metadata.Uid, "Running"), (pod.Metadata.Uid, pod.Status.Phase));
        Assert.Single(Source.Names, n => n == "StartHandoff");
    }

    [Fact]
    public async Task A_target_node_that_turns_NotReady_mid_way_rolls_the_migration_back()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(3);
        await StartOperatorAsync();
        await CreateAsync("stranded", "Cold");
        await WaitForAsync("stranded", r => r.Status?.Phase == MigrationPhases.Transferring);
        var node = await Client.CoreV1.ReadNodeAsync("node-b");
        node.Status.Conditions = [new V1NodeCondition { Type = "Ready", Status = "False", Reason = "KubeletNotReady" }];
        await Client.CoreV1.ReplaceNodeStatusAsync(node, "node-b");

        var done = await WaitForFinalAsync("stranded");

        Assert.Equal(MigrationPhases.RolledBack, done.Status!.Phase);
        Assert.Equal("TargetNodeNotReady", done.Status.Reason);
        Assert.Equal("Target node node-b became NotReady during Transferring.", done.Status.Message);
        Assert.Contains("Resume", Source.Names);
        Assert.DoesNotContain("Finish", Source.Names);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["cache-0", "db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Deleting_an_in_flight_request_rolls_it_back_before_it_goes()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(3);
        await StartOperatorAsync();
        await CreateAsync("abandoned", "Cold");
        await WaitForAsync("abandoned", r => r.Status?.Phase == MigrationPhases.Transferring);

        await Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, "abandoned");
        var gone = await WaitGoneAsync("abandoned");

        Assert.True(gone, "the request was never released by the operator");
        Assert.Contains("Resume", Source.Names);
        Assert.Contains("Cleanup", Source.Names);
        Assert.Contains("Cleanup", Target.Names);
        Assert.DoesNotContain("Finish", Source.Names);
        var pods = await Client.CoreV1.ListNamespacedPodAsync("default");
        Assert.Equal(["cache-0", "db-0", "db-1"], pods.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Beyond_the_concurrency_limit_a_request_waits_in_Pending_and_runs_when_a_slot_frees()
    {
        Source.Delays["Send"] = TimeSpan.FromSeconds(2);
        await StartOperatorAsync(new MigrationPolicy { MaxConcurrentMigrations = 1, PollInterval = TimeSpan.FromMilliseconds(200) });
        await CreateAsync("first", "Cold");
        await WaitForAsync("first", r => r.Status?.Phase == MigrationPhases.Transferring);
        await CreateAsync("second", "Cold", pod: "db-1");

        var waiting = await WaitForAsync("second", r => r.Status?.Reason == "Queued");
        var done = await WaitForFinalAsync("second");

        Assert.Equal(MigrationPhases.Pending, waiting.Status!.Phase);
        Assert.Equal("Waiting: 1 migrations are in flight, the limit is 1.", waiting.Status.Message);
        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Equal(MigrationPhases.Succeeded, (await GetAsync("first")).Status!.Phase);
    }

    private async Task StartOperatorAsync(MigrationPolicy? policy = null, IAgentDirectory? agents = null) =>
        _operator = await OperatorUnderTest.StartAsync(Client, agents ?? new AnnotatedAgentDirectory(_channels.For),
            policy ?? new MigrationPolicy { PollInterval = TimeSpan.FromMilliseconds(200) });

    /// <summary>The operator dies after <paramref name="after"/> and a new one starts (what it wrote stays).</summary>
    private async Task RestartOperatorAsync(TimeSpan after)
    {
        await Task.Delay(after);
        await _operator!.DisposeAsync();
        _operator = null;
        await StartOperatorAsync();
    }

    [Fact]
    public async Task A_target_of_an_older_release_gets_images_whose_tmpfs_mounts_CRIU_archived_itself()
    {
        // its restore runtime cannot build carried mounts: CRIU there would find no mapping for them
        var older = FakeCapabilities.Of();
        older.RestoresCarriedMounts = false;
        Target.Capabilities = older;
        await StartOperatorAsync();
        var done = await RunAsync("move-older", "PreCopy");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        Assert.Contains($"StartHandoff {done.Metadata.Uid} node-b {_agents["node-b"].Endpoint}", Source.Calls);
    }

    [Fact]
    public async Task A_target_that_restores_lazily_is_told_so_when_it_is_asked_to_expect_the_images()
    {
        // what the source will be asked in StartHandoff, said to the target before: its restore runtime begins runc for it
        var lazy = FakeCapabilities.Of();
        lazy.Criu.LazyPages = true;
        Target.Capabilities = lazy;
        await StartOperatorAsync();
        var done = await RunAsync("move-lazy", "PreCopy");

        Assert.Equal(MigrationPhases.Succeeded, done.Status!.Phase);
        var id = done.Metadata.Uid;
        Assert.Contains($"ExpectImages {id} token lazy memory", Target.Calls);
        Assert.Contains($"StartHandoff {id} node-b {_agents["node-b"].Endpoint} carrying tmpfs mounts lazy memory", Source.Calls);
    }

    private async Task<MigrationRequest> RunAsync(string name, string mode, string pod = "db-0")
    {
        await CreateAsync(name, mode, pod);
        return await WaitForFinalAsync(name);
    }

    private Task<MigrationRequest> WaitForFinalAsync(string name) => WaitForAsync(name, r => MigrationPhases.IsFinal(r.Status?.Phase));

    private async Task<MigrationRequest> WaitForAsync(string name, Func<MigrationRequest, bool> condition, int seconds = 40)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var current = await GetAsync(name);
            if (condition(current))
            {
                return current;
            }

            if (clock.Elapsed > TimeSpan.FromSeconds(seconds))
            {
                throw new TimeoutException($"{name}: {current.Status?.Phase} ({current.Status?.Reason}: {current.Status?.Message}); source agent's last calls: {string.Join(",", Source.Names.TakeLast(12))}");
            }

            await Task.Delay(25);
        }
    }

    private async Task<V1Pod> WaitForPodAsync(string name, Func<V1Pod, bool> condition)
    {
        for (int i = 0; i < 400; i++)
        {
            try
            {
                var pod = await Client.CoreV1.ReadNamespacedPodAsync(name, "default");
                if (condition(pod))
                {
                    return pod;
                }
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                // not yet
            }

            await Task.Delay(50);
        }

        throw new TimeoutException($"pod {name} never met the condition");
    }

    private async Task<bool> WaitGoneAsync(string name)
    {
        for (int i = 0; i < 400; i++)
        {
            try
            {
                await GetAsync(name);
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                return true;
            }

            await Task.Delay(50);
        }

        return false;
    }

    private async Task CreateAsync(string name, string mode, string pod = "db-0", string target = "node-b") =>
        await Client.CustomObjects.CreateNamespacedCustomObjectAsync(
            new MigrationRequest { Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default" }, Spec = new MigrationRequestSpec { PodName = pod, Mode = mode, TargetNode = target } },
            MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);

    private async Task<MigrationRequest> GetAsync(string name)
    {
        var raw = await Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
        return KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
    }

    private async Task RunningPodAsync(string name, string node)
    {
        var pod = await Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = name.Split('-')[0] } },
            Spec = new V1PodSpec { NodeName = node, Containers = [new V1Container { Name = "main", Image = "docker.io/podmig/memcounter:1" }] },
        }, "default");
        pod.Status = new V1PodStatus { Phase = "Running" };
        await Client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, name, "default");
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

    /// <summary>
    /// The kubelet's part: pods of the podmig runtime class bound to a node are created there; their
    /// container waits (ContainerCreating) until the node's agent holds the committed images, as
    /// podmig-runc does, then runs; or fails when the migration was aborted, or when told to.
    /// </summary>
    private async Task RunKubeletAsync(CancellationToken cancellationToken)
    {
        using var kubelet = EmulatorFixture.ClientFor(_cluster.Emulator.KubeconfigPath);
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var pods = await kubelet.CoreV1.ListNamespacedPodAsync("default", cancellationToken: cancellationToken);
                foreach (var pod in (_kubeletPaused ? [] : pods.Items).Where(p => p.Spec.RuntimeClassName == "podmig" && p.Status?.Phase is null or "Pending"
                    && p.Metadata.DeletionTimestamp is null && !FakeReplacementStatus.Failed(p)))
                {
                    var id = Keys.Get(pod.Metadata.Annotations, Annotations.RestoreFrom)!;
                    string outcome = _failReplacementsWith is not null && (_failReplacementsOn is null || _failReplacementsOn == pod.Spec.NodeName)
                        ? "failed"
                        : _peers[pod.Spec.NodeName].RuntimeCreates(id, "main");
                    var status = FakeReplacementStatus.For(outcome, _failReplacementsWith);
                    if (FakeReplacementStatus.Shown(pod, status))
                    {
                        continue;
                    }

                    pod.Status = status;
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


    /// <summary>An agent directory that throws (a bug, not an agent's answer) for every call about one node.</summary>
    private sealed class BrokenForNode(IAgentDirectory inner, string node) : IAgentDirectory
    {
        public Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node n, CancellationToken cancellationToken) => inner.GetCapabilitiesAsync(n, cancellationToken);

        public (Agent.V1.NodeAgent.NodeAgentClient Client, string Endpoint)? Connect(V1Node n) =>
            n.Metadata.Name == node ? throw new InvalidOperationException("the agent directory broke (injected)") : inner.Connect(n);

        public (Agent.V1.NodeAgent.NodeAgentClient Client, string Endpoint)? Observe(V1Node n) =>
            n.Metadata.Name == node ? throw new InvalidOperationException("the agent directory broke (injected)") : inner.Observe(n);
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

using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Bad requests and pods that cannot move: each gets its status code and a reason, and the pod
/// keeps running, unfrozen, with nothing staged.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class CheckpointRefusalTests : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("refuse");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    private Agent.V1.NodeAgent.NodeAgentClient Client => _agent.Client;

    [Fact]
    public async Task Requests_for_unknown_pods_other_nodes_and_bad_ids_are_refused_with_their_codes()
    {
        var pod = await _agent.RunPodAsync("present", CheckpointTests.Counter("main", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);

        var unknown = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(new BeginCheckpointRequest
        {
            MigrationId = "m-unknown",
            Pod = new PodRef { Namespace = "default", Name = "absent" },
            NodeName = _agent.NodeName,
        }).ResponseAsync);
        var elsewhere = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(CheckpointTests.Begin("m-elsewhere", pod, "node-b")).ResponseAsync);
        var badId = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(CheckpointTests.Begin("../etc", pod, _agent.NodeName)).ResponseAsync);
        var staleUid = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(new BeginCheckpointRequest
        {
            MigrationId = "m-stale",
            Pod = new PodRef { Namespace = "default", Name = "present", Uid = "00000000-0000-0000-0000-000000000000" },
        }).ResponseAsync);
        var noMigration = await AgentOnNode.ExpectErrorAsync(() => Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-never" }).ResponseAsync);

        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("default/absent is not running on node " + _agent.NodeName, unknown.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.FailedPrecondition, elsewhere.StatusCode);
        Assert.Contains("node-b", elsewhere.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.InvalidArgument, badId.StatusCode);
        Assert.Contains("lower-case letters", badId.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.FailedPrecondition, staleUid.StatusCode);
        Assert.Contains("recreated", staleUid.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, noMigration.StatusCode);
        await AssertUntouchedAsync(pod);
    }

    [Fact]
    public async Task A_pod_with_a_hostPath_volume_is_refused_before_anything_is_frozen()
    {
        var host = Directory.CreateDirectory(Path.Combine(_agent.Node.Root, "host-data")).FullName;
        var pod = await _agent.RunPodAsync("hostpath", CheckpointTests.Counter("main", 4) with { HostPathMounts = [(host, "/host")] });
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);

        var error = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(CheckpointTests.Begin("m-hostpath", pod, _agent.NodeName)).ResponseAsync);

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains($"container main mounts hostPath {host} at /host", error.Status.Detail, StringComparison.Ordinal);
        await AssertUntouchedAsync(pod);
        Assert.False(Directory.Exists(Path.Combine(_agent.StagingDirectory, "m-hostpath")));
    }

    [Fact]
    public async Task A_pod_with_an_established_TCP_connection_is_refused_and_the_reason_names_it()
    {
        // a server and a client inside the pod: the connection is established on the pod's loopback
        var pod = await _agent.RunPodAsync("tcp", new TestContainer("main", TestImages.Memcounter,
            ["/bin/sh", "-c", "sleep 600 | nc -l -p 9000 > /dev/null & sleep 1; sleep 600 | nc 127.0.0.1 9000 > /dev/null & exec /bin/memcounter --mib 2 --interval-ms 50"]));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 5);

        var error = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(CheckpointTests.Begin("m-tcp", pod, _agent.NodeName)).ResponseAsync);
        // keeping the address left to the agent: with two addresses this pod cannot keep one, so its connections cannot survive either
        await AddSecondAddressAsync(pod);
        var optional = CheckpointTests.Begin("m-tcp-optional", pod, _agent.NodeName);
        optional.KeepAddress = true;
        optional.AddressOptional = true;
        var withOptional = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(optional).ResponseAsync);

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains("established TCP connection", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("127.0.0.1:9000", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.FailedPrecondition, withOptional.StatusCode);
        Assert.Contains("established TCP connection", withOptional.Status.Detail, StringComparison.Ordinal);
        await AssertUntouchedAsync(pod);
    }

    [Fact]
    public async Task A_pod_that_cannot_keep_its_address_is_refused_when_keeping_is_required_and_gets_a_new_one_when_it_is_optional()
    {
        var pod = await _agent.RunPodAsync("two-addresses", CheckpointTests.Counter("main", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await AddSecondAddressAsync(pod);
        var required = CheckpointTests.Begin("m-required", pod, _agent.NodeName);
        required.KeepAddress = true;
        var optional = CheckpointTests.Begin("m-optional", pod, _agent.NodeName);
        optional.KeepAddress = true;
        optional.AddressOptional = true;

        var refused = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(required).ResponseAsync);
        var prepared = await Client.BeginCheckpointAsync(optional);
        var seen = await Client.GetMigrationAsync(new MigrationRef { MigrationId = "m-optional" });
        await Client.CleanupAsync(new MigrationRef { MigrationId = "m-optional" });

        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains("cannot keep its address: the pod's network namespace has 2 IPv4 addresses (", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("192.0.2.7/24 on podmig-extra", refused.Status.Detail, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(_agent.StagingDirectory, "m-required")));
        Assert.Equal(MigrationPhase.Prepared, prepared.Phase);
        Assert.False(prepared.KeepsAddress);
        Assert.StartsWith("the pod's network namespace has 2 IPv4 addresses (", prepared.AddressNote, StringComparison.Ordinal);
        Assert.EndsWith("only a pod with one can keep it", prepared.AddressNote, StringComparison.Ordinal);
        Assert.Contains($"it gets a new address ({prepared.AddressNote})", prepared.Message, StringComparison.Ordinal);
        Assert.Equal(prepared.AddressNote, seen.AddressNote);
        await AssertUntouchedAsync(pod);
    }

    /// <summary>A second IPv4 address in the pod's network namespace (on a veth pair of its own inside it, gone with the pod).</summary>
    private async Task AddSecondAddressAsync(RunningTestPod pod)
    {
        // a pod with one address may hold connections when it keeps it: the probe finds the PID whatever the pod holds
        var begin = CheckpointTests.Begin("m-probe-" + pod.Name, pod, _agent.NodeName);
        begin.KeepAddress = true;
        var probe = await Client.BeginCheckpointAsync(begin);
        await Client.CleanupAsync(new MigrationRef { MigrationId = probe.MigrationId });
        var network = $"--net=/proc/{probe.Containers[0].Pid}/ns/net";
        Prerequisites.Run("nsenter", network, "ip", "link", "add", "podmig-extra", "type", "veth", "peer", "name", "podmig-extra1");
        Prerequisites.Run("nsenter", network, "ip", "address", "add", "192.0.2.7/24", "dev", "podmig-extra");
    }

    [Fact]
    public async Task A_second_migration_of_the_same_pod_is_aborted_and_the_first_carries_on()
    {
        var pod = await _agent.RunPodAsync("contended", CheckpointTests.Counter("main", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-first", pod, _agent.NodeName));

        var error = await AgentOnNode.ExpectErrorAsync(() => Client.BeginCheckpointAsync(CheckpointTests.Begin("m-second", pod, _agent.NodeName)).ResponseAsync);
        var repeated = await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-first", pod, _agent.NodeName));
        var dump = await Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-first" });

        Assert.Equal(StatusCode.Aborted, error.StatusCode);
        Assert.Contains("migration m-first", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(MigrationPhase.Prepared, repeated.Phase);
        Assert.NotEmpty(dump.Containers);
        await Client.ResumeAsync(new ResumeRequest { MigrationId = "m-first" });
        var finishAfterResume = await AgentOnNode.ExpectErrorAsync(() => Client.FinishAsync(new MigrationRef { MigrationId = "m-first" }).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, finishAfterResume.StatusCode);

        // once the first migration is over, a new one may take the pod
        var next = await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-second", pod, _agent.NodeName));
        Assert.Equal(MigrationPhase.Prepared, next.Phase);
        await AssertUntouchedAsync(pod);
    }

    [Fact]
    public async Task A_CRIU_failure_carries_CRIUs_reason_and_leaves_the_pod_thawed_and_running()
    {
        // an open, deleted 3 MiB file: larger than CRIU's 1 MiB limit for such "ghost" files
        var pod = await _agent.RunPodAsync("ghost", new TestContainer("main", TestImages.Memcounter,
            ["/bin/sh", "-c", "dd if=/dev/zero of=/tmp/big bs=1M count=3 2>/dev/null; exec 3</tmp/big; rm /tmp/big; exec /bin/memcounter --mib 2 --interval-ms 50"]));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-ghost", pod, _agent.NodeName));

        var error = await AgentOnNode.ExpectErrorAsync(() => Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-ghost" }).ResponseAsync);
        var status = await Client.GetMigrationAsync(new MigrationRef { MigrationId = "m-ghost" });

        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.Contains("keeps a deleted file open that is larger than CRIU's limit", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("ghost", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("The pod was thawed and runs on", error.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(MigrationPhase.Prepared, status.Phase);
        Assert.Contains("failed", status.Message, StringComparison.Ordinal);
        await AssertUntouchedAsync(pod);
        Assert.Equal(MigrationPhase.Resumed, (await Client.ResumeAsync(new ResumeRequest { MigrationId = "m-ghost" })).Phase);
    }

    [Fact]
    public async Task A_unix_socket_connected_outside_the_pod_fails_the_dump_with_the_reason_and_the_pod_runs_on()
    {
        // the container talks to a "node daemon" (this test) through a socket in an emptyDir
        var pod = await _agent.RunPodAsync("unix", CheckpointTests.Counter("main", 2) with
        {
            Command = ["/bin/sh", "-c", "while [ ! -S /scratch/daemon.sock ]; do sleep 0.05; done; exec /bin/memcounter --mib 2 --interval-ms 50 --connect-unix /scratch/daemon.sock"],
            EmptyDirMounts = [("scratch", "/scratch")],
        });
        using var daemon = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        // the volume's path is longer than a socket address may be: bind through a short link to it
        var link = Path.Combine("/tmp", "pm-" + Guid.NewGuid().ToString("N")[..8]);
        File.CreateSymbolicLink(link, pod.EmptyDir("scratch"));
        try
        {
            daemon.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(Path.Combine(link, "daemon.sock")));
        }
        finally
        {
            File.Delete(link);
        }

        daemon.Listen();
        using var connection = await daemon.AcceptAsync();
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-unix", pod, _agent.NodeName));

        var error = await AgentOnNode.ExpectErrorAsync(() => Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-unix" }).ResponseAsync);

        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.Contains("a unix socket connected to a process outside the pod", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("External socket is used", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("The pod was thawed and runs on", error.Status.Detail, StringComparison.Ordinal);
        await AssertUntouchedAsync(pod);
    }

    /// <summary>The pod still counts, its cgroup is not frozen.</summary>
    [Fact]
    public async Task A_group_hold_never_let_through_thaws_the_pod_when_its_time_is_up_and_bad_group_calls_are_refused()
    {
        var pod = await _agent.RunPodAsync("held", CheckpointTests.Counter("main", 2));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await Client.BeginCheckpointAsync(CheckpointTests.Begin("m-held", pod, _agent.NodeName));

        // a group member's handoff: frozen with nothing dumped, it waits for the group (here: for ever) at most 2 s
        await Client.StartHandoffAsync(new StartHandoffRequest
        {
            MigrationId = "m-held",
            Target = new TransferTarget { Address = "127.0.0.1:9", Node = "node-b", Token = "unused" },
            GroupHold = true,
            HoldTimeoutSeconds = 2,
        });
        var held = await WaitForAsync("m-held", s => s.Handoff?.Held == "Frozen");
        Assert.Equal(MigrationPhase.Frozen, held.Phase);
        var described = await new PodLocator(_agent.Node.Cri).DescribeAsync(pod.ContainerIds["main"], CancellationToken.None);
        Assert.True(CgroupFreezer.ForProcess(described.Pid).IsFrozen);

        var badWord = await AgentOnNode.ExpectErrorAsync(() => Client.ContinueHandoffAsync(new ContinueHandoffRequest { MigrationId = "m-held", Through = "Restore" }).ResponseAsync);
        var unknown = await AgentOnNode.ExpectErrorAsync(() => Client.ContinueHandoffAsync(new ContinueHandoffRequest { MigrationId = "m-nobody", Through = "Dump" }).ResponseAsync);
        var notHeld = await AgentOnNode.ExpectErrorAsync(() => Client.ReleaseNetworkAsync(new MigrationRef { MigrationId = "m-held" }).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, badWord.StatusCode);
        Assert.Contains("through must be \"Dump\" or \"Commit\"", badWord.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, notHeld.StatusCode);
        Assert.Contains("has no restored replacement held on this node", notHeld.Status.Detail, StringComparison.Ordinal);

        var failed = await WaitForAsync("m-held", s => s.Operation?.State == OperationState.Failed);
        Assert.Equal("GroupHoldTimedOut", failed.Operation.Reason);
        Assert.Contains("did not continue past hold Frozen within 2 seconds", failed.Operation.Message, StringComparison.Ordinal);
        Assert.Contains("The pod was thawed and runs on.", failed.Operation.Message, StringComparison.Ordinal);
        Assert.Equal("", failed.Handoff.Held);
        await AssertUntouchedAsync(pod);
    }

    private async Task<MigrationStatus> WaitForAsync(string migration, Func<MigrationStatus, bool> until)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        MigrationStatus status;
        do
        {
            status = await Client.GetMigrationAsync(new MigrationRef { MigrationId = migration });
            if (until(status))
            {
                return status;
            }

            await Task.Delay(25);
        }
        while (clock.Elapsed < TimeSpan.FromSeconds(30));

        Assert.Fail($"migration {migration} is still {status.Phase}: {status.Message}");
        return status;
    }

    private async Task AssertUntouchedAsync(RunningTestPod pod)
    {
        foreach (var (name, _) in pod.ContainerIds)
        {
            long before = AgentOnNode.LastTick(pod, name);
            await AgentOnNode.WaitForTicksAsync(pod, name, (int)before + 3, TimeSpan.FromSeconds(10));
        }

        foreach (var id in pod.ContainerIds.Values)
        {
            var described = await new PodLocator(_agent.Node.Cri).DescribeAsync(id, CancellationToken.None);
            Assert.False(CgroupFreezer.ForProcess(described.Pid).IsFrozen);
        }
    }
}

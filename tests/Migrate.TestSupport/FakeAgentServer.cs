using System.Collections.Concurrent;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Migrate.Agent.V1;

namespace Migrate.TestSupport;

/// <summary>What a fake agent reports it can do: a CRIU that passed its check, an x86-64 kernel and CPU.</summary>
public static class FakeCapabilities
{
    public static GetCapabilitiesResponse Of(string criu = "4.1.1") => new()
    {
        Criu = new CriuCapabilities { Version = criu, CheckPassed = true },
        Kernel = new KernelInfo { Machine = "x86_64" },
        Cpu = new CpuInfo { Vendor = "AuthenticAMD", Flags = { "sse2", "avx2" } },
        // as an agent of this release: its restore runtime builds carried tmpfs mounts
        RestoresCarriedMounts = true,
    };
}

/// <summary>
/// A fake node agent's state: what it was asked (in order), which calls fail or take long, and a
/// model of each migration as a real agent keeps it (source side: pre-copy rounds, the handoff's
/// steps, frozen or thawed; target side: expected, staged, committed, the restore decision and
/// what the restore runtime reported). Fake agents of one test know each other (a source's handoff
/// stages and commits on its target), as real agents talk to each other.
/// </summary>
public sealed class FakeAgentState(string node, ConcurrentDictionary<string, FakeAgentState> peers)
{
    public string Node { get; } = node;

    public ConcurrentQueue<string> Calls { get; } = new();

    /// <summary>What GetCapabilities answers.</summary>
    public GetCapabilitiesResponse Capabilities { get; set; } = FakeCapabilities.Of();

    /// <summary>Method names that answer with an error (e.g. "StartHandoff"), or operations that fail in the background ("PreCopy", "Handoff", "Transfer").</summary>
    public ConcurrentDictionary<string, StatusCode> Failures { get; } = new();

    /// <summary>Method names that take this long to answer, or operations that take this long to finish.</summary>
    public ConcurrentDictionary<string, TimeSpan> Delays { get; } = new();

    /// <summary>Method names that answer UNAVAILABLE this many more times (an agent restarting).</summary>
    public ConcurrentDictionary<string, int> TransientFailures { get; } = new();

    private volatile bool _down;

    /// <summary>While true, every call fails UNAVAILABLE (the agent is down).</summary>
    public bool Down
    {
        get => _down;
        set => _down = value;
    }

    public ConcurrentDictionary<string, FakeMigration> Migrations { get; } = new(StringComparer.Ordinal);

    public IReadOnlyList<string> Names => [.. Calls.Select(c => c.Split(' ')[0])];

    internal List<Channel<string>> Watchers { get; } = [];

    public FakeAgentState Peer(string node) => peers[node];

    public FakeMigration Migration(string id) => Migrations.GetOrAdd(id, i => new FakeMigration(i));

    public void Changed(string id)
    {
        lock (Watchers)
        {
            foreach (var watcher in Watchers)
            {
                watcher.Writer.TryWrite(id);
            }
        }
    }

    public async Task DelayAsync(string method, CancellationToken cancellationToken)
    {
        if (Delays.TryGetValue(method, out var delay))
        {
            await Task.Delay(delay, cancellationToken);
        }
    }

    public void Record(string call)
    {
        if (Down)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"{Node}'s agent is down (injected)"));
        }

        Calls.Enqueue(call);
        var method = call.Split(' ')[0];
        if (TransientFailures.TryGetValue(method, out var left) && left > 0)
        {
            TransientFailures[method] = left - 1;
            throw new RpcException(new Status(StatusCode.Unavailable, $"{method}: {Node}'s agent is restarting (injected)"));
        }

        if (Failures.TryGetValue(method, out var code))
        {
            throw new RpcException(new Status(code, $"{method} failed on {Node} (injected)"));
        }
    }

    /// <summary>What the restore runtime does on this node for a replacement's container: says it waits, then restores once committed, or fails once aborted.</summary>
    public string RuntimeCreates(string migrationId, string container)
    {
        var m = Migration(migrationId);
        lock (m)
        {
            if (m.Decision == "abort")
            {
                m.Restores[container] = new RestoreState { Container = container, Error = "aborted" };
                Changed(migrationId);
                return "aborted";
            }

            if (!m.Committed)
            {
                m.Restores.TryAdd(container, new RestoreState { Container = container, Waiting = true });
                Changed(migrationId);
                return "waiting";
            }

            m.Decision ??= "restore";
            if (m.Decision != "restore")
            {
                return "aborted";
            }

            m.Restores[container] = new RestoreState { Container = container, Restored = true, RestoredUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), RestoreMillis = 5 };
            Changed(migrationId);
            return "restored";
        }
    }
}

/// <summary>One migration as a fake agent holds it, on either side.</summary>
public sealed class FakeMigration(string id)
{
    public string Id { get; } = id;

    // source side
    public bool Begun { get; set; }
    public MigrationPhase Phase { get; set; } = MigrationPhase.Prepared;
    public Operation? Operation { get; set; }
    public int Rounds { get; set; }
    public bool Converged { get; set; }
    public HandoffStep Step { get; set; }
    public long FrozenUnixMillis { get; set; }
    public bool CommitSent { get; set; }
    public string? Target { get; set; }
    public ulong PreCopySent { get; set; }
    public ulong Sent { get; set; }
    public ulong Total { get; set; }

    /// <summary>What the agent says of where it staged the images (MigrationStatus.staged_in_memory).</summary>
    public bool StagedInMemory { get; set; } = true;

    /// <summary>The pod was thawed here at some point (by Resume, or by a handoff that failed before its commit).</summary>
    public bool Thawed { get; set; }

    // target side
    public bool Expected { get; set; }
    public bool Staged { get; set; }
    public bool Committed { get; set; }
    public string? Decision { get; set; }
    public ConcurrentDictionary<string, RestoreState> Restores { get; } = new(StringComparer.Ordinal);

    public MigrationStatus ToStatus(string node)
    {
        lock (this)
        {
            var status = new MigrationStatus { MigrationId = Id, NodeName = node };
            if (Begun)
            {
                status.Phase = Phase;
                status.Operation = Operation?.Clone();
                status.PreCopy = new PreCopyProgress
                {
                    Rounds = Rounds,
                    Converged = Converged,
                    BytesSent = PreCopySent,
                    BytesTotal = PreCopySent,
                    Method = Rounds > 0 ? PreCopyMethod.WriteTracking : PreCopyMethod.Unspecified,
                };
                status.Handoff = new HandoffProgress { Step = Step, FrozenUnixMillis = FrozenUnixMillis, BytesSent = Sent, BytesTotal = Total };
                status.PreCopyRounds = Rounds;
                status.StagedInMemory = StagedInMemory;
                if (Step >= HandoffStep.Sending)
                {
                    status.FinalDump = new FinalDumpResponse { StagedBytes = 50_000_000, FrozenMillis = 120 };
                }
            }

            if (Expected || Staged || Decision is not null)
            {
                status.Incoming = new IncomingStatus
                {
                    Expected = Expected,
                    Staged = Staged,
                    Committed = Committed,
                    Aborted = Decision == "abort",
                    RestoreBegan = Decision == "restore",
                };
                status.Incoming.Restores.Add(Restores.Values.Select(r => r.Clone()));
            }

            return status;
        }
    }
}

/// <summary>A node agent that speaks the real gRPC API on loopback and models a migration's state as a real agent does, in memory.</summary>
public sealed class FakeNodeAgent(FakeAgentState state) : Agent.V1.NodeAgent.NodeAgentBase
{
    public override Task<GetCapabilitiesResponse> GetCapabilities(GetCapabilitiesRequest request, ServerCallContext context) =>
        Task.FromResult(state.Capabilities);

    public override Task<MigrationStatus> GetMigration(MigrationRef request, ServerCallContext context)
    {
        if (state.Down)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"{state.Node}'s agent is down (injected)"));
        }

        if (!state.Migrations.TryGetValue(request.MigrationId, out var m) || (!m.Begun && !m.Expected && !m.Staged && m.Decision is null) || m.Phase == MigrationPhase.Cleaned)
        {
            throw new RpcException(new Status(StatusCode.NotFound, $"{state.Node} knows no migration {request.MigrationId}"));
        }

        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override async Task WatchMigrations(WatchMigrationsRequest request, IServerStreamWriter<MigrationStatus> responseStream, ServerCallContext context)
    {
        var channel = Channel.CreateUnbounded<string>();
        lock (state.Watchers)
        {
            state.Watchers.Add(channel);
        }

        try
        {
            await foreach (var id in channel.Reader.ReadAllAsync(context.CancellationToken))
            {
                await responseStream.WriteAsync(new MigrationStatus { MigrationId = id });
            }
        }
        catch (OperationCanceledException)
        {
            // the watcher went away
        }
        finally
        {
            lock (state.Watchers)
            {
                state.Watchers.Remove(channel);
            }
        }
    }

    public override Task<MigrationStatus> BeginCheckpoint(BeginCheckpointRequest request, ServerCallContext context)
    {
        state.Record($"BeginCheckpoint {request.MigrationId} {request.Pod.Namespace}/{request.Pod.Name}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            m.Begun = true;
        }

        state.Changed(request.MigrationId);
        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override Task<ExpectImagesResponse> ExpectImages(ExpectImagesRequest request, ServerCallContext context)
    {
        state.Record($"ExpectImages {request.MigrationId} {(request.Token.Length > 0 ? "token" : "no-token")}{(request.LazyMemory ? " lazy memory" : "")}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            m.Expected = true;
        }

        state.Changed(request.MigrationId);
        return Task.FromResult(new ExpectImagesResponse());
    }

    public override Task<MigrationStatus> StartPreCopy(StartPreCopyRequest request, ServerCallContext context)
    {
        state.Record($"StartPreCopy {request.MigrationId} {request.Target.Node} {request.Target.Address}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            if (m.Operation is not null)
            {
                return Task.FromResult(m.ToStatus(state.Node));
            }

            m.Operation = Running("PreCopy");
            m.Target = request.Target.Node;
        }

        state.Changed(request.MigrationId);
        _ = Task.Run(async () =>
        {
            await state.DelayAsync("PreCopy", CancellationToken.None);
            lock (m)
            {
                // the dirty set barely shrinks after the first round (5 % a round): pre-copy stops after round 2
                m.Rounds = 2;
                m.Phase = MigrationPhase.PreCopying;
                m.PreCopySent = 100_000_000;
                if (state.Failures.TryGetValue("PreCopy", out _))
                {
                    End(m, OperationState.Failed, "PreDumpFailed", "pre-copy failed (injected)");
                }
                else
                {
                    m.Converged = true;
                    End(m, OperationState.Succeeded, "", "converged");
                }
            }

            state.Changed(request.MigrationId);
        });
        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override Task<MigrationStatus> StartHandoff(StartHandoffRequest request, ServerCallContext context)
    {
        state.Record($"StartHandoff {request.MigrationId} {request.Target.Node} {request.Target.Address}{(request.CarryTmpfsMounts ? " carrying tmpfs mounts" : "")}{(request.LazyMemory ? " lazy memory" : "")}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            if (m.Operation?.Kind == "Handoff")
            {
                return Task.FromResult(m.ToStatus(state.Node));
            }

            m.Operation = Running("Handoff");
            m.Step = HandoffStep.Freezing;
            m.Target = request.Target.Node;
        }

        state.Changed(request.MigrationId);
        _ = Task.Run(() => HandoffAsync(m, request.Target.Node));
        return Task.FromResult(m.ToStatus(state.Node));
    }

    private async Task HandoffAsync(FakeMigration m, string targetNode)
    {
        lock (m)
        {
            m.Phase = MigrationPhase.Frozen;
            m.FrozenUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            m.Step = HandoffStep.Dumping;
        }

        state.Changed(m.Id);
        await state.DelayAsync("Handoff", CancellationToken.None);
        if (state.Failures.ContainsKey("Handoff"))
        {
            lock (m)
            {
                m.Phase = MigrationPhase.Resumed;
                m.Thawed = true;
                End(m, OperationState.Failed, "FinalDumpFailed", "the final dump failed (injected); the pod was thawed");
            }

            state.Changed(m.Id);
            return;
        }

        lock (m)
        {
            m.Step = HandoffStep.Sending;
            m.Sent = 25_000_000;
            m.Total = 50_000_000;
        }

        state.Changed(m.Id);
        if (state.Delays.TryGetValue("Send", out var sending))
        {
            // a slow transfer reports its progress as a real agent does, several times a second
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (clock.Elapsed < sending)
            {
                await Task.Delay(100);
                lock (m)
                {
                    m.Sent = Math.Min(49_999_999, 25_000_000 + (ulong)(25_000_000 * Math.Min(1, clock.Elapsed / sending)));
                }

                state.Changed(m.Id);
            }
        }

        var target = state.Peer(targetNode);
        var incoming = target.Migration(m.Id);
        if (target.Down || !incoming.Expected || state.Failures.ContainsKey("Send"))
        {
            lock (m)
            {
                m.Phase = MigrationPhase.Resumed;
                m.Thawed = true;
                End(m, OperationState.Failed, "TransferFailed", $"{targetNode} did not take the images");
            }

            state.Changed(m.Id);
            return;
        }

        lock (m)
        {
            m.Sent = 50_000_000;
            m.Step = HandoffStep.Committing;
            m.CommitSent = true;
        }

        lock (incoming)
        {
            incoming.Staged = true;
            if (incoming.Decision != "abort")
            {
                incoming.Committed = true;
            }
        }

        target.Changed(m.Id);
        lock (m)
        {
            m.Step = HandoffStep.Committed;
            End(m, OperationState.Succeeded, "", "committed");
        }

        state.Changed(m.Id);
    }

    public override Task<MigrationStatus> StartTransfer(StartTransferRequest request, ServerCallContext context)
    {
        state.Record($"StartTransfer {request.MigrationId} {request.Target.Node}");
        var m = state.Migration(request.MigrationId);
        var target = state.Peer(request.Target.Node).Migration(request.MigrationId);
        lock (target)
        {
            target.Staged = true;
            target.Committed = true;
        }

        lock (m)
        {
            m.Operation = Running("Transfer");
            End(m, OperationState.Succeeded, "", "sent and committed");
        }

        state.Peer(request.Target.Node).Changed(request.MigrationId);
        state.Changed(request.MigrationId);
        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override Task<MigrationStatus> AbortRestore(MigrationRef request, ServerCallContext context)
    {
        state.Record($"AbortRestore {request.MigrationId}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            m.Decision ??= "abort";
            foreach (var (container, restore) in m.Restores.Where(r => r.Value.Waiting).ToList())
            {
                m.Restores[container] = new RestoreState { Container = container, Error = "aborted" };
            }
        }

        state.Changed(request.MigrationId);
        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override async Task<MigrationStatus> Resume(ResumeRequest request, ServerCallContext context)
    {
        state.Record($"Resume {request.MigrationId}");
        await state.DelayAsync("Resume", context.CancellationToken);
        var m = state.Migration(request.MigrationId);
        if (m.CommitSent && !request.ReplacementRemoved && m.Target is { } target)
        {
            var incoming = state.Peer(target);
            if (incoming.Down)
            {
                throw new RpcException(new Status(StatusCode.Unavailable, $"{target} does not answer whether a restore began"));
            }

            var held = incoming.Migration(request.MigrationId);
            lock (held)
            {
                held.Decision ??= "abort";
                if (held.Decision == "restore")
                {
                    throw new RpcException(new Status(StatusCode.FailedPrecondition, "a restore began on the target"));
                }
            }
        }

        lock (m)
        {
            m.Phase = MigrationPhase.Resumed;
            m.Thawed = true;
        }

        state.Changed(request.MigrationId);
        return m.ToStatus(state.Node);
    }

    public override Task<MigrationStatus> Finish(MigrationRef request, ServerCallContext context)
    {
        state.Record($"Finish {request.MigrationId}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            m.Phase = MigrationPhase.Finished;
        }

        state.Changed(request.MigrationId);
        return Task.FromResult(m.ToStatus(state.Node));
    }

    public override Task<MigrationStatus> Cleanup(MigrationRef request, ServerCallContext context)
    {
        state.Record($"Cleanup {request.MigrationId}");
        var m = state.Migration(request.MigrationId);
        lock (m)
        {
            m.Phase = MigrationPhase.Cleaned;
            m.Begun = false;
            m.Expected = false;
            m.Staged = false;
            m.Committed = false;
            m.Decision = null;
            m.Restores.Clear();
        }

        state.Changed(request.MigrationId);
        return Task.FromResult(new MigrationStatus { MigrationId = request.MigrationId, Phase = MigrationPhase.Cleaned });
    }

    private static Operation Running(string kind) => new() { Kind = kind, State = OperationState.Running, StartedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() };

    private static void End(FakeMigration m, OperationState state, string reason, string message)
    {
        m.Operation!.State = state;
        m.Operation.Reason = reason;
        m.Operation.Message = message;
        m.Operation.EndedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
    }
}

/// <summary>One fake agent served over HTTP/2 on a loopback port.</summary>
public sealed class FakeAgentServer : IAsyncDisposable
{
    private readonly WebApplication _host;

    private FakeAgentServer(WebApplication host, FakeAgentState state, int port)
    {
        _host = host;
        State = state;
        Endpoint = $"127.0.0.1:{port}";
    }

    public FakeAgentState State { get; }

    public string Endpoint { get; }

    public static async Task<FakeAgentServer> StartAsync(string node, ConcurrentDictionary<string, FakeAgentState> peers)
    {
        ArgumentNullException.ThrowIfNull(peers);
        int port = Ports.Free();
        var state = new FakeAgentState(node, peers);
        peers[node] = state;
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k => k.ListenLocalhost(port, l => l.Protocols = HttpProtocols.Http2));
        builder.Services.AddSingleton(state);
        builder.Services.AddGrpc();
        var host = builder.Build();
        host.MapGrpcService<FakeNodeAgent>();
        await host.StartAsync();
        return new FakeAgentServer(host, state, port);
    }

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync();
        await _host.DisposeAsync();
    }
}

/// <summary>
/// What a kubelet reports for a replacement's container given the restore runtime's answer
/// (<see cref="FakeAgentState.RuntimeCreates"/>): running once restored, ContainerCreating while it
/// waits for the commit, RunContainerError once aborted; or failing to start with a reason of the test's.
/// </summary>
public static class FakeReplacementStatus
{
    public static k8s.Models.V1PodStatus For(string outcome, string? failReason = null, string? podAddress = null) => outcome switch
    {
        "restored" => new k8s.Models.V1PodStatus { Phase = "Running", PodIP = podAddress },
        "waiting" => Waiting("ContainerCreating", null),
        "aborted" => Waiting("RunContainerError", "the migration was aborted"),
        _ => Waiting(failReason ?? "RunContainerError", "restore failed: images corrupted"),
    };

    /// <summary>The pod already shows this status (no write needed).</summary>
    public static bool Shown(k8s.Models.V1Pod pod, k8s.Models.V1PodStatus status)
    {
        ArgumentNullException.ThrowIfNull(pod);
        ArgumentNullException.ThrowIfNull(status);
        return status.Phase == pod.Status?.Phase && status.ContainerStatuses?[0].State.Waiting.Reason == pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Waiting?.Reason;
    }

    /// <summary>A replacement whose container the runtime ended (aborted or failed): the kubelet leaves it so.</summary>
    public static bool Failed(k8s.Models.V1Pod pod) =>
        pod?.Status?.ContainerStatuses?.Any(c => c.State?.Waiting?.Reason is "RunContainerError") == true;

    private static k8s.Models.V1PodStatus Waiting(string reason, string? message) => new()
    {
        Phase = "Pending",
        ContainerStatuses = [new k8s.Models.V1ContainerStatus
        {
            Name = "main", Image = "x", ImageID = "x", Ready = false, RestartCount = 0,
            State = new k8s.Models.V1ContainerState { Waiting = new k8s.Models.V1ContainerStateWaiting { Reason = reason, Message = message } },
        }],
    };
}

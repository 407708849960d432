using System.Collections.Concurrent;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Migrate.Agent.V1;
using Migrate.TestSupport;

namespace Migrate.Operator.Tests;

/// <summary>What a fake agent was asked, and which calls it should fail.</summary>
public sealed class FakeAgentState(string node)
{
    public string Node { get; } = node;

    public ConcurrentQueue<string> Calls { get; } = new();

    /// <summary>Method names that answer with an error (e.g. "FinalDump").</summary>
    public ConcurrentDictionary<string, StatusCode> Failures { get; } = new();

    /// <summary>Method names that take this long to answer (an agent stuck in a call).</summary>
    public ConcurrentDictionary<string, TimeSpan> Delays { get; } = new();

    public IReadOnlyList<string> Names => [.. Calls.Select(c => c.Split(' ')[0])];

    public async Task DelayAsync(string method, CancellationToken cancellationToken)
    {
        if (Delays.TryGetValue(method, out var delay))
        {
            await Task.Delay(delay, cancellationToken);
        }
    }

    /// <summary>Method names that answer UNAVAILABLE this many more times (an agent restarting).</summary>
    public ConcurrentDictionary<string, int> TransientFailures { get; } = new();

    public void Record(string call)
    {
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
}

/// <summary>A node agent that speaks the real gRPC API on loopback but only records calls and answers plausibly.</summary>
public sealed class FakeNodeAgent(FakeAgentState state) : Agent.V1.NodeAgent.NodeAgentBase
{
    public override Task<GetCapabilitiesResponse> GetCapabilities(GetCapabilitiesRequest request, ServerCallContext context) =>
        Task.FromResult(FakeAgents.Capabilities());

    public override Task<MigrationStatus> BeginCheckpoint(BeginCheckpointRequest request, ServerCallContext context)
    {
        state.Record($"BeginCheckpoint {request.MigrationId} {request.Pod.Namespace}/{request.Pod.Name}");
        return Task.FromResult(new MigrationStatus { MigrationId = request.MigrationId, Phase = MigrationPhase.Prepared });
    }

    public override Task<PreDumpResponse> PreDump(PreDumpRequest request, ServerCallContext context)
    {
        state.Record($"PreDump {request.MigrationId} {request.Round}");
        // the dirty set barely shrinks after the first round (5 % a round): the operator should stop after round 2
        return Task.FromResult(new PreDumpResponse { Round = request.Round, PagesWritten = (ulong)(100_000 - (5_000 * (request.Round - 1))) });
    }

    public override async Task<FinalDumpResponse> FinalDump(FinalDumpRequest request, ServerCallContext context)
    {
        state.Record($"FinalDump {request.MigrationId}");
        await state.DelayAsync("FinalDump", context.CancellationToken);
        return new FinalDumpResponse { StagedBytes = 50_000_000, FrozenMillis = 120 };
    }

    public override Task<ExpectImagesResponse> ExpectImages(ExpectImagesRequest request, ServerCallContext context)
    {
        state.Record($"ExpectImages {request.MigrationId} {(request.Token.Length > 0 ? "token" : "no-token")}");
        return Task.FromResult(new ExpectImagesResponse());
    }

    public override async Task SendImages(SendImagesRequest request, IServerStreamWriter<TransferProgress> responseStream, ServerCallContext context)
    {
        state.Record($"SendImages {request.MigrationId} {request.TargetNode} {request.TargetAddress}");
        await responseStream.WriteAsync(new TransferProgress { BytesSent = 25_000_000, TotalBytes = 50_000_000 });
        if (state.Delays.TryGetValue("SendImages", out var delay))
        {
            // a slow transfer reports its progress as a real agent does, several times a second
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (clock.Elapsed < delay)
            {
                await Task.Delay(100, context.CancellationToken);
                ulong sent = 25_000_000 + (ulong)(25_000_000 * Math.Min(1, clock.Elapsed / delay));
                await responseStream.WriteAsync(new TransferProgress { BytesSent = Math.Min(sent, 49_999_999), TotalBytes = 50_000_000 });
            }
        }

        await responseStream.WriteAsync(new TransferProgress { BytesSent = 50_000_000, TotalBytes = 50_000_000, Staged = true });
    }

    public override Task<MigrationStatus> Resume(MigrationRef request, ServerCallContext context) => Answer("Resume", request, MigrationPhase.Resumed);

    public override Task<MigrationStatus> Finish(MigrationRef request, ServerCallContext context) => Answer("Finish", request, MigrationPhase.Finished);

    public override Task<MigrationStatus> Cleanup(MigrationRef request, ServerCallContext context) => Answer("Cleanup", request, MigrationPhase.Cleaned);

    private Task<MigrationStatus> Answer(string method, MigrationRef request, MigrationPhase phase)
    {
        state.Record($"{method} {request.MigrationId}");
        return Task.FromResult(new MigrationStatus { MigrationId = request.MigrationId, Phase = phase });
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

    public static async Task<FakeAgentServer> StartAsync(string node)
    {
        int port = Ports.Free();
        var state = new FakeAgentState(node);
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

using System.Net;
using System.Net.Sockets;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Migrate.Agent.V1;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The real agent host, called over real gRPC (HTTP/2 on loopback).</summary>
public sealed class CapabilitiesTests : IAsyncLifetime
{
    private WebApplication? _agent;
    private GrpcChannel? _channel;

    public async Task InitializeAsync()
    {
        Prerequisites.RequireRoot();
        int port = Ports.Free();
        _agent = AgentHost.Build([$"--Agent:ListenAddress=127.0.0.1:{port}", "--Agent:NodeName=node-a"]);
        await _agent.StartAsync();
        _channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}");
    }

    public async Task DisposeAsync()
    {
        _channel?.Dispose();
        if (_agent is not null)
        {
            await _agent.StopAsync();
            await _agent.DisposeAsync();
        }
    }

    [Fact]
    public async Task Capabilities_report_this_nodes_CRIU_kernel_and_CPU()
    {
        var client = new Agent.V1.NodeAgent.NodeAgentClient(_channel);

        var caps = await client.GetCapabilitiesAsync(new GetCapabilitiesRequest());

        Assert.Equal("node-a", caps.NodeName);
        var version = caps.Criu.Version.Split('.').Select(int.Parse).ToArray();
        Assert.True(version[0] > 4 || (version[0] == 4 && version[1] >= 1), $"CRIU {caps.Criu.Version} is older than 4.1");
        Assert.True(caps.Criu.CheckPassed, caps.Criu.CheckMessage);
        Assert.Equal(caps.Criu.MemoryTracking ? PreCopyMethod.KernelTracking : PreCopyMethod.ContentComparison, caps.Criu.PreCopyMethod);
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), caps.Kernel.Release);
        Assert.Equal("x86_64", caps.Kernel.Machine);
        Assert.Contains("sse2", caps.Cpu.Flags); // every x86_64 CPU has it
        Assert.Equal(caps.Cpu.Flags.Order(StringComparer.Ordinal), caps.Cpu.Flags);
        Assert.False(string.IsNullOrEmpty(caps.Cpu.ModelName));
    }

    [Fact]
    public async Task The_grpc_health_service_reports_serving()
    {
        var health = new Health.HealthClient(_channel);

        var reply = await health.CheckAsync(new HealthCheckRequest());

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, reply.Status);
    }
}

using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Migrate.Cri.V1;
using Migrate.TestSupport;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A containerd node (own root, state, socket) with the test images, and the real node agent
/// host serving gRPC on loopback against that node's CRI socket.
/// </summary>
public sealed class AgentOnNode : IAsyncDisposable
{
    private readonly WebApplication _agent;
    private readonly GrpcChannel _channel;

    private AgentOnNode(ContainerdNode node, WebApplication agent, GrpcChannel channel, string staging)
    {
        Node = node;
        _agent = agent;
        _channel = channel;
        StagingDirectory = staging;
        Client = new Agent.V1.NodeAgent.NodeAgentClient(channel);
    }

    public ContainerdNode Node { get; }

    public Agent.V1.NodeAgent.NodeAgentClient Client { get; }

    public string StagingDirectory { get; }

    public string NodeName => Node.Name;

    public static async Task<AgentOnNode> StartAsync(string name)
    {
        var node = await ContainerdNode.StartAsync(name);
        try
        {
            TestImages.ImportInto(node);
            int port = FreePort();
            var staging = Path.Combine(node.Root, "staging");
            var agent = AgentHost.Build([
                $"--Agent:ListenAddress=127.0.0.1:{port}",
                $"--Agent:NodeName={node.Name}",
                $"--Agent:CriSocket={node.SocketPath}",
                $"--Agent:StagingDirectory={staging}",
                "--Logging:LogLevel:Default=Warning",
            ]);
            await agent.StartAsync();
            return new AgentOnNode(node, agent, GrpcChannel.ForAddress($"http://127.0.0.1:{port}"), staging);
        }
        catch
        {
            await node.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs a pod of memcounter containers; each container c logs ticks to stdout.</summary>
    public Task<RunningTestPod> RunPodAsync(string name, params TestContainer[] containers) =>
        TestPods.RunAsync(Node, "default", name, containers);

    /// <summary>The runtime's state of a container.</summary>
    public async Task<ContainerState> ContainerStateAsync(string containerId) =>
        (await Node.Cri.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = containerId })).Status.State;

    /// <summary>Waits until the container has logged at least <paramref name="count"/> ticks; returns them.</summary>
    public static async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(RunningTestPod pod, string container, int count, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            var ticks = Memcounter.Parse(pod.LogLines(container));
            if (ticks.Count >= count)
            {
                return ticks;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"container {container} logged {ticks.Count} ticks, expected {count}: {string.Join(" | ", pod.LogLines(container).TakeLast(3))}");
            }

            await Task.Delay(50);
        }
    }

    /// <summary>The last tick the container logged.</summary>
    public static long LastTick(RunningTestPod pod, string container) => Memcounter.Parse(pod.LogLines(container))[^1].Tick;

    public static async Task<RpcException> ExpectErrorAsync(Func<Task> call) =>
        await Xunit.Assert.ThrowsAsync<RpcException>(call);

    public async ValueTask DisposeAsync()
    {
        _channel.Dispose();
        await _agent.StopAsync();
        await _agent.DisposeAsync();
        await Node.DisposeAsync();
    }

    internal static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

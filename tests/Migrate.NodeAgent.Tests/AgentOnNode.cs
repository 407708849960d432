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
    private WebApplication _agent = null!;
    private GrpcChannel _channel = null!;

    private AgentOnNode(ContainerdNode node, string staging)
    {
        Node = node;
        StagingDirectory = staging;
    }

    public ContainerdNode Node { get; }

    public Agent.V1.NodeAgent.NodeAgentClient Client { get; private set; } = null!;

    public string StagingDirectory { get; }

    public string NodeName => Node.Name;

    public static async Task<AgentOnNode> StartAsync(string name, bool withRestoreRuntime = false)
    {
        var node = await ContainerdNode.StartAsync(name, withRestoreRuntime ? RepositoryLayout.RestoreRuntime : null);
        try
        {
            TestImages.ImportInto(node);
            var agent = new AgentOnNode(node, Path.Combine(node.Root, "staging"));
            await agent.StartAgentAsync();
            return agent;
        }
        catch
        {
            await node.DisposeAsync();
            throw;
        }
    }

    /// <summary>Stops the agent process's host and starts a new one on the same node and staging directory (an agent restart).</summary>
    public async Task RestartAgentAsync()
    {
        await StopAgentAsync();
        await StartAgentAsync();
    }

    private async Task StartAgentAsync()
    {
        int port = Ports.Free();
        _agent = AgentHost.Build([
            $"--Agent:ListenAddress=127.0.0.1:{port}",
            $"--Agent:NodeName={Node.Name}",
            $"--Agent:CriSocket={Node.SocketPath}",
            $"--Agent:StagingDirectory={StagingDirectory}",
            $"--Agent:IncomingDirectory={Node.IncomingDirectory}",
            "--Agent:PinKeyFile=",
            "--Logging:LogLevel:Default=Warning",
        ]);
        await _agent.StartAsync();
        _channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}");
        Client = new Agent.V1.NodeAgent.NodeAgentClient(_channel);
    }

    private async Task StopAgentAsync()
    {
        _channel.Dispose();
        await _agent.StopAsync();
        await _agent.DisposeAsync();
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
        await StopAgentAsync();
        await Node.DisposeAsync();
    }

}

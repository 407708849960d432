using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Migrate.Cri.V1;

namespace Migrate.Cri;

/// <summary>
/// The node's container runtime over its CRI unix socket (containerd's or CRI-O's): the runtime
/// and image services on one HTTP/2 channel.
/// </summary>
public sealed class CriClient : IDisposable
{
    private readonly GrpcChannel _channel;

    public CriClient(string socketPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        SocketPath = socketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, cancellationToken) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        _channel = GrpcChannel.ForAddress("http://cri.local", new GrpcChannelOptions
        {
            HttpHandler = handler,
            MaxReceiveMessageSize = 64 * 1024 * 1024,
        });
        Runtime = new RuntimeService.RuntimeServiceClient(_channel);
        Images = new ImageService.ImageServiceClient(_channel);
        Tasks = new Containerd.Tasks.Tasks.TasksClient(_channel);
    }

    /// <summary>The namespace the CRI plugin keeps Kubernetes' containers in (containerd's "k8s.io").</summary>
    public const string ContainerdNamespace = "k8s.io";

    /// <summary>The metadata containerd's own services need: the namespace of the CRI's containers.</summary>
    public static Metadata ContainerdHeaders { get; } = new() { { "containerd-namespace", ContainerdNamespace } };

    public string SocketPath { get; }

    public RuntimeService.RuntimeServiceClient Runtime { get; }

    public ImageService.ImageServiceClient Images { get; }

    /// <summary>containerd's task service on the same socket (containerd only: pause and resume through the shim); call with <see cref="ContainerdHeaders"/>.</summary>
    public Containerd.Tasks.Tasks.TasksClient Tasks { get; }

    public void Dispose() => _channel.Dispose();
}

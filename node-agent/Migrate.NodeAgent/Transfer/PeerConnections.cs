using System.Collections.Concurrent;
using Grpc.Net.Client;
using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Security;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// This agent's connections to its peers, kept between calls: per peer agent, one gRPC channel (its
/// pooled HTTP/2 connections) and one HTTP handler for bulk lanes (its pooled HTTP/1.1 connections;
/// a gRPC channel takes over the connecting of its own handler, so the two cannot share one).
/// Each image send, pre-copy round, commit and bulk lane to a peer it already talked to skips the
/// TCP and TLS handshakes, which otherwise sit inside a frozen pod's downtime. Entries made with an
/// earlier identity (reloaded certificates) are dropped and disposed.
/// </summary>
public sealed class PeerConnections(IOptions<AgentOptions> options) : IDisposable
{
    /// <summary>How long an idle pooled connection is kept (a peer that restarted meanwhile costs one retried call).</summary>
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromMinutes(1);

    private readonly ConcurrentDictionary<(AgentTls Tls, string Address, string Node), Lazy<Peer>> _peers = new();
    private readonly int _maxSend = options.Value.MaxChunkBytes + (128 << 10);
    private bool _disposed;

    /// <summary>The gRPC channel to the agent of <paramref name="node"/> at <paramref name="address"/> (not to be disposed by the caller).</summary>
    public GrpcChannel Channel(AgentTls tls, string address, string node) => PeerOf(tls, address, node).Channel;

    /// <summary>An HTTP client over the peer's pooled bulk-lane connections (dispose it; the connections stay).</summary>
    public HttpClient Client(AgentTls tls, string address, string node) =>
        new(PeerOf(tls, address, node).Lanes, disposeHandler: false) { Timeout = Timeout.InfiniteTimeSpan };

    public void Dispose()
    {
        _disposed = true;
        foreach (var key in _peers.Keys)
        {
            Drop(key);
        }
    }

    private Peer PeerOf(AgentTls tls, string address, string node)
    {
        ArgumentNullException.ThrowIfNull(tls);
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var stale in _peers.Keys.Where(k => !ReferenceEquals(k.Tls, tls)))
        {
            Drop(stale);
        }

        return _peers.GetOrAdd((tls, address, node), key => new Lazy<Peer>(() => Peer.Open(key.Tls, key.Address, key.Node, _maxSend))).Value;
    }

    private void Drop((AgentTls, string, string) key)
    {
        if (_peers.TryRemove(key, out var peer) && peer.IsValueCreated)
        {
            peer.Value.Dispose();
        }
    }

    private sealed record Peer(GrpcChannel Channel, SocketsHttpHandler Lanes) : IDisposable
    {
        public static Peer Open(AgentTls tls, string address, string node, int maxSend)
        {
            var channel = GrpcChannel.ForAddress("https://" + address, new GrpcChannelOptions
            {
                HttpHandler = Handler(tls, node),
                DisposeHttpClient = true,
                MaxSendMessageSize = maxSend,
            });
            return new Peer(channel, Handler(tls, node));
        }

        public void Dispose()
        {
            Channel.Dispose();
            Lanes.Dispose();
        }

        private static SocketsHttpHandler Handler(AgentTls tls, string node)
        {
            var handler = tls.CreateHandler(node);
            handler.PooledConnectionIdleTimeout = IdleTimeout;
            return handler;
        }
    }
}

using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Security;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The agent keeps one channel (and one pool of bulk-lane connections) per peer agent: a send, a
/// round or a commit to a peer it already talked to reuses them; certificates loaded anew replace them.
/// </summary>
public sealed class PeerConnectionsTests : IDisposable
{
    private readonly TestPki _pki = new();

    public void Dispose() => _pki.Dispose();

    [Fact]
    public void One_channel_per_peer_and_identity_and_a_new_identity_replaces_every_earlier_one()
    {
        using var first = Load("node-a");
        using var reloaded = Load("node-a");
        using var connections = new PeerConnections(Options.Create(new AgentOptions { NodeName = "node-a" }));

        var toB = connections.Channel(first, "127.0.0.1:9443", "node-b");
        Assert.Same(toB, connections.Channel(first, "127.0.0.1:9443", "node-b"));
        var toC = connections.Channel(first, "127.0.0.1:9444", "node-c");
        Assert.NotSame(toB, toC);
        Assert.NotSame(toB, connections.Channel(first, "127.0.0.1:9443", "node-x")); // another name expected at that address: its own channel

        // certificates reloaded: the channels made with the old ones are closed and new ones made
        var renewed = connections.Channel(reloaded, "127.0.0.1:9443", "node-b");
        Assert.NotSame(toB, renewed);
        Assert.Throws<ObjectDisposedException>(() => toB.CreateCallInvoker());
        Assert.Throws<ObjectDisposedException>(() => toC.CreateCallInvoker());
        Assert.Same(renewed, connections.Channel(reloaded, "127.0.0.1:9443", "node-b"));
        using (var client = connections.Client(reloaded, "127.0.0.1:9443", "node-b"))
        {
            Assert.Equal(Timeout.InfiniteTimeSpan, client.Timeout);
        }

        // a client disposed leaves the pool to the next one
        using (var again = connections.Client(reloaded, "127.0.0.1:9443", "node-b"))
        {
            Assert.NotNull(again);
        }

        connections.Dispose();
        Assert.Throws<ObjectDisposedException>(() => renewed.CreateCallInvoker());
        Assert.Throws<ObjectDisposedException>(() => connections.Channel(reloaded, "127.0.0.1:9443", "node-b"));
    }

    private AgentTls Load(string node)
    {
        var identity = _pki.Issue(node);
        return AgentTls.Load(identity.CertificateFile, identity.KeyFile, _pki.AuthorityFile);
    }
}

using System.Collections.Concurrent;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using k8s;
using k8s.Models;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>The node agents the operator can reach, and what they report.</summary>
public interface IAgentDirectory
{
    /// <summary>The capabilities of the agent on a node, or null when the node has no (reachable) agent.</summary>
    Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node node, CancellationToken cancellationToken);

    /// <summary>A client of the agent on a node, and the address peers reach it at; null when the node has none.</summary>
    (NodeAgent.NodeAgentClient Client, string Endpoint)? Connect(V1Node node) => null;

    /// <summary>A client without retries (for looking, not acting: a silent agent must show at once).</summary>
    (NodeAgent.NodeAgentClient Client, string Endpoint)? Observe(V1Node node) => Connect(node);
}

/// <summary>
/// Agents found through their node's <c>podmigration.io/agent-endpoint</c> annotation (host:port, set by
/// the agent when it starts), called over gRPC.
/// </summary>
public sealed class AnnotatedAgentDirectory(Func<string, GrpcChannel> connect) : IAgentDirectory
{

    private readonly ConcurrentDictionary<string, AgentResilience> _resilience = new(StringComparer.Ordinal);

    /// <summary>Every call carries the current span (the migration's step) as W3C trace context.</summary>
    private static readonly Migrate.Agent.Contracts.Tracing.TraceContextClientInterceptor TraceContext = new();

    /// <summary>Retries per call when an agent is unreachable.</summary>
    public int Retries { get; init; } = 3;

    public (NodeAgent.NodeAgentClient Client, string Endpoint)? Observe(V1Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Keys.Get(node.Metadata.Annotations, Annotations.AgentEndpoint) is { Length: > 0 } endpoint
            ? (new NodeAgent.NodeAgentClient(connect(endpoint).Intercept(TraceContext)), endpoint)
            : null;
    }

    public (NodeAgent.NodeAgentClient Client, string Endpoint)? Connect(V1Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Keys.Get(node.Metadata.Annotations, Annotations.AgentEndpoint) is { Length: > 0 } endpoint
            ? (new NodeAgent.NodeAgentClient(connect(endpoint).Intercept(_resilience.GetOrAdd(endpoint, e => new AgentResilience(e, Retries))).Intercept(TraceContext)), endpoint)
            : null;
    }

    public async Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node node, CancellationToken cancellationToken)
    {
        if (Connect(node) is not { } agent)
        {
            return null;
        }

        try
        {
            // waits for the channel to connect, within the deadline: an agent that just restarted is reached on the
            // channel's next reconnect attempt (at most OperatorHost.AgentReconnectBackoff away), not judged absent
            return await agent.Client.GetCapabilitiesAsync(new GetCapabilitiesRequest(),
                new Grpc.Core.CallOptions(deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: cancellationToken).WithWaitForReady());
        }
        catch (Grpc.Core.RpcException)
        {
            return null;
        }
    }
}

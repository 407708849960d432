using System.Collections.Concurrent;
using k8s.Models;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// The agents' capabilities, asked once per node and kept for <see cref="Ttl"/> (half a minute),
/// so that a pass over many waiting requests does not call every agent each time. An answer is
/// forgotten at once when the node's agent address changes (a new agent); a node whose agent did
/// not answer is asked again next time.
/// </summary>
public sealed class CapabilitiesCache(IAgentDirectory agents, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, (DateTimeOffset At, string Endpoint, GetCapabilitiesResponse Capabilities)> _known = new(StringComparer.Ordinal);

    public TimeSpan Ttl { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The capabilities of the node's agent, or null when it has no agent that answers.</summary>
    public async Task<GetCapabilitiesResponse?> GetAsync(V1Node node, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(node);
        var endpoint = Keys.Get(node.Metadata.Annotations, Annotations.AgentEndpoint) ?? "";
        var now = time.GetUtcNow();
        if (_known.TryGetValue(node.Metadata.Name, out var known) && known.Endpoint == endpoint && now - known.At < Ttl)
        {
            return known.Capabilities;
        }

        var capabilities = await agents.GetCapabilitiesAsync(node, cancellationToken);
        if (capabilities is null)
        {
            _known.TryRemove(node.Metadata.Name, out _);
        }
        else
        {
            _known[node.Metadata.Name] = (now, endpoint, capabilities);
        }

        return capabilities;
    }
}

using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>The agents' capabilities kept for half a minute per node and agent address.</summary>
public sealed class CapabilitiesCacheTests
{
    private sealed class CountingAgents : IAgentDirectory
    {
        public int Calls { get; private set; }

        public bool Answer { get; set; } = true;

        public Task<GetCapabilitiesResponse?> GetCapabilitiesAsync(V1Node node, CancellationToken cancellationToken)
        {
            Calls++;
            return Task.FromResult(Answer ? new GetCapabilitiesResponse { NodeName = node.Metadata.Name } : null);
        }
    }

    private sealed class ManualTime : TimeProvider
    {
        public DateTimeOffset Now { get; set; } = new(2026, 12, 3, 0, 0, 0, TimeSpan.Zero);

        public override DateTimeOffset GetUtcNow() => Now;
    }

    private static V1Node Node(string name, string endpoint) =>
        new() { Metadata = new V1ObjectMeta { Name = name, Annotations = new Dictionary<string, string> { [Annotations.AgentEndpoint] = endpoint } } };

    [Fact]
    public async Task An_answer_is_kept_for_the_ttl_per_node_and_forgotten_when_the_agent_address_changes_or_no_agent_answers()
    {
        var agents = new CountingAgents();
        var time = new ManualTime();
        var cache = new CapabilitiesCache(agents, time);

        Assert.Equal("node-a", (await cache.GetAsync(Node("node-a", "10.0.0.1:7070"), default))!.NodeName);
        await cache.GetAsync(Node("node-a", "10.0.0.1:7070"), default);
        time.Now += TimeSpan.FromSeconds(29);
        await cache.GetAsync(Node("node-a", "10.0.0.1:7070"), default);
        Assert.Equal(1, agents.Calls);                                     // kept
        await cache.GetAsync(Node("node-b", "10.0.0.2:7070"), default);
        Assert.Equal(2, agents.Calls);                                     // per node

        time.Now += TimeSpan.FromSeconds(1);
        await cache.GetAsync(Node("node-a", "10.0.0.1:7070"), default);
        Assert.Equal(3, agents.Calls);                                     // 30 s: asked again
        await cache.GetAsync(Node("node-a", "10.0.0.9:7070"), default);
        Assert.Equal(4, agents.Calls);                                     // a new agent address: asked again

        agents.Answer = false;
        time.Now += TimeSpan.FromSeconds(31);
        Assert.Null(await cache.GetAsync(Node("node-a", "10.0.0.9:7070"), default));
        Assert.Null(await cache.GetAsync(Node("node-a", "10.0.0.9:7070"), default));
        Assert.Equal(6, agents.Calls);                                     // silence is not kept
    }
}

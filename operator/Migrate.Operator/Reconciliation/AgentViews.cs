using System.Collections.Concurrent;
using Grpc.Core;
using k8s.Models;
using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// How the operator sees the agents, for the decisions: each pass asks the two agents of a
/// migration what they hold of it (a short deadline, no retries), and remembers since when an
/// agent has not answered (the decisions give up on it after a grace period).
/// </summary>
public sealed class AgentViews(IAgentDirectory agents, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, DateTime> _silentSince = new(StringComparer.Ordinal);

    public TimeSpan Deadline { get; init; } = TimeSpan.FromSeconds(3);

    public async Task<AgentView> GetAsync(V1Node? node, string migrationId, CancellationToken cancellationToken)
    {
        if (node is null || agents.Observe(node) is not { } agent)
        {
            return AgentView.None;
        }

        var name = node.Metadata.Name;
        try
        {
            var status = await agent.Client.GetMigrationAsync(new MigrationRef { MigrationId = migrationId }, deadline: DateTime.UtcNow + Deadline,
                cancellationToken: cancellationToken);
            _silentSince.TryRemove(name, out _);
            return AgentView.Knows(status);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            _silentSince.TryRemove(name, out _);
            return AgentView.KnowsNothing;
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            var since = _silentSince.GetOrAdd(name, _ => time.GetUtcNow().UtcDateTime);
            return AgentView.Unreachable(since, e.Status.Detail);
        }
    }
}

using System.Collections.Concurrent;
using Grpc.Core;
using k8s;
using Migrate.Agent.V1;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>Checkpoints whose finalizer let go while their node's agent was silent: their images are still on the node.</summary>
public sealed class LeftCheckpoints
{
    private readonly ConcurrentDictionary<(string Node, string Id), bool> _left = new();

    public void Add(string node, string checkpointId) => _left[(node, checkpointId)] = true;

    public void Remove(string node, string checkpointId) => _left.TryRemove((node, checkpointId), out _);

    public IReadOnlySet<string> On(string node) => _left.Keys.Where(k => k.Node == node).Select(k => k.Id).ToHashSet(StringComparer.Ordinal);
}

/// <summary>
/// Removes checkpoint directories no Checkpoint names any more (see <see cref="CheckpointDecisions.Orphans"/>):
/// every <see cref="Interval"/>, while this replica leads, each node's agent lists what it holds.
/// </summary>
/// It also fences: a node listing pods recovered elsewhere (<see cref="Annotations.FencedPods"/>) has its agent remove them once it answers.
public sealed partial class CheckpointSweeper(ClusterCache cache, IAgentDirectory agents, ILeaderGate leader, LeftCheckpoints left, ILogger<CheckpointSweeper> logger,
    TimeProvider time, k8s.IKubernetes client) : BackgroundService
{
    public TimeSpan Interval { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How old an unknown checkpoint directory must be before it goes (one whose Checkpoint let go of it goes at once).</summary>
    public TimeSpan Grace { get; init; } = TimeSpan.FromMinutes(15);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await cache.WaitForSyncAsync(stoppingToken);
            while (!stoppingToken.IsCancellationRequested)
            {
                if (leader.IsLeader)
                {
                    await SweepAsync(stoppingToken);
                }

                await Task.Delay(Interval, time, stoppingToken);
            }
        }
        catch (OperationCanceledException)
        {
            // stopping
        }
    }

    /// <summary>One round over every node; returns the checkpoint directories removed, as node/id.</summary>
    public async Task<IReadOnlyList<string>> SweepAsync(CancellationToken cancellationToken)
    {
        var removed = new List<string>();
        var known = cache.Checkpoints.Items.Select(c => c.Metadata.Uid).ToHashSet(StringComparer.Ordinal);
        foreach (var node in cache.Nodes.Items)
        {
            if (agents.Observe(node) is not { } agent)
            {
                continue;
            }

            var name = node.Metadata.Name;
            try
            {
                if (RecoveryDecisions.Fenced(node) is { Count: > 0 } fenced)
                {
                    var answer = await agent.Client.FencePodsAsync(new FencePodsRequest { PodUids = { fenced } }, deadline: DateTime.UtcNow.AddSeconds(30), cancellationToken: cancellationToken);
                    foreach (var uid in answer.Removed)
                    {
                        LogFenced(uid, name);
                    }

                    if (answer.Absent.Count == fenced.Count)
                    {
                        // nothing of them is left on the node: the list goes (a merge patch with null removes the key)
                        var patch = new System.Text.Json.Nodes.JsonObject
                        {
                            ["metadata"] = new System.Text.Json.Nodes.JsonObject
                            {
                                ["annotations"] = new System.Text.Json.Nodes.JsonObject { [Annotations.FencedPods] = null },
                                ["resourceVersion"] = node.Metadata.ResourceVersion,
                            },
                        }.ToJsonString();
                        await client.CoreV1.PatchNodeAsync(new k8s.Models.V1Patch(patch, k8s.Models.V1Patch.PatchType.MergePatch), name, cancellationToken: cancellationToken);
                    }
                }

                var held = await agent.Client.ListCheckpointsAsync(new ListCheckpointsRequest(), deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: cancellationToken);
                foreach (var id in CheckpointDecisions.Orphans(held.Checkpoints, known, left.On(name), time.GetUtcNow().UtcDateTime, Grace))
                {
                    await agent.Client.DeleteCheckpointAsync(new CheckpointRef { CheckpointId = id }, deadline: DateTime.UtcNow.AddSeconds(10), cancellationToken: cancellationToken);
                    left.Remove(name, id);
                    removed.Add($"{name}/{id}");
                    LogRemoved(id, name);
                }
            }
            catch (RpcException e)
            {
                LogUnreachable(name, e.Status.Detail); // the next round asks again
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.Conflict)
            {
                // the node changed meanwhile: the next round sees it again
            }
        }

        return removed;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Removed checkpoint {Checkpoint} from node {Node}: no Checkpoint names it any more")]
    private partial void LogRemoved(string checkpoint, string node);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Fenced pod {Uid} on node {Node}: it was restored elsewhere after the node failed; the node's copy was removed")]
    private partial void LogFenced(string uid, string node);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Could not list the checkpoints on node {Node}: {Message}")]
    private partial void LogUnreachable(string node, string message);
}

using k8s;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Agent.Contracts.Security;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Tests;

/// <summary>
/// The operator's controllers as they run in the operator (informers, work queue, workers), in this
/// process, against the API emulator; disposing it is an operator that stops (or dies: what it
/// wrote stays, what it was doing is redone by the next one).
/// </summary>
public sealed class OperatorUnderTest : IAsyncDisposable
{
    private readonly ClusterCache _cache;
    private readonly MigrationController _migrations;
    private readonly DrainController? _drains;
    private readonly CancellationTokenSource _stop = new();

    private OperatorUnderTest(ClusterCache cache, MigrationController migrations, DrainController? drains)
    {
        _cache = cache;
        _migrations = migrations;
        _drains = drains;
    }

    public ClusterCache Cache => _cache;

    public static async Task<OperatorUnderTest> StartAsync(IKubernetes client, IAgentDirectory agents, MigrationPolicy? policy = null, ILeaderGate? leader = null,
        Func<TransferClaims, string>? mintToken = null, bool drains = false)
    {
        var time = TimeProvider.System;
        leader ??= new AlwaysLeader();
        var cache = new ClusterCache(client, NullLoggerFactory.Instance, time);
        var executor = new MigrationExecutor(client, agents, mintToken ?? (claims => $"token-for-{claims.MigrationId}-to-{claims.TargetNode}"), time,
            new EventRecorder(client, time), leader)
        {
            MintPin = claims => $"pin-{claims.Address}-for-{claims.Namespace}/{claims.Pod}-of-{claims.MigrationId}",
        };
        var controller = new MigrationController(client, cache, agents, leader, NullLogger<MigrationController>.Instance, time, executor,
            policy ?? new MigrationPolicy { PollInterval = TimeSpan.FromMilliseconds(200) });
        var drain = drains ? new DrainController(client, cache, leader, NullLogger<DrainController>.Instance, time) { Resync = TimeSpan.FromMilliseconds(300) } : null;
        var running = new OperatorUnderTest(cache, controller, drain);
        await cache.StartAsync(running._stop.Token);
        await controller.StartAsync(running._stop.Token);
        if (drain is not null)
        {
            await drain.StartAsync(running._stop.Token);
        }

        return running;
    }

    private bool _disposed;

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        await _stop.CancelAsync();
        if (_drains is not null)
        {
            await _drains.StopAsync(CancellationToken.None);
            _drains.Dispose();
        }

        await _migrations.StopAsync(CancellationToken.None);
        await _cache.StopAsync(CancellationToken.None);
        _migrations.Dispose();
        _cache.Dispose();
        _stop.Dispose();
    }
}

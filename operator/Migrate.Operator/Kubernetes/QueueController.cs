using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Kubernetes;

/// <summary>
/// A controller of one kind of object: a keyed work queue (fed by the subclass from the
/// informers' changes) drained by a <see cref="ControllerLoop"/> once every cache has synced,
/// only while this replica leads.
/// </summary>
public abstract class QueueController : BackgroundService
{
    private readonly string _name;
    private readonly ILeaderGate _leader;
    private readonly ILogger _logger;
    private readonly int _workers;

    protected QueueController(string name, ClusterCache cache, ILeaderGate leader, ILogger logger, TimeProvider time, int workers)
    {
        _name = name;
        Cache = cache;
        _leader = leader;
        _logger = logger;
        _workers = workers;
        Queue = new WorkQueue<ObjectKey>(time);
    }

    protected ClusterCache Cache { get; }

    protected WorkQueue<ObjectKey> Queue { get; }

    /// <summary>Every object's key (looked at again on each resync).</summary>
    protected abstract IEnumerable<ObjectKey> AllKeys();

    /// <summary>One pass over one object; returns when to look at it again (null: on its next change).</summary>
    protected abstract Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await Cache.WaitForSyncAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        await new ControllerLoop(_name, Queue, ReconcileAsync, AllKeys, _leader, _logger, _workers).RunAsync(stoppingToken);
    }

    public override void Dispose()
    {
        base.Dispose();
        Queue.Dispose();
        GC.SuppressFinalize(this);
    }
}

using k8s;
using k8s.LeaderElection;
using k8s.LeaderElection.ResourceLock;

namespace Migrate.Operator.Reconciliation;

/// <summary>Whether this replica may act: leadership of a Lease, kept by the client library's elector.</summary>
public interface ILeaderGate
{
    bool IsLeader { get; }

    /// <summary>Cancelled the moment this replica's current leadership ends (never cancelled while it does not lead yet).</summary>
    CancellationToken Leading => CancellationToken.None;
}

/// <summary>A single replica, or a test: always the leader.</summary>
public sealed class AlwaysLeader : ILeaderGate
{
    public bool IsLeader => true;
}

/// <summary>
/// Leader election on a coordination.k8s.io Lease: only the holder reconciles, so two replicas are
/// safe. Leadership is given up (and acting stops) as soon as the lease cannot be renewed.
/// </summary>
public sealed partial class LeaseLeaderGate(IKubernetes client, string leaseNamespace, string leaseName, string identity, ILogger<LeaseLeaderGate> logger)
    : BackgroundService, ILeaderGate
{
    private volatile bool _leader;
    private CancellationTokenSource _leading = new();

    public bool IsLeader => _leader;

    public CancellationToken Leading => _leading.Token;

    public string Identity => identity;

    public TimeSpan LeaseDuration { get; init; } = TimeSpan.FromSeconds(15);

    public TimeSpan RenewDeadline { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan RetryPeriod { get; init; } = TimeSpan.FromSeconds(2);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var lease = new LeaseLock(client, leaseNamespace, leaseName, identity);
        using var elector = new LeaderElector(new LeaderElectionConfig(lease)
        {
            LeaseDuration = LeaseDuration,
            RenewDeadline = RenewDeadline,
            RetryPeriod = RetryPeriod,
        });
        elector.OnStartedLeading += () =>
        {
            // a fresh token for this term (the last term's stays cancelled)
            Interlocked.Exchange(ref _leading, new CancellationTokenSource());
            _leader = true;
            LogLeading(identity);
        };
        elector.OnStoppedLeading += () =>
        {
            _leader = false;
            _leading.Cancel();
            LogStopped(identity);
        };
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await elector.RunUntilLeadershipLostAsync(stoppingToken);
            }
            catch (OperationCanceledException)
            {
                break;
            }

            _leader = false;
            await _leading.CancelAsync();
        }

        _leader = false;
        await _leading.CancelAsync();
    }

    public override void Dispose()
    {
        base.Dispose();
        _leading.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "{Identity} leads: reconciling MigrationRequests")]
    private partial void LogLeading(string identity);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Identity} lost leadership: no longer reconciling")]
    private partial void LogStopped(string identity);
}

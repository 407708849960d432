using System.Collections.Concurrent;
using System.Net;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.V1;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// The MigrationRequest controller: informers feed a keyed work queue (a request is queued when it
/// changes, when its pods or nodes change, and when one of its agents reports progress), and
/// several workers reconcile the queued requests (<see cref="MigrationReconciler"/>), one request
/// never in two workers. A pass never waits for long work: the agents do it and report. A request
/// whose pass throws is retried with a growing delay and the error is recorded in its status;
/// nothing one request does stops the others or the operator.
/// </summary>
public sealed partial class MigrationController : BackgroundService
{
    /// <summary>Condition set while a request's passes keep failing (cleared by the next pass that works).</summary>
    public const string ReconcileErrorCondition = "ReconcileError";

    /// <summary>After this many failed passes in a row, a migration in flight is rolled back.</summary>
    public const int FailuresBeforeRollback = 8;

    private readonly IKubernetes _client;
    private readonly ClusterCache _cache;
    private readonly IAgentDirectory _agents;
    private readonly ILeaderGate _leader;
    private readonly ILogger<MigrationController> _logger;
    private readonly TimeProvider _time;
    private readonly MigrationReconciler _reconciler;
    private readonly WorkQueue<ObjectKey> _queue;
    private readonly MigrationStore _store;
    private readonly ConcurrentDictionary<string, ObjectKey> _byUid = new(StringComparer.Ordinal);

    public MigrationController(IKubernetes client, ClusterCache cache, IAgentDirectory agents, ILeaderGate leader, ILogger<MigrationController> logger, TimeProvider time,
        MigrationExecutor executor, MigrationPolicy policy)
    {
        _client = client;
        _cache = cache;
        _agents = agents;
        _leader = leader;
        _logger = logger;
        _time = time;
        _store = new MigrationStore(client);
        _queue = new WorkQueue<ObjectKey>(time);
        _reconciler = new MigrationReconciler(cache, new AgentViews(agents, time), new AdmissionGatherer(cache, agents, time), executor, policy, time, logger);
        cache.Requests.OnChange(OnRequest);
        cache.Pods.OnChange(OnPod);
        cache.Nodes.OnChange(OnNode);
    }

    /// <summary>How many requests are reconciled at once.</summary>
    public int Workers { get; init; } = 4;

    public MigrationReconciler Reconciler => _reconciler;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await _cache.WaitForSyncAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        var loop = new ControllerLoop("MigrationRequest", _queue, _reconciler.ReconcileAsync,
            () => _cache.Requests.Items.Select(r => ObjectKey.Of(r.Metadata)), _leader, _logger, Workers)
        {
            OnError = RecordErrorAsync,
        };
        await Task.WhenAll(loop.RunAsync(stoppingToken), new AgentWakeups(_cache, _agents, WakeMigration, _logger).RunAsync(stoppingToken), CountInFlightAsync(stoppingToken));
    }

    public override void Dispose()
    {
        base.Dispose();
        _queue.Dispose();
    }

    private void OnRequest(Change<MigrationRequest> change)
    {
        if ((change.New ?? change.Old) is { Spec.IsGroup: true } group)
        {
            // a group's gate moved (or the group went): its members look again; the group itself is the GroupController's
            foreach (var member in _cache.Requests.Items.Where(r => MigrationReconciler.GroupOwner(r)?.Uid == group.Metadata.Uid))
            {
                _queue.Add(ObjectKey.Of(member.Metadata));
            }

            return;
        }

        if (change.New is { } request)
        {
            _byUid[request.Metadata.Uid] = ObjectKey.Of(request.Metadata);
            _queue.Add(ObjectKey.Of(request.Metadata));
            if (MigrationPhases.IsFinal(request.Status?.Phase) && !MigrationPhases.IsFinal(change.Old?.Status?.Phase))
            {
                // a slot is free: requests queued behind it go on
                foreach (var waiting in _cache.Requests.Items.Where(r => r.Status?.Phase == MigrationPhases.Pending))
                {
                    _queue.Add(ObjectKey.Of(waiting.Metadata));
                }
            }
        }
        else if (change.Old is { } gone)
        {
            _byUid.TryRemove(gone.Metadata.Uid, out _);
        }
    }

    /// <summary>A pod changed: the requests moving it, or whose replacement it is, look again.</summary>
    private void OnPod(Change<V1Pod> change)
    {
        var pod = change.New ?? change.Old!;
        var ns = pod.Metadata.NamespaceProperty;
        var restoring = Keys.Get(pod.Metadata.Annotations, Annotations.RestoreFrom);
        foreach (var request in _cache.Requests.Items)
        {
            if (request.Metadata.NamespaceProperty == ns && (request.Spec.PodName == pod.Metadata.Name || request.Metadata.Uid == restoring))
            {
                _queue.Add(ObjectKey.Of(request.Metadata));
            }
        }
    }

    /// <summary>A node changed (Ready, deleted, its agent's endpoint): the migrations in flight on it look again.</summary>
    private void OnNode(Change<V1Node> change)
    {
        var name = (change.New ?? change.Old!).Metadata.Name;
        foreach (var request in _cache.Requests.Items)
        {
            if (!MigrationPhases.IsFinal(request.Status?.Phase) || request.Status?.PendingCleanup?.Contains(name) == true)
            {
                if (request.Status?.SourceNode == name || request.Status?.TargetNode == name || request.Status?.SourceNode is null)
                {
                    _queue.Add(ObjectKey.Of(request.Metadata));
                }
            }
        }
    }

    private void WakeMigration(string migrationId)
    {
        if (_byUid.TryGetValue(migrationId, out var key))
        {
            _queue.Add(key);
        }
    }

    /// <summary>The error boundary of one request: its status says the pass failed and why; after many failures in a row, a migration in flight is rolled back.</summary>
    private async Task RecordErrorAsync(ObjectKey key, int failures, Exception error, CancellationToken cancellationToken)
    {
        if (error is TransientActionException && failures < FailuresBeforeRollback)
        {
            return;
        }

        var request = _cache.Requests.Get(key.Namespace, key.Name);
        if (request?.Status is not { } status || MigrationPhases.IsFinal(status.Phase))
        {
            return;
        }

        var now = _time.GetUtcNow().UtcDateTime;
        var message = $"Pass {failures} in a row failed: {error.GetType().Name}: {error.Message}".TrimEnd('.') + ".";
        status.SetCondition(ReconcileErrorCondition, "True", error.GetType().Name, message, request.Metadata.Generation, now);
        if (failures >= FailuresBeforeRollback && MigrationReconciler.IsInFlight(request) && status.Phase != MigrationPhases.CuttingOver && !status.Is(ConditionTypes.RollingBack))
        {
            status.Reason = "ReconcileError";
            status.Message = message;
            status.SetCondition(ConditionTypes.RollingBack, "True", "ReconcileError", message, request.Metadata.Generation, now);
        }

        try
        {
            var stored = await _store.WriteStatusAsync(request, cancellationToken);
            _cache.Requests.Written(request, stored);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // written meanwhile; the next pass records it again if it fails again
        }
    }

    private async Task CountInFlightAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            var inFlight = _cache.Requests.Items.Where(MigrationReconciler.IsInFlight).ToList();
            var now = _time.GetUtcNow().UtcDateTime;
            OperatorTelemetry.SetInFlight(inFlight.Count,
                inFlight.Select(r => r.Status?.StartTime is { } started ? (now - started).TotalSeconds : 0).DefaultIfEmpty(0).Max());
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), _time, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>
    /// One stream per node agent (WatchMigrations): every report wakes the request it is about, so
    /// a request moves on as soon as its agent finished a step, not at its next poll. Streams follow
    /// the nodes' endpoints and come back after failures.
    /// </summary>
    private sealed partial class AgentWakeups(ClusterCache cache, IAgentDirectory agents, Action<string> wake, ILogger logger)
    {
        private readonly Dictionary<string, (string Endpoint, CancellationTokenSource Stop, Task Stream)> _streams = new(StringComparer.Ordinal);

        public async Task RunAsync(CancellationToken cancellationToken)
        {
            try
            {
                while (!cancellationToken.IsCancellationRequested)
                {
                    var nodes = cache.Nodes.Items.ToDictionary(n => n.Metadata.Name, StringComparer.Ordinal);
                    foreach (var (name, node) in nodes)
                    {
                        var endpoint = Keys.Get(node.Metadata.Annotations, Annotations.AgentEndpoint);
                        if (endpoint is null || (_streams.TryGetValue(name, out var running) && running.Endpoint == endpoint && !running.Stream.IsCompleted))
                        {
                            continue;
                        }

                        Stop(name);
                        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                        _streams[name] = (endpoint, stop, FollowAsync(node, stop.Token));
                    }

                    foreach (var name in _streams.Keys.Where(n => !nodes.ContainsKey(n)).ToList())
                    {
                        Stop(name);
                    }

                    await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken);
                }
            }
            catch (OperationCanceledException)
            {
                // stopping
            }
            finally
            {
                foreach (var name in _streams.Keys.ToList())
                {
                    Stop(name);
                }
            }
        }

        private void Stop(string node)
        {
            if (_streams.Remove(node, out var stream))
            {
                stream.Stop.Cancel();
                stream.Stop.Dispose();
            }
        }

        private async Task FollowAsync(V1Node node, CancellationToken cancellationToken)
        {
            int failures = 0;
            while (!cancellationToken.IsCancellationRequested)
            {
                try
                {
                    if (agents.Observe(node) is not { } agent)
                    {
                        return;
                    }

                    using var call = agent.Client.WatchMigrations(new WatchMigrationsRequest(), cancellationToken: cancellationToken);
                    while (await call.ResponseStream.MoveNext(cancellationToken))
                    {
                        failures = 0;
                        wake(call.ResponseStream.Current.MigrationId);
                    }
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                catch (Exception e) when (e is RpcException or InvalidOperationException or TransientActionException or HttpRequestException)
                {
                    if (e is RpcException { StatusCode: StatusCode.Cancelled } && cancellationToken.IsCancellationRequested)
                    {
                        return;
                    }

                    failures++;
                    if (failures == 1)
                    {
                        LogStreamFailed(node.Metadata.Name, e.Message);
                    }
                }

                try
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(10_000, 250 * Math.Pow(2, Math.Min(failures, 6))) * (1 + Random.Shared.NextDouble() / 2)), cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }

        [LoggerMessage(Level = LogLevel.Information, Message = "Agent on {Node}: its report stream ended ({Message}); migrations there are polled until it is back")]
        private partial void LogStreamFailed(string node, string message);
    }
}

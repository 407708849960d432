using System.Net;
using k8s;
using k8s.Autorest;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// The MigrationRequest controller. A new request is validated (<see cref="RequestValidator"/>)
/// and either fails at once with a reason, leaving everything as it was, or is accepted with its
/// source and target nodes recorded; accepted requests are then driven through their phases by the
/// <see cref="MigrationExecutor"/>, one phase per pass, only while this replica leads.
/// </summary>
public sealed partial class MigrationController(IKubernetes client, IAgentDirectory agents, ILeaderGate leader, ILogger<MigrationController> logger, TimeProvider time,
    MigrationExecutor? executor = null, OperatorOptions? options = null)
    : BackgroundService
{
    private readonly MigrationStore _store = new(client);
    private readonly RequestValidator _validator = new(client, agents);
    private readonly OperatorOptions _options = options ?? new OperatorOptions();
    private readonly EventRecorder _events = new(client, time);
    private readonly SemaphoreSlim _wake = new(0, 1);

    /// <summary>Steps one request may take in a pass while each moves it to a new phase (1: one phase per pass, as the tests that count passes want).</summary>
    public int StepsPerPass { get; init; } = 1;

    /// <summary>How often every request is looked at again without a change (changes wake the loop through a watch).</summary>
    public TimeSpan Resync { get; init; } = TimeSpan.FromMilliseconds(500);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var watching = WatchAsync(stoppingToken);
        await LoopAsync(stoppingToken);
        await watching;
    }

    /// <summary>
    /// Wakes the loop on every change to a MigrationRequest (a new request is admitted at once, not
    /// at the next resync); the resync stays as the fallback while the watch is down.
    /// </summary>
    private async Task WatchAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await foreach (var _ in client.CustomObjects.WatchListClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, MigrationRequest.Plural,
                    cancellationToken: stoppingToken))
                {
                    Wake();
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or IOException or System.Text.Json.JsonException)
            {
                LogWatchError(e.Message);
            }

            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    public override void Dispose()
    {
        base.Dispose();
        _wake.Dispose();
    }

    private void Wake()
    {
        try
        {
            _wake.Release();
        }
        catch (SemaphoreFullException)
        {
            // a pass is already due
        }
    }

    private async Task LoopAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (leader.IsLeader)
                {
                    await ReconcileAllAsync(stoppingToken);
                }
            }
            catch (HttpOperationException e)
            {
                LogApiError(e.Response.StatusCode, e.Message);
            }
            catch (HttpRequestException e)
            {
                LogApiError(null, e.Message);
            }

            try
            {
                await _wake.WaitAsync(Resync, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>One pass over every request.</summary>
    public async Task ReconcileAllAsync(CancellationToken cancellationToken)
    {
        var all = await _store.ListAsync(cancellationToken);
        var inFlight = all.Where(r => r.Status?.Phase is MigrationPhases.Checkpointing or MigrationPhases.Transferring or MigrationPhases.Restoring or MigrationPhases.CuttingOver).ToList();
        OperatorTelemetry.SetInFlight(inFlight.Count);
        foreach (var request in all.Where(r => r.Metadata.DeletionTimestamp is not null || !MigrationPhases.IsFinal(r.Status?.Phase)))
        {
            try
            {
                if (request.Metadata.DeletionTimestamp is not null)
                {
                    await FinalizeAsync(request, cancellationToken);
                }
                else if (request.Status?.SourceNode is null)
                {
                    var admitted = request;
                    if (request.Metadata.Finalizers?.Contains(Finalizers.Cleanup) != true)
                    {
                        // before anything can be staged, so that deleting the request always cleans up
                        admitted = await _store.SetFinalizerAsync(request, present: true, cancellationToken);
                    }

                    await AdmitAsync(admitted, all, cancellationToken);
                }
                else if (executor is not null && (request.Status.Phase != MigrationPhases.Pending || await MayStartAsync(request, inFlight, cancellationToken)))
                {
                    // a step that moved the request on is followed by the next at once: waiting for the
                    // next pass between the freeze and the restore would add to the pod's downtime
                    var current = request;
                    for (int step = 0; step < StepsPerPass; step++)
                    {
                        var next = await executor.StepAsync(current, cancellationToken);
                        if (next.Status?.Phase == current.Status?.Phase || MigrationPhases.IsFinal(next.Status?.Phase)
                            || next.Metadata.DeletionTimestamp is not null || !leader.IsLeader)
                        {
                            break;
                        }

                        current = next;
                    }
                }
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
            {
                // another writer got there first: the next pass starts from what it wrote
            }
            catch (Grpc.Core.RpcException e)
            {
                // an agent did not answer during cut-over: retried on the next pass, never rolled back
                LogAgentError(request.Metadata.NamespaceProperty, request.Metadata.Name, e.Status.Detail);
            }
        }
    }

    /// <summary>A deleted request: an in-flight migration is rolled back (or, during cut-over, finished) before the finalizer goes.</summary>
    private async Task FinalizeAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        if (request.Metadata.Finalizers?.Contains(Finalizers.Cleanup) != true)
        {
            return;
        }

        var phase = request.Status?.Phase;
        if (executor is not null && request.Status?.SourceNode is not null && phase is not (null or MigrationPhases.Pending) && !MigrationPhases.IsFinal(phase))
        {
            request = await executor.AbortAsync(request, cancellationToken);
        }

        if (request.Metadata.Labels?.ContainsKey(Labels.Trigger) == true && request.Status?.Phase != MigrationPhases.Succeeded)
        {
            // cancelled by its user: the pod's next eviction is an ordinary one, not a new migration
            await MarkEvictionCancelledAsync(request, cancellationToken);
        }

        await _store.SetFinalizerAsync(request, present: false, cancellationToken);
    }

    private async Task MarkEvictionCancelledAsync(MigrationRequest request, CancellationToken cancellationToken)
    {
        var patch = new System.Text.Json.Nodes.JsonObject
        {
            ["metadata"] = new System.Text.Json.Nodes.JsonObject
            {
                ["annotations"] = new System.Text.Json.Nodes.JsonObject { [Annotations.EvictionMigrationCancelled] = request.Metadata.Name },
            },
        };
        try
        {
            await client.CoreV1.PatchNamespacedPodAsync(new k8s.Models.V1Patch(patch.ToJsonString(), k8s.Models.V1Patch.PatchType.MergePatch),
                request.Spec.PodName, request.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // the pod is gone anyway
        }
    }

    /// <summary>Whether a Pending request may start now: within the cluster-wide and per-node limits. If not, it says so in its status.</summary>
    private async Task<bool> MayStartAsync(MigrationRequest request, List<MigrationRequest> active, CancellationToken cancellationToken)
    {
        var nodes = new[] { request.Status!.SourceNode, request.Status.TargetNode };
        string? wait = null;
        if (active.Count >= _options.MaxConcurrentMigrations)
        {
            wait = $"Waiting: {active.Count} migrations are in flight, the limit is {_options.MaxConcurrentMigrations}.";
        }
        else if (nodes.FirstOrDefault(n => active.Count(r => r.Status!.SourceNode == n || r.Status.TargetNode == n) >= _options.MaxMigrationsPerNode) is { } busy)
        {
            wait = $"Waiting: node {busy} already takes part in {_options.MaxMigrationsPerNode} migration(s).";
        }

        if (wait is null)
        {
            active.Add(request);
            return true;
        }

        if (request.Status.Message != wait)
        {
            request.Status.Reason = "Queued";
            request.Status.Message = wait;
            await _store.WriteStatusAsync(request, cancellationToken);
        }

        return false;
    }

    private async Task AdmitAsync(MigrationRequest request, IReadOnlyList<MigrationRequest> all, CancellationToken cancellationToken)
    {
        var validation = await _validator.ValidateAsync(request, all, cancellationToken);
        var now = time.GetUtcNow().UtcDateTime;
        var status = request.Status ?? new MigrationRequestStatus();
        status.ObservedGeneration = request.Metadata.Generation;
        status.StartTime ??= now;
        if (validation.Failed)
        {
            status.Phase = MigrationPhases.Failed;
            status.Reason = validation.FailureReason;
            status.Message = validation.FailureMessage;
            status.CompletionTime = now;
            status.SetCondition("Ready", "False", validation.FailureReason!, validation.FailureMessage!, request.Metadata.Generation, now);
            OperatorTelemetry.Ended(MigrationPhases.Failed, validation.FailureReason, null, null);
        }
        else
        {
            status.Phase = MigrationPhases.Pending;
            status.SourceNode = validation.SourceNode;
            status.TargetNode = validation.TargetNode;
            status.Reason = "Validated";
            status.Message = $"Pod {request.Spec.PodName} can move from {validation.SourceNode} to {validation.TargetNode}.";
            status.SetCondition("Validated", "True", "Validated", status.Message, request.Metadata.Generation, now);
            if (validation.KeepsName)
            {
                status.SetCondition(ConditionTypes.KeepsName, "True", "StatefulSetPod",
                    $"The replacement takes the name {request.Spec.PodName}: the source is ended and deleted just before it is created.", request.Metadata.Generation, now);
            }
        }

        request.Status = status;
        try
        {
            await _store.WriteStatusAsync(request, cancellationToken);
            LogAdmitted(request.Metadata.NamespaceProperty, request.Metadata.Name, status.Phase, status.Reason, status.Message);
            await _events.RecordAsync($"{MigrationRequest.Group}/{MigrationRequest.Version}", MigrationRequest.KindName, request.Metadata,
                validation.Failed ? "Warning" : "Normal", status.Reason!, status.Message!, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // someone else wrote first; the next pass sees their write
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "MigrationRequest {Namespace}/{Name}: {Phase} ({Reason}): {Message}")]
    private partial void LogAdmitted(string @namespace, string name, string? phase, string? reason, string? message);

    [LoggerMessage(Level = LogLevel.Warning, Message = "MigrationRequest {Namespace}/{Name}: an agent call failed ({Detail}); retrying on the next pass")]
    private partial void LogAgentError(string @namespace, string name, string detail);

    [LoggerMessage(Level = LogLevel.Warning, Message = "watching MigrationRequests failed ({Message}); watching again in 1 s, resyncing meanwhile")]
    private partial void LogWatchError(string message);

    [LoggerMessage(Level = LogLevel.Warning, Message = "API call failed ({Status}): {Message}; retrying on the next pass")]
    private partial void LogApiError(HttpStatusCode? status, string message);
}

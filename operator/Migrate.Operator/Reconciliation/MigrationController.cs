using System.Net;
using k8s;
using k8s.Autorest;
using Migrate.Operator.Api;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// The MigrationRequest controller. A new request is validated (<see cref="RequestValidator"/>)
/// and either fails at once with a reason, leaving everything as it was, or is accepted with its
/// source and target nodes recorded; accepted requests are then driven through their phases by the
/// <see cref="MigrationExecutor"/>, one phase per pass, only while this replica leads.
/// </summary>
public sealed partial class MigrationController(IKubernetes client, IAgentDirectory agents, ILeaderGate leader, ILogger<MigrationController> logger, TimeProvider time,
    MigrationExecutor? executor = null)
    : BackgroundService
{
    private readonly MigrationStore _store = new(client);
    private readonly RequestValidator _validator = new(client, agents);

    /// <summary>How often every request is looked at again.</summary>
    public TimeSpan Resync { get; init; } = TimeSpan.FromMilliseconds(500);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
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
                await Task.Delay(Resync, time, stoppingToken);
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
        foreach (var request in all.Where(r => !MigrationPhases.IsFinal(r.Status?.Phase)))
        {
            try
            {
                if (request.Status?.SourceNode is null)
                {
                    await AdmitAsync(request, all, cancellationToken);
                }
                else if (executor is not null)
                {
                    await executor.StepAsync(request, cancellationToken);
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
            SetCondition(status, "Ready", "False", validation.FailureReason!, validation.FailureMessage!, request.Metadata.Generation, now);
        }
        else
        {
            status.Phase = MigrationPhases.Pending;
            status.SourceNode = validation.SourceNode;
            status.TargetNode = validation.TargetNode;
            status.Reason = "Validated";
            status.Message = $"Pod {request.Spec.PodName} can move from {validation.SourceNode} to {validation.TargetNode}.";
            SetCondition(status, "Validated", "True", "Validated", status.Message, request.Metadata.Generation, now);
        }

        request.Status = status;
        try
        {
            await _store.WriteStatusAsync(request, cancellationToken);
            LogAdmitted(request.Metadata.NamespaceProperty, request.Metadata.Name, status.Phase, status.Reason, status.Message);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // someone else wrote first; the next pass sees their write
        }
    }

    private static void SetCondition(MigrationRequestStatus status, string type, string value, string reason, string message, long? generation, DateTime now)
    {
        var existing = status.Conditions.FirstOrDefault(c => c.Type == type);
        if (existing is null)
        {
            existing = new MigrationCondition { Type = type, LastTransitionTime = now };
            status.Conditions.Add(existing);
        }
        else if (existing.Status != value)
        {
            existing.LastTransitionTime = now;
        }

        existing.Status = value;
        existing.Reason = reason;
        existing.Message = message;
        existing.ObservedGeneration = generation;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "MigrationRequest {Namespace}/{Name}: {Phase} ({Reason}): {Message}")]
    private partial void LogAdmitted(string @namespace, string name, string? phase, string? reason, string? message);

    [LoggerMessage(Level = LogLevel.Warning, Message = "MigrationRequest {Namespace}/{Name}: an agent call failed ({Detail}); retrying on the next pass")]
    private partial void LogAgentError(string @namespace, string name, string detail);

    [LoggerMessage(Level = LogLevel.Warning, Message = "API call failed ({Status}): {Message}; retrying on the next pass")]
    private partial void LogApiError(HttpStatusCode? status, string message);
}

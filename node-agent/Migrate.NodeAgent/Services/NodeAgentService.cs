using Grpc.Core;
using Microsoft.Extensions.Options;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Services;

/// <summary>The agent's gRPC API; each call hands over to the domain object that owns it.</summary>
public sealed class NodeAgentService(NodeCapabilities capabilities, CheckpointEngine checkpoints, MigrationOperations operations, ImageReceiver receiver,
    IncomingMigrations incoming, ImageSender sender, MigrationEvents events, KeptCheckpoints kept, PodFence fence, IOptions<AgentOptions> options, PostCopyRelay relay)
    : Agent.V1.NodeAgent.NodeAgentBase
{
    public override Task<GetCapabilitiesResponse> GetCapabilities(GetCapabilitiesRequest request, ServerCallContext context) =>
        capabilities.CurrentWithRuntimeAsync(context.CancellationToken);

    public override Task<MigrationStatus> BeginCheckpoint(BeginCheckpointRequest request, ServerCallContext context) =>
        Call(() => checkpoints.BeginAsync(request, context.CancellationToken));

    public override Task<PreDumpResponse> PreDump(PreDumpRequest request, ServerCallContext context) =>
        Call(() => checkpoints.PreDumpAsync(request, context.CancellationToken));

    public override Task<FinalDumpResponse> FinalDump(FinalDumpRequest request, ServerCallContext context) =>
        Call(() => checkpoints.FinalDumpAsync(request.MigrationId, context.CancellationToken, request.LazyMemory, postCopy: request.LazyMemory && request.PostCopy,
            carryMounts: request.CarryTmpfsMounts));

    public override Task<MigrationStatus> StartPreCopy(StartPreCopyRequest request, ServerCallContext context) =>
        Call(() => operations.StartPreCopyAsync(request, context.CancellationToken));

    public override Task<MigrationStatus> StartHandoff(StartHandoffRequest request, ServerCallContext context) =>
        Call(() => operations.StartHandoffAsync(request, context.CancellationToken));

    public override Task<MigrationStatus> StartTransfer(StartTransferRequest request, ServerCallContext context) =>
        Call(() => operations.StartTransferAsync(request, context.CancellationToken));

    public override Task<MigrationStatus> Resume(ResumeRequest request, ServerCallContext context) =>
        Call(() => operations.ResumeAsync(request, context.CancellationToken));

    public override Task<MigrationStatus> Finish(MigrationRef request, ServerCallContext context) =>
        Call(() => checkpoints.FinishAsync(request.MigrationId, context.CancellationToken));

    public override Task<MigrationStatus> Cleanup(MigrationRef request, ServerCallContext context) =>
        Call(async () =>
        {
            var status = await operations.CleanupAsync(request.MigrationId, context.CancellationToken);
            relay.Stop(request.MigrationId);
            receiver.Remove(request.MigrationId);
            return status;
        });

    public override Task<ExpectImagesResponse> ExpectImages(ExpectImagesRequest request, ServerCallContext context) =>
        Call(() =>
        {
            var expected = receiver.Expect(request);
            if (request.PostCopySource is { Length: > 0 } source)
            {
                // the restore's page server asks here for the pages a post-copy dump leaves on the source
                // (kept on disk: a restarted agent listens again, see PostCopyRelay.StartAsync)
                receiver.RecordPostCopySource(request.MigrationId, source);
                relay.Start(request.MigrationId, request.Token, source, receiver.ExpectedSource(request.MigrationId)!);
            }

            if (request.HoldNetwork)
            {
                incoming.HoldNetwork(request.MigrationId);
            }

            return Task.FromResult(expected);
        });

    public override Task<MigrationStatus> ContinueHandoff(ContinueHandoffRequest request, ServerCallContext context) =>
        Call(() =>
        {
            CheckpointEngine.ValidateMigrationId(request.MigrationId);
            return Task.FromResult(operations.ContinueHandoff(request));
        });

    public override Task<MigrationStatus> ReleaseNetwork(MigrationRef request, ServerCallContext context) =>
        Call(async () =>
        {
            CheckpointEngine.ValidateMigrationId(request.MigrationId);
            await incoming.ReleaseNetworkAsync(request.MigrationId, context.CancellationToken);
            return Status(request.MigrationId);
        });

    public override Task<MigrationStatus> AbortRestore(MigrationRef request, ServerCallContext context) =>
        Call(() =>
        {
            CheckpointEngine.ValidateMigrationId(request.MigrationId);
            incoming.Abort(request.MigrationId);
            relay.Stop(request.MigrationId);
            return Task.FromResult(Status(request.MigrationId));
        });

    public override Task<KeptCheckpoint> TakeCheckpoint(TakeCheckpointRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Take(request)));

    public override Task<KeptCheckpoint> ContinueCheckpoint(ContinueCheckpointRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Continue(request)));

    public override Task<KeptCheckpoint> GetCheckpoint(CheckpointRef request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Get(request.CheckpointId)));

    public override Task<KeptCheckpoint> DeleteCheckpoint(CheckpointRef request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Delete(request.CheckpointId, request.DeleteExport)));

    public override Task<DeleteExportResponse> DeleteExport(DeleteExportRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(new DeleteExportResponse { Deleted = kept.DeleteExport(request.Path) }));

    public override Task<FencePodsResponse> FencePods(FencePodsRequest request, ServerCallContext context) =>
        Call(async () =>
        {
            var (removed, absent) = await fence.FenceAsync(request.PodUids, context.CancellationToken);
            return new FencePodsResponse { Removed = { removed }, Absent = { absent } };
        });

    public override Task<KeptCheckpoint> ImportCheckpoint(ImportCheckpointRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Import(request)));

    public override Task<KeptCheckpoint> SendCheckpoint(SendCheckpointRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(kept.Send(request)));

    public override Task<ListCheckpointsResponse> ListCheckpoints(ListCheckpointsRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(new ListCheckpointsResponse { Checkpoints = { kept.List() } }));

    public override async Task SendImages(SendImagesRequest request, IServerStreamWriter<TransferProgress> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var directory = await Call(() => Task.FromResult(checkpoints.Get(request.MigrationId).StagingDirectory));
        try
        {
            await sender.SendAsync(directory, request, progress => responseStream.WriteAsync(progress.Clone()), context.CancellationToken);
        }
        catch (InvalidOperationException e)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition, e.Message));
        }
    }

    public override Task<MigrationStatus> GetMigration(MigrationRef request, ServerCallContext context) =>
        Call(() =>
        {
            CheckpointEngine.ValidateMigrationId(request.MigrationId);
            return Task.FromResult(Status(request.MigrationId));
        });

    public override async Task WatchMigrations(WatchMigrationsRequest request, IServerStreamWriter<MigrationStatus> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(responseStream);
        ArgumentNullException.ThrowIfNull(context);
        using var subscription = events.Subscribe();
        foreach (var id in checkpoints.MigrationIds.Union(incoming.MigrationIds).ToList())
        {
            await responseStream.WriteAsync(Report(id), context.CancellationToken);
        }

        try
        {
            await foreach (var id in subscription.Reader.ReadAllAsync(context.CancellationToken))
            {
                await responseStream.WriteAsync(Report(id), context.CancellationToken);
            }
        }
        catch (OperationCanceledException)
        {
            // the watcher went away
        }
    }

    /// <summary>Everything this node holds of a migration, as source and as target; NOT_FOUND when nothing.</summary>
    private MigrationStatus Status(string migrationId)
    {
        var source = checkpoints.Find(migrationId)?.ToStatus();
        var held = incoming.Status(migrationId, receiver.IsExpected(migrationId));
        if (source is null && held is null)
        {
            throw new CheckpointException(StatusCode.NotFound, $"node {options.Value.NodeName} knows no migration {migrationId}");
        }

        var status = source ?? new MigrationStatus { MigrationId = migrationId, NodeName = options.Value.NodeName };
        status.Incoming = held;
        return status;
    }

    private MigrationStatus Report(string migrationId)
    {
        try
        {
            return Status(migrationId);
        }
        catch (CheckpointException)
        {
            return new MigrationStatus { MigrationId = migrationId, NodeName = options.Value.NodeName, Phase = MigrationPhase.Cleaned };
        }
    }

    /// <summary>Turns the engine's errors into gRPC statuses; the message says why.</summary>
    private static async Task<T> Call<T>(Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (CheckpointException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
        catch (TransferRejectedException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            // not foreseen as a refusal: the caller (and the MigrationRequest's status) still learns what went wrong, not only that something did
            throw new RpcException(new Status(StatusCode.Internal, $"{e.GetType().Name}: {e.Message}"));
        }
    }
}

using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Services;

/// <summary>The agent's gRPC API; each call hands over to the domain object that owns it.</summary>
public sealed class NodeAgentService(NodeCapabilities capabilities, CheckpointEngine checkpoints, ImageReceiver receiver, ImageSender sender)
    : Agent.V1.NodeAgent.NodeAgentBase
{
    public override Task<GetCapabilitiesResponse> GetCapabilities(GetCapabilitiesRequest request, ServerCallContext context) =>
        Task.FromResult(capabilities.Current);

    public override Task<MigrationStatus> BeginCheckpoint(BeginCheckpointRequest request, ServerCallContext context) =>
        Call(() => checkpoints.BeginAsync(request, context.CancellationToken));

    public override Task<PreDumpResponse> PreDump(PreDumpRequest request, ServerCallContext context) =>
        Call(() => checkpoints.PreDumpAsync(request, context.CancellationToken));

    public override Task<FinalDumpResponse> FinalDump(FinalDumpRequest request, ServerCallContext context) =>
        Call(() => checkpoints.FinalDumpAsync(request.MigrationId, context.CancellationToken));

    public override Task<MigrationStatus> Resume(MigrationRef request, ServerCallContext context) =>
        Call(() => checkpoints.ResumeAsync(request.MigrationId, context.CancellationToken));

    public override Task<MigrationStatus> Finish(MigrationRef request, ServerCallContext context) =>
        Call(() => checkpoints.FinishAsync(request.MigrationId, context.CancellationToken));

    public override Task<MigrationStatus> Cleanup(MigrationRef request, ServerCallContext context) =>
        Call(async () =>
        {
            var status = await checkpoints.CleanupAsync(request.MigrationId, context.CancellationToken);
            receiver.Remove(request.MigrationId);
            return status;
        });

    public override Task<ExpectImagesResponse> ExpectImages(ExpectImagesRequest request, ServerCallContext context) =>
        Call(() => Task.FromResult(receiver.Expect(request)));

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
        Call(() => Task.FromResult(checkpoints.Get(request.MigrationId)));

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
    }
}

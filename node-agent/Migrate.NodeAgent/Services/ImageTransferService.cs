using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Services;

/// <summary>Agent-to-agent image streams and decisions; the peer is the node its client certificate names.</summary>
public sealed class ImageTransferService(ImageReceiver receiver, IncomingMigrations incoming, AgentIdentity identity, PostCopySource postCopy) : ImageTransfer.ImageTransferBase
{
    public override async Task FetchPages(IAsyncStreamReader<PageFetch> requestStream, IServerStreamWriter<PageData> responseStream, ServerCallContext context)
    {
        try
        {
            await postCopy.ServeAsync(requestStream, responseStream, Peer(context), context.CancellationToken);
        }
        catch (TransferRejectedException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
    }

    public override async Task Upload(IAsyncStreamReader<UploadMessage> requestStream, IServerStreamWriter<UploadReply> responseStream, ServerCallContext context)
    {
        try
        {
            await receiver.ReceiveAsync(requestStream, responseStream, Peer(context), context.CancellationToken);
        }
        catch (TransferRejectedException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
    }

    public override Task<TransferDecisionReply> Commit(TransferDecision request, ServerCallContext context) =>
        Decide(request, context, incoming.Commit);

    public override Task<TransferDecisionReply> Abort(TransferDecision request, ServerCallContext context) =>
        Decide(request, context, incoming.Abort);

    private Task<TransferDecisionReply> Decide(TransferDecision request, ServerCallContext context, Func<string, TransferDecisionReply> decide)
    {
        ArgumentNullException.ThrowIfNull(request);
        try
        {
            var claims = receiver.AuthorizePeer(request.Token, request.MigrationId, Peer(context));
            return Task.FromResult(decide(claims.MigrationId));
        }
        catch (TransferRejectedException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
    }

    private string? Peer(ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return identity.PeerOf(context.GetHttpContext().Connection.ClientCertificate);
    }
}

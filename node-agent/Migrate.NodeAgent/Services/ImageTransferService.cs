using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Services;

/// <summary>Agent-to-agent image streams; the peer is the node its client certificate names.</summary>
public sealed class ImageTransferService(ImageReceiver receiver, AgentIdentity identity) : ImageTransfer.ImageTransferBase
{
    public override async Task Upload(IAsyncStreamReader<UploadMessage> requestStream, IServerStreamWriter<UploadReply> responseStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var certificate = context.GetHttpContext().Connection.ClientCertificate;
        string? peer = certificate is not null && identity.Tls?.IsTrusted(certificate) == true ? AgentTls.NameOf(certificate) : null;
        try
        {
            await receiver.ReceiveAsync(requestStream, responseStream, peer, context.CancellationToken);
        }
        catch (TransferRejectedException e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
    }
}

using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Migrate.Agent.Contracts.Tracing;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The source agent's decisions on the target agent of a migration: commit (the final images are
/// staged there: it may restore) and abort (it must not), over mutual TLS with the operator's token
/// for the migration. Each call is short and idempotent.
/// </summary>
public sealed class PeerAgents(AgentIdentity identity, PeerConnections connections)
{
    public TimeSpan Deadline { get; init; } = TimeSpan.FromSeconds(10);

    public Task<TransferDecisionReply> CommitAsync(string migrationId, TransferTargetRecord target, CancellationToken cancellationToken) =>
        CallAsync(target, (client, options) => client.CommitAsync(new TransferDecision { MigrationId = migrationId, Token = target.Token }, options).ResponseAsync,
            cancellationToken);

    public Task<TransferDecisionReply> AbortAsync(string migrationId, TransferTargetRecord target, CancellationToken cancellationToken) =>
        CallAsync(target, (client, options) => client.AbortAsync(new TransferDecision { MigrationId = migrationId, Token = target.Token }, options).ResponseAsync,
            cancellationToken);

    private async Task<TransferDecisionReply> CallAsync(TransferTargetRecord target, Func<ImageTransfer.ImageTransferClient, CallOptions, Task<TransferDecisionReply>> call,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(target);
        var tls = identity.Tls ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, "this agent talks to its peers only over mutual TLS, and it has no certificate configured"));
        var client = new ImageTransfer.ImageTransferClient(connections.Channel(tls, target.Address, target.Node).Intercept(new TraceContextClientInterceptor()));
        var deadline = DateTime.UtcNow + Deadline;
        try
        {
            return await call(client, new CallOptions(deadline: deadline, cancellationToken: cancellationToken));
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && DateTime.UtcNow < deadline)
        {
            // a kept connection the peer closed meanwhile (it restarted): the call is idempotent, once more on a new one
            return await call(client, new CallOptions(deadline: deadline, cancellationToken: cancellationToken));
        }
    }
}

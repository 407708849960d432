using Grpc.Core;
using Migrate.Agent.V1;

namespace Migrate.NodeAgent.Services;

/// <summary>The agent's gRPC API; each call hands over to the domain object that owns it.</summary>
public sealed class NodeAgentService(NodeCapabilities capabilities) : Agent.V1.NodeAgent.NodeAgentBase
{
    public override Task<GetCapabilitiesResponse> GetCapabilities(GetCapabilitiesRequest request, ServerCallContext context) =>
        Task.FromResult(capabilities.Current);
}

using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Migrate.NodeAgent;

/// <summary>The agent is healthy when CRIU on this node passes its own check.</summary>
public sealed class CriuHealthCheck(NodeCapabilities capabilities) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var criu = capabilities.Current.Criu;
        return Task.FromResult(criu.CheckPassed
            ? HealthCheckResult.Healthy($"CRIU {criu.Version}")
            : HealthCheckResult.Unhealthy($"CRIU {criu.Version} failed its check: {criu.CheckMessage}"));
    }
}

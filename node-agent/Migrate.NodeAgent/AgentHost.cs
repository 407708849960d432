using System.Net;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Migrate.Cri;
using Migrate.Criu;
using Migrate.NodeAgent.Checkpointing;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
using Migrate.NodeAgent.Services;

namespace Migrate.NodeAgent;

/// <summary>Builds the agent's web host: gRPC API, gRPC health service and /healthz.</summary>
public static class AgentHost
{
    public static WebApplication Build(string[] args)
    {
        var builder = WebApplication.CreateSlimBuilder(args);
        builder.Configuration.AddEnvironmentVariables("PODMIG_");
        builder.Services.AddOptions<AgentOptions>()
            .Bind(builder.Configuration.GetSection(AgentOptions.Section))
            .ValidateDataAnnotations()
            .ValidateOnStart();

        var listen = builder.Configuration.GetSection(AgentOptions.Section)[nameof(AgentOptions.ListenAddress)] ?? new AgentOptions().ListenAddress;
        var endpoint = ParseEndpoint(listen);
        builder.WebHost.ConfigureKestrel(kestrel =>
            kestrel.Listen(endpoint, listenOptions => listenOptions.Protocols = HttpProtocols.Http2));

        builder.Services.AddSingleton(sp => new CriuClient(sp.GetRequiredService<IOptions<AgentOptions>>().Value.CriuBinary));
        builder.Services.AddSingleton<NodeCapabilities>();
        builder.Services.AddSingleton(sp => new CriClient(sp.GetRequiredService<IOptions<AgentOptions>>().Value.CriSocket));
        builder.Services.AddSingleton<PodLocator>();
        builder.Services.AddSingleton<CheckpointEngine>();
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService("podmig-node-agent"))
            .WithTracing(tracing => tracing.AddSource(AgentTelemetry.Name))
            .WithMetrics(metrics => metrics.AddMeter(AgentTelemetry.Name));
        if (!string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        {
            // exported only where a collector is configured (the standard OTEL_* variables)
            telemetry.UseOtlpExporter();
        }
        builder.Services.AddGrpc();
        builder.Services.AddGrpcHealthChecks().AddCheck<CriuHealthCheck>("criu");

        var app = builder.Build();
        app.MapGrpcService<NodeAgentService>();
        app.MapGrpcHealthChecksService();
        app.MapGet("/healthz", () => "ok");
        return app;
    }

    /// <summary>Parses "host:port" (IPv4, [IPv6] or a name resolving to loopback-only "localhost").</summary>
    internal static IPEndPoint ParseEndpoint(string value)
    {
        if (IPEndPoint.TryParse(value, out var endpoint) && (endpoint.Port != 0 || value.EndsWith(":0", StringComparison.Ordinal)))
        {
            return endpoint;
        }

        if (value.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase)
            && int.TryParse(value["localhost:".Length..], out int port))
        {
            return new IPEndPoint(IPAddress.Loopback, port);
        }

        throw new ArgumentException($"listen address '{value}' is not host:port (e.g. 127.0.0.1:7070)", nameof(value));
    }
}

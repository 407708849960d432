using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection.Extensions;
using System.Net;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Tracing;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Criu.Lazy;
using Migrate.Cri;
using Migrate.Criu;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Services;
using Migrate.NodeAgent.Transfer;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Migrate.NodeAgent;

/// <summary>Builds the agent's web host: gRPC API, gRPC health service and /healthz.</summary>
public static class AgentHost
{
    public static WebApplication Build(string[] args)
    {
        // the content root (appsettings.json, watched for changes) is the program's directory, not the working directory:
        // in a container that is "/", and a watch on it walks a /proc of the node's (hostPID) until the stack overflows
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        builder.Configuration.AddEnvironmentVariables("PODMIG_");
        builder.Services.AddOptions<AgentOptions>()
            .Bind(builder.Configuration.GetSection(AgentOptions.Section))
            .ValidateDataAnnotations()
            .ValidateOnStart();

        var section = builder.Configuration.GetSection(AgentOptions.Section);
        if (section[nameof(AgentOptions.CertificateSecret)] is { Length: > 0 })
        {
            builder.Configuration.AddInMemoryCollection(AgentCredentials.Fetch(section, Console.Error));
        }

        PublishPinKey(builder.Configuration.GetSection(AgentOptions.Section));
        var endpoint = ParseEndpoint(section[nameof(AgentOptions.ListenAddress)] ?? new AgentOptions().ListenAddress);
        var identity = new AgentIdentity(LoadTls(section));
        builder.Services.AddSingleton(identity);
        // the server reads connections in 64 KiB blocks, not 4 KiB ones (LargeBlockMemoryPool)
        builder.Services.AddSingleton<IMemoryPoolFactory<byte>, LargeBlockMemoryPoolFactory>();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Limits.Http2.MaxStreamsPerConnection = 64;
            // image chunks are up to 4 MiB: windows smaller than a few chunks stall a sender on every WINDOW_UPDATE
            kestrel.Limits.Http2.InitialConnectionWindowSize = 32 << 20;
            kestrel.Limits.Http2.InitialStreamWindowSize = 16 << 20;
            // the bulk lane's frames are up to a chunk (1-4 MiB) plus a header: a connection buffers a few, not fewer than one
            kestrel.Limits.MaxRequestBufferSize = 16 << 20;
            kestrel.Listen(endpoint, listenOptions =>
            {
                // with TLS, ALPN gives gRPC HTTP/2 and the images' bulk lane HTTP/1.1; without, HTTP/2 only (no bulk lane)
                listenOptions.Protocols = identity.Tls is null ? HttpProtocols.Http2 : HttpProtocols.Http1AndHttp2;
                if (identity.Tls is { } tls)
                {
                    // mutual TLS: every caller (operator, peer agents) shows a certificate from the cluster's CA
                    listenOptions.UseHttps(https =>
                    {
                        https.ServerCertificate = tls.Certificate;
                        https.ClientCertificateMode = ClientCertificateMode.RequireCertificate;
                        https.ClientCertificateValidation = (certificate, _, _) => tls.IsTrusted(certificate);
                        https.OnAuthenticate = (_, ssl) => ssl.CipherSuitesPolicy = AgentTls.Suites;
                    });
                }
            });
            if (section[nameof(AgentOptions.ProbeListenAddress)] is { Length: > 0 } probes)
            {
                kestrel.Listen(ParseEndpoint(probes), listenOptions => listenOptions.Protocols = HttpProtocols.Http1);
            }
        });

        builder.Services.AddSingleton(sp => new CriuClient(sp.GetRequiredService<IOptions<AgentOptions>>().Value.CriuBinary));
        builder.Services.AddSingleton(sp => new CriClient(sp.GetRequiredService<IOptions<AgentOptions>>().Value.CriSocket));
        builder.Services.AddSingleton<CriCheckpointer>();
        builder.Services.AddSingleton(sp => new NodeCapabilities(sp.GetRequiredService<CriuClient>(), sp.GetRequiredService<IOptions<AgentOptions>>(), sp.GetRequiredService<CriCheckpointer>()));
        builder.Services.AddSingleton<PodLocator>();
        builder.Services.AddSingleton<MigrationEvents>();
        builder.Services.TryAddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(sp => new CheckpointEngine(sp.GetRequiredService<PodLocator>(), sp.GetRequiredService<CriuClient>(),
            sp.GetRequiredService<IOptions<AgentOptions>>(), sp.GetRequiredService<ILogger<CheckpointEngine>>(), sp.GetRequiredService<MigrationEvents>())
        {
            CriCheckpoints = sp.GetRequiredService<CriCheckpointer>(),
        });
        builder.Services.AddSingleton(sp => new ImageReceiver(sp.GetRequiredService<IOptions<AgentOptions>>(), sp.GetRequiredService<ILogger<ImageReceiver>>(),
            sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<MigrationEvents>()));
        builder.Services.AddSingleton<PeerConnections>();
        builder.Services.AddSingleton<ImageSender>();
        builder.Services.AddSingleton<PeerAgents>();
        builder.Services.AddSingleton<IncomingMigrations>();
        builder.Services.AddSingleton<PostCopySource>();
        builder.Services.AddSingleton<PostCopyRelay>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<PostCopyRelay>());
        builder.Services.AddHostedService(sp => sp.GetRequiredService<IncomingMigrations>());
        builder.Services.AddSingleton<KeptCheckpoints>();
        builder.Services.AddSingleton<PodFence>();
        builder.Services.AddSingleton<HandoffGates>();
        builder.Services.AddSingleton<CheckpointGates>();
        builder.Services.AddSingleton<MigrationOperations>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<MigrationOperations>());
        builder.Services.AddSingleton<StagingGarbageCollector>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<StagingGarbageCollector>());
        builder.Services.AddHostedService<CriuKernelFacts>();
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService("podmig-node-agent")
                .AddAttributes([new("k8s.node.name", section[nameof(AgentOptions.NodeName)] ?? new AgentOptions().NodeName)]))
            .WithTracing(tracing => tracing.AddSource(AgentTelemetry.Name))
            .WithMetrics(metrics => metrics.AddMeter(AgentTelemetry.Name).AddPrometheusExporter());
        if (!string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        {
            // exported only where a collector is configured (the standard OTEL_* variables)
            telemetry.UseOtlpExporter();
        }
        if (bool.TryParse(section[nameof(AgentOptions.AnnounceToNode)], out var announce) && announce)
        {
            builder.Services.AddHostedService<NodeAnnouncement>();
        }

        // every call runs in a server span, the child of the caller's (W3C trace context in the metadata)
        builder.Services.AddSingleton(new TraceContextServerInterceptor(AgentTelemetry.Source));
        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = (4 << 20) + (128 << 10);
            grpc.Interceptors.Add<TraceContextServerInterceptor>();
        });
        builder.Services.AddGrpcHealthChecks().AddCheck<CriuHealthCheck>("criu");

        var app = builder.Build();
        app.MapGrpcService<NodeAgentService>();
        app.MapGrpcService<ImageTransferService>();
        app.MapGrpcHealthChecksService();
        app.MapPost(BulkLane.Path, async (HttpContext http, ImageReceiver receiver) =>
        {
            // an upload's body is as large as its images; the upload's token and limits bound it
            if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
            {
                size.MaxRequestBodySize = null;
            }

            var (status, message) = await receiver.TakeBulkAsync(http.Request.Headers[BulkLane.TicketHeader], identity.PeerOf(http.Connection.ClientCertificate),
                http.Request.BodyReader);
            return Results.Text(message, statusCode: status);
        });
        app.MapPost(PagesLane.Path, (HttpContext http, PostCopySource source) => source.ServeLaneAsync(http, identity.PeerOf(http.Connection.ClientCertificate)));
        app.MapGet("/healthz", () => "ok");
        // Prometheus exposition, on the probe port (plain HTTP) as on the gRPC one
        app.MapPrometheusScrapingEndpoint();
        var settings = app.Services.GetRequiredService<IOptions<AgentOptions>>().Value;
        AgentTelemetry.CountStagedWith(() => new[] { settings.StagingDirectory, settings.MemoryStagingDirectory, settings.IncomingDirectory }
            .OfType<string>().Where(d => d.Length > 0 && Directory.Exists(d)).Sum(d => Directory.EnumerateDirectories(d).Count()));
        AgentTelemetry.MeasureStagingIn(settings.StagingDirectory);
        var engine = app.Services.GetRequiredService<CheckpointEngine>();
        AgentTelemetry.MeasureMemoryStagingIn(settings.MemoryStagingDirectory, engine.MemoryReservedBytes);
        return app;
    }

    /// <summary>The operator's public key, copied where the node's podmig-ipam reads it (written whole, then renamed into place).</summary>
    internal static void PublishPinKey(IConfigurationSection section)
    {
        if (section[nameof(AgentOptions.TokenPublicKeyFile)] is not { Length: > 0 } key || (section[nameof(AgentOptions.PinKeyFile)] ?? new AgentOptions().PinKeyFile) is not { Length: > 0 } pin)
        {
            return;
        }

        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(pin))!);
            WholeFile.Write(pin, File.ReadAllBytes(key), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // the agent serves on without it: only keeping an address needs it, and podmig-ipam then refuses the pin naming the missing file
            Console.Error.WriteLine($"podmig-agent: the operator's public key could not be written to {pin} for podmig-ipam: {e.Message}");
        }
    }

    private static AgentTls? LoadTls(IConfigurationSection section)
    {
        string? certificate = section[nameof(AgentOptions.TlsCertificateFile)];
        string? key = section[nameof(AgentOptions.TlsKeyFile)];
        string? authority = section[nameof(AgentOptions.TlsAuthorityFile)];
        if (certificate is null && key is null && authority is null)
        {
            return null;
        }

        if (certificate is null || key is null || authority is null)
        {
            throw new ArgumentException("mutual TLS needs all of TlsCertificateFile, TlsKeyFile and TlsAuthorityFile");
        }

        return AgentTls.Load(certificate, key, authority);
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

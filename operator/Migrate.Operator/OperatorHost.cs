using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Grpc.Net.Client;
using k8s;
using Migrate.Agent.Contracts.Security;
using Migrate.Operator.Admission;
using Migrate.Operator.Checkpoints;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;
using Migrate.Operator.Security;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Migrate.Operator;

/// <summary>
/// The operator's host: the MigrationRequest controller (acting only while this replica holds the
/// leader Lease), the agent directory (agents found by their node annotation, called over gRPC with
/// mutual TLS when certificates are configured), and the probes.
/// </summary>
public static class OperatorHost
{
    public static WebApplication Build(string[] args)
    {
        // the content root (appsettings.json, watched for changes) is the program's directory, not the working directory:
        // in a container that is "/", and a watch on it walks a /proc of the node's (hostPID) until the stack overflows
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
        // HTTPS endpoints (the pod webhook) come from Kestrel:Endpoints configuration, with PEM files
        builder.WebHost.UseKestrelHttpsConfiguration();
        builder.Configuration.AddEnvironmentVariables("PODMIG_");
        var options = new OperatorOptions();
        builder.Configuration.GetSection(OperatorOptions.Section).Bind(options);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton<IKubernetes>(_ => new k8s.Kubernetes(ClientConfiguration(options), new ResilientApiHandler()));
        Func<AgentTls?> tls;
        Func<ECDsa?> tokenKey;
        if (options.ManageAgentCertificates)
        {
            // registered before the controllers: its StartAsync loads the CA before they run
            ClusterPki? pki = null;
            builder.Services.AddHostedService(sp => pki = new ClusterPki(sp.GetRequiredService<IKubernetes>(), options,
                sp.GetRequiredService<ILogger<ClusterPki>>(), sp.GetRequiredService<TimeProvider>()));
            tls = () => pki?.OperatorTls;
            tokenKey = () => pki?.TokenKey;
        }
        else
        {
            var files = options is { TlsCertificateFile: { } certificate, TlsKeyFile: { } key, TlsAuthorityFile: { } authority }
                ? AgentTls.Load(certificate, key, authority)
                : null;
            var signing = options.TokenSigningKeyFile is { Length: > 0 } file ? TransferToken.LoadKey(file) : null;
            tls = () => files;
            tokenKey = () => signing;
        }

        builder.Services.AddSingleton<IAgentDirectory>(_ => new AnnotatedAgentDirectory(Channels(tls, options.ManageAgentCertificates)));
        if (options.LeaderElection)
        {
            builder.Services.AddSingleton(sp => new LeaseLeaderGate(sp.GetRequiredService<IKubernetes>(), options.LeaseNamespace, options.LeaseName, options.Identity,
                sp.GetRequiredService<ILogger<LeaseLeaderGate>>()));
            builder.Services.AddSingleton<ILeaderGate>(sp => sp.GetRequiredService<LeaseLeaderGate>());
            builder.Services.AddHostedService(sp => sp.GetRequiredService<LeaseLeaderGate>());
        }
        else
        {
            builder.Services.AddSingleton<ILeaderGate, AlwaysLeader>();
        }

        builder.Services.AddSingleton<ClusterCache>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ClusterCache>());
        builder.Services.AddSingleton(sp => new MigrationExecutor(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<IAgentDirectory>(),
            TokenMinter(tokenKey), sp.GetRequiredService<TimeProvider>(), new EventRecorder(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<TimeProvider>()),
            sp.GetRequiredService<ILeaderGate>())
        {
            BandwidthPerMigration = (ulong)Math.Max(0, options.BandwidthPerMigration),
            LazyRestore = options.LazyRestore,
            MintPin = PinMinter(tokenKey),
            GroupHoldTimeout = TimeSpan.FromSeconds(Math.Max(5, options.GroupHoldSeconds)),
        });
        builder.Services.AddHostedService(sp => new MigrationController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<IAgentDirectory>(), sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<MigrationController>>(),
            sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<MigrationExecutor>(), options.Policy()) { Workers = options.Workers });
        builder.Services.AddHostedService(sp => new GroupController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<GroupController>>(), sp.GetRequiredService<TimeProvider>(), options.GroupPolicy()));
        builder.Services.AddHostedService(sp => new DrainController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<DrainController>>(), sp.GetRequiredService<TimeProvider>()));
        builder.Services.AddSingleton<LeftCheckpoints>();
        builder.Services.AddHostedService(sp => new CheckpointController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<IAgentDirectory>(), sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<CheckpointController>>(),
            sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<LeftCheckpoints>())
        {
            Policy = options.CheckpointPolicy(),
            GroupPolicy = new CheckpointGroupPolicy { MaxMembers = options.MaxGroupMembers },
            GroupHold = TimeSpan.FromSeconds(Math.Max(5, options.GroupHoldSeconds)),
        });
        builder.Services.AddHostedService(sp => new CheckpointSweeper(sp.GetRequiredService<ClusterCache>(), sp.GetRequiredService<IAgentDirectory>(),
            sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<LeftCheckpoints>(), sp.GetRequiredService<ILogger<CheckpointSweeper>>(),
            sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<IKubernetes>())
        {
            Interval = TimeSpan.FromSeconds(Math.Max(1, options.CheckpointSweepSeconds)),
            Grace = TimeSpan.FromSeconds(Math.Max(1, options.CheckpointOrphanGraceSeconds)),
        });
        builder.Services.AddHostedService(sp => new RestoreController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<IAgentDirectory>(), sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<RestoreController>>(),
            sp.GetRequiredService<TimeProvider>(), TokenMinter(tokenKey))
        {
            Policy = options.CheckpointPolicy(),
        });
        builder.Services.AddHostedService(sp => new ScheduleController(sp.GetRequiredService<IKubernetes>(), sp.GetRequiredService<ClusterCache>(),
            sp.GetRequiredService<ILeaderGate>(), sp.GetRequiredService<ILogger<ScheduleController>>(), sp.GetRequiredService<TimeProvider>()));
        if (options.WebhookListenAddress is { Length: > 0 } webhookAddress)
        {
            builder.Services.AddSingleton(sp => new WebhookCertificates(sp.GetRequiredService<IKubernetes>(), options,
                sp.GetRequiredService<ILogger<WebhookCertificates>>(), sp.GetRequiredService<TimeProvider>()));
            builder.Services.AddHostedService(sp => sp.GetRequiredService<WebhookCertificates>());
            var endpoint = IPEndPoint.Parse(webhookAddress);
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(endpoint, listen => listen.UseHttps(new HttpsConnectionAdapterOptions
            {
                // until the certificate is loaded handshakes fail, and the API server applies the webhook's failurePolicy
                ServerCertificateSelector = (_, _) => kestrel.ApplicationServices.GetRequiredService<WebhookCertificates>().Current,
            })));
        }

        builder.Services.AddHealthChecks();
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService("podmig-operator"))
            .WithTracing(tracing => tracing.AddSource(OperatorTelemetry.Name))
            .WithMetrics(metrics => metrics.AddMeter(OperatorTelemetry.Name).AddPrometheusExporter());
        if (!string.IsNullOrEmpty(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        {
            telemetry.UseOtlpExporter();
        }

        var app = builder.Build();
        app.MapHealthChecks("/healthz");
        app.MapHealthChecks("/readyz");
        // Prometheus exposition of the operator's metrics, next to the probes
        app.MapPrometheusScrapingEndpoint();
        app.MapPost(PodNameGuard.Path, (HttpContext http, IKubernetes client) => PodNameGuard.ReviewAsync(http, client));
        app.MapPost(EvictionGuard.Path, (HttpContext http, IKubernetes client) => EvictionGuard.ReviewAsync(http, client));
        return app;
    }

    /// <summary>Signs transfer tokens with the configured (or managed) key; without one, transfers cannot be authorised and migrations roll back.</summary>
    private static Func<TransferClaims, string> TokenMinter(Func<ECDsa?> key) =>
        claims => key() is { } signing
            ? TransferToken.Mint(signing, claims)
            : throw new TransientActionException(
                "the operator has no key to sign transfer tokens with (Operator:TokenSigningKeyFile, or Operator:ManageAgentCertificates)");

    /// <summary>Signs replacements' pinned addresses with the same key as transfer tokens (the nodes hold its public half).</summary>
    private static Func<PinClaims, string> PinMinter(Func<ECDsa?> key) =>
        claims => key() is { } signing
            ? PinToken.Mint(signing, claims)
            : throw new TransientActionException(
                "the operator has no key to sign pinned addresses with (Operator:TokenSigningKeyFile, or Operator:ManageAgentCertificates)");

    private static KubernetesClientConfiguration ClientConfiguration(OperatorOptions options) =>
        options.Kubeconfig is { Length: > 0 } path
            ? KubernetesClientConfiguration.BuildConfigFromConfigFile(path)
            : KubernetesClientConfiguration.IsInCluster()
                ? KubernetesClientConfiguration.InClusterConfig()
                : KubernetesClientConfiguration.BuildDefaultConfig();

    /// <summary>
    /// One channel per agent endpoint: mutual TLS when the operator has a certificate, plain HTTP/2
    /// otherwise. With managed certificates there is never a plain channel: until the CA is loaded
    /// the call fails (and the step is retried).
    /// </summary>
    /// <summary>The longest the operator waits between two attempts to reconnect to an agent that does not answer.</summary>
    public static readonly TimeSpan AgentReconnectBackoff = TimeSpan.FromSeconds(3);

    private static Func<string, GrpcChannel> Channels(Func<AgentTls?> identity, bool tlsRequired)
    {
        var channels = new ConcurrentDictionary<string, GrpcChannel>(StringComparer.Ordinal);
        return endpoint =>
        {
            var tls = identity();
            if (tls is null && tlsRequired)
            {
                throw new TransientActionException("the operator has not loaded the agents' CA yet");
            }

            // an agent that restarted is reached again within seconds: the channel's reconnect backoff would otherwise grow to two minutes
            return channels.GetOrAdd(endpoint, e => tls is null
                ? GrpcChannel.ForAddress("http://" + e, new GrpcChannelOptions { MaxReconnectBackoff = AgentReconnectBackoff })
                : GrpcChannel.ForAddress("https://" + e, new GrpcChannelOptions { HttpHandler = tls.CreateHandler(expectedPeer: null), MaxReconnectBackoff = AgentReconnectBackoff }));
        };
    }
}

using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Migrate.KubeEmulator.Api;

namespace Migrate.KubeEmulator;

/// <summary>How to start an emulator.</summary>
public sealed class KubeEmulatorSettings
{
    /// <summary>Address to listen on; 127.0.0.1 by default.</summary>
    public IPAddress Address { get; set; } = IPAddress.Loopback;

    /// <summary>Port; 0 picks a free one.</summary>
    public int Port { get; set; }

    /// <summary>More addresses to listen on, with the same port, and in the serving certificate (e.g. a pod network's gateway, for pods' in-cluster clients).</summary>
    public IList<IPAddress> AdditionalAddresses { get; } = [];

    /// <summary>Where to write the admin kubeconfig; a temporary file by default.</summary>
    public string? KubeconfigPath { get; set; }

    public EmulatorOptions Api { get; } = new();

    /// <summary>Log level of the emulator's own logs (warnings by default).</summary>
    public LogLevel LogLevel { get; set; } = LogLevel.Warning;
}

/// <summary>A running emulator: HTTPS on loopback, an admin kubeconfig, and the server object.</summary>
public sealed class KubeEmulator : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly CertificateAuthority _ca;
    private readonly X509Certificate2 _serving;
    private readonly bool _ownsKubeconfig;

    private KubeEmulator(WebApplication app, ApiServer server, CertificateAuthority ca, X509Certificate2 serving, string url, string kubeconfig, bool ownsKubeconfig)
    {
        _app = app;
        Server = server;
        _ca = ca;
        _serving = serving;
        Url = url;
        KubeconfigPath = kubeconfig;
        _ownsKubeconfig = ownsKubeconfig;
    }

    public ApiServer Server { get; }

    /// <summary>https://127.0.0.1:PORT</summary>
    public string Url { get; }

    public string KubeconfigPath { get; }

    public string CaCertificatePem => _ca.CertificatePem;

    /// <summary>The emulator's CA, which tests can use to issue serving certificates (webhooks, kubelets).</summary>
    public CertificateAuthority CertificateAuthority => _ca;

    public static async Task<KubeEmulator> StartAsync(KubeEmulatorSettings settings, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var ca = new CertificateAuthority();
        var serving = ca.IssueServer("kube-apiserver", ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            new[] { IPAddress.Loopback, IPAddress.IPv6Loopback, settings.Address }.Concat(settings.AdditionalAddresses).Distinct());
        int port = settings.Port;
        if (port == 0 && settings.AdditionalAddresses.Count > 0)
        {
            // one port on every address: find one free on the first
            using var probe = new System.Net.Sockets.TcpListener(settings.Address, 0);
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(settings.LogLevel);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Limits.MaxRequestBodySize = 8 * 1024 * 1024;
            kestrel.Limits.Http2.MaxStreamsPerConnection = 1000;
            foreach (var address in new[] { settings.Address }.Concat(settings.AdditionalAddresses).Distinct())
            {
                kestrel.Listen(address, port, listen =>
                {
                    listen.Protocols = HttpProtocols.Http1AndHttp2;
                    listen.UseHttps(serving);
                });
            }
        });
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(settings.Api);
        builder.Services.AddSingleton<ApiServer>();
        var app = builder.Build();
        var server = app.Services.GetRequiredService<ApiServer>();
        app.Run(server.HandleAsync);
        await app.StartAsync(cancellationToken);

        port = new Uri(app.Urls.First()).Port;
        var host = settings.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{settings.Address}]" : settings.Address.ToString();
        var url = $"https://{host}:{port}";
        settings.Api.ServerAddress = $"{host}:{port}";
        var path = settings.KubeconfigPath ?? Path.Combine(Path.GetTempPath(), $"kube-emulator-{port}.kubeconfig");
        var emulator = new KubeEmulator(app, server, ca, serving, url, Path.GetFullPath(path), settings.KubeconfigPath is null);
        emulator.WriteKubeconfig(emulator.KubeconfigPath, server.Authenticator.AdminToken, "admin");
        return emulator;
    }

    /// <summary>Writes a kubeconfig for this server with the given bearer token.</summary>
    public void WriteKubeconfig(string path, string token, string userName, string? defaultNamespace = "default")
    {
        var ca = Convert.ToBase64String(Encoding.UTF8.GetBytes(_ca.CertificatePem));
        var text = $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: kube-emulator
              cluster:
                server: {Url}
                certificate-authority-data: {ca}
            users:
            - name: {userName}
              user:
                token: {token}
            contexts:
            - name: kube-emulator
              context:
                cluster: kube-emulator
                user: {userName}
                namespace: {defaultNamespace}
            current-context: kube-emulator

            """;
        var directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (!string.IsNullOrEmpty(directory))
        {
            Directory.CreateDirectory(directory);
        }

        File.WriteAllText(path, text);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    public async ValueTask DisposeAsync()
    {
        Server.StopWatches();
        await _app.StopAsync();
        await _app.DisposeAsync();
        _serving.Dispose();
        _ca.Dispose();
        if (_ownsKubeconfig)
        {
            File.Delete(KubeconfigPath);
        }
    }
}

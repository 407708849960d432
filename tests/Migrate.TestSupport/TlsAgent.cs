using Microsoft.AspNetCore.Builder;
using Migrate.NodeAgent;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.TestSupport;

/// <summary>One agent of a transfer test: the real host with mutual TLS, its own staging and incoming directories.</summary>
public sealed class TlsAgent : IAsyncDisposable
{
    private readonly WebApplication _host;

    private TlsAgent(string name, string root, int port, WebApplication host)
    {
        Name = name;
        Root = root;
        Port = port;
        _host = host;
    }

    public string Name { get; }

    public string Root { get; }

    public int Port { get; }

    public string Address => $"127.0.0.1:{Port}";

    public string Staging => Path.Combine(Root, "staging");

    public string Incoming => Path.Combine(Root, "incoming");

    public static async Task<TlsAgent> StartAsync(TestPki pki, string name, string root, params string[] extra)
    {
        var certificate = pki.Issue(name);
        int port = Ports.Free();
        var host = AgentHost.Build([
            $"--Agent:ListenAddress=127.0.0.1:{port}",
            $"--Agent:NodeName={name}",
            $"--Agent:CriSocket={Path.Combine(root, "no-cri.sock")}",
            $"--Agent:StagingDirectory={Path.Combine(root, "staging")}",
            $"--Agent:IncomingDirectory={Path.Combine(root, "incoming")}",
            $"--Agent:TlsCertificateFile={certificate.CertificateFile}",
            $"--Agent:TlsKeyFile={certificate.KeyFile}",
            $"--Agent:TlsAuthorityFile={pki.AuthorityFile}",
            $"--Agent:TokenPublicKeyFile={pki.TokenPublicKeyFile}",
            "--Logging:LogLevel:Default=Warning",
            .. extra,
        ]);
        await host.StartAsync();
        return new TlsAgent(name, root, port, host);
    }

    /// <summary>Records <paramref name="directory"/> as the staged images of a frozen migration in this agent's staging, as a final dump would.</summary>
    public void RecordFrozenMigration(string migration, string directory) =>
        new MigrationRecord
        {
            MigrationId = migration,
            Namespace = "default",
            PodName = migration,
            PodUid = Guid.NewGuid().ToString(),
            NodeName = Name,
            SandboxId = "sandbox",
            StagingDirectory = directory,
            PreCopyMethod = Migrate.Criu.Incremental.PreCopyMethod.ContentComparison,
            Containers = [],
            Phase = Migrate.Agent.V1.MigrationPhase.Frozen,
        }.Save();

    public async ValueTask DisposeAsync()
    {
        await _host.StopAsync();
        await _host.DisposeAsync();
    }
}

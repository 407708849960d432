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

    /// <summary>The agent's own services (to call one directly, as its timers would).</summary>
    public IServiceProvider Services => _host.Services;

    public static async Task<TlsAgent> StartAsync(TestPki pki, string name, string root, params string[] extra)
    {
        int port = Ports.Free();
        var host = AgentHost.Build([
            .. Arguments(pki, name, $"127.0.0.1:{port}", Path.Combine(root, "no-cri.sock"), Path.Combine(root, "staging"), Path.Combine(root, "incoming")),
            "--Logging:LogLevel:Default=Warning",
            .. extra,
        ]);
        await host.StartAsync();
        return new TlsAgent(name, root, port, host);
    }

    /// <summary>An agent's command line: its address, node, CRI socket, directories, its certificate from <paramref name="pki"/>, the CA and the token key.</summary>
    public static string[] Arguments(TestPki pki, string name, string listenAddress, string criSocket, string staging, string incoming)
    {
        ArgumentNullException.ThrowIfNull(pki);
        var certificate = pki.Issue(name);
        return [
            $"--Agent:ListenAddress={listenAddress}",
            $"--Agent:NodeName={name}",
            $"--Agent:CriSocket={criSocket}",
            $"--Agent:StagingDirectory={staging}",
            $"--Agent:IncomingDirectory={incoming}",
            $"--Agent:TlsCertificateFile={certificate.CertificateFile}",
            $"--Agent:TlsKeyFile={certificate.KeyFile}",
            $"--Agent:TlsAuthorityFile={pki.AuthorityFile}",
            $"--Agent:TokenPublicKeyFile={pki.TokenPublicKeyFile}",
            // beside the staging directory (the node's root in the sandbox, where its podmig-ipam reads it), never the host's
            $"--Agent:PinKeyFile={PinKeyFile(staging)}",
        ];
    }

    /// <summary>Where an agent with this staging directory writes the operator's public key for podmig-ipam.</summary>
    public static string PinKeyFile(string staging) => Path.Combine(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(staging)))!, "pin-key.pem");

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

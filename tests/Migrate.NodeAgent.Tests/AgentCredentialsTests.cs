using System.Text;
using k8s;
using k8s.Models;
using Microsoft.Extensions.DependencyInjection;
using Migrate.Agent.Contracts.Security;
using Migrate.NodeAgent;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>Installed, the agent takes its certificate, key, CA and token key from its node's Secret, made by the operator.</summary>
public sealed class AgentCredentialsTests(EmulatorFixture cluster) : IClassFixture<EmulatorFixture>
{
    [Fact]
    public async Task The_agent_waits_for_its_nodes_Secret_and_serves_mutual_TLS_with_it()
    {
        using var pki = new TestPki();
        var identity = pki.Issue("node-c");
        var root = Directory.CreateTempSubdirectory("agent-credentials-").FullName;
        var credentials = Path.Combine(root, "credentials");
        var building = Task.Run(() => AgentHost.Build([
            $"--Agent:ListenAddress=127.0.0.1:{Ports.Free()}",
            "--Agent:NodeName=node-c",
            $"--Agent:CriSocket={Path.Combine(root, "no-cri.sock")}",
            $"--Agent:StagingDirectory={Path.Combine(root, "staging")}",
            $"--Agent:IncomingDirectory={Path.Combine(root, "incoming")}",
            "--Agent:CertificateSecret=agent-{node}",
            "--Agent:CertificateSecretNamespace=default",
            $"--Agent:CredentialsDirectory={credentials}",
            $"--Agent:PinKeyFile={Path.Combine(root, "host", "pin-key.pem")}",
            $"--Agent:Kubeconfig={cluster.Emulator.KubeconfigPath}",
            "--Logging:LogLevel:Default=Warning",
        ]));
        try
        {
            await Task.Delay(1500);
            Assert.False(building.IsCompleted, "the agent started before its Secret existed");
            var data = new Dictionary<string, byte[]>
            {
                ["tls.crt"] = File.ReadAllBytes(identity.CertificateFile),
                ["tls.key"] = File.ReadAllBytes(identity.KeyFile),
                ["ca.crt"] = File.ReadAllBytes(pki.AuthorityFile),
                ["token.pub"] = File.ReadAllBytes(pki.TokenPublicKeyFile),
            };
            await cluster.Client.CoreV1.CreateNamespacedSecretAsync(new V1Secret { Metadata = new V1ObjectMeta { Name = "agent-node-c" }, Data = data }, "default");
            await using var host = await building.WaitAsync(TimeSpan.FromSeconds(30));

            var tls = host.Services.GetRequiredService<AgentIdentity>().Tls;
            Assert.NotNull(tls);
            Assert.Equal("node-c", AgentTls.NameOf(tls.Certificate));
            Assert.True(tls.IsTrusted(System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(pki.Issue("operator").CertificateFile)), "operator"));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(credentials));
            foreach (var (key, bytes) in data)
            {
                var file = Path.Combine(credentials, key);
                Assert.Equal(Encoding.ASCII.GetString(bytes), File.ReadAllText(file));
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            }

            // the operator's public key, published for the node's podmig-ipam (readable by all: it is public)
            var pinKey = Path.Combine(root, "host", "pin-key.pem");
            Assert.Equal(Encoding.ASCII.GetString(data["token.pub"]), File.ReadAllText(pinKey));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(pinKey));
            Assert.Equal([pinKey], Directory.GetFiles(Path.GetDirectoryName(pinKey)!));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}

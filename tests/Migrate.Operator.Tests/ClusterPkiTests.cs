using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Agent.Contracts.Security;
using Migrate.Operator.Security;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>The agents' certificates the operator makes (Operator:ManageAgentCertificates), against the API emulator.</summary>
public sealed class ClusterPkiTests(EmulatorFixture cluster) : IClassFixture<EmulatorFixture>
{
    private static OperatorOptions Options(string ns) => new() { ManageAgentCertificates = true, PkiNamespace = ns };

    private async Task<string> NamespaceAsync(string name)
    {
        await cluster.Client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = name } });
        return name;
    }

    private Task<V1Node> AddNodeAsync(string name) =>
        cluster.Client.CoreV1.CreateNodeAsync(new V1Node { Metadata = new V1ObjectMeta { Name = name } });

    private ClusterPki Start(OperatorOptions options) =>
        new(cluster.Client, options, NullLogger<ClusterPki>.Instance, TimeProvider.System) { Interval = TimeSpan.FromMilliseconds(200) };

    private async Task<V1Secret> SecretAsync(string ns, string name, Func<V1Secret, bool>? until = null)
    {
        for (int i = 0; ; i++)
        {
            try
            {
                var secret = await cluster.Client.CoreV1.ReadNamespacedSecretAsync(name, ns);
                if (until is null || until(secret))
                {
                    return secret;
                }
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound && i < 100)
            {
            }

            Assert.True(i < 100, $"Secret {ns}/{name} did not reach the expected state");
            await Task.Delay(50);
        }
    }

    private static string Text(V1Secret secret, string key) => Encoding.ASCII.GetString(secret.Data[key]);

    [Fact]
    public async Task Replicas_share_one_CA_and_every_node_gets_its_own_certificate_and_the_token_key()
    {
        var ns = await NamespaceAsync("pki-a");
        await AddNodeAsync("pki-node-1");
        using var first = Start(Options(ns));
        using var second = Start(Options(ns));
        await first.StartAsync(CancellationToken.None);
        await second.StartAsync(CancellationToken.None);
        var root = await SecretAsync(ns, "podmig-pki");
        var secret = await SecretAsync(ns, "podmig-agent-pki-node-1");
        await AddNodeAsync("pki-node-2");
        var later = await SecretAsync(ns, "podmig-agent-pki-node-2");
        await first.StopAsync(CancellationToken.None);
        await second.StopAsync(CancellationToken.None);

        // both replicas loaded the same CA: each one's client certificate is trusted by an agent holding the node Secret
        using var agent = AgentTls.FromPem(Text(secret, "tls.crt"), Text(secret, "tls.key"), Text(secret, "ca.crt"));
        Assert.True(agent.IsTrusted(first.OperatorTls!.Certificate, ClusterPki.OperatorName));
        Assert.True(agent.IsTrusted(second.OperatorTls!.Certificate, ClusterPki.OperatorName));
        Assert.Equal(Text(root, "ca.crt"), Text(secret, "ca.crt"));
        Assert.Equal("kubernetes.io/tls", secret.Type);
        Assert.Equal("pki-node-1", AgentTls.NameOf(agent.Certificate));
        // the node's certificate is trusted by the operator's side as that node, and not as another
        Assert.True(first.OperatorTls.IsTrusted(agent.Certificate, "pki-node-1"));
        Assert.False(first.OperatorTls.IsTrusted(agent.Certificate, "pki-node-2"));
        using var other = X509Certificate2.CreateFromPem(Text(later, "tls.crt"));
        Assert.Equal("pki-node-2", AgentTls.NameOf(other));
        Assert.True(agent.IsTrusted(other, "pki-node-2"));

        // tokens the operator signs verify with the public key the node got
        using var verify = ECDsa.Create();
        verify.ImportFromPem(Text(secret, "token.pub"));
        var claims = new TransferClaims("m-1", "pki-node-1", "pki-node-2", 1 << 20, DateTimeOffset.UtcNow.AddMinutes(5).ToUnixTimeSeconds());
        Assert.Equal(claims, TransferToken.Verify(verify, TransferToken.Mint(second.TokenKey!, claims), DateTimeOffset.UtcNow));
        Assert.True(agent.Certificate.NotAfter > DateTime.Now.AddDays(300));
    }

    [Fact]
    public async Task A_node_Secret_with_a_certificate_not_from_the_CA_or_for_another_node_is_replaced()
    {
        var ns = await NamespaceAsync("pki-b");
        await AddNodeAsync("pki-node-3");
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var forged = new CertificateRequest("CN=pki-node-3", key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow, DateTimeOffset.UtcNow.AddYears(1));
        await cluster.Client.CoreV1.CreateNamespacedSecretAsync(new V1Secret
        {
            Metadata = new V1ObjectMeta { Name = "podmig-agent-pki-node-3" },
            Data = new Dictionary<string, byte[]>
            {
                ["tls.crt"] = Encoding.ASCII.GetBytes(forged.ExportCertificatePem()),
                ["tls.key"] = Encoding.ASCII.GetBytes(key.ExportPkcs8PrivateKeyPem()),
                ["ca.crt"] = Encoding.ASCII.GetBytes(forged.ExportCertificatePem()),
                ["token.pub"] = Encoding.ASCII.GetBytes(key.ExportSubjectPublicKeyInfoPem()),
            },
        }, ns);

        using var pki = Start(Options(ns));
        await pki.StartAsync(CancellationToken.None);
        var root = await SecretAsync(ns, "podmig-pki");
        var fixedUp = await SecretAsync(ns, "podmig-agent-pki-node-3", s => Text(s, "ca.crt") == Text(root, "ca.crt"));
        await pki.StopAsync(CancellationToken.None);

        using var certificate = X509Certificate2.CreateFromPem(Text(fixedUp, "tls.crt"));
        Assert.True(pki.OperatorTls!.IsTrusted(certificate, "pki-node-3"));
        Assert.NotEqual(forged.Thumbprint, certificate.Thumbprint);
    }
}

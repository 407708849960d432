using System.Security.Cryptography.X509Certificates;
using k8s;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Operator.Admission;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>The webhooks' certificate the operator manages, against the API emulator: made once, shared through the Secret, its CA published.</summary>
public sealed class WebhookCertificateTests(EmulatorFixture cluster) : IClassFixture<EmulatorFixture>
{
    [Fact]
    public async Task Replicas_share_one_certificate_through_the_Secret_and_its_CA_reaches_every_webhook()
    {
        (await cluster.KubectlInAsync(OperatorWebhooks.Configuration("https://127.0.0.1:1"), "apply", "-f", "-")).Succeeded();
        var options = new OperatorOptions { WebhookSecretNamespace = "default", WebhookIpAddresses = "127.0.0.1", WebhookListenAddress = "127.0.0.1:1" };

        using var first = new WebhookCertificates(cluster.Client, options, NullLogger<WebhookCertificates>.Instance, TimeProvider.System);
        using var second = new WebhookCertificates(cluster.Client, options, NullLogger<WebhookCertificates>.Instance, TimeProvider.System);
        await first.StartAsync(CancellationToken.None);
        await WaitAsync(() => first.Current is not null);
        await second.StartAsync(CancellationToken.None);
        await WaitAsync(() => second.Current is not null);
        // the CA is published right after the certificate is loaded
        k8s.Models.V1ValidatingWebhookConfiguration configuration = null!;
        for (int i = 0; i < 100; i++)
        {
            configuration = await cluster.Client.AdmissionregistrationV1.ReadValidatingWebhookConfigurationAsync(OperatorWebhooks.ConfigurationName);
            if (configuration.Webhooks.All(w => w.ClientConfig.CaBundle is { Length: > 0 }))
            {
                break;
            }

            await Task.Delay(50);
        }

        var secret = await cluster.Client.CoreV1.ReadNamespacedSecretAsync("podmig-operator-webhook-tls", "default");
        await first.StopAsync(CancellationToken.None);
        await second.StopAsync(CancellationToken.None);

        Assert.Equal(first.Current!.Thumbprint, second.Current!.Thumbprint);
        Assert.Equal("kubernetes.io/tls", secret.Type);
        Assert.All(configuration.Webhooks, w => Assert.Equal(secret.Data["ca.crt"], w.ClientConfig.CaBundle));
        using var ca = X509Certificate2.CreateFromPem(System.Text.Encoding.ASCII.GetString(secret.Data["ca.crt"]));
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        Assert.True(chain.Build(first.Current), "the serving certificate does not chain to the published CA");
        var names = first.Current.Extensions.OfType<X509SubjectAlternativeNameExtension>().Single();
        Assert.Contains("podmig-operator.podmig-system.svc", names.EnumerateDnsNames());
        Assert.Contains(System.Net.IPAddress.Loopback, names.EnumerateIPAddresses());
        Assert.True(first.Current.NotAfter > DateTime.Now.AddDays(300));
    }

    private static async Task WaitAsync(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++)
        {
            await Task.Delay(50);
        }

        Assert.True(condition(), "timed out");
    }
}

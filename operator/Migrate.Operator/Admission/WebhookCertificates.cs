using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Migrate.Operator.Admission;

/// <summary>
/// The webhooks' serving certificate, managed by the operator: on start it takes the one in the
/// Secret (shared by all replicas) unless that is missing or expires within 30 days, in which case
/// it makes a new CA and certificate and stores them (the first replica to store wins, the others
/// read its). The CA is written into every webhook of the ValidatingWebhookConfiguration, at start
/// and every few minutes (a configuration re-applied without it gets it back).
/// </summary>
public sealed partial class WebhookCertificates(IKubernetes client, OperatorOptions options, ILogger<WebhookCertificates> logger, TimeProvider time) : BackgroundService
{
    private static readonly TimeSpan Lifetime = TimeSpan.FromDays(365);
    private static readonly TimeSpan RenewBefore = TimeSpan.FromDays(30);
    private volatile X509Certificate2? _current;
    private string? _caPem;

    /// <summary>The certificate the HTTPS endpoint presents (null until the first start finished).</summary>
    public X509Certificate2? Current => _current;

    public TimeSpan Republish { get; init; } = TimeSpan.FromMinutes(2);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (_current is null || _current.NotAfter.ToUniversalTime() - time.GetUtcNow().UtcDateTime < RenewBefore)
                {
                    await LoadOrCreateAsync(stoppingToken);
                }

                await PublishCaBundleAsync(stoppingToken);
                await Task.Delay(Republish, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or CryptographicException or FormatException)
            {
                LogFailure(e.Message);
                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(1), time, stoppingToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    private async Task LoadOrCreateAsync(CancellationToken cancellationToken)
    {
        var secret = await ReadSecretAsync(cancellationToken);
        if (secret is not null && Usable(secret) is { } stored)
        {
            Use(stored, Encoding.ASCII.GetString(secret.Data["ca.crt"]));
            return;
        }

        var (certificate, key, ca) = Issue();
        var fresh = new V1Secret
        {
            Metadata = new V1ObjectMeta { Name = options.WebhookSecretName, NamespaceProperty = options.WebhookSecretNamespace, Labels = new Dictionary<string, string> { ["app.kubernetes.io/part-of"] = "pod-migration" } },
            Type = "kubernetes.io/tls",
            Data = new Dictionary<string, byte[]> { ["tls.crt"] = Encoding.ASCII.GetBytes(certificate), ["tls.key"] = Encoding.ASCII.GetBytes(key), ["ca.crt"] = Encoding.ASCII.GetBytes(ca) },
        };
        try
        {
            if (secret is null)
            {
                await client.CoreV1.CreateNamespacedSecretAsync(fresh, options.WebhookSecretNamespace, cancellationToken: cancellationToken);
            }
            else
            {
                fresh.Metadata.ResourceVersion = secret.Metadata.ResourceVersion;
                await client.CoreV1.ReplaceNamespacedSecretAsync(fresh, options.WebhookSecretName, options.WebhookSecretNamespace, cancellationToken: cancellationToken);
            }

            LogIssued(options.WebhookSecretNamespace, options.WebhookSecretName);
            Use(X509Certificate2.CreateFromPem(certificate, key), ca);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // another replica stored its certificate first: everyone serves that one
            await LoadOrCreateAsync(cancellationToken);
        }
    }

    private void Use(X509Certificate2 pem, string ca)
    {
        // a certificate with an ephemeral key must be re-imported for TLS servers on Linux
        _current = X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
        pem.Dispose();
        _caPem = ca;
    }

    private X509Certificate2? Usable(V1Secret secret)
    {
        if (secret.Data?.TryGetValue("tls.crt", out var crt) != true || secret.Data.TryGetValue("tls.key", out var key) != true || !secret.Data.ContainsKey("ca.crt"))
        {
            return null;
        }

        var certificate = X509Certificate2.CreateFromPem(Encoding.ASCII.GetString(crt!), Encoding.ASCII.GetString(key!));
        if (certificate.NotAfter.ToUniversalTime() - time.GetUtcNow().UtcDateTime < RenewBefore)
        {
            certificate.Dispose();
            return null;
        }

        return certificate;
    }

    /// <summary>A new CA (ECDSA P-256, its key thrown away after signing) and the serving certificate for the webhook's names and addresses.</summary>
    private (string Certificate, string Key, string Ca) Issue()
    {
        var now = time.GetUtcNow();
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=podmig operator webhook CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var ca = caRequest.CreateSelfSigned(now.AddMinutes(-5), now.Add(Lifetime).AddDays(1));

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var names = options.WebhookDnsNames.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var request = new CertificateRequest($"CN={names.FirstOrDefault() ?? "podmig-operator"}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var san = new SubjectAlternativeNameBuilder();
        foreach (var name in names)
        {
            san.AddDnsName(name);
        }

        foreach (var address in (options.WebhookIpAddresses ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            san.AddIpAddress(IPAddress.Parse(address));
        }

        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.Create(ca, now.AddMinutes(-5), now.Add(Lifetime), RandomNumberGenerator.GetBytes(16));
        return (certificate.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem(), ca.ExportCertificatePem());
    }

    private async Task<V1Secret?> ReadSecretAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadNamespacedSecretAsync(options.WebhookSecretName, options.WebhookSecretNamespace, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    /// <summary>Puts the CA into each webhook of the configuration that does not have it yet.</summary>
    private async Task PublishCaBundleAsync(CancellationToken cancellationToken)
    {
        if (_caPem is null)
        {
            return;
        }

        V1ValidatingWebhookConfiguration configuration;
        try
        {
            configuration = await client.AdmissionregistrationV1.ReadValidatingWebhookConfigurationAsync(options.WebhookConfigurationName, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            LogNoConfiguration(options.WebhookConfigurationName);
            return;
        }

        var bundle = Encoding.ASCII.GetBytes(_caPem);
        var stale = (configuration.Webhooks ?? []).Where(w => w.ClientConfig.CaBundle is null || !w.ClientConfig.CaBundle.AsSpan().SequenceEqual(bundle)).ToList();
        if (stale.Count == 0)
        {
            return;
        }

        foreach (var webhook in stale)
        {
            webhook.ClientConfig.CaBundle = bundle;
        }

        await client.AdmissionregistrationV1.ReplaceValidatingWebhookConfigurationAsync(configuration, options.WebhookConfigurationName, cancellationToken: cancellationToken);
        LogPublished(options.WebhookConfigurationName, stale.Count);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "made a new webhook certificate and stored it in Secret {Namespace}/{Name}")]
    private partial void LogIssued(string @namespace, string name);

    [LoggerMessage(Level = LogLevel.Information, Message = "wrote the webhook CA into {Count} webhook(s) of ValidatingWebhookConfiguration {Name}")]
    private partial void LogPublished(string name, int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "ValidatingWebhookConfiguration {Name} does not exist (yet); its CA bundle is written once it does")]
    private partial void LogNoConfiguration(string name);

    [LoggerMessage(Level = LogLevel.Warning, Message = "managing the webhook certificate failed ({Message}); trying again")]
    private partial void LogFailure(string message);
}

using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Agent.Contracts.Security;

namespace Migrate.Operator.Security;

/// <summary>
/// The agents' mutual-TLS credentials, made by the operator (Operator:ManageAgentCertificates):
/// a CA and the transfer-token signing key kept in one Secret (made by the first replica, read by
/// the others), the operator's own client certificate issued from that CA in memory at start, and
/// for every Node a Secret <c>{AgentSecretPrefix}{node}</c> with that node's certificate (CN = the
/// node's name, which peers check), its key, the CA and the token public key. Node Secrets are
/// made when a node appears and re-issued 30 days before they expire; the agent on the node reads
/// its Secret when it starts. Secrets of nodes that are gone are left (the operator may not list
/// or delete Secrets).
/// </summary>
public sealed partial class ClusterPki(IKubernetes client, OperatorOptions options, ILogger<ClusterPki> logger, TimeProvider time) : BackgroundService
{
    public const string OperatorName = "operator";
    private static readonly TimeSpan CaLifetime = TimeSpan.FromDays(3650);
    private static readonly TimeSpan Lifetime = TimeSpan.FromDays(365);
    private static readonly TimeSpan RenewBefore = TimeSpan.FromDays(30);
    private volatile Root? _root;

    private sealed record Root(X509Certificate2 Authority, string AuthorityPem, ECDsa TokenKey, string TokenPublicPem, AgentTls OperatorTls);

    /// <summary>The operator's TLS identity towards agents (null until the CA is loaded).</summary>
    public AgentTls? OperatorTls => _root?.OperatorTls;

    /// <summary>The key transfer tokens are signed with (null until loaded).</summary>
    public ECDsa? TokenKey => _root?.TokenKey;

    /// <summary>How often nodes are checked for a missing or expiring Secret.</summary>
    public TimeSpan Interval { get; init; } = TimeSpan.FromMinutes(1);

    public static string AgentSecretName(string prefix, string node) => prefix + node;

    /// <summary>Loads (or makes) the CA before the controllers start, so that no agent call goes out without TLS.</summary>
    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        while (_root is null)
        {
            try
            {
                await LoadOrCreateRootAsync(cancellationToken);
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or CryptographicException or FormatException)
            {
                LogFailure(e.Message);
                await Task.Delay(TimeSpan.FromSeconds(2), time, cancellationToken);
            }
        }

        await base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var wait = Interval;
            try
            {
                foreach (var node in (await client.CoreV1.ListNodeAsync(cancellationToken: stoppingToken)).Items)
                {
                    await EnsureNodeSecretAsync(node.Metadata.Name, stoppingToken);
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or CryptographicException or FormatException)
            {
                LogFailure(e.Message);
                wait = TimeSpan.FromSeconds(5);
            }

            try
            {
                await Task.Delay(wait, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task LoadOrCreateRootAsync(CancellationToken cancellationToken)
    {
        var secret = await ReadSecretAsync(options.PkiSecretName, cancellationToken);
        if (secret?.Data is { } data && data.TryGetValue("ca.crt", out var caPem) && data.TryGetValue("ca.key", out var caKey)
            && data.TryGetValue("token.key", out var tokenKey))
        {
            Use(Encoding.ASCII.GetString(caPem), Encoding.ASCII.GetString(caKey), Encoding.ASCII.GetString(tokenKey));
            return;
        }

        var now = time.GetUtcNow();
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=podmig agent CA", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var authority = request.CreateSelfSigned(now.AddMinutes(-5), now.Add(CaLifetime));
        using var token = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string certificatePem = authority.ExportCertificatePem(), keyPem = key.ExportPkcs8PrivateKeyPem(), tokenPem = token.ExportPkcs8PrivateKeyPem();
        var fresh = new V1Secret
        {
            Metadata = new V1ObjectMeta { Name = options.PkiSecretName, NamespaceProperty = options.PkiNamespace, Labels = PartOf() },
            Type = "Opaque",
            Data = new Dictionary<string, byte[]>
            {
                ["ca.crt"] = Encoding.ASCII.GetBytes(certificatePem),
                ["ca.key"] = Encoding.ASCII.GetBytes(keyPem),
                ["token.key"] = Encoding.ASCII.GetBytes(tokenPem),
            },
        };
        try
        {
            await client.CoreV1.CreateNamespacedSecretAsync(fresh, options.PkiNamespace, cancellationToken: cancellationToken);
            LogCreatedRoot(options.PkiNamespace, options.PkiSecretName);
            Use(certificatePem, keyPem, tokenPem);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // another replica made the CA first: everyone uses that one
            await LoadOrCreateRootAsync(cancellationToken);
        }
    }

    private void Use(string caPem, string caKeyPem, string tokenKeyPem)
    {
        var authority = X509Certificate2.CreateFromPem(caPem, caKeyPem);
        var tokenKey = ECDsa.Create();
        tokenKey.ImportFromPem(tokenKeyPem);
        var (certificate, key) = Issue(authority, OperatorName, clientOnly: true);
        var operatorTls = AgentTls.FromPem(certificate, key, caPem);
        _root = new Root(authority, caPem, tokenKey, tokenKey.ExportSubjectPublicKeyInfoPem(), operatorTls);
    }

    /// <summary>A certificate for <paramref name="name"/> (CN) from the CA: server and client use for agents, client use for the operator.</summary>
    private (string Certificate, string Key) Issue(X509Certificate2 authority, string name, bool clientOnly)
    {
        var now = time.GetUtcNow();
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var subject = new X500DistinguishedNameBuilder();
        subject.AddCommonName(name);
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        var usages = new OidCollection { new Oid("1.3.6.1.5.5.7.3.2") };
        if (!clientOnly)
        {
            usages.Add(new Oid("1.3.6.1.5.5.7.3.1"));
        }

        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(usages, false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(name);
        request.CertificateExtensions.Add(san.Build());
        var notAfter = now.Add(Lifetime) < authority.NotAfter ? now.Add(Lifetime) : new DateTimeOffset(authority.NotAfter.ToUniversalTime());
        using var certificate = request.Create(authority, now.AddMinutes(-5), notAfter, RandomNumberGenerator.GetBytes(16));
        return (certificate.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem());
    }

    private async Task EnsureNodeSecretAsync(string node, CancellationToken cancellationToken)
    {
        var root = _root!;
        var name = AgentSecretName(options.AgentSecretPrefix, node);
        var secret = await ReadSecretAsync(name, cancellationToken);
        if (secret is not null && Current(secret, root, node))
        {
            return;
        }

        var (certificate, key) = Issue(root.Authority, node, clientOnly: false);
        var fresh = new V1Secret
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                NamespaceProperty = options.PkiNamespace,
                Labels = PartOf(),
                Annotations = new Dictionary<string, string> { [Annotations.Node] = node },
            },
            Type = "kubernetes.io/tls",
            Data = new Dictionary<string, byte[]>
            {
                ["tls.crt"] = Encoding.ASCII.GetBytes(certificate),
                ["tls.key"] = Encoding.ASCII.GetBytes(key),
                ["ca.crt"] = Encoding.ASCII.GetBytes(root.AuthorityPem),
                ["token.pub"] = Encoding.ASCII.GetBytes(root.TokenPublicPem),
            },
        };
        try
        {
            if (secret is null)
            {
                await client.CoreV1.CreateNamespacedSecretAsync(fresh, options.PkiNamespace, cancellationToken: cancellationToken);
            }
            else
            {
                fresh.Metadata.ResourceVersion = secret.Metadata.ResourceVersion;
                await client.CoreV1.ReplaceNamespacedSecretAsync(fresh, name, options.PkiNamespace, cancellationToken: cancellationToken);
            }

            LogIssued(node, options.PkiNamespace, name);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // another replica wrote it in the meantime; the next pass checks that one
        }
    }

    /// <summary>Whether a node's Secret holds a certificate for that node, from the current CA, valid for more than 30 days.</summary>
    private bool Current(V1Secret secret, Root root, string node)
    {
        if (secret.Data is not { } data || !data.TryGetValue("tls.crt", out var crt) || !data.ContainsKey("tls.key")
            || !data.TryGetValue("ca.crt", out var ca) || Encoding.ASCII.GetString(ca) != root.AuthorityPem
            || !data.TryGetValue("token.pub", out var pub) || Encoding.ASCII.GetString(pub) != root.TokenPublicPem)
        {
            return false;
        }

        using var certificate = X509Certificate2.CreateFromPem(Encoding.ASCII.GetString(crt));
        return AgentTls.NameOf(certificate) == node
            && root.OperatorTls.IsTrusted(certificate)
            && certificate.NotAfter.ToUniversalTime() - time.GetUtcNow().UtcDateTime >= RenewBefore;
    }

    private async Task<V1Secret?> ReadSecretAsync(string name, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadNamespacedSecretAsync(name, options.PkiNamespace, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private static Dictionary<string, string> PartOf() => new() { ["app.kubernetes.io/part-of"] = "pod-migration" };

    public override void Dispose()
    {
        if (_root is { } root)
        {
            root.OperatorTls.Dispose();
            root.Authority.Dispose();
            root.TokenKey.Dispose();
        }

        base.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "made the agents' CA and token key and stored them in Secret {Namespace}/{Name}")]
    private partial void LogCreatedRoot(string @namespace, string name);

    [LoggerMessage(Level = LogLevel.Information, Message = "issued the certificate of node {Node} into Secret {Namespace}/{Name}")]
    private partial void LogIssued(string node, string @namespace, string name);

    [LoggerMessage(Level = LogLevel.Warning, Message = "managing the agents' certificates failed ({Message}); trying again")]
    private partial void LogFailure(string message);
}

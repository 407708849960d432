using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Migrate.Agent.Contracts.Security;

namespace Migrate.TestSupport;

/// <summary>PEM files of one component's identity.</summary>
public sealed record IssuedCertificate(string Name, string CertificateFile, string KeyFile);

/// <summary>
/// A throwaway public-key infrastructure, made at start-up the way the sandbox makes its own: an
/// ECDSA P-256 CA, certificates for components (subject CN = node or component name, usable as
/// TLS server and client), and the operator's token signing key with its public half for agents.
/// </summary>
public sealed class TestPki : IDisposable
{
    private readonly X509Certificate2 _authority;
    private readonly ECDsa _tokenKey;
    private readonly Lock _gate = new();
    private readonly Dictionary<(string, bool), IssuedCertificate> _issued = [];

    public TestPki()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("podmig-pki-").FullName;
        var now = DateTimeOffset.UtcNow;
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=podmig test CA", caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        _authority = request.CreateSelfSigned(now.AddHours(-1), now.AddDays(1));
        AuthorityFile = Path.Combine(Directory, "ca.pem");
        File.WriteAllText(AuthorityFile, _authority.ExportCertificatePem());

        _tokenKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        TokenPublicKeyFile = Path.Combine(Directory, "token-key.pub.pem");
        File.WriteAllText(TokenPublicKeyFile, _tokenKey.ExportSubjectPublicKeyInfoPem());
        TokenSigningKeyFile = Path.Combine(Directory, "token-key.pem");
        File.WriteAllText(TokenSigningKeyFile, _tokenKey.ExportPkcs8PrivateKeyPem());
    }

    public string Directory { get; }

    public string AuthorityFile { get; }

    /// <summary>What agents verify transfer tokens with.</summary>
    public string TokenPublicKeyFile { get; }

    /// <summary>What the operator signs transfer tokens with (its Operator:TokenSigningKeyFile).</summary>
    public string TokenSigningKeyFile { get; }

    /// <summary>A certificate for a node or component, signed by this CA (or, with <paramref name="selfSigned"/>, by nobody the CA knows).</summary>
    public IssuedCertificate Issue(string name, bool selfSigned = false)
    {
        lock (_gate)
        {
            if (!_issued.TryGetValue((name, selfSigned), out var issued))
            {
                issued = Create(name, selfSigned);
                _issued[(name, selfSigned)] = issued;
            }

            return issued;
        }
    }

    private IssuedCertificate Create(string name, bool selfSigned)
    {
        var now = DateTimeOffset.UtcNow;
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(name);
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = selfSigned
            ? request.CreateSelfSigned(now.AddHours(-1), now.AddHours(20))
            : request.Create(_authority, now.AddHours(-1), now.AddHours(20), RandomNumberGenerator.GetBytes(16));
        var prefix = Path.Combine(Directory, name + (selfSigned ? "-self" : ""));
        File.WriteAllText(prefix + ".pem", certificate.ExportCertificatePem());
        File.WriteAllText(prefix + ".key.pem", key.ExportPkcs8PrivateKeyPem());
        return new IssuedCertificate(name, prefix + ".pem", prefix + ".key.pem");
    }

    /// <summary>A transfer token, as the operator mints it.</summary>
    public string Token(string migration, string source, string target, long maxBytes = 1L << 40, TimeSpan? lifetime = null) =>
        TransferToken.Mint(_tokenKey, new TransferClaims(migration, source, target, maxBytes,
            DateTimeOffset.UtcNow.Add(lifetime ?? TimeSpan.FromMinutes(10)).ToUnixTimeSeconds()));

    /// <summary>Signs claims as the operator does (its token minter in tests).</summary>
    public string Mint(TransferClaims claims) => TransferToken.Mint(_tokenKey, claims);

    /// <summary>A well-formed token signed by a key agents do not trust.</summary>
    public static string ForeignToken(string migration, string source, string target)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        return TransferToken.Mint(key, new TransferClaims(migration, source, target, 1L << 40, DateTimeOffset.UtcNow.AddMinutes(10).ToUnixTimeSeconds()));
    }

    public void Dispose()
    {
        _authority.Dispose();
        _tokenKey.Dispose();
        System.IO.Directory.Delete(Directory, recursive: true);
    }
}

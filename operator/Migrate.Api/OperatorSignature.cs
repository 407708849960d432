using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Migrate.Api;

/// <summary>A signed value was refused; the message says why.</summary>
public sealed class SignatureException(string message) : Exception(message);

/// <summary>
/// What the operator signs for other processes to check: <c>base64url(payload).base64url(ECDSA
/// P-256 SHA-256 signature)</c>, made with the operator's private key and checked with its public
/// key, which agents and nodes hold (transfer tokens, pinned addresses).
/// </summary>
public static class OperatorSignature
{
    private const int MaxLength = 4096;

    public static string Sign(ECDsa signingKey, byte[] payload)
    {
        ArgumentNullException.ThrowIfNull(signingKey);
        ArgumentNullException.ThrowIfNull(payload);
        var signature = signingKey.SignData(payload, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        return Base64Url.EncodeToString(payload) + "." + Base64Url.EncodeToString(signature);
    }

    /// <summary>The payload of <paramref name="token"/> if the operator's key signed it; <paramref name="what"/> names it in the refusal.</summary>
    public static byte[] Open(ECDsa verificationKey, string? token, string what)
    {
        ArgumentNullException.ThrowIfNull(verificationKey);
        if (string.IsNullOrEmpty(token))
        {
            throw new SignatureException($"no {what}");
        }

        int dot = token.IndexOf('.', StringComparison.Ordinal);
        if (token.Length > MaxLength || dot <= 0 || dot != token.LastIndexOf('.'))
        {
            throw new SignatureException($"the {what} is malformed");
        }

        byte[] payload;
        byte[] signature;
        try
        {
            payload = Base64Url.DecodeFromChars(token.AsSpan(0, dot));
            signature = Base64Url.DecodeFromChars(token.AsSpan(dot + 1));
        }
        catch (FormatException)
        {
            throw new SignatureException($"the {what} is malformed");
        }

        return verificationKey.VerifyData(payload, signature, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation)
            ? payload
            : throw new SignatureException($"the {what}'s signature is not the operator's");
    }

    /// <summary>Loads an EC key from a PEM file (a private key to sign, a public key to check).</summary>
    public static ECDsa LoadKey(string pemFile)
    {
        var key = ECDsa.Create();
        key.ImportFromPem(File.ReadAllText(pemFile));
        return key;
    }
}

/// <summary>What a pinned-address token allows: this address for the pod of this name, restored by this migration, until a time.</summary>
public sealed record PinClaims(
    [property: JsonPropertyName("pin")] string Address,
    [property: JsonPropertyName("mid")] string MigrationId,
    [property: JsonPropertyName("ns")] string Namespace,
    [property: JsonPropertyName("pod")] string Pod,
    [property: JsonPropertyName("exp")] long ExpiresAtUnixSeconds)
{
    public DateTimeOffset ExpiresAt => DateTimeOffset.FromUnixTimeSeconds(ExpiresAtUnixSeconds);
}

/// <summary>
/// The operator's signature on a replacement pod's pinned address
/// (<see cref="Annotations.PinnedAddressToken"/> beside <see cref="Annotations.PinnedAddress"/>):
/// the node's IPAM gives a pod another pod's address only when the operator signed that address
/// for that pod and that migration, so a user who can create pods cannot take another pod's address.
/// </summary>
public static class PinToken
{
    private const string What = "pinned-address token";

    public static string Mint(ECDsa signingKey, PinClaims claims) =>
        OperatorSignature.Sign(signingKey, JsonSerializer.SerializeToUtf8Bytes(claims, PinTokenJson.Default.PinClaims));

    /// <summary>
    /// Null if <paramref name="token"/> is the operator's, unexpired, and names exactly this address,
    /// migration and pod; otherwise why not.
    /// </summary>
    public static string? Refusal(ECDsa verificationKey, string? token, DateTimeOffset now, string address, string migrationId, string ns, string pod)
    {
        PinClaims? claims;
        try
        {
            claims = JsonSerializer.Deserialize(OperatorSignature.Open(verificationKey, token, What), PinTokenJson.Default.PinClaims);
        }
        catch (SignatureException e)
        {
            return e.Message;
        }
        catch (JsonException)
        {
            claims = null;
        }

        return Mismatch(claims, now, address, migrationId, ns, pod);
    }

    /// <summary>The claims checked against the pod that shows them (a pure function, tested as a table).</summary>
    public static string? Mismatch(PinClaims? claims, DateTimeOffset now, string address, string migrationId, string ns, string pod)
    {
        if (claims is null || string.IsNullOrEmpty(claims.Address) || string.IsNullOrEmpty(claims.MigrationId) || string.IsNullOrEmpty(claims.Namespace)
            || string.IsNullOrEmpty(claims.Pod))
        {
            return $"the {What}'s claims are incomplete";
        }

        if (now >= claims.ExpiresAt)
        {
            return $"the {What} expired at {claims.ExpiresAt:u}";
        }

        return (claims.Address, claims.MigrationId, claims.Namespace, claims.Pod) == (address, migrationId, ns, pod)
            ? null
            : $"the {What} is for {claims.Address} on pod {claims.Namespace}/{claims.Pod} of migration {claims.MigrationId}, not {address} on pod {ns}/{pod} of migration {migrationId}";
    }
}

[JsonSerializable(typeof(PinClaims))]
internal sealed partial class PinTokenJson : JsonSerializerContext;

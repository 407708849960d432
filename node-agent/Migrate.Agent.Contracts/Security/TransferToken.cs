using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using Migrate.Api;

namespace Migrate.Agent.Contracts.Security;

/// <summary>What a transfer token allows: one migration's images, from one node to another, up to a size, until a time.</summary>
public sealed record TransferClaims(
    [property: JsonPropertyName("mid")] string MigrationId,
    [property: JsonPropertyName("src")] string SourceNode,
    [property: JsonPropertyName("dst")] string TargetNode,
    [property: JsonPropertyName("max")] long MaxBytes,
    [property: JsonPropertyName("exp")] long ExpiresAtUnixSeconds)
{
    public DateTimeOffset ExpiresAt => DateTimeOffset.FromUnixTimeSeconds(ExpiresAtUnixSeconds);
}

/// <summary>A token was refused; the message says why.</summary>
public sealed class TransferTokenException(string message) : Exception(message);

/// <summary>
/// The operator's per-migration transfer token: <c>base64url(claims JSON).base64url(ECDSA P-256
/// SHA-256 signature)</c>. The operator signs with its private key; agents hold only the public
/// key, so an agent cannot mint tokens for other migrations.
/// </summary>
public static class TransferToken
{
    private const string What = "transfer token";

    public static string Mint(ECDsa signingKey, TransferClaims claims) =>
        OperatorSignature.Sign(signingKey, JsonSerializer.SerializeToUtf8Bytes(claims, TransferTokenJson.Default.TransferClaims));

    /// <summary>The token's claims if its signature is good and it has not expired; throws <see cref="TransferTokenException"/> otherwise.</summary>
    public static TransferClaims Verify(ECDsa verificationKey, string? token, DateTimeOffset now)
    {
        byte[] payload;
        try
        {
            payload = OperatorSignature.Open(verificationKey, token, What);
        }
        catch (SignatureException e)
        {
            throw new TransferTokenException(e.Message);
        }

        TransferClaims? claims;
        try
        {
            claims = JsonSerializer.Deserialize(payload, TransferTokenJson.Default.TransferClaims);
        }
        catch (JsonException)
        {
            claims = null;
        }

        if (claims is null || string.IsNullOrEmpty(claims.MigrationId) || string.IsNullOrEmpty(claims.SourceNode) || string.IsNullOrEmpty(claims.TargetNode) || claims.MaxBytes <= 0)
        {
            throw new TransferTokenException("the transfer token's claims are incomplete");
        }

        if (now >= claims.ExpiresAt)
        {
            throw new TransferTokenException($"the transfer token expired at {claims.ExpiresAt:u}");
        }

        return claims;
    }

    /// <summary>Loads an EC key from a PEM file (a private key to mint, a public key to verify).</summary>
    public static ECDsa LoadKey(string pemFile) => OperatorSignature.LoadKey(pemFile);
}

[JsonSerializable(typeof(TransferClaims))]
internal sealed partial class TransferTokenJson : JsonSerializerContext;

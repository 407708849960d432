using System.Collections.Concurrent;
using System.Security.Cryptography;

namespace Migrate.KubeEmulator.Auth;

/// <summary>Who made a request.</summary>
public sealed record UserInfo(string Name, IReadOnlyList<string> Groups, string? Uid = null)
{
    public bool IsMaster => Groups.Contains("system:masters");

    /// <summary>For service accounts: namespace and name, parsed from system:serviceaccount:NS:NAME.</summary>
    public (string Namespace, string Name)? ServiceAccount
    {
        get
        {
            var parts = Name.Split(':');
            return parts.Length == 4 && parts[0] == "system" && parts[1] == "serviceaccount" ? (parts[2], parts[3]) : null;
        }
    }
}

/// <summary>A token bound to a service account (TokenRequest), valid while the account exists and until it expires.</summary>
public sealed record ServiceAccountBinding(string Namespace, string Name, string Uid, DateTimeOffset Expires);

/// <summary>Bearer-token authentication: static tokens (the admin's, and configured ones) and service-account tokens.</summary>
public sealed class Authenticator
{
    private readonly ConcurrentDictionary<string, UserInfo> _static = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, ServiceAccountBinding> _serviceAccounts = new(StringComparer.Ordinal);

    public Authenticator()
    {
        AdminToken = NewToken();
        _static[AdminToken] = new UserInfo("kubernetes-admin", ["system:masters", "system:authenticated"]);
    }

    public string AdminToken { get; }

    public void AddStaticToken(string token, UserInfo user) => _static[token] = user;

    public static string NewToken() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(24));

    public string IssueServiceAccountToken(string ns, string name, string uid, DateTimeOffset expires)
    {
        var token = NewToken();
        _serviceAccounts[token] = new ServiceAccountBinding(ns, name, uid, expires);
        return token;
    }

    /// <summary>The user a token stands for; service-account tokens are checked by <paramref name="serviceAccountUid"/> (the account's current uid, or null if it is gone).</summary>
    public UserInfo? Authenticate(string? token, Func<string, string, string?> serviceAccountUid, DateTimeOffset now)
    {
        if (string.IsNullOrEmpty(token))
        {
            return null;
        }

        if (_static.TryGetValue(token, out var user))
        {
            return user;
        }

        if (_serviceAccounts.TryGetValue(token, out var binding)
            && binding.Expires > now
            && serviceAccountUid(binding.Namespace, binding.Name) == binding.Uid)
        {
            return ForServiceAccount(binding.Namespace, binding.Name, binding.Uid);
        }

        return null;
    }

    public static UserInfo ForServiceAccount(string ns, string name, string? uid = null) =>
        new($"system:serviceaccount:{ns}:{name}", ["system:serviceaccounts", $"system:serviceaccounts:{ns}", "system:authenticated"], uid);
}

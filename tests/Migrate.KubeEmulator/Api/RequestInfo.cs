namespace Migrate.KubeEmulator.Api;

/// <summary>What a request addresses, parsed from its path and method the way the real server does.</summary>
public sealed record RequestInfo
{
    public bool IsResourceRequest { get; init; }

    /// <summary>Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.</summary>
    public string Verb { get; init; } = "";

    public string Group { get; init; } = "";

    public string Version { get; init; } = "";

    public string? Namespace { get; init; }

    public string Resource { get; init; } = "";

    public string? Name { get; init; }

    public string? Subresource { get; init; }

    public string Path { get; init; } = "/";

    /// <summary>The first path segments for non-resource requests: "api", "apis", "version", ...</summary>
    public IReadOnlyList<string> Segments { get; init; } = [];

    public static RequestInfo Parse(string method, string path, bool watchQuery)
    {
        var segments = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var info = new RequestInfo { Path = path, Segments = segments };
        int i;
        string group, version;
        if (segments.Length >= 2 && segments[0] == "api")
        {
            group = "";
            version = segments[1];
            i = 2;
        }
        else if (segments.Length >= 3 && segments[0] == "apis")
        {
            group = segments[1];
            version = segments[2];
            i = 3;
        }
        else
        {
            return info;
        }

        bool legacyWatch = false;
        if (i < segments.Length && segments[i] == "watch")
        {
            legacyWatch = true;
            i++;
        }

        var rest = segments[i..];
        if (rest.Length == 0)
        {
            return info with { Group = group, Version = version }; // group-version discovery
        }

        string? ns = null;
        if (rest[0] == "namespaces" && rest.Length >= 3 && !(rest.Length == 3 && rest[2] is "status" or "finalize"))
        {
            ns = rest[1];
            rest = rest[2..];
        }

        string resource = rest[0];
        string? name = rest.Length > 1 ? rest[1] : null;
        string? subresource = rest.Length > 2 ? string.Join('/', rest[2..]) : null;
        string verb = method switch
        {
            "GET" or "HEAD" => name is null ? (legacyWatch || watchQuery ? "watch" : "list") : (legacyWatch || watchQuery ? "watch" : "get"),
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => name is null ? "deletecollection" : "delete",
            _ => method.ToLowerInvariant(),
        };

        return info with
        {
            IsResourceRequest = true,
            Verb = verb,
            Group = group,
            Version = version,
            Namespace = ns,
            Resource = resource,
            Name = name,
            Subresource = subresource,
        };
    }
}

using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Api;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Auth;

/// <summary>What a request wants to do, for authorization.</summary>
public sealed record AccessRequest(
    UserInfo User, string Verb, bool IsResource, string Group, string Resource, string? Subresource, string? Namespace, string? Name, string Path)
{
    public string ResourceWithSubresource => Subresource is null ? Resource : $"{Resource}/{Subresource}";

    /// <summary>The real server's words for a refusal.</summary>
    public string ForbiddenMessage()
    {
        if (!IsResource)
        {
            return $"forbidden: User \"{User.Name}\" cannot {Verb} path \"{Path}\"";
        }

        var subject = Name is null ? $"{Qualified()}" : $"{Qualified()} \"{Name}\"";
        var scope = Namespace is null ? "at the cluster scope" : $"in the namespace \"{Namespace}\"";
        return $"{subject} is forbidden: User \"{User.Name}\" cannot {Verb} resource \"{ResourceWithSubresource}\" in API group \"{Group}\" {scope}";
    }

    private string Qualified() => Group.Length == 0 ? ResourceWithSubresource : $"{ResourceWithSubresource}.{Group}";
}

/// <summary>
/// RBAC as the real authorizer evaluates it: ClusterRoleBindings grant everywhere, RoleBindings
/// grant in their namespace (from a Role or a ClusterRole). system:masters may do anything. As a
/// cluster's bootstrap policy does, every authenticated user may read the discovery, version and
/// health paths and create self-subject access reviews.
/// </summary>
public sealed class RbacAuthorizer(ObjectStore store)
{
    private static readonly string[] PublicPaths = ["/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi"];

    public bool Allows(AccessRequest request)
    {
        if (request.User.IsMaster)
        {
            return true;
        }

        if (!request.IsResource && request.Verb == "get" && PublicPaths.Any(p => request.Path == p || request.Path.StartsWith(p + "/", StringComparison.Ordinal)))
        {
            return true;
        }

        if (request.IsResource && request.Group == "authorization.k8s.io" && request.Resource == "selfsubjectaccessreviews" && request.Verb == "create")
        {
            return true;
        }

        foreach (var binding in store.List("rbac.authorization.k8s.io/clusterrolebindings", null).Items)
        {
            if (Binds(binding.Body, request.User, bindingNamespace: null)
                && RulesOf(binding.Body, null).Any(rule => RuleAllows(rule, request)))
            {
                return true;
            }
        }

        if (request.Namespace is not null)
        {
            foreach (var binding in store.List("rbac.authorization.k8s.io/rolebindings", request.Namespace).Items)
            {
                if (Binds(binding.Body, request.User, request.Namespace)
                    && RulesOf(binding.Body, request.Namespace).Any(rule => RuleAllows(rule, request)))
                {
                    return true;
                }
            }
        }

        return false;
    }

    private IEnumerable<JsonObject> RulesOf(JsonObject binding, string? ns)
    {
        var kind = Json.GetString(binding, "roleRef", "kind");
        var name = Json.GetString(binding, "roleRef", "name") ?? "";
        var role = kind == "ClusterRole"
            ? store.Get("rbac.authorization.k8s.io/clusterroles", null, name)
            : ns is null ? null : store.Get("rbac.authorization.k8s.io/roles", ns, name);
        return (role?.Body["rules"] as JsonArray)?.OfType<JsonObject>() ?? [];
    }

    private static bool Binds(JsonObject binding, UserInfo user, string? bindingNamespace)
    {
        foreach (var subject in (binding["subjects"] as JsonArray)?.OfType<JsonObject>() ?? [])
        {
            var kind = Json.GetString(subject, "kind");
            var name = Json.GetString(subject, "name");
            bool match = kind switch
            {
                "User" => name == user.Name,
                "Group" => name is not null && user.Groups.Contains(name),
                "ServiceAccount" => user.Name == $"system:serviceaccount:{Json.GetString(subject, "namespace") ?? bindingNamespace}:{name}",
                _ => false,
            };
            if (match)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Whether one PolicyRule grants the request.</summary>
    public static bool RuleAllows(JsonObject rule, AccessRequest request)
    {
        var verbs = Json.StringList(rule["verbs"]);
        if (!verbs.Contains("*") && !verbs.Contains(request.Verb))
        {
            return false;
        }

        if (!request.IsResource)
        {
            return Json.StringList(rule["nonResourceURLs"]).Any(u =>
                u == "*" || u == request.Path || (u.EndsWith('*') && request.Path.StartsWith(u[..^1], StringComparison.Ordinal)));
        }

        var groups = Json.StringList(rule["apiGroups"]);
        if (!groups.Contains("*") && !groups.Contains(request.Group))
        {
            return false;
        }

        var resources = Json.StringList(rule["resources"]);
        var wanted = request.ResourceWithSubresource;
        if (!resources.Contains("*") && !resources.Contains(wanted)
            && !(request.Subresource is not null && resources.Contains($"*/{request.Subresource}")))
        {
            return false;
        }

        var names = Json.StringList(rule["resourceNames"]);
        return names.Count == 0 || (request.Name is not null && names.Contains(request.Name));
    }
}

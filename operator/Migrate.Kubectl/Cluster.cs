using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;

namespace Migrate.Kubectl;

/// <summary>
/// The cluster as the plugin sees it: the client from the kubeconfig (as kubectl picks it:
/// --kubeconfig, else $KUBECONFIG, else ~/.kube/config; --context; the namespace from -n or the
/// context), the pod-migration API as JSON, and API errors turned into messages a user can act on.
/// </summary>
public sealed class Cluster : IDisposable
{
    public const string Group = "podmigration.io";
    public const string Version = "v1alpha1";

    private Cluster(Kubernetes client, string ns, string server)
    {
        Client = client;
        Namespace = ns;
        Server = server;
    }

    public Kubernetes Client { get; }

    public string Namespace { get; }

    public string Server { get; }

    public static Cluster Connect(CommandLine line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var path = line.Flag("kubeconfig") ?? Environment.GetEnvironmentVariable("KUBECONFIG")?.Split(':', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault()
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".kube", "config");
        KubernetesClientConfiguration configuration;
        try
        {
            configuration = File.Exists(path)
                ? KubernetesClientConfiguration.BuildConfigFromConfigFile(path, line.Flag("context"))
                : KubernetesClientConfiguration.IsInCluster() ? KubernetesClientConfiguration.InClusterConfig()
                : throw new CommandException($"no kubeconfig at {path} (set --kubeconfig or KUBECONFIG)");
        }
        catch (k8s.Exceptions.KubeConfigException e)
        {
            throw new CommandException($"cannot use the kubeconfig {path}: {e.Message}");
        }

        var ns = line.Flag("namespace") ?? configuration.Namespace ?? "default";
        return new Cluster(new Kubernetes(configuration), ns, configuration.Host);
    }

    /// <summary>Fails with a clear message unless the cluster serves pod-migration's API.</summary>
    public async Task RequireApiAsync()
    {
        var groups = await CallAsync(() => Client.Apis.GetAPIVersionsAsync());
        if (!groups.Groups.Any(g => g.Name == Group && g.Versions.Any(v => v.Version == Version)))
        {
            throw new CommandException($"the cluster at {Server} does not serve {Group}/{Version}: pod-migration is not installed " +
                "(install its CRDs and operator: helm install pod-migration charts/pod-migration, or kubectl apply -k deploy/)");
        }
    }

    public Task<JsonObject> GetRequestAsync(string name, string? ns = null) =>
        GetAsync(() => Client.CustomObjects.GetNamespacedCustomObjectAsync(Group, Version, ns ?? Namespace, "migrationrequests", name),
            $"MigrationRequest \"{name}\" not found in namespace \"{ns ?? Namespace}\"");

    public Task<JsonObject> GetDrainAsync(string name) =>
        GetAsync(() => Client.CustomObjects.GetClusterCustomObjectAsync(Group, Version, "nodedrains", name), $"NodeDrain \"{name}\" not found");

    public async Task<IReadOnlyList<JsonObject>> ListRequestsAsync(bool allNamespaces)
    {
        var raw = await CallAsync(() => allNamespaces
            ? Client.CustomObjects.ListClusterCustomObjectAsync(Group, Version, "migrationrequests")
            : Client.CustomObjects.ListNamespacedCustomObjectAsync(Group, Version, Namespace, "migrationrequests"));
        return [.. (Parse(raw)["items"] as JsonArray ?? []).OfType<JsonObject>()];
    }

    public async Task<JsonObject> CreateRequestAsync(JsonObject request) =>
        Parse(await CallAsync(() => Client.CustomObjects.CreateNamespacedCustomObjectAsync(request, Group, Version, Namespace, "migrationrequests")));

    public async Task<JsonObject> CreateDrainAsync(JsonObject drain) =>
        Parse(await CallAsync(() => Client.CustomObjects.CreateClusterCustomObjectAsync(drain, Group, Version, "nodedrains")));

    public Task DeleteRequestAsync(string name) =>
        GetAsync(() => Client.CustomObjects.DeleteNamespacedCustomObjectAsync(Group, Version, Namespace, "migrationrequests", name),
            $"MigrationRequest \"{name}\" not found in namespace \"{Namespace}\"");

    /// <summary>A namespaced object of the project's kinds (checkpoints, restores).</summary>
    public Task<JsonObject> GetObjectAsync(string plural, string kind, string name) =>
        GetAsync(() => Client.CustomObjects.GetNamespacedCustomObjectAsync(Group, Version, Namespace, plural, name), $"{kind} \"{name}\" not found in namespace \"{Namespace}\"");

    public async Task<IReadOnlyList<JsonObject>> ListObjectsAsync(string plural, bool allNamespaces)
    {
        var raw = await CallAsync(() => allNamespaces
            ? Client.CustomObjects.ListClusterCustomObjectAsync(Group, Version, plural)
            : Client.CustomObjects.ListNamespacedCustomObjectAsync(Group, Version, Namespace, plural));
        return [.. (Parse(raw)["items"] as JsonArray ?? []).OfType<JsonObject>()];
    }

    public async Task<JsonObject> CreateObjectAsync(string plural, JsonObject item) =>
        Parse(await CallAsync(() => Client.CustomObjects.CreateNamespacedCustomObjectAsync(item, Group, Version, Namespace, plural)));

    private async Task<JsonObject> GetAsync(Func<Task<object>> call, string notFound)
    {
        try
        {
            return Parse(await CallAsync(call));
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            throw new CommandException(notFound);
        }
    }

    /// <summary>Runs an API call; refusals and unreachable servers become messages (404 is left to the caller).</summary>
    public async Task<T> CallAsync<T>(Func<Task<T>> call)
    {
        ArgumentNullException.ThrowIfNull(call);
        try
        {
            return await call();
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized or HttpStatusCode.UnprocessableEntity
            or HttpStatusCode.Conflict or HttpStatusCode.BadRequest or HttpStatusCode.TooManyRequests)
        {
            var message = Message(e.Response.Content) ?? e.Message;
            throw new CommandException(e.Response.StatusCode switch
            {
                HttpStatusCode.Forbidden => $"not allowed: {message}",
                HttpStatusCode.Unauthorized => $"the API server at {Server} did not accept your credentials (check the kubeconfig): {message}",
                _ => message,
            });
        }
        catch (HttpRequestException e)
        {
            throw new CommandException($"cannot reach the API server at {Server}: {e.Message}");
        }
    }

    private static string? Message(string? body)
    {
        try
        {
            return body is { Length: > 0 } ? JsonNode.Parse(body)?["message"]?.GetValue<string>() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static JsonObject Parse(object raw) => JsonNode.Parse(((JsonElement)raw).GetRawText())!.AsObject();

    public void Dispose() => Client.Dispose();
}

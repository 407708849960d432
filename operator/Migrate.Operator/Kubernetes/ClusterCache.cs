using k8s;
using k8s.Models;

namespace Migrate.Operator.Kubernetes;

/// <summary>
/// The informers the operator's controllers share: MigrationRequests, NodeDrains, Pods, Nodes and
/// Namespaces, each listed once and then watched. Controllers read from here, never list the API
/// server on a pass.
/// </summary>
public sealed class ClusterCache : BackgroundService
{
    /// <summary>Watches end on the server after a few minutes (each a different time) and are made again from the last version.</summary>
    private const int WatchSeconds = 300;

    public ClusterCache(IKubernetes client, ILoggerFactory loggers, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(loggers);
        var logger = loggers.CreateLogger<ClusterCache>();
        Requests = Custom<MigrationRequest, MigrationRequestList>(client, MigrationRequest.Plural, logger, time);
        Drains = Custom<NodeDrain, NodeDrainList>(client, NodeDrain.Plural, logger, time);
        Checkpoints = Custom<Checkpoint, CheckpointList>(client, Checkpoint.Plural, logger, time);
        Restores = Custom<Restore, RestoreList>(client, Restore.Plural, logger, time);
        Schedules = Custom<CheckpointSchedule, CheckpointScheduleList>(client, CheckpointSchedule.Plural, logger, time);
        Pods = new Informer<V1Pod>("pods",
            async ct =>
            {
                var list = await client.CoreV1.ListPodForAllNamespacesAsync(cancellationToken: ct);
                return (list.Items, list.Metadata.ResourceVersion);
            },
            (version, onError, ct) => client.CoreV1.WatchListPodForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: version, timeoutSeconds: Jittered(),
                onError: onError, cancellationToken: ct),
            logger, time);
        Nodes = new Informer<V1Node>("nodes",
            async ct =>
            {
                var list = await client.CoreV1.ListNodeAsync(cancellationToken: ct);
                return (list.Items, list.Metadata.ResourceVersion);
            },
            (version, onError, ct) => client.CoreV1.WatchListNodeAsync(allowWatchBookmarks: true, resourceVersion: version, timeoutSeconds: Jittered(),
                onError: onError, cancellationToken: ct),
            logger, time);
        Namespaces = new Informer<V1Namespace>("namespaces",
            async ct =>
            {
                var list = await client.CoreV1.ListNamespaceAsync(cancellationToken: ct);
                return (list.Items, list.Metadata.ResourceVersion);
            },
            (version, onError, ct) => client.CoreV1.WatchListNamespaceAsync(allowWatchBookmarks: true, resourceVersion: version, timeoutSeconds: Jittered(),
                onError: onError, cancellationToken: ct),
            logger, time);
    }

    public Informer<MigrationRequest> Requests { get; }

    public Informer<NodeDrain> Drains { get; }

    public Informer<V1Pod> Pods { get; }

    public Informer<V1Node> Nodes { get; }

    public Informer<V1Namespace> Namespaces { get; }

    public Informer<Checkpoint> Checkpoints { get; }

    public Informer<Restore> Restores { get; }

    public Informer<CheckpointSchedule> Schedules { get; }

    /// <summary>Every informer has listed once.</summary>
    public Task WaitForSyncAsync(CancellationToken cancellationToken) =>
        Task.WhenAll(Requests.WaitForSyncAsync(cancellationToken), Drains.WaitForSyncAsync(cancellationToken), Pods.WaitForSyncAsync(cancellationToken),
            Nodes.WaitForSyncAsync(cancellationToken), Namespaces.WaitForSyncAsync(cancellationToken), Checkpoints.WaitForSyncAsync(cancellationToken),
            Restores.WaitForSyncAsync(cancellationToken), Schedules.WaitForSyncAsync(cancellationToken));

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(Requests.RunAsync(stoppingToken), Drains.RunAsync(stoppingToken), Pods.RunAsync(stoppingToken), Nodes.RunAsync(stoppingToken),
            Namespaces.RunAsync(stoppingToken), Checkpoints.RunAsync(stoppingToken), Restores.RunAsync(stoppingToken),
            Schedules.RunAsync(stoppingToken));

    /// <summary>An informer of one of the project's kinds (listed and watched across namespaces).</summary>
    private static Informer<T> Custom<T, TList>(IKubernetes client, string plural, ILogger logger, TimeProvider time)
        where T : class, IKubernetesObject<V1ObjectMeta>
        where TList : IKubernetesObject<V1ListMeta>, IItems<T> =>
        new(plural,
            async ct =>
            {
                var list = (await client.CustomObjects.ListClusterCustomObjectWithHttpMessagesAsync<TList>(MigrationRequest.Group, MigrationRequest.Version,
                    plural, cancellationToken: ct)).Body;
                return (list.Items, list.Metadata.ResourceVersion);
            },
            (version, onError, ct) => Typed<T>(client.CustomObjects.WatchListClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version,
                plural, allowWatchBookmarks: true, resourceVersion: version, timeoutSeconds: Jittered(), onError: onError, cancellationToken: ct), ct),
            logger, time);

    private static int Jittered() => WatchSeconds + Random.Shared.Next(WatchSeconds);

    /// <summary>A custom resource's watch events, as the resource's type.</summary>
    private static async IAsyncEnumerable<(WatchEventType, T)> Typed<T>(IAsyncEnumerable<(WatchEventType, object)> events,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await foreach (var (type, item) in events.WithCancellation(cancellationToken))
        {
            var json = item is System.Text.Json.JsonElement element ? element.GetRawText() : KubernetesJson.Serialize(item);
            yield return (type, KubernetesJson.Deserialize<T>(json));
        }
    }
}

using System.Net;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Operator.Kubernetes;
using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Checkpoints;

/// <summary>
/// Reconciles CheckpointSchedules (see <see cref="ScheduleDecisions"/>): creates the Checkpoints
/// that are due, deletes those the retention removes (their finalizer has the agents remove the
/// images), and writes what the schedule holds into its status. Only while this replica leads.
/// </summary>
public sealed partial class ScheduleController : QueueController
{
    private readonly ILogger<ScheduleController> _logger;
    private readonly IKubernetes _client;
    private readonly TimeProvider _time;
    private readonly NamespacedObjects _objects;
    private readonly EventRecorder _events;
    private readonly HashSet<string> _unrecoverable = new(StringComparer.Ordinal);

    public ScheduleController(IKubernetes client, ClusterCache cache, ILeaderGate leader, ILogger<ScheduleController> logger, TimeProvider time)
        : base("CheckpointSchedule", cache, leader, logger, time, workers: 1)
    {
        _logger = logger;
        _client = client;
        _time = time;
        _objects = new NamespacedObjects(client);
        _events = new EventRecorder(client, time);
        cache.Schedules.OnChange(c => Queue.Add(ObjectKey.Of((c.New ?? c.Old!).Metadata)));
        cache.Checkpoints.OnChange(c =>
        {
            var changed = (c.New ?? c.Old!).Metadata;
            if (Keys.Get(changed.Labels, Labels.Schedule) is { } schedule)
            {
                Queue.Add(new ObjectKey(changed.NamespaceProperty, schedule));
            }
        });
    }

    /// <summary>How soon a schedule is looked at again without a change.</summary>
    public TimeSpan Resync { get; init; } = TimeSpan.FromSeconds(1);

    protected override IEnumerable<ObjectKey> AllKeys() => Cache.Schedules.Items.Select(s => ObjectKey.Of(s.Metadata));

    protected override async Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        if (Cache.Schedules.Get(key.Namespace, key.Name) is not { } schedule || schedule.Metadata.DeletionTimestamp is not null)
        {
            return null;
        }

        var now = _time.GetUtcNow().UtcDateTime;
        var checkpoints = ScheduleDecisions.Of(schedule, Cache.Checkpoints.Items).ToList();
        var status = schedule.Status is null ? new CheckpointScheduleStatus()
            : JsonSerializer.Deserialize<CheckpointScheduleStatus>(JsonSerializer.Serialize(schedule.Status))!;
        try
        {
            foreach (var pod in ScheduleDecisions.Due(schedule, Cache.Pods.Items, checkpoints, now))
            {
                await CreateAsync(schedule, pod, now, cancellationToken);
                status.LastCheckpointTime = now;
            }

            var removed = new HashSet<string>(StringComparer.Ordinal);
            foreach (var group in checkpoints.GroupBy(c => Keys.Get(c.Metadata.Labels, Labels.Pod) ?? "", StringComparer.Ordinal))
            {
                foreach (var expired in ScheduleDecisions.Expired(schedule.Spec.Retention, group, now))
                {
                    await DeleteAsync(schedule, expired, "the retention", cancellationToken);
                    removed.Add(expired.Metadata.Name);
                    status.Removed++;
                }
            }

            foreach (var expired in ScheduleDecisions.ExpiredAcrossPods(schedule.Spec.Retention.Namespace, checkpoints.Where(c => !removed.Contains(c.Metadata.Name))))
            {
                await DeleteAsync(schedule, expired, "the namespace-wide retention", cancellationToken);
                status.Removed++;
            }

            foreach (var step in RecoveryDecisions.Plan(schedule, Cache.Pods.Items, Cache.Nodes.Items, Cache.Checkpoints.Items, Cache.Restores.Items, now))
            {
                if (await RecoverAsync(schedule, step, now, cancellationToken))
                {
                    status.Recoveries++;
                }
            }

            var left = ScheduleDecisions.Of(schedule, Cache.Checkpoints.Items).Where(c => c.Metadata.DeletionTimestamp is null).ToList();
            status.Checkpoints = left.Count;
            status.TotalBytes = left.Sum(c => c.Status?.SizeBytes ?? 0);
            status.Message = schedule.Spec.Suspend ? "Suspended: no new checkpoints." : $"{left.Count} checkpoint(s), {status.TotalBytes} bytes.";
            if (JsonSerializer.Serialize(status) != JsonSerializer.Serialize(schedule.Status ?? new CheckpointScheduleStatus()))
            {
                schedule.Status = status;
                await _objects.WriteStatusAsync(schedule, CheckpointSchedule.Plural, cancellationToken);
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Conflict)
        {
            return TimeSpan.FromMilliseconds(100);
        }

        return Resync;
    }

    private async Task CreateAsync(CheckpointSchedule schedule, V1Pod pod, DateTime now, CancellationToken cancellationToken)
    {
        var name = ScheduleDecisions.NameFor(schedule, pod, now);
        var checkpoint = new Checkpoint
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                NamespaceProperty = schedule.Metadata.NamespaceProperty,
                Labels = new Dictionary<string, string> { [Labels.Schedule] = schedule.Metadata.Name, [Labels.Pod] = pod.Metadata.Name },
            },
            Spec = new CheckpointSpec
            {
                PodName = pod.Metadata.Name,
                Export = schedule.Spec.Export || schedule.Spec.RecoverOnNodeFailure ? new CheckpointExportSpec() : null,
            },
        };
        try
        {
            await _client.CustomObjects.CreateNamespacedCustomObjectAsync(checkpoint, MigrationRequest.Group, MigrationRequest.Version,
                schedule.Metadata.NamespaceProperty, Checkpoint.Plural, cancellationToken: cancellationToken);
            LogCreated(schedule.Metadata.NamespaceProperty, schedule.Metadata.Name, name);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by an earlier pass in the same second
        }
    }

    private async Task DeleteAsync(CheckpointSchedule schedule, Checkpoint expired, string by, CancellationToken cancellationToken)
    {
        try
        {
            await _client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, expired.Metadata.NamespaceProperty,
                Checkpoint.Plural, expired.Metadata.Name, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return;
        }

        await _events.RecordAsync(schedule.ApiVersion, CheckpointSchedule.KindName, schedule.Metadata, "Normal", "CheckpointRemoved",
            $"Checkpoint {expired.Metadata.Name} of pod {expired.Spec.PodName} (taken {expired.Status?.CheckpointTime:yyyy-MM-dd'T'HH:mm:ss'Z'}) removed by {by}.", cancellationToken);
    }

    /// <summary>Carries out one recovery step; true when it restored a pod (a Restore made).</summary>
    private async Task<bool> RecoverAsync(CheckpointSchedule schedule, RecoveryStep step, DateTime now, CancellationToken cancellationToken)
    {
        var ns = schedule.Metadata.NamespaceProperty;
        try
        {
            switch (step)
            {
                case RecoveryStep.Import import:
                    var from = import.From.Status!;
                    await _client.CustomObjects.CreateNamespacedCustomObjectAsync(new Checkpoint
                    {
                        Metadata = new V1ObjectMeta
                        {
                            Name = import.Name,
                            NamespaceProperty = ns,
                            Labels = new Dictionary<string, string> { [Labels.Recovers] = import.Pod.Metadata.Uid, [Labels.Pod] = import.Pod.Metadata.Name },
                            Annotations = new Dictionary<string, string> { [Labels.Schedule] = schedule.Metadata.Name },
                        },
                        Spec = new CheckpointSpec { Source = new CheckpointSource { Path = from.Export!.Path, Digest = from.Export.Digest } },
                    }, MigrationRequest.Group, MigrationRequest.Version, ns, Checkpoint.Plural, cancellationToken: cancellationToken);
                    await _events.RecordAsync(schedule.ApiVersion, CheckpointSchedule.KindName, schedule.Metadata, "Warning", "NodeFailed",
                        $"Pod {import.Pod.Metadata.Name}: {import.Why}. Recovering it on another node from checkpoint {import.From.Metadata.Name}, taken at {from.CheckpointTime:yyyy-MM-dd'T'HH:mm:ss'Z'} ({Age(from, now)} seconds ago).",
                        cancellationToken);
                    LogRecovering(ns, import.Pod.Metadata.Name, import.Why, import.From.Metadata.Name);
                    return false;
                case RecoveryStep.Fence fence:
                    await FenceAsync(fence.Pod, cancellationToken);
                    return false;
                case RecoveryStep.Restore restore:
                    await _client.CustomObjects.CreateNamespacedCustomObjectAsync(new Migrate.Api.Restore
                    {
                        Metadata = new V1ObjectMeta
                        {
                            Name = restore.Imported.Metadata.Name,
                            NamespaceProperty = ns,
                            Labels = new Dictionary<string, string> { [Labels.Recovers] = Keys.Get(restore.Imported.Metadata.Labels, Labels.Recovers)! },
                            Annotations = new Dictionary<string, string> { [Labels.Schedule] = schedule.Metadata.Name },
                        },
                        Spec = new RestoreSpec { CheckpointName = restore.Imported.Metadata.Name, PodName = restore.PodName, KeepLabels = true },
                    }, MigrationRequest.Group, MigrationRequest.Version, ns, Migrate.Api.Restore.Plural, cancellationToken: cancellationToken);
                    await _events.RecordAsync(schedule.ApiVersion, CheckpointSchedule.KindName, schedule.Metadata, "Normal", "Recovering",
                        $"Pod {restore.PodName} is being restored from checkpoint {restore.Imported.Metadata.Name}; its state is that of {restore.Imported.Status?.CheckpointTime:yyyy-MM-dd'T'HH:mm:ss.fff'Z'}, {Age(restore.Imported.Status!, now)} seconds old.",
                        cancellationToken);
                    return true;
                case RecoveryStep.Unrecoverable lost when _unrecoverable.Add(lost.Pod.Metadata.Uid):
                    await _events.RecordAsync(schedule.ApiVersion, CheckpointSchedule.KindName, schedule.Metadata, "Warning", "NotRecoverable", $"Pod {lost.Pod.Metadata.Name}: {lost.Why}.", cancellationToken);
                    return false;
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by an earlier pass: the decision stands
        }

        return false;
    }

    /// <summary>The failed pod's node is told (annotation) to remove it when it answers again; then its object goes at once.</summary>
    private async Task FenceAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        if (Cache.Nodes.Get(null, pod.Spec.NodeName) is { } node && !RecoveryDecisions.Fenced(node).Contains(pod.Metadata.Uid))
        {
            var list = string.Join(",", RecoveryDecisions.Fenced(node).Append(pod.Metadata.Uid));
            var patch = new System.Text.Json.Nodes.JsonObject
            {
                ["metadata"] = new System.Text.Json.Nodes.JsonObject
                {
                    ["annotations"] = new System.Text.Json.Nodes.JsonObject { [Annotations.FencedPods] = list },
                    ["resourceVersion"] = node.Metadata.ResourceVersion,
                },
            };
            await _client.CoreV1.PatchNodeAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), node.Metadata.Name, cancellationToken: cancellationToken);
        }

        try
        {
            await _client.CoreV1.DeleteNamespacedPodAsync(pod.Metadata.Name, pod.Metadata.NamespaceProperty,
                new V1DeleteOptions { GracePeriodSeconds = 0, Preconditions = new V1Preconditions { Uid = pod.Metadata.Uid } }, cancellationToken: cancellationToken);
            LogFenced(pod.Metadata.NamespaceProperty, pod.Metadata.Name, pod.Spec.NodeName);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // gone already
        }
    }

    private static long Age(CheckpointStatus status, DateTime now) => (long)(now - (status.CheckpointTime ?? now)).TotalSeconds;

    [LoggerMessage(Level = LogLevel.Warning, Message = "Pod {Namespace}/{Pod}: {Why}; recovering it from checkpoint {Checkpoint}")]
    private partial void LogRecovering(string @namespace, string pod, string why, string checkpoint);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Pod {Namespace}/{Pod} fenced: its object deleted, node {Node} told to remove what it has of it")]
    private partial void LogFenced(string @namespace, string pod, string node);

    [LoggerMessage(Level = LogLevel.Information, Message = "CheckpointSchedule {Namespace}/{Schedule}: created Checkpoint {Checkpoint}")]
    private partial void LogCreated(string @namespace, string schedule, string checkpoint);
}

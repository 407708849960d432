using System.Net;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.Operator.Kubernetes;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Reconciles group (gang) MigrationRequests, those naming pods or a podSelector: one pass gathers
/// the group, its member requests and the namespace's pods from the shared informers, decides
/// (<see cref="GroupDecisions"/>, no I/O) and carries it out: the member requests are created, and
/// the status (the gate the members follow) is written. A group is looked at when it or one of
/// its members changes, and every second while in flight; only while this replica leads. The
/// members themselves are ordinary requests of the MigrationController, which holds each at the
/// group's gate.
/// </summary>
public sealed partial class GroupController : BackgroundService
{
    private readonly IKubernetes _client;
    private readonly ClusterCache _cache;
    private readonly ILeaderGate _leader;
    private readonly ILogger<GroupController> _logger;
    private readonly TimeProvider _time;
    private readonly GroupPolicy _policy;
    private readonly EventRecorder _events;
    private readonly MigrationStore _store;
    private readonly WorkQueue<ObjectKey> _queue;

    public GroupController(IKubernetes client, ClusterCache cache, ILeaderGate leader, ILogger<GroupController> logger, TimeProvider time, GroupPolicy policy)
    {
        _client = client;
        _cache = cache;
        _leader = leader;
        _logger = logger;
        _time = time;
        _policy = policy;
        _events = new EventRecorder(client, time);
        _store = new MigrationStore(client);
        _queue = new WorkQueue<ObjectKey>(time);
        cache.Requests.OnChange(c =>
        {
            var request = c.New ?? c.Old!;
            if (request.Spec.IsGroup)
            {
                _queue.Add(ObjectKey.Of(request.Metadata));
            }
            else if (MigrationReconciler.GroupOwner(request) is { } owner)
            {
                _queue.Add(new ObjectKey(request.Metadata.NamespaceProperty, owner.Name));
            }
        });
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            await _cache.WaitForSyncAsync(stoppingToken);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        await new ControllerLoop("MigrationGroup", _queue, ReconcileAsync, () => _cache.Requests.Items.Where(r => r.Spec.IsGroup).Select(r => ObjectKey.Of(r.Metadata)),
            _leader, _logger, workers: 2).RunAsync(stoppingToken);
    }

    public override void Dispose()
    {
        base.Dispose();
        _queue.Dispose();
    }

    /// <summary>What one pass over a group sees.</summary>
    public GroupFacts Gather(MigrationRequest group)
    {
        ArgumentNullException.ThrowIfNull(group);
        var ns = group.Metadata.NamespaceProperty;
        return new GroupFacts
        {
            Group = group,
            Now = _time.GetUtcNow().UtcDateTime,
            Members = [.. _cache.Requests.Items.Where(r => MigrationReconciler.GroupOwner(r)?.Uid == group.Metadata.Uid)],
            Pods = [.. _cache.Pods.Items.Where(p => p.Metadata.NamespaceProperty == ns)],
            GroupsInFlight = _cache.Requests.Items.Count(r => r.Spec.IsGroup && r.Metadata.Uid != group.Metadata.Uid && r.Status?.Phase == GroupPhases.Migrating),
        };
    }

    private async Task<TimeSpan?> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        if (_cache.Requests.Get(key.Namespace, key.Name) is not { Spec.IsGroup: true } group || group.Metadata.DeletionTimestamp is not null)
        {
            return null; // a deleted group's members go back on their own (their gate reads RollBack)
        }

        var decision = GroupDecisions.Decide(Gather(group), _policy);
        try
        {
            foreach (var member in decision.Create)
            {
                await CreateMemberAsync(group, member, cancellationToken);
            }

            if (JsonSerializer.Serialize(group.Status) != JsonSerializer.Serialize(decision.Status))
            {
                var before = group.Status;
                group.Status = decision.Status;
                try
                {
                    var stored = await _store.WriteStatusAsync(group, cancellationToken);
                    _cache.Requests.Written(group, stored);
                }
                finally
                {
                    group.Status = before;
                }

                if ((before?.Group?.Gate != decision.Status.Group?.Gate || before?.Phase != decision.Status.Phase) && _logger.IsEnabled(LogLevel.Information))
                {
                    var name = key.ToString();
                    LogGate(name, decision.Status.Phase, decision.Status.Group?.Gate, decision.Status.Message);
                }
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            return TimeSpan.FromMilliseconds(50); // someone wrote first: decide again on what they wrote
        }

        foreach (var note in decision.Events)
        {
            await _events.RecordAsync(group.ApiVersion, MigrationRequest.KindName, group.Metadata, note.Type, note.Reason, note.Message, cancellationToken);
        }

        return decision.RequeueAfter;
    }

    private async Task CreateMemberAsync(MigrationRequest group, NewMember member, CancellationToken cancellationToken)
    {
        var request = new MigrationRequest
        {
            Metadata = new V1ObjectMeta
            {
                Name = member.Name,
                NamespaceProperty = group.Metadata.NamespaceProperty,
                Labels = new Dictionary<string, string> { [Labels.Group] = group.Metadata.Name },
                OwnerReferences =
                [
                    new V1OwnerReference
                    {
                        ApiVersion = group.ApiVersion, Kind = MigrationRequest.KindName, Name = group.Metadata.Name, Uid = group.Metadata.Uid, Controller = true,
                        BlockOwnerDeletion = false,
                    },
                ],
            },
            Spec = member.Spec,
        };
        try
        {
            await _client.CustomObjects.CreateNamespacedCustomObjectAsync(request, MigrationRequest.Group, MigrationRequest.Version, group.Metadata.NamespaceProperty,
                MigrationRequest.Plural, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // made by an earlier pass whose cache did not show it yet
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Group {Key}: {Phase}, gate {Gate}: {Message}")]
    private partial void LogGate(string key, string? phase, string? gate, string? message);
}

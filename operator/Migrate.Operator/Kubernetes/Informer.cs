using System.Collections.Concurrent;
using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Migrate.Operator.Kubernetes;

/// <summary>An object's place in a cache: namespace (empty for cluster-scoped objects) and name.</summary>
public readonly record struct ObjectKey(string Namespace, string Name)
{
    public static ObjectKey Of(V1ObjectMeta metadata) => new(metadata?.NamespaceProperty ?? "", metadata?.Name ?? "");

    public override string ToString() => Namespace.Length == 0 ? Name : $"{Namespace}/{Name}";
}

/// <summary>One change an informer saw: the object before (null when added) and after (null when deleted).</summary>
public readonly record struct Change<T>(T? Old, T? New)
    where T : class;

/// <summary>
/// A local, always-current copy of one kind of object, kept by list-then-watch: the watch resumes
/// from the last resourceVersion it saw (bookmarks keep that fresh on a quiet watch), a 410 Gone
/// (the server no longer has that version) relists, and any other failure reconnects after a
/// jittered, growing delay. Handlers see every change after the cache applied it; a relist tells
/// them what was added, changed and removed meanwhile. Reads never call the API server.
/// </summary>
public sealed partial class Informer<T>
    where T : class, IKubernetesObject<V1ObjectMeta>
{
    /// <summary>Lists every object and the list's resourceVersion.</summary>
    public delegate Task<(IList<T> Items, string ResourceVersion)> Lister(CancellationToken cancellationToken);

    /// <summary>Watches from a resourceVersion (with bookmarks); reports errors the stream carries (410 Gone among them) to the callback.</summary>
    public delegate IAsyncEnumerable<(WatchEventType Type, T Object)> Watcher(string resourceVersion, Action<Exception> onError, CancellationToken cancellationToken);

    private readonly string _name;
    private readonly Lister _list;
    private readonly Watcher _watch;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<ObjectKey, T> _items = new();
    private readonly TaskCompletionSource _synced = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<Action<Change<T>>> _handlers = [];

    public Informer(string name, Lister list, Watcher watch, ILogger logger, TimeProvider? time = null)
    {
        _name = name;
        _list = list;
        _watch = watch;
        _logger = logger;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>The longest wait between two attempts to watch again.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Relists done (the first list counts); a test reads it to see a 410 handled.</summary>
    public int Lists { get; private set; }

    /// <summary>Whether the first list has been applied.</summary>
    public bool HasSynced => _synced.Task.IsCompleted;

    public IReadOnlyCollection<T> Items => (IReadOnlyCollection<T>)_items.Values;

    public T? Get(string? ns, string name) => _items.GetValueOrDefault(new ObjectKey(ns ?? "", name));

    /// <summary>Adds a handler of changes (called on the informer's loop; keep it short: enqueue).</summary>
    public void OnChange(Action<Change<T>> handler)
    {
        lock (_handlers)
        {
            _handlers.Add(handler);
        }
    }

    public Task WaitForSyncAsync(CancellationToken cancellationToken) => _synced.Task.WaitAsync(cancellationToken);

    /// <summary>Keeps the cache current until cancelled.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        string? version = null;
        int failures = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                if (version is null)
                {
                    var (items, listed) = await _list(cancellationToken);
                    Replace(items);
                    Lists++;
                    version = listed;
                    _synced.TrySetResult();
                }

                bool gone = false;
                Exception? streamError = null;
                await foreach (var (type, item) in _watch(version, e =>
                {
                    if (e is KubernetesException { Status.Code: 410 })
                    {
                        gone = true;
                    }
                    else
                    {
                        streamError = e;
                    }
                }, cancellationToken))
                {
                    failures = 0;
                    version = item?.Metadata?.ResourceVersion ?? version;
                    switch (type)
                    {
                        case WatchEventType.Added or WatchEventType.Modified:
                            Upsert(item!);
                            break;
                        case WatchEventType.Deleted:
                            Remove(item!);
                            break;
                    }
                }

                if (gone)
                {
                    LogGone(_name, version);
                    version = null;
                }
                else if (streamError is not null)
                {
                    throw streamError;
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or IOException or KubernetesException or System.Text.Json.JsonException
                or OperationCanceledException or InvalidOperationException)
            {
                if (e is HttpOperationException { Response.StatusCode: HttpStatusCode.Gone })
                {
                    version = null;
                }

                if (version is null && e is HttpOperationException { Response.StatusCode: HttpStatusCode.NotFound })
                {
                    // the kind is not served (its CRD is not installed yet): an empty cache, listed again later
                    Replace([]);
                    _synced.TrySetResult();
                }

                failures++;
                var delay = Backoff(failures);
                LogRetry(_name, e.Message, delay.TotalMilliseconds);
                try
                {
                    await Task.Delay(delay, _time, cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>
    /// An object this replica itself just wrote: applied at once (when newer than the cache's copy,
    /// by generation of writes: the cache's copy has the version the write started from), so the
    /// next pass does not read its own write back stale.
    /// </summary>
    public void Written(T before, T after)
    {
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(after);
        var key = ObjectKey.Of(after.Metadata);
        if (_items.TryGetValue(key, out var cached) && cached.Metadata.ResourceVersion == before.Metadata.ResourceVersion)
        {
            _items.TryUpdate(key, after, cached);
        }
    }

    private void Replace(IList<T> items)
    {
        var seen = new HashSet<ObjectKey>();
        foreach (var item in items)
        {
            seen.Add(ObjectKey.Of(item.Metadata));
            Upsert(item);
        }

        foreach (var key in _items.Keys.Where(k => !seen.Contains(k)).ToList())
        {
            if (_items.TryRemove(key, out var removed))
            {
                Raise(new Change<T>(removed, null));
            }
        }
    }

    private void Upsert(T item)
    {
        var key = ObjectKey.Of(item.Metadata);
        _items.TryGetValue(key, out var old);
        if (old is not null && old.Metadata.ResourceVersion == item.Metadata.ResourceVersion)
        {
            return;
        }

        _items[key] = item;
        Raise(new Change<T>(old, item));
    }

    private void Remove(T item)
    {
        if (_items.TryRemove(ObjectKey.Of(item.Metadata), out var old))
        {
            Raise(new Change<T>(old, null));
        }
    }

    private void Raise(Change<T> change)
    {
        Action<Change<T>>[] handlers;
        lock (_handlers)
        {
            handlers = [.. _handlers];
        }

        foreach (var handler in handlers)
        {
            handler(change);
        }
    }

    /// <summary>200 ms doubling to <see cref="MaxBackoff"/>, each with up to half again of jitter (replicas and informers do not retry in step).</summary>
    private TimeSpan Backoff(int failures)
    {
        double millis = Math.Min(MaxBackoff.TotalMilliseconds, 200 * Math.Pow(2, Math.Min(failures - 1, 16)));
        return TimeSpan.FromMilliseconds(millis * (1 + (Random.Shared.NextDouble() / 2)));
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "{Informer}: resourceVersion {Version} is gone (410); listing again")]
    private partial void LogGone(string informer, string? version);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Informer}: watch failed ({Error}); again in {Millis:0} ms")]
    private partial void LogRetry(string informer, string error, double millis);
}

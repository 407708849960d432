using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace Migrate.KubeEmulator.Storage;

public enum ChangeType
{
    Added,
    Modified,
    Deleted,
}

/// <summary>An object as stored: its storage key (group/resource), place and body.</summary>
public sealed record StoredObject(string StorageKey, string? Namespace, string Name, JsonObject Body, long Revision)
{
    public string Path => Namespace is null ? Name : $"{Namespace}/{Name}";
}

/// <summary>One change, as watches see it. <see cref="Previous"/> is the body before the change.</summary>
public sealed record StoreEvent(ChangeType Type, StoredObject Stored, JsonObject? Previous);

/// <summary>A watch's starting point no longer exists in the retained history.</summary>
public sealed class RevisionGoneException(long requested, long oldest)
    : Exception($"too old resource version: {requested} ({oldest})")
{
    public long Requested { get; } = requested;

    public long Oldest { get; } = oldest;
}

public sealed class ObjectExistsException(StoredObject existing) : Exception("object exists")
{
    public StoredObject Existing { get; } = existing;
}

public sealed class ObjectMissingException() : Exception("object missing");

public sealed class RevisionConflictException(StoredObject current) : Exception("revision conflict")
{
    public StoredObject Current { get; } = current;
}

/// <summary>
/// The emulator's etcd: objects by storage key and path, one global revision counter (the
/// resourceVersion), a bounded history of changes for watches resuming from a revision, and live
/// subscriptions. Every operation is atomic under one lock; bodies handed out are never mutated.
/// </summary>
public sealed class ObjectStore
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, SortedDictionary<string, StoredObject>> _objects = [];
    private readonly Queue<StoreEvent> _history = new();
    private readonly List<Subscription> _subscriptions = [];
    private readonly int _historyCapacity;
    private long _revision;
    private long _oldestRetained = 1;

    public ObjectStore(int historyCapacity = 100_000)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(historyCapacity, 1);
        _historyCapacity = historyCapacity;
    }

    public long Revision
    {
        get
        {
            lock (_gate)
            {
                return _revision;
            }
        }
    }

    public StoredObject? Get(string key, string? ns, string name)
    {
        lock (_gate)
        {
            return Table(key).GetValueOrDefault(PathOf(ns, name));
        }
    }

    /// <summary>All objects of a key (in one namespace, or all), ordered by path, and the revision they are current at.</summary>
    public (List<StoredObject> Items, long Revision) List(string key, string? ns)
    {
        lock (_gate)
        {
            var items = Table(key).Values.Where(o => ns is null || o.Namespace == ns).ToList();
            return (items, _revision);
        }
    }

    public int Count(string key)
    {
        lock (_gate)
        {
            return Table(key).Count;
        }
    }

    /// <summary>Stores a new object; the body gets metadata.resourceVersion.</summary>
    public StoredObject Create(string key, string? ns, string name, JsonObject body)
    {
        lock (_gate)
        {
            var table = Table(key);
            var path = PathOf(ns, name);
            if (table.TryGetValue(path, out var existing))
            {
                throw new ObjectExistsException(existing);
            }

            var stored = Stamp(key, ns, name, body);
            table[path] = stored;
            Publish(new StoreEvent(ChangeType.Added, stored, null));
            return stored;
        }
    }

    /// <summary>Replaces an object if it is still at <paramref name="expectedRevision"/>.</summary>
    public StoredObject Replace(string key, string? ns, string name, long expectedRevision, JsonObject body)
    {
        lock (_gate)
        {
            var (table, path, current) = CurrentAt(key, ns, name, expectedRevision);
            var stored = Stamp(key, ns, name, body);
            table[path] = stored;
            Publish(new StoreEvent(ChangeType.Modified, stored, current.Body));
            return stored;
        }
    }

    /// <summary>Removes an object if it is still at <paramref name="expectedRevision"/>; watchers see its last body.</summary>
    public StoredObject Remove(string key, string? ns, string name, long expectedRevision)
    {
        lock (_gate)
        {
            var (table, path, current) = CurrentAt(key, ns, name, expectedRevision);
            table.Remove(path);
            var gone = Stamp(key, ns, name, current.Body);
            Publish(new StoreEvent(ChangeType.Deleted, gone, current.Body));
            return gone;
        }
    }

    /// <summary>
    /// Subscribes to changes of one key. With <paramref name="sinceRevision"/> the retained changes
    /// after it come first (410 if they are no longer retained); without it, the current objects
    /// come first as synthetic additions.
    /// </summary>
    public Subscription Subscribe(string key, long? sinceRevision)
    {
        lock (_gate)
        {
            var subscription = new Subscription(this, key);
            if (sinceRevision is long since && since < _revision)
            {
                if (since + 1 < _oldestRetained)
                {
                    throw new RevisionGoneException(since, _oldestRetained);
                }

                foreach (var e in _history)
                {
                    if (e.Stored.StorageKey == key && e.Stored.Revision > since)
                    {
                        subscription.Offer(e);
                    }
                }
            }
            else if (sinceRevision is null)
            {
                foreach (var o in Table(key).Values)
                {
                    subscription.Offer(new StoreEvent(ChangeType.Added, o, null));
                }
            }

            _subscriptions.Add(subscription);
            return subscription;
        }
    }

    private void Unsubscribe(Subscription subscription)
    {
        lock (_gate)
        {
            _subscriptions.Remove(subscription);
        }
    }

    /// <summary>The stored object if it is still at <paramref name="expectedRevision"/>; call under the lock.</summary>
    private (SortedDictionary<string, StoredObject> Table, string Path, StoredObject Current) CurrentAt(string key, string? ns, string name, long expectedRevision)
    {
        var table = Table(key);
        var path = PathOf(ns, name);
        if (!table.TryGetValue(path, out var current))
        {
            throw new ObjectMissingException();
        }

        return current.Revision == expectedRevision ? (table, path, current) : throw new RevisionConflictException(current);
    }

    private StoredObject Stamp(string key, string? ns, string name, JsonObject body)
    {
        _revision++;
        var copy = body.DeepClone().AsObject();
        var metadata = copy["metadata"] as JsonObject ?? new JsonObject();
        copy["metadata"] = metadata;
        metadata["resourceVersion"] = _revision.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new StoredObject(key, ns, name, copy, _revision);
    }

    private void Publish(StoreEvent e)
    {
        _history.Enqueue(e);
        while (_history.Count > _historyCapacity)
        {
            _history.Dequeue();
        }

        _oldestRetained = _history.Count > 0 ? _history.Peek().Stored.Revision : _revision + 1;
        foreach (var s in _subscriptions)
        {
            if (s.Key == e.Stored.StorageKey)
            {
                s.Offer(e);
            }
        }
    }

    private SortedDictionary<string, StoredObject> Table(string key)
    {
        if (!_objects.TryGetValue(key, out var table))
        {
            table = new SortedDictionary<string, StoredObject>(StringComparer.Ordinal);
            _objects[key] = table;
        }

        return table;
    }

    private static string PathOf(string? ns, string name) => ns is null ? name : $"{ns}/{name}";

    /// <summary>A live feed of changes; dispose to stop it.</summary>
    public sealed class Subscription : IDisposable
    {
        private const int MaxBacklog = 100_000;
        private readonly ObjectStore _store;
        private readonly Channel<StoreEvent> _channel = Channel.CreateUnbounded<StoreEvent>(new UnboundedChannelOptions { SingleReader = true });
        private int _pending;

        internal Subscription(ObjectStore store, string key)
        {
            _store = store;
            Key = key;
        }

        public string Key { get; }

        public ChannelReader<StoreEvent> Events => _channel.Reader;

        /// <summary>True when the subscriber fell too far behind and was cut off.</summary>
        public bool Overflowed { get; private set; }

        internal void Offer(StoreEvent e)
        {
            if (Interlocked.Increment(ref _pending) > MaxBacklog)
            {
                Overflowed = true;
                _channel.Writer.TryComplete();
                return;
            }

            _channel.Writer.TryWrite(e);
        }

        internal void Consumed() => Interlocked.Decrement(ref _pending);

        public async IAsyncEnumerable<StoreEvent> ReadAllAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await foreach (var e in _channel.Reader.ReadAllAsync(cancellationToken))
            {
                Consumed();
                yield return e;
            }
        }

        public void Dispose()
        {
            _store.Unsubscribe(this);
            _channel.Writer.TryComplete();
        }
    }
}

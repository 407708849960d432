namespace Migrate.Operator.Kubernetes;

/// <summary>
/// The work queue of a controller, as client-go has it: keys, not events (a key added ten times
/// before a worker takes it is worked on once); a key being worked on is never handed to a second
/// worker, and if it is added meanwhile it comes back once the first is done; keys can come back
/// after a delay, or after a delay that doubles with each failure of that key (reset by
/// <see cref="Forget"/>).
/// </summary>
public sealed class WorkQueue<TKey> : IDisposable
    where TKey : notnull
{
    private readonly Lock _gate = new();
    private readonly Queue<TKey> _queue = new();
    private readonly HashSet<TKey> _dirty = [];
    private readonly HashSet<TKey> _processing = [];
    private readonly Dictionary<TKey, int> _failures = [];
    private readonly Dictionary<TKey, (DateTimeOffset Due, ITimer Timer)> _waiting = [];
    private readonly SemaphoreSlim _available = new(0);
    private readonly TimeProvider _time;
    private bool _shutDown;

    public WorkQueue(TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
    }

    /// <summary>The first retry delay of a failing key.</summary>
    public TimeSpan BaseDelay { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>The longest retry delay of a failing key.</summary>
    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Keys waiting for a worker (not those being worked on or delayed).</summary>
    public int Length
    {
        get
        {
            lock (_gate)
            {
                return _queue.Count;
            }
        }
    }

    public void Add(TKey key)
    {
        lock (_gate)
        {
            if (_shutDown || !_dirty.Add(key))
            {
                return;
            }

            if (_processing.Contains(key))
            {
                // back when its worker is done
                return;
            }

            _queue.Enqueue(key);
        }

        _available.Release();
    }

    /// <summary>Adds the key after <paramref name="delay"/> (a sooner <see cref="Add"/> wins; the earliest of several delays wins).</summary>
    public void AddAfter(TKey key, TimeSpan delay)
    {
        if (delay <= TimeSpan.Zero)
        {
            Add(key);
            return;
        }

        lock (_gate)
        {
            if (_shutDown)
            {
                return;
            }

            var due = _time.GetUtcNow() + delay;
            if (_waiting.TryGetValue(key, out var existing))
            {
                if (existing.Due <= due)
                {
                    return;
                }

                existing.Timer.Dispose();
            }

            var timer = _time.CreateTimer(_ => Fire(key, due), null, delay, Timeout.InfiniteTimeSpan);
            _waiting[key] = (due, timer);
        }
    }

    /// <summary>Adds the key after its failure delay, which doubles with each failure until <see cref="Forget"/>.</summary>
    public TimeSpan AddRateLimited(TKey key)
    {
        int failures;
        lock (_gate)
        {
            failures = _failures.GetValueOrDefault(key) + 1;
            _failures[key] = failures;
        }

        var delay = TimeSpan.FromMilliseconds(Math.Min(MaxDelay.TotalMilliseconds, BaseDelay.TotalMilliseconds * Math.Pow(2, Math.Min(failures - 1, 30))));
        AddAfter(key, delay);
        return delay;
    }

    /// <summary>The key succeeded: its failure delay starts over.</summary>
    public void Forget(TKey key)
    {
        lock (_gate)
        {
            _failures.Remove(key);
        }
    }

    /// <summary>How many times in a row the key failed.</summary>
    public int Failures(TKey key)
    {
        lock (_gate)
        {
            return _failures.GetValueOrDefault(key);
        }
    }

    /// <summary>The next key to work on; the caller must call <see cref="Done"/> with it.</summary>
    public async Task<TKey> TakeAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            await _available.WaitAsync(cancellationToken);
            lock (_gate)
            {
                if (_queue.TryDequeue(out var key))
                {
                    _dirty.Remove(key);
                    _processing.Add(key);
                    return key;
                }

                if (_shutDown)
                {
                    throw new OperationCanceledException("the work queue was shut down");
                }
            }
        }
    }

    /// <summary>The worker is done with the key; if it was added meanwhile, it is queued again.</summary>
    public void Done(TKey key)
    {
        bool again;
        lock (_gate)
        {
            _processing.Remove(key);
            again = _dirty.Contains(key) && !_shutDown;
            if (again)
            {
                _queue.Enqueue(key);
            }
        }

        if (again)
        {
            _available.Release();
        }
    }

    /// <summary>No more keys are taken; waiting workers are released.</summary>
    public void ShutDown()
    {
        lock (_gate)
        {
            _shutDown = true;
            foreach (var (_, waiting) in _waiting)
            {
                waiting.Timer.Dispose();
            }

            _waiting.Clear();
        }

        _available.Release(64);
    }

    public void Dispose()
    {
        ShutDown();
        _available.Dispose();
    }

    private void Fire(TKey key, DateTimeOffset due)
    {
        lock (_gate)
        {
            if (!_waiting.TryGetValue(key, out var waiting) || waiting.Due != due)
            {
                return;
            }

            _waiting.Remove(key);
            waiting.Timer.Dispose();
        }

        Add(key);
    }
}

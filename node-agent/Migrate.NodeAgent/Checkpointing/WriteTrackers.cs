using Migrate.Criu.Incremental;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The write trackers of the pods this agent pre-copies, one per container, keyed by the
/// migration (or checkpoint) that owns them: armed just before a container's first round is read,
/// kept across rounds, never armed while a pod is frozen (a frozen process cannot be stopped to
/// be traced), and released (every registration removed, the pod untouched) once the owner has
/// left pre-copy and, when it was dumped, the freeze (after the handoff), whatever way it leaves.
/// A container that could not be armed is not tried again for the same owner; its pages are compared.
/// </summary>
public sealed partial class WriteTrackers(bool enabled, ILogger logger) : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<(string Owner, string Container), WriteTracker?> _trackers = [];

    /// <summary>Null when trackers are made here; else why not (turned off, or what this machine lacks).</summary>
    public string? WhyNot => enabled ? WriteTracker.WhyUnsupported() : "turned off (Agent:WriteTracking=false)";

    /// <summary>For pre-copy rounds of a running container: its tracker, armed before the round's read if it has none yet.</summary>
    public Func<int, WriteTracker?> ForRounds(string owner, string container, int pid) => round =>
    {
        lock (_lock)
        {
            if (_trackers.TryGetValue((owner, container), out var existing))
            {
                return existing;
            }

            WriteTracker? tracker = null;
            if (WhyNot is { } reason)
            {
                LogNotTracked(owner, container, reason);
            }
            else
            {
                try
                {
                    tracker = WriteTracker.Arm(pid, round);
                    LogArmed(owner, container, tracker.ArmedTasks, tracker.Notes.Count);
                    foreach (var note in tracker.Notes)
                    {
                        LogNotTracked(owner, container, note);
                    }
                }
                catch (Exception e) when (e is WriteTrackingException or IOException or ArgumentException or UnauthorizedAccessException)
                {
                    LogNotTracked(owner, container, e.Message);
                }
            }

            _trackers[(owner, container)] = tracker;
            return tracker;
        }
    };

    /// <summary>For a frozen container: its tracker if one was armed, never a new one.</summary>
    public Func<int, WriteTracker?> ForFrozen(string owner, string container) => _ =>
    {
        lock (_lock)
        {
            return _trackers.GetValueOrDefault((owner, container));
        }
    };

    /// <summary>Whether <paramref name="container"/> of <paramref name="owner"/> has a tracker armed.</summary>
    public bool Tracks(string owner, string container)
    {
        lock (_lock)
        {
            return _trackers.GetValueOrDefault((owner, container)) is not null;
        }
    }

    /// <summary>Ends the tracking of every container of <paramref name="owner"/>.</summary>
    public void Release(string owner) => Close(owner, Take(owner));

    /// <summary>
    /// The same, the trackers closed on a thread of the pool: closing one lifts the write protection
    /// of every page it covered, which the kernel does page by page (50-70 ms per GiB, 222 ms for
    /// 4 GiB here), and the caller need not wait for it. Nothing is tracked for
    /// <paramref name="owner"/> from the return on; a tracker armed again for it meanwhile may find
    /// the memory still registered and compare its pages instead.
    /// </summary>
    public void ReleaseBeside(string owner)
    {
        var taken = Take(owner);
        if (taken.Count > 0)
        {
            _ = Task.Run(() => Close(owner, taken));
        }
    }

    private List<WriteTracker> Take(string owner)
    {
        lock (_lock)
        {
            var keys = _trackers.Keys.Where(k => k.Owner == owner).ToList();
            var taken = keys.Select(k => _trackers[k]).OfType<WriteTracker>().ToList();
            keys.ForEach(k => _trackers.Remove(k));
            return taken;
        }
    }

    private void Close(string owner, List<WriteTracker> trackers)
    {
        if (trackers.Count == 0)
        {
            return;
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        trackers.ForEach(t => t.Dispose());
        LogReleased(owner, trackers.Count, (long)clock.Elapsed.TotalMilliseconds);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var tracker in _trackers.Values)
            {
                tracker?.Dispose();
            }

            _trackers.Clear();
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "{Owner}: writes of container {Container} tracked in {Processes} process(es), {Untracked} not")]
    private partial void LogArmed(string owner, string container, int processes, int untracked);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Owner}: writes of container {Container} not tracked, its pages are compared: {Reason}")]
    private partial void LogNotTracked(string owner, string container, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Owner}: write tracking of {Containers} container(s) released in {Millis} ms")]
    private partial void LogReleased(string owner, int containers, long millis);
}

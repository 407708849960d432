using System.Collections.Concurrent;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// When the pages lane sends its next piece, given what the restored process is doing: while it
/// waits on pages it touched (each fault a round trip to this node, which shares its CPUs with the
/// lane's reading, checksumming and encrypting of the frozen memory), the lane holds back until
/// no fault has been asked for during a quiet window; never longer than a bound per piece, so the
/// stream always ends, however the process faults.
/// </summary>
public static class LaneYield
{
    /// <summary>How long no fault must have been asked for before the lane goes on.</summary>
    public static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(5);

    /// <summary>The longest the lane holds one piece back (at least 20 pieces of 1 MiB a second go whatever the faults).</summary>
    public static readonly TimeSpan Most = TimeSpan.FromMilliseconds(50);

    /// <param name="faultsInFlight">Faults of the migration being answered now.</param>
    /// <param name="sinceLastFault">Since the last fault was asked for or answered (null: none yet).</param>
    /// <param name="waited">How long the lane has held this piece back already.</param>
    /// <param name="quiet">The quiet window.</param>
    /// <param name="most">The bound per piece.</param>
    /// <returns>How long to wait before asking again; zero to send the piece now.</returns>
    public static TimeSpan Wait(int faultsInFlight, TimeSpan? sinceLastFault, TimeSpan waited, TimeSpan quiet, TimeSpan most)
    {
        var left = most - waited;
        if (left <= TimeSpan.Zero)
        {
            return TimeSpan.Zero;
        }

        if (faultsInFlight > 0)
        {
            return Min(quiet, left);
        }

        return sinceLastFault is { } since && since < quiet ? Min(quiet - since, left) : TimeSpan.Zero;
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;
}

/// <summary>
/// The source's record of each post-copy migration's faults, which its pages lanes consult before
/// each piece (<see cref="LaneYield"/>): the process waiting on a fault goes first, the background
/// stream after. Kept only while a lane of the migration is open.
/// </summary>
public sealed class FaultsFirst(TimeProvider time, TimeSpan? quiet = null, TimeSpan? most = null)
{
    private readonly ConcurrentDictionary<string, Activity> _migrations = new(StringComparer.Ordinal);
    private readonly TimeSpan _quiet = quiet ?? LaneYield.Quiet;
    private readonly TimeSpan _most = most ?? LaneYield.Most;

    /// <summary>Open while a pages lane of <paramref name="migrationId"/> streams; its faults are watched meanwhile.</summary>
    public IDisposable Lane(string migrationId)
    {
        var activity = _migrations.AddOrUpdate(migrationId, _ => new Activity { Lanes = 1 }, (_, a) =>
        {
            Interlocked.Increment(ref a.Lanes);
            return a;
        });
        return new Release(() =>
        {
            if (Interlocked.Decrement(ref activity.Lanes) == 0)
            {
                _migrations.TryRemove(new KeyValuePair<string, Activity>(migrationId, activity));
            }
        });
    }

    /// <summary>Open while a fault of <paramref name="migrationId"/> is answered.</summary>
    public IDisposable Fault(string migrationId)
    {
        if (!_migrations.TryGetValue(migrationId, out var activity))
        {
            return new Release(null);
        }

        Interlocked.Increment(ref activity.InFlight);
        Volatile.Write(ref activity.LastFault, time.GetTimestamp());
        return new Release(() =>
        {
            Volatile.Write(ref activity.LastFault, time.GetTimestamp());
            Interlocked.Decrement(ref activity.InFlight);
        });
    }

    /// <summary>Waits, before a lane's next piece, as <see cref="LaneYield.Wait"/> says.</summary>
    public async Task BeforePieceAsync(string migrationId, CancellationToken cancellationToken)
    {
        long began = time.GetTimestamp();
        while (_migrations.TryGetValue(migrationId, out var activity))
        {
            long last = Volatile.Read(ref activity.LastFault);
            var wait = LaneYield.Wait(Volatile.Read(ref activity.InFlight), last == 0 ? null : time.GetElapsedTime(last), time.GetElapsedTime(began),
                _quiet, _most);
            if (wait <= TimeSpan.Zero)
            {
                return;
            }

            await Task.Delay(wait, time, cancellationToken);
        }
    }

    private sealed class Activity
    {
        public int Lanes;
        public int InFlight;
        public long LastFault;
    }

    private sealed class Release(Action? release) : IDisposable
    {
        private Action? _release = release;

        public void Dispose() => Interlocked.Exchange(ref _release, null)?.Invoke();
    }
}

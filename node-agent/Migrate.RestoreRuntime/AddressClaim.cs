using System.Diagnostics;

namespace Migrate.RestoreRuntime;

/// <summary>The pod's address claimed on a thread of its own while the restore goes on; <see cref="Wait"/> gives what it threw.</summary>
internal sealed class AddressClaim
{
    private readonly Thread _thread;
    private Exception? _failure;

    private AddressClaim(Func<bool> claim, Stopwatch clock)
    {
        StartedAt = clock.ElapsedMilliseconds;
        _thread = new Thread(() =>
        {
            try
            {
                ClaimedHere = claim();
            }
            catch (Exception e)
            {
                _failure = e;
            }
            finally
            {
                DoneAt = clock.ElapsedMilliseconds;
            }
        }) { IsBackground = true, Name = "podmig address claim" };
    }

    /// <summary>When the claim began, on the restore's clock.</summary>
    public long StartedAt { get; }

    /// <summary>When the claim ended, on the restore's clock.</summary>
    public long DoneAt { get; private set; }

    /// <summary>After <see cref="Wait"/>: the claim put the address here (false: it found it claimed by an earlier container, or failed).</summary>
    public bool ClaimedHere { get; private set; }

    /// <param name="claim">The claim; true when it claimed the address itself.</param>
    /// <param name="clock">The restore's clock, read when the claim ends (<see cref="DoneAt"/>).</param>
    public static AddressClaim Start(Func<bool> claim, Stopwatch clock)
    {
        var started = new AddressClaim(claim, clock);
        started._thread.Start();
        return started;
    }

    /// <summary>Waits for the claim to end: null when it succeeded, else what it threw.</summary>
    public Exception? Wait()
    {
        _thread.Join();
        return _failure;
    }
}

using System.Diagnostics;

namespace Migrate.RestoreRuntime;

/// <summary>The pod's address claimed on a thread of its own while the restore goes on; <see cref="Wait"/> gives what it threw.</summary>
internal sealed class AddressClaim
{
    private readonly Thread _thread;
    private Exception? _failure;

    private AddressClaim(Action claim, Stopwatch clock)
    {
        _thread = new Thread(() =>
        {
            try
            {
                claim();
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

    /// <summary>When the claim ended, on the restore's clock.</summary>
    public long DoneAt { get; private set; }

    public static AddressClaim Start(Action claim, Stopwatch clock)
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

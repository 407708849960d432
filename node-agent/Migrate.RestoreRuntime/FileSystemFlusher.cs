using Migrate.Criu;

namespace Migrate.RestoreRuntime;

/// <summary>
/// Writes back, again and again while a restore waits for its commit, the dirty data of the file
/// system under the container's root: an overlay's unmount (which putting back the writable layer
/// needs) writes back the whole upper file system first, and the pre-copy rounds staged beside it
/// (hundreds of MB) would otherwise be written back then, inside the downtime (306 ms for one
/// 256 MiB round measured in the sandbox). Each pass is <c>syncfs(2)</c> on the root's mount, for an
/// overlay its upper file system; the passes end with the wait, a pass under way runs on in the
/// background.
/// </summary>
internal sealed class FileSystemFlusher : IDisposable
{
    private static readonly TimeSpan Pause = TimeSpan.FromMilliseconds(200);
    private readonly ManualResetEventSlim _stop = new();
    private readonly int _descriptor;
    private readonly Thread _thread;

    private FileSystemFlusher(int descriptor)
    {
        _descriptor = descriptor;
        _thread = new Thread(Run) { IsBackground = true, Name = "podmig syncfs" };
        _thread.Start();
    }

    /// <summary>Passes done so far.</summary>
    public int Passes { get; private set; }

    /// <summary>Starts the passes over the file system of <paramref name="directory"/>; null (and nothing done) when it cannot be opened.</summary>
    public static FileSystemFlusher? Start(string directory)
    {
        int descriptor = Posix.Open(directory, Posix.ORdOnly | Posix.ODirectory | Posix.OCloExec);
        return descriptor < 0 ? null : new FileSystemFlusher(descriptor);
    }

    /// <summary>
    /// No more passes: waits for the one under way (what it writes back the unmount would write
    /// back anyway) and for the descriptor to be closed, which would otherwise keep the root's mount
    /// busy and its unmount refused.
    /// </summary>
    public void Dispose()
    {
        _stop.Set();
        _thread.Join();
        _stop.Dispose();
    }

    private void Run()
    {
        try
        {
            while (!_stop.IsSet)
            {
                if (Posix.SyncFs(_descriptor) != 0)
                {
                    return; // nothing to gain from more tries: the unmount writes back as it always did
                }

                Passes++;
                _stop.Wait(Pause);
            }
        }
        finally
        {
            _ = Posix.Close(_descriptor);
        }
    }
}

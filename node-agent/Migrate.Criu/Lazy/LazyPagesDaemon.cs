using System.Diagnostics;
using System.Net.Sockets;

namespace Migrate.Criu.Lazy;

/// <summary>
/// CRIU's lazy-pages daemon (<c>criu lazy-pages</c>, command line only): it listens on
/// <see cref="SocketName"/> in a restore's work directory, takes the userfaultfd of every restored
/// process from the restore, and fills their lazy pages, on demand first and then all the rest, from
/// a page server on the socket it is given. It exits when every page is in place (or the processes are gone).
/// </summary>
public static class LazyPagesDaemon
{
    /// <summary>Where a lazy restore finds the daemon, in the shared work directory.</summary>
    public const string SocketName = "lazy-pages.socket";

    /// <summary>The daemon's CRIU log, in the work directory.</summary>
    public const string LogName = "lazy-pages.log";

    /// <summary>
    /// Starts the daemon for the image set <paramref name="imagesDirectory"/> (a lazy dump) with
    /// <paramref name="pageServer"/> as its connection to the page server, and waits until it listens.
    /// Returns its PID. The caller keeps (and eventually reaps or kills) it.
    /// </summary>
    public static int Start(string criuBinary, string imagesDirectory, string workDirectory, Socket pageServer, TimeSpan readyTimeout)
    {
        int pid = Spawn(criuBinary, imagesDirectory, workDirectory, pageServer);
        WaitListening(pid, workDirectory, readyTimeout);
        return pid;
    }

    /// <summary>
    /// Starts the daemon as <see cref="Start"/> does, without waiting for it: it probes the kernel and
    /// reads the image set's process tree before it listens, which can overlap other work.
    /// </summary>
    public static int Spawn(string criuBinary, string imagesDirectory, string workDirectory, Socket pageServer)
    {
        ArgumentNullException.ThrowIfNull(pageServer);
        File.Delete(Path.Combine(workDirectory, SocketName));
        // once the restore is over, the daemon polls without sleeping while it waits for pages (CRIU 4.1's
        // uffd.c): the preloaded wait library makes it sleep until a descriptor is ready instead, so that it
        // neither takes a core from what brings the pages nor needs a low priority that delays the faults
        return DetachedProcess.Spawn(criuBinary,
            ["lazy-pages", "--page-server", "--ps-socket", "3", "--images-dir", imagesDirectory, "--work-dir", workDirectory, "--log-file", LogName],
            new Dictionary<int, int> { [3] = (int)pageServer.SafeHandle.DangerousGetHandle() },
            Path.Combine(workDirectory, "lazy-pages.out"),
            new Dictionary<string, string> { ["LD_PRELOAD"] = WriteWaitLibrary(workDirectory) });
    }

    /// <summary>The wait library's name in the work directory (built from Native/lazywait.c into this assembly).</summary>
    public const string WaitLibraryName = "lazywait.so";

    /// <summary>Writes the wait library (Native/lazywait.c, which the build compiles into this assembly) into the work directory; returns its path.</summary>
    public static string WriteWaitLibrary(string workDirectory)
    {
        using var library = typeof(LazyPagesDaemon).Assembly.GetManifestResourceStream(WaitLibraryName)
            ?? throw new InvalidOperationException($"this build of Migrate.Criu carries no {WaitLibraryName} (Native/lazywait.c, compiled by gcc at build time)");
        var path = Path.Combine(workDirectory, WaitLibraryName);
        File.Delete(path);
        using (var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute,
        }))
        {
            library.CopyTo(file);
        }

        return path;
    }

    /// <summary>Waits until the daemon <paramref name="pid"/> listens; kills it when it does not within <paramref name="readyTimeout"/>.</summary>
    public static void WaitListening(int pid, string workDirectory, TimeSpan readyTimeout)
    {
        var socket = Path.Combine(workDirectory, SocketName);
        var clock = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (DetachedProcess.TryReap(pid) is int exit)
            {
                throw new IOException($"CRIU's lazy-pages daemon exited ({exit}) before it listened: {LogTail(workDirectory)}");
            }

            if (clock.Elapsed > readyTimeout)
            {
                DetachedProcess.Kill(pid);
                throw new TimeoutException($"CRIU's lazy-pages daemon did not listen within {readyTimeout.TotalSeconds:0.#} s: {LogTail(workDirectory)}");
            }

            Thread.Sleep(2);
        }
    }

    /// <summary>The daemon's error lines (or last lines), for a failure message.</summary>
    public static string LogTail(string workDirectory)
    {
        var log = Path.Combine(workDirectory, LogName);
        if (!File.Exists(log))
        {
            return "no lazy-pages log";
        }

        var lines = CriuClient.ReadLogTail(log);
        var errors = lines.Where(l => l.Contains("Error", StringComparison.Ordinal) && !l.Contains("RLIMIT_NOFILE", StringComparison.Ordinal)).TakeLast(3).ToList();
        return string.Join(" | ", errors.Count > 0 ? errors : lines.TakeLast(3));
    }
}

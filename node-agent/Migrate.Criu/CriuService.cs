using System.Runtime.InteropServices;
using Migrate.Criu.Lazy;

namespace Migrate.Criu;

/// <summary>
/// A CRIU service process (<c>criu swrk</c>) started ahead of the one call it will serve, so that
/// the call, when it comes, only sends its request. libcriu otherwise forks the caller and execs
/// CRIU inside the call: for a dump that runs while the pod is frozen, and forking a large process
/// (an agent with its heap and buffers) took 20-25 ms here before CRIU's own start. This one is
/// started with <c>posix_spawn</c> (no copy of the caller's page tables), its socket is handed to
/// libcriu (<c>criu_local_set_service_fd</c>), and CRIU reads the request's descriptors through
/// <c>/proc</c> of the socket's creator, this process, exactly as for libcriu's own fork.
/// </summary>
/// <remarks>
/// CRIU serves one request per <c>swrk</c> process and exits when the socket closes; libcriu closes
/// it after the reply. A service never used exits when it is disposed. Either way the process is
/// reaped here, in the background if it has not exited yet.
/// </remarks>
public sealed class CriuService : IDisposable
{
    /// <summary>The descriptor number of the service socket in CRIU's process.</summary>
    public const int ServiceDescriptor = 3;

    /// <summary>The descriptor number of a lazy dump's page-server socket in CRIU's process.</summary>
    public const int PageServerDescriptor = 4;

    private static readonly TimeSpan ExitWait = TimeSpan.FromSeconds(10);

    private readonly object _gate = new();
    private readonly string? _configFile;
    private readonly System.Net.Sockets.Socket? _pageServerSocket;
    private int _socket;
    private bool _disposed;

    private CriuService(int socket, int pid, bool lazyDump, string? configFile, System.Net.Sockets.Socket? pageServerSocket)
    {
        _socket = socket;
        Pid = pid;
        LazyDump = lazyDump;
        _configFile = configFile;
        _pageServerSocket = pageServerSocket;
    }

    /// <summary>CRIU's process.</summary>
    public int Pid { get; }

    /// <summary>Started for a dump with lazy pages (its configuration says so, its page-server socket is given).</summary>
    public bool LazyDump { get; }

    /// <summary>
    /// Starts <c>criu swrk</c> (<paramref name="criuBinary"/>, or <c>criu</c> on PATH). With
    /// <paramref name="lazyDump"/>, CRIU gets the configuration a lazy dump needs (written under
    /// <paramref name="workDirectory"/>, a name ending in <c>.tmp</c>, removed on dispose) and a
    /// page-server socket whose peer is closed, as <see cref="CriuClient"/> gives libcriu's CRIU.
    /// </summary>
    public static CriuService Start(string? criuBinary, bool lazyDump, string workDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(workDirectory);
        int[] pair = SeqPacketPair();
        string? config = null;
        System.Net.Sockets.Socket? pageServer = null;
        try
        {
            var descriptors = new Dictionary<int, int> { [ServiceDescriptor] = pair[1] };
            Dictionary<string, string>? environment = null;
            if (lazyDump)
            {
                var (first, second) = DetachedProcess.SocketPair();
                first.Dispose();
                pageServer = second;
                descriptors[PageServerDescriptor] = (int)second.SafeHandle.DangerousGetHandle();
                config = Path.Combine(workDirectory, $".criu-service-{Guid.NewGuid():n}.conf.tmp");
                File.WriteAllText(config, LazyDumpConfiguration);
                environment = new Dictionary<string, string> { ["CRIU_CONFIG_FILE"] = config };
            }

            int pid = DetachedProcess.Spawn(criuBinary ?? "criu", ["swrk", ServiceDescriptor.ToString(System.Globalization.CultureInfo.InvariantCulture)],
                descriptors, outputPath: null, environment);
            _ = Posix.Close(pair[1]);
            return new CriuService(pair[0], pid, lazyDump, config, pageServer);
        }
        catch
        {
            _ = Posix.Close(pair[0]);
            _ = Posix.Close(pair[1]);
            pageServer?.Dispose();
            if (config is not null)
            {
                File.Delete(config);
            }

            throw;
        }
    }

    /// <summary>What a lazy dump's CRIU is told beyond the request: lazy pages, served on descriptor <see cref="PageServerDescriptor"/>.</summary>
    public static string LazyDumpConfiguration { get; } = $"lazy-pages\nps-socket {PageServerDescriptor}\n";

    /// <summary>
    /// The socket for libcriu, which closes it after the call; false (and nothing handed over) when
    /// it was handed over already, this was disposed, or CRIU's process has exited meanwhile.
    /// </summary>
    public bool TryTake(out int socket)
    {
        lock (_gate)
        {
            socket = -1;
            if (_disposed || _socket < 0 || !Running())
            {
                return false;
            }

            socket = _socket;
            _socket = -1;
            return true;
        }
    }

    /// <summary>Closes the socket if it was never handed over (CRIU then exits), removes the configuration, and reaps CRIU's process.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            if (_socket >= 0)
            {
                _ = Posix.Close(_socket);
                _socket = -1;
            }
        }

        _pageServerSocket?.Dispose();
        if (_configFile is not null)
        {
            File.Delete(_configFile);
        }

        if (DetachedProcess.TryReap(Pid) is null)
        {
            _ = Task.Run(() => Reap(Pid));
        }
    }

    /// <summary>Whether CRIU's process is alive (neither gone nor a zombie waiting to be reaped).</summary>
    private bool Running() => ProcessStat.Fields(Pid) is [var state, ..] && state is not ("Z" or "X");

    /// <summary>Waits for CRIU to exit (it does once its socket is closed), killing it if it has not within <see cref="ExitWait"/>.</summary>
    private static async Task Reap(int pid)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool killed = false;
        // (a PID that is no longer there, or not this process's child, has nothing left to reap)
        while (DetachedProcess.TryReap(pid) is null && Directory.Exists($"/proc/{pid}"))
        {
            if (clock.Elapsed > ExitWait)
            {
                if (killed)
                {
                    return;
                }

                killed = DetachedProcess.Kill(pid);
                clock.Restart();
            }

            await Task.Delay(10);
        }
    }

    private static int[] SeqPacketPair()
    {
        var fds = new int[2];
        unsafe
        {
            fixed (int* pointer = fds)
            {
                // close-on-exec here: the child gets its end only through the spawn's descriptor map
                if (Interop.Libc.SocketPair(Interop.Libc.AfUnix, Interop.Libc.SockSeqPacket | Interop.Libc.SockCloExec, 0, pointer) != 0)
                {
                    throw new IOException($"socketpair failed: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
                }
            }
        }

        return fds;
    }
}

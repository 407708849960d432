using System.Globalization;
using System.Net.Sockets;
using Migrate.Criu.Images;

namespace Migrate.Criu.Lazy;

/// <summary>
/// The two processes a lazy restore needs beside CRIU's restore: CRIU's lazy-pages daemon and a
/// <see cref="PageServer"/> over the staged memory, joined by a socket pair. Both are detached
/// (they outlive whoever started them, until every page is in place) and recorded by PID in the
/// restore's work directory, so that whoever gives up on the restore stops exactly them.
/// </summary>
/// <param name="DaemonPid">CRIU's lazy-pages daemon.</param>
/// <param name="PageServerPid">The page server (a program started with <see cref="ServeArgument"/>).</param>
/// <param name="WorkDirectory">The restore's work directory: the daemon's socket and log, the page server's log, the PID file.</param>
public sealed record LazyRestoreHelpers(int DaemonPid, int PageServerPid, string WorkDirectory)
{
    /// <summary>The PID file, in the work directory.</summary>
    public const string PidsFile = "lazy-helpers.pids";

    /// <summary>The page server's log, in the work directory.</summary>
    public const string PageServerLog = "page-server.log";

    /// <summary>
    /// The page server's rate limit, in bytes a second, from the environment the restore runtime
    /// runs in (containerd's); unset or 0: none. The sandbox's fault tests slow lazy memory down with it.
    /// </summary>
    public const string BytesPerSecondVariable = "PODMIG_LAZY_PAGES_BYTES_PER_SECOND";

    /// <summary>
    /// How long, in seconds, a page server keeps trying to reach its node's agent again when the
    /// connection that fetches the pages left on the source broke (the agent restarting), from the
    /// restore runtime's environment; unset: <see cref="DefaultReconnectSeconds"/>. While it tries, the
    /// restored processes' faults wait; when it gives up, the restore's memory has failed.
    /// </summary>
    public const string ReconnectSecondsVariable = "PODMIG_LAZY_PAGES_RECONNECT_SECONDS";

    /// <summary>A DaemonSet's agent pod is replaced in seconds to tens of seconds.</summary>
    public const int DefaultReconnectSeconds = 60;

    /// <summary>The first argument that makes a program serve pages (see <see cref="Serve"/>).</summary>
    public const string ServeArgument = "--podmig-serve-pages";

    /// <summary>The first argument that makes a program fill memory itself (see <see cref="Fill"/>).</summary>
    public const string FillArgument = "--podmig-fill-pages";

    /// <summary>
    /// Who fills a lazy restore's memory that is wholly on this node, from the restore runtime's
    /// environment: unset or <c>podmig</c>, a <see cref="MemoryFiller"/>; <c>criu</c>, CRIU's lazy-pages
    /// daemon with a page server (what pages left on the source always use).
    /// </summary>
    public const string FillerVariable = "PODMIG_LAZY_FILL";

    /// <summary>Whether a final image set leaves memory to a lazy restore (some of its pages are lazy and not in the set).</summary>
    public static bool Needed(string imagesDirectory) =>
        CriuPagemap.ReadAll(imagesDirectory).Any(m => m.Entries.Any(e => e.IsLeftLazy));

    /// <summary>
    /// Starts the page server (<paramref name="serverProgram"/> <see cref="ServeArgument"/> memory version,
    /// the socket on its descriptor 3) and the daemon for <paramref name="imagesDirectory"/>, waits until the
    /// daemon listens, and records both. On failure neither is left running.
    /// </summary>
    public static LazyRestoreHelpers Start(string criuBinary, CriuVersion version, string serverProgram, string imagesDirectory, string memoryDirectory, string workDirectory, TimeSpan readyTimeout,
        bool criuDaemon = false, long pagesBytesPerSecond = 0)
    {
        var helpers = Begin(criuBinary, version, serverProgram, imagesDirectory, memoryDirectory, workDirectory, criuDaemon: criuDaemon, pagesBytesPerSecond: pagesBytesPerSecond);
        helpers.WaitReady(readyTimeout);
        return helpers;
    }

    /// <summary>
    /// Starts and records both helpers as <see cref="Start"/> does, without waiting for the daemon to
    /// listen (see <see cref="WaitReady"/>): its start-up overlaps whatever the caller does next. On
    /// failure neither is left running. With <c>remote</c> (the node agent's socket, and the container),
    /// the page server fetches the pages a post-copy dump left on the source through the agent.
    /// Memory wholly on this node is filled by one helper, a <see cref="MemoryFiller"/> (recorded as
    /// both), unless <paramref name="criuDaemon"/> asks for CRIU's daemon and a page server.
    /// </summary>
    public static LazyRestoreHelpers Begin(string criuBinary, CriuVersion version, string serverProgram, string imagesDirectory, string memoryDirectory, string workDirectory,
        (string Socket, string Container)? remote = null, bool criuDaemon = false, long pagesBytesPerSecond = 0)
    {
        ArgumentException.ThrowIfNullOrEmpty(serverProgram);
        // a rate given here is set in the helper's environment, over the one it would inherit
        var environment = pagesBytesPerSecond > 0
            ? new Dictionary<string, string> { [BytesPerSecondVariable] = pagesBytesPerSecond.ToString(CultureInfo.InvariantCulture) }
            : null;
        bool leftOnSource = !MemoryFiller.Serves(memoryDirectory);
        if (!criuDaemon && (!leftOnSource || remote is not null))
        {
            // one helper in place of the daemon and its page server: it listens where the daemon would,
            // and fetches what was left on the source through the agent as the page server would
            File.Delete(Path.Combine(workDirectory, LazyPagesDaemon.SocketName));
            string[] fill = [FillArgument, Path.GetFullPath(imagesDirectory), Path.GetFullPath(memoryDirectory), Path.GetFullPath(workDirectory)];
            int filler = DetachedProcess.Spawn(serverProgram, leftOnSource && remote is { } agent ? [.. fill, agent.Socket, agent.Container] : fill,
                new Dictionary<int, int>(), Path.Combine(workDirectory, PageServerLog), environment);
            File.WriteAllText(Path.Combine(workDirectory, PidsFile), string.Create(CultureInfo.InvariantCulture, $"{filler}\n{filler}\n"));
            return new LazyRestoreHelpers(filler, filler, workDirectory);
        }

        var (daemonEnd, serverEnd) = DetachedProcess.SocketPair();
        using (daemonEnd)
        using (serverEnd)
        {
            string[] arguments = remote is { } r
                ? [ServeArgument, Path.GetFullPath(memoryDirectory), version.ToString(), r.Socket, r.Container]
                : [ServeArgument, Path.GetFullPath(memoryDirectory), version.ToString()];
            int server = DetachedProcess.Spawn(serverProgram, arguments,
                new Dictionary<int, int> { [3] = (int)serverEnd.SafeHandle.DangerousGetHandle() },
                Path.Combine(workDirectory, PageServerLog), environment);
            int daemon;
            try
            {
                daemon = LazyPagesDaemon.Spawn(criuBinary, imagesDirectory, workDirectory, daemonEnd);
            }
            catch
            {
                DetachedProcess.Kill(server);
                DetachedProcess.TryReap(server);
                throw;
            }

            File.WriteAllText(Path.Combine(workDirectory, PidsFile), string.Create(CultureInfo.InvariantCulture, $"{daemon}\n{server}\n"));
            return new LazyRestoreHelpers(daemon, server, workDirectory);
        }
    }

    /// <summary>Waits until the daemon listens; when it does not (it exited, or the time ran out), stops both helpers and throws.</summary>
    public void WaitReady(TimeSpan readyTimeout)
    {
        try
        {
            LazyPagesDaemon.WaitListening(DaemonPid, WorkDirectory, readyTimeout);
        }
        catch (IOException) when (DaemonPid == PageServerPid)
        {
            // the memory filler (recorded as both): its own last line says why
            StopRecorded(WorkDirectory);
            var log = Path.Combine(WorkDirectory, PageServerLog);
            var said = File.Exists(log) ? LazyMemoryFill.LastLine(File.ReadAllText(log)) : null;
            throw new IOException($"the memory filler ended before it listened: {said ?? "it said nothing"}");
        }
        catch
        {
            StopRecorded(WorkDirectory);
            DetachedProcess.TryReap(PageServerPid);
            throw;
        }
    }

    /// <summary>
    /// Kills the helpers recorded in <paramref name="workDirectory"/> that are still running and still
    /// ours (their command line is the daemon's or the page server's: a reused PID is left alone).
    /// Returns how many were killed.
    /// </summary>
    public static int StopRecorded(string workDirectory)
    {
        var file = Path.Combine(workDirectory, PidsFile);
        if (!File.Exists(file))
        {
            return 0;
        }

        // A helper whose partner is killed ends by itself, and an ending helper's command line reads
        // empty: so all are checked and stopped (SIGSTOP) before any is killed.
        var running = File.ReadAllLines(file)
            .Select(line => int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) ? pid : 0)
            .Where(pid => pid > 1)
            .Distinct()
            .Where(pid => IsHelper(pid) && DetachedProcess.Pause(pid))
            .ToList();
        int killed = running.Count(DetachedProcess.Kill);
        foreach (int pid in running)
        {
            DetachedProcess.TryReap(pid);
        }

        return killed;
    }

    /// <summary>The page server's PID recorded in <paramref name="workDirectory"/> (null: none recorded).</summary>
    public static int? RecordedPageServer(string workDirectory)
    {
        var file = Path.Combine(workDirectory, PidsFile);
        try
        {
            var lines = File.Exists(file) ? File.ReadAllLines(file) : [];
            return lines.Length >= 2 && int.TryParse(lines[1], NumberStyles.None, CultureInfo.InvariantCulture, out int pid) && pid > 1 ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static TimeSpan ReconnectWindow() =>
        TimeSpan.FromSeconds(int.TryParse(Environment.GetEnvironmentVariable(ReconnectSecondsVariable), NumberStyles.None, CultureInfo.InvariantCulture, out int seconds)
            ? seconds : DefaultReconnectSeconds);

    private static long PagesBytesPerSecond() =>
        long.TryParse(Environment.GetEnvironmentVariable(BytesPerSecondVariable), NumberStyles.None, CultureInfo.InvariantCulture, out long limit) ? limit : 0;

    /// <summary>Whether <paramref name="pid"/> runs CRIU's lazy-pages daemon or a page server.</summary>
    public static bool IsHelper(int pid)
    {
        try
        {
            var arguments = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline").Split('\0');
            return arguments.Contains("lazy-pages", StringComparer.Ordinal) || arguments.Contains(ServeArgument, StringComparer.Ordinal) || arguments.Contains(FillArgument, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // gone
        }
    }

    /// <summary>
    /// The page server's process: <c>[ServeArgument, memoryDirectory, criuVersion]</c>, the daemon's
    /// socket on descriptor 3. Serves until the daemon ends the session; 0 when it did, 1 otherwise.
    /// </summary>
    public static int Serve(IReadOnlyList<string> arguments, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(log);
        if (arguments.Count is not (3 or 5) || arguments[0] != ServeArgument || CriuVersion.TryParse("Version: " + arguments[2]) is not { } version)
        {
            log.WriteLine($"usage: {ServeArgument} MEMORY-DIRECTORY CRIU-VERSION [AGENT-SOCKET CONTAINER] (the lazy-pages daemon's socket on descriptor 3)");
            return 2;
        }

        try
        {
            using var socket = new Socket(new SafeSocketHandle(3, ownsHandle: true));
            using var stream = new NetworkStream(socket, ownsSocket: false);
            try
            {
                using var source = arguments.Count == 5 ? new RemotePageClient(arguments[3], arguments[4]) { ReconnectWindow = ReconnectWindow() } : null;
                using var server = new PageServer(arguments[1], PageServerProtocol.For(version), source) { BytesPerSecond = PagesBytesPerSecond() };
                if (arguments.Count == 5)
                {
                    // a second connection streams everything in order; the daemon's own requests use the first
                    server.StartPrefetch(() => new RemotePageClient(arguments[3], arguments[4], RemotePagesKind.Stream));
                }

                var report = server.Serve(stream);
                log.WriteLine(LazyMemoryFill.ReportLine(report));
                return report.ClosedByDaemon ? 0 : 1;
            }
            catch (Exception e) when (ServingFailed(e))
            {
                // said while the daemon's socket is still open: the restore that fails for it finds the reason written
                log.WriteLine(LazyMemoryFill.FailureLine(e.Message));
                log.Flush();
                return 1;
            }
        }
        catch (Exception e) when (ServingFailed(e))
        {
            log.WriteLine(LazyMemoryFill.FailureLine(e.Message));
            return 1;
        }
    }

    /// <summary>
    /// The memory filler's process: <c>[FillArgument, imagesDirectory, memoryDirectory, workDirectory]</c>,
    /// then <c>[agentSocket, container]</c> when pages were left on the source. Listens on the
    /// daemon's socket in the work directory, then fills until every lazy page is in place; 0 when it
    /// did, 1 when it could not (the reason is its last line).
    /// </summary>
    public static int Fill(IReadOnlyList<string> arguments, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(log);
        if (arguments.Count is not (4 or 6) || arguments[0] != FillArgument)
        {
            log.WriteLine($"usage: {FillArgument} IMAGES-DIRECTORY MEMORY-DIRECTORY WORK-DIRECTORY [AGENT-SOCKET CONTAINER]");
            return 2;
        }

        try
        {
            // bound by its name in the work directory, as the restore connects to it: a node's staging
            // path can be longer than a socket address holds (108 bytes)
            var images = Path.GetFullPath(arguments[1]);
            var memory = Path.GetFullPath(arguments[2]);
            Environment.CurrentDirectory = arguments[3];
            File.Delete(LazyPagesDaemon.SocketName);
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(LazyPagesDaemon.SocketName));
            listener.Listen(1);
            // the restore may begin now: its connection waits in the backlog while the images are opened
            using var source = arguments.Count == 6 ? new RemotePageClient(arguments[4], arguments[5]) { ReconnectWindow = ReconnectWindow() } : null;
            using var filler = new MemoryFiller(images, memory, source) { BytesPerSecond = PagesBytesPerSecond() };
            if (source is not null)
            {
                // a second connection streams everything in order once the restore finished; faults fetch on the first
                filler.StartPrefetch(() => new RemotePageClient(arguments[4], arguments[5], RemotePagesKind.Stream));
            }

            var report = filler.Run(listener);
            log.WriteLine(LazyMemoryFill.FillerLine(report));
            return 0;
        }
        catch (Exception e)
        {
            // whatever it was, the restore's memory has failed: said in the line the agent reads
            log.WriteLine(LazyMemoryFill.FillerFailureLine(ServingFailed(e) ? e.Message : e.ToString()));
            return 1;
        }
    }

    private static bool ServingFailed(Exception e) =>
        e is PageServerException or IOException or InvalidDataException or UnauthorizedAccessException or SocketException or Google.Protobuf.InvalidProtocolBufferException;
}

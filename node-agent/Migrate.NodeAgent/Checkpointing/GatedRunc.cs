using System.Diagnostics;
using System.Runtime.InteropServices;
using Migrate.Criu;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// A <c>runc restore</c> begun while the replacement still waits for the final images, so that what
/// runc does before it starts CRIU (its own start, the spec, a <c>criu swrk</c> of its own for CRIU's
/// version, the root file system's bind and the mount points: 75-130 ms on this machine) is done
/// before the downtime instead of in it. runc reads <c>descriptors.json</c> from its images directory
/// just before it starts CRIU. Here that directory is the gate's own, in the restore's work
/// directory, and <c>descriptors.json</c> in it a FIFO this process holds open: runc waits on it until
/// <see cref="Open"/> has linked the committed images in and written the descriptors, or reads
/// something that is not JSON (<see cref="Abort"/>, or nothing at all when this process dies) and
/// ends without restoring anything, cleaning up after itself.
/// </summary>
public sealed class GatedRunc : IDisposable
{
    /// <summary>What runc reads from the images directory before it starts CRIU (the stdio it hands on).</summary>
    public const string DescriptorsFile = "descriptors.json";

    /// <summary>More than a container's three standard descriptors ever need.</summary>
    public const int MaximumDescriptorsBytes = 64 * 1024;

    private readonly Process _process;
    private readonly int _watch;
    private int _gate;
    private bool _seenOpen;

    private GatedRunc(Process process, int gate, int watch, string imagesDirectory, bool lazy, bool tcpEstablished)
    {
        _process = process;
        _gate = gate;
        _watch = watch;
        ImagesDirectory = imagesDirectory;
        Lazy = lazy;
        TcpEstablished = tcpEstablished;
    }

    /// <summary>The images directory runc was given (the committed images are linked into it).</summary>
    public string ImagesDirectory { get; }

    /// <summary>runc read the descriptors <see cref="Open"/> wrote: the restore is its own from then on.</summary>
    public bool Opened { get; private set; }

    /// <summary><see cref="Abort"/> was called: it restores nothing.</summary>
    public bool Aborted { get; private set; }

    /// <summary>Of <see cref="Open"/>: linking the images in, and runc reading the descriptors after that.</summary>
    public double LinkMillis { get; private set; }

    /// <inheritdoc cref="LinkMillis"/>
    public double ReadMillis { get; private set; }

    /// <summary>Started with <c>--lazy-pages</c>.</summary>
    public bool Lazy { get; }

    /// <summary>Started with <c>--tcp-established</c>.</summary>
    public bool TcpEstablished { get; }

    private const string GatePrefix = "images-";

    /// <summary>
    /// The gate's images directory in a restore's work directory, this process's own: a runc an
    /// earlier attempt began, still on its way to its gate, finds none at its own path (and fails)
    /// instead of opening this one.
    /// </summary>
    public static string GateDirectory(string work) =>
        Path.Combine(work, GatePrefix + Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>
    /// Why runc, begun with <paramref name="startedLazy"/> and <paramref name="startedTcp"/>, cannot
    /// restore what the committed images need; null when it can. Its options are fixed when it starts.
    /// </summary>
    public static string? Mismatch(bool startedLazy, bool lazyNeeded, bool startedTcp, bool addressMoved)
    {
        if (startedLazy != lazyNeeded)
        {
            return startedLazy ? "it was begun for lazy memory, and the images hold all of it" : "it was begun for memory in the images, and they leave it lazy";
        }

        if (startedTcp != addressMoved)
        {
            return startedTcp ? "it was begun for established connections, and the source moved no address" : "it was begun without established connections, and the address moved";
        }

        return null;
    }

    /// <summary>
    /// Starts <paramref name="runc"/> with <paramref name="arguments"/> (their images directory
    /// <paramref name="imagesDirectory"/>, made here, empty but for the gate), its standard
    /// descriptors this process's own.
    /// </summary>
    public static GatedRunc Start(string runc, IReadOnlyList<string> arguments, string imagesDirectory, bool lazy, bool tcpEstablished,
        IReadOnlyDictionary<string, string> environment)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(environment);
        Directory.CreateDirectory(imagesDirectory);
        var fifo = Path.Combine(imagesDirectory, DescriptorsFile);
        if (Posix.Mknod(fifo, Posix.SIfIfo | 0x180, 0) != 0)
        {
            throw new IOException($"mkfifo {fifo}: {Marshal.GetLastPInvokeError()}");
        }

        // held for reading and writing: runc's open does not wait for a writer, and the pipe (with what
        // is written to it) lives until runc has read it, however late runc gets there
        int gate = Posix.Open(fifo, Posix.ORdWr | Posix.OCloExec);
        if (gate < 0)
        {
            throw new IOException($"open {fifo}: {Marshal.GetLastPInvokeError()}");
        }

        // (this process's own open above is before the watch: an open it reports is runc's)
        int watch = Posix.InotifyInit(Posix.InNonBlock | Posix.OCloExec);
        if (watch < 0 || Posix.InotifyAddWatch(watch, fifo, Posix.InOpen) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = Posix.Close(gate);
            _ = watch >= 0 ? Posix.Close(watch) : 0;
            throw new IOException($"inotify on {fifo}: errno {errno}");
        }

        var start = new ProcessStartInfo(runc) { UseShellExecute = false };
        foreach (var (name, value) in environment)
        {
            start.Environment[name] = value;
        }

        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        try
        {
            var process = Process.Start(start) ?? throw new IOException($"could not start {runc}");
            return new GatedRunc(process, gate, watch, imagesDirectory, lazy, tcpEstablished);
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            _ = Posix.Close(gate);
            _ = Posix.Close(watch);
            throw new IOException($"could not start {runc}: {e.Message}", e);
        }
    }

    /// <summary>
    /// Waits until runc holds the gate open (its preparation done: the root file system's bind among
    /// it); false when it ended, or was not there within <paramref name="limit"/>.
    /// </summary>
    public bool WaitAtGate(TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        while (!OpenedByRunc())
        {
            if (_process.HasExited || clock.Elapsed > limit)
            {
                return false;
            }

            Thread.Sleep(1);
        }

        return true;
    }

    /// <summary>
    /// Links the committed <paramref name="images"/> into the gate's directory, lets runc read their
    /// descriptors and waits for it to end; its exit status. Throws when runc does not read within
    /// <paramref name="limit"/> (it is stopped).
    /// </summary>
    public int Open(string images, TimeSpan limit)
    {
        var descriptors = new FileInfo(Path.Combine(images, DescriptorsFile));
        if (!descriptors.Exists || descriptors.Length > MaximumDescriptorsBytes)
        {
            throw new IOException($"the images hold no {DescriptorsFile} of at most {MaximumDescriptorsBytes} bytes");
        }

        var clock = Stopwatch.StartNew();
        LinkImages(images, ImagesDirectory);
        LinkMillis = clock.Elapsed.TotalMilliseconds;
        switch (Release(File.ReadAllBytes(descriptors.FullName), limit))
        {
            case Outcome.TimedOut:
                Stop();
                throw new IOException($"runc did not read the images' descriptors within {limit.TotalSeconds:0} seconds; it was stopped");
            case Outcome.Ended:
                // (it restored nothing: what it left is the caller's to undo, as for a runc never let through)
                throw new IOException($"runc ended at its gate (exit status {_process.ExitCode}) before it read the images' descriptors");
        }

        Opened = true;
        ReadMillis = clock.Elapsed.TotalMilliseconds - LinkMillis;
        _process.WaitForExit();
        return _process.ExitCode;
    }

    /// <summary>
    /// Has runc end without restoring anything (it reads what is not JSON, and cleans up after itself),
    /// within <paramref name="limit"/>; after that it is killed. True when it ended by itself.
    /// </summary>
    public bool Abort(TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            if (_gate >= 0 && Release("abort\n"u8.ToArray(), limit) == Outcome.TimedOut)
            {
                Stop();
                return false;
            }
        }
        catch (IOException)
        {
            Stop();
            return false;
        }
        finally
        {
            Aborted = true;
        }

        var left = limit - clock.Elapsed;
        if (!_process.WaitForExit(left > TimeSpan.Zero ? left : TimeSpan.Zero))
        {
            Stop();
            return false;
        }

        return true;
    }

    public void Dispose()
    {
        if (_gate >= 0 || !_process.HasExited)
        {
            _ = Abort(TimeSpan.FromSeconds(10));
        }

        _ = Posix.Close(_watch);
        _process.Dispose();
    }

    /// <summary>
    /// Lets a runc still waiting at the gate of restore work directory <paramref name="work"/> go
    /// (the restore runtime that held the gate died before runc got there, so its open waits for a
    /// writer): it reads "abort", fails and cleans up after itself. True when one was waiting.
    /// </summary>
    public static bool ReleaseLeftover(string work)
    {
        if (!Directory.Exists(work))
        {
            return false;
        }

        bool released = false;
        foreach (var gate in Directory.EnumerateDirectories(work, GatePrefix + "*"))
        {
            released |= ReleaseAt(Path.Combine(gate, DescriptorsFile));
        }

        return released;
    }

    private static bool ReleaseAt(string fifo)
    {
        if (Migrate.Api.FileStatus.Of(fifo) is not { Type: Migrate.Api.FileStatus.Fifo })
        {
            return false;
        }

        // without blocking: it opens only when a reader waits (ENXIO otherwise)
        int fd = Posix.Open(fifo, Posix.OWrOnly | Posix.ONonBlock | Posix.OCloExec);
        if (fd < 0)
        {
            return false;
        }

        unsafe
        {
            fixed (byte* abort = "abort\n"u8)
            {
                _ = Posix.Write(fd, abort, 6);
            }
        }

        _ = Posix.Close(fd);
        return true;
    }

    /// <summary>
    /// Every file of <paramref name="images"/> linked into <paramref name="gate"/> (its descriptors
    /// aside), a symbolic link (the "parent" of an image set) made again with its target absolute.
    /// </summary>
    public static void LinkImages(string images, string gate)
    {
        foreach (var entry in new DirectoryInfo(images).EnumerateFileSystemInfos())
        {
            if (entry.Name == DescriptorsFile)
            {
                continue;
            }

            var linked = Path.Combine(gate, entry.Name);
            if (entry.LinkTarget is { } target)
            {
                File.CreateSymbolicLink(linked, Path.GetFullPath(target, images));
            }
            else if (entry is FileInfo)
            {
                if (Posix.Link(entry.FullName, linked) != 0)
                {
                    throw new IOException($"link {entry.FullName} {linked}: {Marshal.GetLastPInvokeError()}");
                }
            }
            else
            {
                throw new IOException($"the images hold a directory ({entry.Name}), which is not CRIU's");
            }
        }
    }

    private enum Outcome
    {
        Read,
        Ended,
        TimedOut,
    }

    /// <summary>Writes <paramref name="content"/> to the gate and closes it once runc read all of it, or ended, or <paramref name="limit"/> passed (then it stays open).</summary>
    private Outcome Release(byte[] content, TimeSpan limit)
    {
        unsafe
        {
            fixed (byte* bytes = content)
            {
                int written = 0;
                while (written < content.Length)
                {
                    nint n = Posix.Write(_gate, bytes + written, (nuint)(content.Length - written));
                    if (n < 0)
                    {
                        int errno = Marshal.GetLastPInvokeError();
                        if (errno == Posix.EIntr)
                        {
                            continue;
                        }

                        throw new IOException($"writing to runc's descriptors: errno {errno}");
                    }

                    written += (int)n;
                }
            }
        }

        var clock = Stopwatch.StartNew();
        while (Unread() > 0 && !_process.HasExited)
        {
            if (clock.Elapsed > limit)
            {
                return Outcome.TimedOut;
            }

            Thread.Sleep(1);
        }

        // (asked again: once it ended nobody else reads, so what is left now is what it never read)
        bool unread = Unread() > 0;
        _ = Posix.Close(_gate);
        _gate = -1;
        return unread ? Outcome.Ended : Outcome.Read;
    }

    /// <summary>Whether the gate was opened since it was made (by runc, or a wrapper's child: whoever runs it): an inotify event on it.</summary>
    private bool OpenedByRunc()
    {
        if (_seenOpen)
        {
            return true;
        }

        var events = new byte[4096];
        unsafe
        {
            fixed (byte* buffer = events)
            {
                _seenOpen = Posix.Read(_watch, buffer, (nuint)events.Length) > 0;
            }
        }

        return _seenOpen;
    }

    private int Unread()
    {
        int unread = 0;
        unsafe
        {
            return Posix.Ioctl(_gate, Posix.FionRead, &unread) == 0 ? unread : 0;
        }
    }

    private void Stop()
    {
        if (_gate >= 0)
        {
            _ = Posix.Close(_gate);
            _gate = -1;
        }

        HostCommands.KillAndWait(_process);
    }
}

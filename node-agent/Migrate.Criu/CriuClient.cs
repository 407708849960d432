using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;

namespace Migrate.Criu;

/// <summary>A CRIU version as libcriu reports it (major*10000 + minor*100 + sublevel).</summary>
public readonly record struct CriuVersion(int Major, int Minor, int Sublevel) : IComparable<CriuVersion>
{
    /// <summary>The oldest CRIU that works on kernels with a split vDSO data area (6.13 and later).</summary>
    public static readonly CriuVersion Minimum = new(4, 1, 0);

    public int Number => (Major * 10000) + (Minor * 100) + Sublevel;

    public static CriuVersion FromNumber(int number) => new(number / 10000, number / 100 % 100, number % 100);

    /// <summary>The version in <c>criu --version</c>'s output ("Version: 4.1.1", the sublevel may be missing); null if it names none.</summary>
    public static CriuVersion? TryParse(string versionOutput)
    {
        ArgumentNullException.ThrowIfNull(versionOutput);
        foreach (var line in versionOutput.Split('\n'))
        {
            var text = line.Trim();
            if (!text.StartsWith("Version:", StringComparison.Ordinal))
            {
                continue;
            }

            var parts = text["Version:".Length..].Trim().Split('.');
            if (parts.Length is < 2 or > 3 || !parts.All(p => p.Length is > 0 and < 5 && p.All(char.IsAsciiDigit)))
            {
                return null;
            }

            return new CriuVersion(int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture),
                parts.Length == 3 ? int.Parse(parts[2], System.Globalization.CultureInfo.InvariantCulture) : 0);
        }

        return null;
    }

    public int CompareTo(CriuVersion other) => Number.CompareTo(other.Number);

    public static bool operator <(CriuVersion left, CriuVersion right) => left.CompareTo(right) < 0;

    public static bool operator >(CriuVersion left, CriuVersion right) => left.CompareTo(right) > 0;

    public static bool operator <=(CriuVersion left, CriuVersion right) => left.CompareTo(right) <= 0;

    public static bool operator >=(CriuVersion left, CriuVersion right) => left.CompareTo(right) >= 0;

    public override string ToString() => $"{Major}.{Minor}.{Sublevel}";
}

/// <summary>Optional CRIU features that depend on the kernel, not on CRIU's version.</summary>
/// <param name="MemoryTracking">Soft-dirty page tracking: pre-dumps and incremental dumps (CONFIG_MEM_SOFT_DIRTY).</param>
/// <param name="LazyPages">userfaultfd-based lazy (post-copy) restore.</param>
/// <param name="PidfdStore">pidfd store, which keeps PIDs stable across pre-dump iterations.</param>
public sealed record CriuFeatures(bool MemoryTracking, bool LazyPages, bool PidfdStore);

/// <summary>The outcome of a dump or pre-dump.</summary>
/// <param name="ImagesDirectory">Where the images are.</param>
/// <param name="Elapsed">Wall time of the whole CRIU call.</param>
/// <param name="Statistics">CRIU's own figures, when it wrote them.</param>
/// <param name="LogPath">CRIU's log of the operation.</param>
public sealed record CriuDumpResult(string ImagesDirectory, TimeSpan Elapsed, CriuDumpStatistics? Statistics, string LogPath)
{
    /// <summary>The request went to a CRIU started ahead of the call (<see cref="CriuOptions.Service"/>).</summary>
    public bool Prestarted { get; init; }
}

/// <summary>The outcome of a restore.</summary>
/// <param name="Pid">Host PID of the restored tree's root task.</param>
/// <param name="Elapsed">Wall time of the whole CRIU call.</param>
/// <param name="Statistics">CRIU's own figures, when it wrote them.</param>
/// <param name="LogPath">CRIU's log of the operation.</param>
public sealed record CriuRestoreResult(int Pid, TimeSpan Elapsed, CriuRestoreStatistics? Statistics, string LogPath);

/// <summary>
/// Drives CRIU through libcriu. Each call builds its own libcriu options object (the
/// thread-safe <c>criu_local_*</c> API), so calls may run concurrently on different threads; each
/// blocks its thread until CRIU finishes. libcriu starts the CRIU binary as a child process in
/// "swrk" mode for every call.
/// </summary>
public sealed class CriuClient
{
    private const int LogTailLines = 40;
    private const int LogTailBytes = 64 * 1024;

    [ThreadStatic]
    private static NotificationScope? _currentNotification;

    private readonly string? _serviceBinary;
    private CriuFeatures? _features;

    /// <param name="serviceBinary">The CRIU executable; null means <c>criu</c> on PATH.</param>
    public CriuClient(string? serviceBinary = null)
    {
        _serviceBinary = serviceBinary;
    }

    /// <summary>The CRIU executable this client has libcriu start; null means <c>criu</c> on PATH.</summary>
    public string? ServiceBinary => _serviceBinary;

    /// <summary>The version of the CRIU binary libcriu talks to (not of libcriu itself).</summary>
    public CriuVersion GetVersion()
    {
        using var handle = CreateHandle(new CriuOptions());
        int rc = Interop.Criu.GetVersion(handle);
        if (rc <= 0)
        {
            throw new CriuException(CriuOperation.Version, rc, Marshal.GetLastPInvokeError(),
                "could not ask the criu binary for its version", null, null);
        }

        return CriuVersion.FromNumber(rc);
    }

    /// <summary>Fails unless CRIU's own check of the kernel and its environment passes.</summary>
    /// <remarks>
    /// This runs the binary's <c>check</c> command rather than libcriu's check request: CRIU 4.1.1's
    /// service crashes (SIGSEGV in the forked checker) on a check request, which libcriu sends without
    /// options, so the request always reports failure.
    /// </remarks>
    public void Check()
    {
        var binary = _serviceBinary ?? "criu";
        var start = new ProcessStartInfo(binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("check");
        string output;
        int exitCode;
        try
        {
            using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {binary}");
            var stderr = process.StandardError.ReadToEndAsync();
            output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            output += stderr.GetAwaiter().GetResult();
            exitCode = process.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CriuException(CriuOperation.Check, 0, e.NativeErrorCode, $"could not run '{binary} check': {e.Message}", null, null);
        }

        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (exitCode != 0 || !output.Contains("Looks good", StringComparison.Ordinal))
        {
            throw new CriuException(CriuOperation.Check, 0, 0,
                $"'{binary} check' exited with {exitCode} and did not report 'Looks good'", null, lines);
        }
    }

    /// <summary>Which kernel-dependent features CRIU can use here. Cached after the first call.</summary>
    public CriuFeatures CheckFeatures()
    {
        if (_features is { } cached)
        {
            return cached;
        }

        using var handle = CreateHandle(new CriuOptions());
        var request = new Interop.Criu.FeatureCheck { MemTrack = 1, LazyPages = 1, PidfdStore = 1 };
        int rc = Interop.Criu.CheckFeatures(handle, ref request, (nuint)Unsafe.SizeOf<Interop.Criu.FeatureCheck>());
        if (rc != 0)
        {
            throw new CriuException(CriuOperation.FeatureCheck, rc, Marshal.GetLastPInvokeError(),
                "CRIU's feature check failed", null, null);
        }

        var features = new CriuFeatures(request.MemTrack != 0, request.LazyPages != 0, request.PidfdStore != 0);
        _features = features;
        return features;
    }

    /// <summary>
    /// Writes the tree's memory while it keeps running and starts tracking which pages change, so a
    /// later <see cref="Dump"/> (or pre-dump) with <see cref="CriuOptions.ParentImages"/> pointing
    /// here writes only the pages that changed. Needs kernel memory tracking
    /// (<see cref="CriuFeatures.MemoryTracking"/>); without it this throws before CRIU is started,
    /// and <see cref="Incremental.MemorySnapshot"/> is the way to pre-copy.
    /// </summary>
    public CriuDumpResult PreDump(CriuOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!CheckFeatures().MemoryTracking)
        {
            throw new CriuException(CriuOperation.PreDump, 0, 0,
                "this kernel cannot track memory changes (soft-dirty bits, CONFIG_MEM_SOFT_DIRTY), which CRIU's " +
                "pre-dump requires; the tree was not touched", null, null);
        }

        return RunDump(CriuOperation.PreDump, options with { TrackMemory = true });
    }

    /// <summary>
    /// Dumps the tree rooted at <see cref="CriuOptions.Pid"/>. By default CRIU kills the tree once
    /// its images are complete; with <see cref="CriuOptions.LeaveRunning"/> it resumes it.
    /// </summary>
    public CriuDumpResult Dump(CriuOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return RunDump(CriuOperation.Dump, options);
    }

    /// <summary>
    /// Restores the tree in <see cref="CriuOptions.ImagesDirectory"/>. With <paramref name="asChild"/>
    /// the restored root becomes a child of this process (which must then reap it); otherwise it is
    /// re-parented to the nearest subreaper when the CRIU process exits. The image set is checked
    /// first (<see cref="CriuImageSetValidator"/>): a damaged one is refused without starting CRIU.
    /// </summary>
    public CriuRestoreResult Restore(CriuOptions options, bool asChild = false)
    {
        ArgumentNullException.ThrowIfNull(options);
        var images = RequireImagesDirectory(CriuOperation.Restore, options, create: false);
        var problems = CriuImageSetValidator.Validate(images);
        if (problems.Count > 0)
        {
            throw new CriuException(CriuOperation.Restore, 0, 0,
                $"the image set is damaged and was not handed to CRIU: {string.Join("; ", problems.Take(3))}", null, problems);
        }

        using var imagesHandle = SafeDirectoryHandle.Open(images);
        var workDirectory = options.WorkDirectory ?? images;
        using var workHandle = options.WorkDirectory is null ? null : SafeDirectoryHandle.Open(workDirectory);
        var logFile = options.LogFile ?? "restore.log";
        using var lazy = options.LazyPages == true ? LazyPagesConfiguration.Create(workDirectory, options.ServiceBinary ?? _serviceBinary, forDump: false) : null;
        using var handle = CreateHandle(options, lazy?.ServiceBinary);
        Configure(handle, options, imagesHandle, workHandle, logFile);

        var stopwatch = Stopwatch.StartNew();
        int rc = Invoke(handle, options.Notify, asChild ? Interop.Criu.RestoreChild : Interop.Criu.Restore, out int errno);
        stopwatch.Stop();
        var logPath = Path.Combine(workDirectory, logFile);
        if (rc <= 0)
        {
            throw new CriuException(CriuOperation.Restore, rc, errno, $"could not restore from {images}",
                logPath, ReadLogTail(logPath));
        }

        return new CriuRestoreResult(rc, stopwatch.Elapsed, CriuStatisticsReader.ReadRestore(images), logPath);
    }

    private CriuDumpResult RunDump(CriuOperation operation, CriuOptions options)
    {
        if (options.Pid is not int pid || pid <= 0)
        {
            throw new ArgumentException($"{operation} needs the PID of the tree's root task", nameof(options));
        }

        var images = RequireImagesDirectory(operation, options, create: true);
        using var imagesHandle = SafeDirectoryHandle.Open(images);
        var workDirectory = options.WorkDirectory ?? images;
        using var workHandle = options.WorkDirectory is null ? null : SafeDirectoryHandle.Open(workDirectory);
        var logFile = options.LogFile ?? (operation == CriuOperation.PreDump ? "pre-dump.log" : "dump.log");
        bool lazyCall = options.LazyPages == true;
        // a CRIU started ahead for a call of this kind: only the request is left to send
        int serviceSocket = -1;
        bool served = operation == CriuOperation.Dump && options.Service is { } service && service.LazyDump == lazyCall && service.TryTake(out serviceSocket);
        using var lazy = lazyCall && !served ? LazyPagesConfiguration.Create(workDirectory, options.ServiceBinary ?? _serviceBinary, forDump: true) : null;
        using var handle = CreateHandle(options, lazy?.ServiceBinary);
        try
        {
            Configure(handle, options, imagesHandle, workHandle, logFile);
        }
        catch
        {
            if (served)
            {
                _ = Posix.Close(serviceSocket);
            }

            throw;
        }

        if (served)
        {
            // libcriu sends the request there and closes it after the reply
            Interop.Criu.SetServiceFd(handle, serviceSocket);
        }

        var stopwatch = Stopwatch.StartNew();
        int rc = Invoke(handle, options.Notify, operation == CriuOperation.PreDump ? Interop.Criu.PreDump : Interop.Criu.Dump, out int errno);
        stopwatch.Stop();
        var logPath = Path.Combine(workDirectory, logFile);
        if (rc < 0)
        {
            var summary = Directory.Exists($"/proc/{pid}")
                ? $"could not {(operation == CriuOperation.PreDump ? "pre-dump" : "dump")} process tree {pid}"
                : $"process {pid} does not exist (or exited during the dump)";
            throw new CriuException(operation, rc, errno, summary, logPath, ReadLogTail(logPath));
        }

        return new CriuDumpResult(images, stopwatch.Elapsed, CriuStatisticsReader.ReadDump(images), logPath) { Prestarted = served };
    }

    private static string RequireImagesDirectory(CriuOperation operation, CriuOptions options, bool create)
    {
        if (string.IsNullOrEmpty(options.ImagesDirectory))
        {
            throw new ArgumentException($"{operation} needs an images directory", nameof(options));
        }

        var images = Path.GetFullPath(options.ImagesDirectory);
        if (!Directory.Exists(images))
        {
            if (!create)
            {
                throw new DirectoryNotFoundException($"images directory '{images}' does not exist");
            }

            // Images hold the process's memory, secrets included: owner-only from the start.
            Directory.CreateDirectory(images, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        return images;
    }

    private SafeCriuOptionsHandle CreateHandle(CriuOptions options, string? serviceBinary = null)
    {
        var handle = SafeCriuOptionsHandle.Create();
        var binary = serviceBinary ?? options.ServiceBinary ?? _serviceBinary;
        if (binary is not null)
        {
            Require(Interop.Criu.SetServiceBinary(handle, binary), "service binary");
        }

        return handle;
    }

    private static void Configure(SafeCriuOptionsHandle h, CriuOptions o, SafeDirectoryHandle images, SafeDirectoryHandle? work, string logFile)
    {
        Interop.Criu.SetImagesDirFd(h, images.Descriptor);
        if (work is not null)
        {
            Interop.Criu.SetWorkDirFd(h, work.Descriptor);
        }

        Require(Interop.Criu.SetLogFile(h, logFile), "log file");
        Interop.Criu.SetLogLevel(h, (int)o.LogLevel);
        if (o.Pid is int pid)
        {
            Interop.Criu.SetPid(h, pid);
        }

        if (o.ParentImages is { } parent)
        {
            Require(Interop.Criu.SetParentImages(h, parent), "parent images");
        }

        SetIf(o.LeaveRunning, v => Interop.Criu.SetLeaveRunning(h, v));
        SetIf(o.TrackMemory, v => Interop.Criu.SetTrackMem(h, v));
        SetIf(o.ShellJob, v => Interop.Criu.SetShellJob(h, v));
        SetIf(o.TcpEstablished, v => Interop.Criu.SetTcpEstablished(h, v));
        SetIf(o.TcpClose, v => Interop.Criu.SetTcpClose(h, v));
        SetIf(o.TcpSkipInFlight, v => Interop.Criu.SetTcpSkipInFlight(h, v));
        SetIf(o.ExternalUnixSockets, v => Interop.Criu.SetExternalUnixSockets(h, v));
        SetIf(o.FileLocks, v => Interop.Criu.SetFileLocks(h, v));
        SetIf(o.LinkRemap, v => Interop.Criu.SetLinkRemap(h, v));
        SetIf(o.EvasiveDevices, v => Interop.Criu.SetEvasiveDevices(h, v));
        SetIf(o.WeakSysctls, v => Interop.Criu.SetWeakSysctls(h, v));
        SetIf(o.OrphanPtsMaster, v => Interop.Criu.SetOrphanPtsMaster(h, v));
        SetIf(o.AutoExternalMounts, v => Interop.Criu.SetAutoExternalMounts(h, v));
        SetIf(o.ExternalSharing, v => Interop.Criu.SetExternalSharing(h, v));
        SetIf(o.ExternalMasters, v => Interop.Criu.SetExternalMasters(h, v));
        SetIf(o.ManageCgroups, v => Interop.Criu.SetManageCgroups(h, v));
        if (o.CgroupMode is { } mode)
        {
            Interop.Criu.SetManageCgroupsMode(h, mode switch
            {
                CriuCgroupMode.Ignore => Interop.Criu.CgroupMode.Ignore,
                CriuCgroupMode.None => Interop.Criu.CgroupMode.None,
                CriuCgroupMode.Props => Interop.Criu.CgroupMode.Props,
                CriuCgroupMode.Soft => Interop.Criu.CgroupMode.Soft,
                CriuCgroupMode.Full => Interop.Criu.CgroupMode.Full,
                CriuCgroupMode.Strict => Interop.Criu.CgroupMode.Strict,
                _ => throw new ArgumentOutOfRangeException(nameof(o), mode, "unknown cgroup mode"),
            });
        }

        if (o.FreezeCgroup is { } freezer)
        {
            Require(Interop.Criu.SetFreezeCgroup(h, freezer), "freeze cgroup");
        }

        if (o.Root is { } root)
        {
            Require(Interop.Criu.SetRoot(h, root), "root");
        }

        if (o.GhostLimit is uint ghost)
        {
            Interop.Criu.SetGhostLimit(h, ghost);
        }

        if (o.NetworkLock is { } networkLock)
        {
            Require(Interop.Criu.SetNetworkLock(h, networkLock switch
            {
                CriuNetworkLock.Iptables => Interop.Criu.NetworkLockMethod.Iptables,
                CriuNetworkLock.Nftables => Interop.Criu.NetworkLockMethod.Nftables,
                _ => Interop.Criu.NetworkLockMethod.Skip,
            }), "network lock");
        }

        if (o.EmptyNamespaces is int empty)
        {
            Interop.Criu.SetEmptyNamespaces(h, empty);
        }

        if (o.LsmProfile is { } lsm)
        {
            Require(Interop.Criu.SetLsmProfile(h, lsm), "LSM profile");
        }

        foreach (var m in o.ExternalMounts)
        {
            Require(Interop.Criu.AddExternalMount(h, m.Key, m.Value), $"external mount {m.Key}");
        }

        foreach (var e in o.External)
        {
            Require(Interop.Criu.AddExternal(h, e), $"external {e}");
        }

        foreach (var d in o.InheritedDescriptors)
        {
            // libcriu starts CRIU with fork and exec: the descriptor must survive the exec (.NET opens everything close-on-exec)
            if (Interop.Libc.Fcntl(d.Descriptor, Interop.Libc.FSetFd, 0) != 0)
            {
                throw new ArgumentException($"inherited descriptor {d.Key}: descriptor {d.Descriptor} cannot be handed to CRIU: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}", nameof(o));
            }

            Require(Interop.Criu.AddInheritFd(h, d.Descriptor, d.Key), $"inherited descriptor {d.Key}");
        }

        foreach (var s in o.SkipMounts)
        {
            Require(Interop.Criu.AddSkipMount(h, s), $"skipped mount {s}");
        }

        foreach (var f in o.EnableFilesystems)
        {
            Require(Interop.Criu.AddEnableFilesystem(h, f), $"file system {f}");
        }

        foreach (var j in o.JoinNamespaces)
        {
            Require(Interop.Criu.AddJoinNamespace(h, j.Namespace, j.NamespaceFile, j.ExtraOption), $"joined namespace {j.Namespace}");
        }

        foreach (var (controller, path) in o.CgroupRoots)
        {
            Require(Interop.Criu.AddCgroupRoot(h, controller, path), $"cgroup root {path}");
        }

        if (o.Notify is not null)
        {
            unsafe
            {
                Interop.Criu.SetNotifyCallback(h, &OnNotify);
            }
        }
    }

    private static void SetIf(bool? value, Action<bool> setter)
    {
        if (value is bool v)
        {
            setter(v);
        }
    }

    private static void Require(int rc, string what)
    {
        if (rc != 0)
        {
            throw new CriuException(CriuOperation.Configure, rc, 0, $"libcriu refused the {what} option", null, null);
        }
    }

    private static int Invoke(SafeCriuOptionsHandle handle, Func<CriuNotification, bool>? notify, Func<SafeCriuOptionsHandle, int> call, out int errno)
    {
        var scope = notify is null ? null : new NotificationScope(notify);
        var previous = _currentNotification;
        _currentNotification = scope;
        try
        {
            int rc = call(handle);
            errno = Marshal.GetLastPInvokeError();
            if (scope?.Failure is { } failure)
            {
                throw new InvalidOperationException("a CRIU notification handler failed; the operation was aborted", failure);
            }

            return rc;
        }
        finally
        {
            _currentNotification = previous;
        }
    }

    // libcriu calls this on the thread that made the request, while the request is in progress.
    [UnmanagedCallersOnly]
    private static unsafe int OnNotify(byte* action, nint notification)
    {
        var scope = _currentNotification;
        if (scope is null)
        {
            return 0;
        }

        try
        {
            var name = Marshal.PtrToStringUTF8((nint)action) ?? string.Empty;
            var pid = Interop.Criu.NotifyPid(notification);
            return scope.Handler(new CriuNotification(name, pid)) ? 0 : -1;
        }
#pragma warning disable CA1031 // An exception must not cross into native code; it is rethrown after the call.
        catch (Exception e)
#pragma warning restore CA1031
        {
            scope.Failure = e;
            return -1;
        }
    }

    /// <summary>The last lines of a CRIU log, read from its end so multi-megabyte debug logs stay cheap.</summary>
    internal static IReadOnlyList<string> ReadLogTail(string path)
    {
        if (!File.Exists(path))
        {
            return [$"(no CRIU log at {path})"];
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        long start = Math.Max(0, stream.Length - LogTailBytes);
        stream.Position = start;
        var buffer = new byte[stream.Length - start];
        stream.ReadExactly(buffer);
        var lines = Encoding.UTF8.GetString(buffer).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (start > 0 && lines.Length > 0)
        {
            lines = lines[1..]; // the first line is probably cut
        }

        // The last lines, preceded by the error lines above them: CRIU often logs its real reason
        // well before the clean-up chatter that ends a failed run.
        var tail = lines.Length <= LogTailLines ? lines : lines[^LogTailLines..];
        var earlierErrors = lines[..^tail.Length].Where(l => l.Contains("Error (", StringComparison.Ordinal)).TakeLast(10);
        return [.. earlierErrors, .. tail];
    }

    private sealed class NotificationScope(Func<CriuNotification, bool> handler)
    {
        public Func<CriuNotification, bool> Handler { get; } = handler;

        public Exception? Failure { get; set; }
    }
}

using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Migrate.Criu.Images;
using static Migrate.Criu.Interop.Tracking;

namespace Migrate.Criu.Incremental;

/// <summary>
/// Tracks which pages a running process tree writes, without soft-dirty: each process is made to
/// open a userfaultfd (<see cref="SyscallInjection"/>), which the agent keeps; its private memory is
/// registered for asynchronous write-protection (UFFD_FEATURE_WP_ASYNC, with unpopulated pages
/// protected too) and write-protected. The process's first write to a page then only clears the
/// page's protection, with no one to wake. <see cref="Scan"/> asks the kernel (the PAGEMAP_SCAN
/// ioctl of /proc/PID/pagemap) for the pages written since the last scan and protects them again
/// in the same call. Disposing closes the descriptors, and the kernel removes every registration.
/// Processes that cannot be armed (another architecture, a seccomp profile refusing userfaultfd, a
/// tracer already attached) are left out and named in <see cref="Notes"/>: their pages are compared.
/// </summary>
public sealed class WriteTracker : IDisposable
{
    private const int RegionsPerCall = 4096;
    private static readonly Lazy<string?> Unsupported = new(Probe);

    private readonly Dictionary<int, ArmedTask> _tasks;

    private WriteTracker(Dictionary<int, ArmedTask> tasks, IReadOnlyList<string> notes, int armedBeforeRound)
    {
        _tasks = tasks;
        Notes = notes;
        ArmedBeforeRound = armedBeforeRound;
    }

    /// <summary>The pre-copy round whose read came after arming: scans are good from the round after it on.</summary>
    public int ArmedBeforeRound { get; }

    public int ArmedTasks => _tasks.Count;

    /// <summary>Why some processes are not tracked.</summary>
    public IReadOnlyList<string> Notes { get; }

    /// <summary>Null when this machine can track writes (this architecture, a kernel with async
    /// write-protection and PAGEMAP_SCAN); else why not. Probed once on the agent's own memory.</summary>
    public static string? WhyUnsupported() => Unsupported.Value;

    /// <summary>Arms every process of the tree of <paramref name="rootPid"/>, before the read of round <paramref name="beforeRound"/>.</summary>
    public static WriteTracker Arm(int rootPid, int beforeRound)
    {
        if (WhyUnsupported() is { } reason)
        {
            throw new WriteTrackingException(reason);
        }

        var tasks = new Dictionary<int, ArmedTask>();
        var notes = new List<string>();
        foreach (var task in LiveProcessTree.Enumerate(rootPid))
        {
            try
            {
                tasks[task.HostPid] = ArmedTask.Arm(task);
            }
            catch (Exception e) when (e is WriteTrackingException or IOException or UnauthorizedAccessException)
            {
                notes.Add($"process {task.HostPid}: {e.Message}");
            }
        }

        return new WriteTracker(tasks, notes, beforeRound);
    }

    /// <summary>
    /// The pages each armed process wrote since the last scan (since arming for the first), every
    /// one of them protected again by the same call. A process that exited or was replaced is left
    /// out of the answer (all its pages count as changed).
    /// </summary>
    public MemoryChanges Scan()
    {
        var result = new Dictionary<int, TrackedPages>();
        foreach (var (pid, task) in _tasks)
        {
            if (task.Scan() is { } pages)
            {
                result[pid] = pages;
            }
        }

        return new MemoryChanges(result);
    }

    public void Dispose()
    {
        foreach (var task in _tasks.Values)
        {
            task.Dispose();
        }

        _tasks.Clear();
    }

    private static string? Probe()
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return $"write tracking is implemented for x86_64 only, not {RuntimeInformation.ProcessArchitecture}";
        }

        long fd = Syscall(SysUserfaultfd, UserfaultfdFlags, 0, 0);
        if (fd < 0)
        {
            return $"userfaultfd: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}";
        }

        using var uffd = new SafeUserfaultfd((int)fd);
        const int pages = 4;
        nuint length = (nuint)(pages * PagemapEntry.PageSize);
        nint memory = Mmap(0, length, ProtReadWrite, MapPrivateAnonymous, -1, 0);
        if (memory == -1)
        {
            return $"mmap: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}";
        }

        try
        {
            var range = new PageRange((ulong)memory, (ulong)memory + length);
            if (Configure(uffd, Environment.ProcessId) is { } refused)
            {
                return refused;
            }

            if (Register(uffd, range) is { } notRegistered)
            {
                return notRegistered;
            }

            using var pagemap = File.OpenHandle("/proc/self/pagemap", FileMode.Open, FileAccess.Read);
            Marshal.WriteByte(memory + PagemapEntry.PageSize, 1);
            var written = ScanRanges(pagemap, [range], ScanWpMatching, PageIsWritten);
            return written.Count == 1 && written[0] == new PageRange(range.Start + PagemapEntry.PageSize, range.Start + (2 * PagemapEntry.PageSize))
                ? null
                : $"PAGEMAP_SCAN did not report exactly the one page written ({written.Count} ranges)";
        }
        catch (WriteTrackingException e)
        {
            return e.Message;
        }
        finally
        {
            _ = Munmap(memory, length);
        }
    }

    /// <summary>UFFDIO_API with asynchronous write-protection of populated and unpopulated pages; null when the kernel agrees.</summary>
    private static unsafe string? Configure(SafeUserfaultfd uffd, int pid)
    {
        var api = new UffdioApiArg { Api = UffdApi, Features = UffdFeatureWpAsync | UffdFeatureWpUnpopulated };
        if (Ioctl(uffd.Descriptor, UffdioApi, &api) != 0)
        {
            return $"the kernel refused asynchronous write-protection for process {pid} (UFFDIO_API: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())})";
        }

        return null;
    }

    /// <summary>UFFDIO_REGISTER in write-protect mode, then UFFDIO_WRITEPROTECT over the range; null on success.</summary>
    private static unsafe string? Register(SafeUserfaultfd uffd, PageRange range)
    {
        var register = new UffdioRegisterArg { Start = range.Start, Length = range.End - range.Start, Mode = UffdRegisterModeWp };
        if (Ioctl(uffd.Descriptor, UffdioRegister, &register) != 0)
        {
            return $"UFFDIO_REGISTER 0x{range.Start:x}-0x{range.End:x}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}";
        }

        var protect = new UffdioWriteProtectArg { Start = range.Start, Length = range.End - range.Start, Mode = UffdWriteProtectModeWp };
        if (Ioctl(uffd.Descriptor, UffdioWriteProtect, &protect) != 0)
        {
            return $"UFFDIO_WRITEPROTECT 0x{range.Start:x}-0x{range.End:x}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}";
        }

        return null;
    }

    /// <summary>PAGEMAP_SCAN over <paramref name="ranges"/>: the pages in <paramref name="category"/> (with <paramref name="flags"/>, e.g. protecting them again).</summary>
    private static unsafe List<PageRange> ScanRanges(SafeFileHandle pagemap, IEnumerable<PageRange> ranges, ulong flags, ulong category)
    {
        var found = new List<PageRange>();
        var regions = new PageRegion[RegionsPerCall];
        int fd = (int)pagemap.DangerousGetHandle();
        fixed (PageRegion* vector = regions)
        {
            foreach (var range in ranges)
            {
                ulong start = range.Start;
                while (start < range.End)
                {
                    var argument = new PmScanArg
                    {
                        Size = (ulong)sizeof(PmScanArg),
                        Flags = flags,
                        Start = start,
                        End = range.End,
                        Vector = (ulong)vector,
                        VectorLength = RegionsPerCall,
                        CategoryMask = category,
                        ReturnMask = category,
                    };
                    int count = Ioctl(fd, PagemapScan, &argument);
                    if (count < 0)
                    {
                        throw new WriteTrackingException($"PAGEMAP_SCAN 0x{start:x}-0x{range.End:x}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
                    }

                    for (int i = 0; i < count; i++)
                    {
                        found.Add(new PageRange(regions[i].Start, regions[i].End));
                    }

                    if (argument.WalkEnd <= start)
                    {
                        break;
                    }

                    start = argument.WalkEnd;
                }
            }
        }

        return found;
    }

    /// <summary>One armed process: the agent's copy of its userfaultfd, its pagemap, the ranges registered.</summary>
    private sealed class ArmedTask : IDisposable
    {
        private readonly SafeUserfaultfd _uffd;
        private readonly PageRange[] _registered;
        private readonly string _startTime;
        private readonly int _pid;

        private ArmedTask(int pid, string startTime, SafeUserfaultfd uffd, PageRange[] registered)
        {
            _pid = pid;
            _startTime = startTime;
            _uffd = uffd;
            _registered = registered;
        }

        public static ArmedTask Arm(LiveTask task)
        {
            string startTime = StartTime(task.HostPid) ?? throw new WriteTrackingException($"process {task.HostPid} exited");
            var uffd = SyscallInjection.StealUserfaultfd(task.HostPid);
            try
            {
                if (Configure(uffd, task.HostPid) is { } refused)
                {
                    throw new WriteTrackingException(refused);
                }

                var registered = new List<PageRange>();
                foreach (var region in LiveProcessTree.ReadMaps(task.HostPid))
                {
                    // what a snapshot reads; a range already registered elsewhere (the process's own userfaultfd) is left alone
                    if (region.IsReadable && region.IsPrivate && !region.IsSpecial && region.Name != "[vdso]"
                        && Register(uffd, new PageRange(region.Start, region.End)) is null)
                    {
                        registered.Add(new PageRange(region.Start, region.End));
                    }
                }

                if (registered.Count == 0)
                {
                    throw new WriteTrackingException($"none of process {task.HostPid}'s private memory could be registered");
                }

                return new ArmedTask(task.HostPid, startTime, uffd, [.. registered]);
            }
            catch
            {
                uffd.Dispose();
                throw;
            }
        }

        /// <summary>
        /// Written pages (protected again), then the ranges still tracked; null if the process is gone
        /// or another now has its PID. The pagemap is opened afresh for each scan: it then reads the
        /// process's memory as it is now, so after an exec (same PID, new memory, nothing of it
        /// registered) no range counts as tracked.
        /// </summary>
        public TrackedPages? Scan()
        {
            if (StartTime(_pid) != _startTime)
            {
                return null;
            }

            try
            {
                using var pagemap = File.OpenHandle($"/proc/{_pid}/pagemap", FileMode.Open, FileAccess.Read);
                var written = ScanRanges(pagemap, _registered, ScanWpMatching, PageIsWritten);
                var tracked = ScanRanges(pagemap, _registered, 0, PageIsWpAllowed);
                return StartTime(_pid) == _startTime ? new TrackedPages(tracked, written) : null;
            }
            catch (Exception e) when ((e is WriteTrackingException or IOException or UnauthorizedAccessException) && StartTime(_pid) != _startTime)
            {
                return null;
            }
        }

        public void Dispose() => _uffd.Dispose();

        /// <summary>Field 22 of /proc/PID/stat (start time in clock ticks), which tells a process from a later one with the same PID.</summary>
        private static string? StartTime(int pid) => ProcessStat.Fields(pid) is { Length: > 19 } fields ? fields[19] : null;
    }
}

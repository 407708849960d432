using System.Buffers.Binary;
using System.Diagnostics;
using Microsoft.Win32.SafeHandles;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>Figures of one snapshot round.</summary>
/// <param name="Directory">The image set written.</param>
/// <param name="Tasks">Processes whose memory was read.</param>
/// <param name="PagesScanned">Private pages found resident (or swapped) in those processes.</param>
/// <param name="PagesWritten">Pages written into this set: new, or changed since the parent set.</param>
/// <param name="PagesUnchanged">Pages identical to the parent set, recorded as "in parent".</param>
/// <param name="Elapsed">Wall time of the round.</param>
/// <param name="PagesRead">Pages read from the processes: all of them, less those write tracking showed unchanged.</param>
/// <param name="PagesRemote">Pages left on the source for post-copy: listed, not read.</param>
public sealed record SnapshotResult(string Directory, int Tasks, ulong PagesScanned, ulong PagesWritten, ulong PagesUnchanged, TimeSpan Elapsed, ulong PagesRead, ulong PagesRemote = 0)
{
    public long BytesWritten => (long)PagesWritten * PagemapEntry.PageSize;

    /// <summary>A streamed round: by host PID, the stretches the set lists but holds as zeros, because they could not be read.</summary>
    public IReadOnlyDictionary<int, IReadOnlyList<PageRange>> Unread { get; init; } = new Dictionary<int, IReadOnlyList<PageRange>>();
}

/// <summary>
/// A pre-dump that needs no kernel memory tracking. It reads the private memory of a running tree
/// through /proc (the tree is neither frozen nor stopped) and writes it as a CRIU image set that
/// holds only pagemaps and pages: the kind of set CRIU's restore reads through a <c>parent</c> link.
/// With a parent set, pages whose content did not change are recorded as "in parent" instead of
/// written, so each round is a child of the previous one.
/// </summary>
/// <remarks>
/// The tree keeps running while it is read, so a page may change under the reader. That is
/// harmless: a snapshot only ever serves as a parent, and <see cref="ParentDeduplication"/> refers
/// a page of the final, frozen dump to it only when the bytes are identical.
/// </remarks>
public static class MemorySnapshot
{
    private const ulong PresentBit = 1UL << 63;
    private const ulong SwappedBit = 1UL << 62;
    private const ulong FileOrSharedBit = 1UL << 61;
    private const int BatchPages = 256;

    /// <param name="rootPid">Host PID of the tree's root task.</param>
    /// <param name="directory">The image set to create (must not exist or be empty).</param>
    /// <param name="parentDirectory">The previous round's image set, or null for the first round.</param>
    /// <param name="changes">A write-tracking scan taken after the parent round was read: pages it
    /// shows unchanged that the parent chain holds are recorded as "in parent" without being read.</param>
    public static SnapshotResult Write(int rootPid, string directory, string? parentDirectory, MemoryChanges? changes = null)
    {
        var stopwatch = Stopwatch.StartNew();
        using var parent = CreateSet(ref directory, parentDirectory);

        var tasks = LiveProcessTree.Enumerate(rootPid);
        ulong scanned = 0, written = 0, unchanged = 0, read = 0;
        uint pagesId = 0;
        int tasksRead = 0;
        foreach (var task in tasks)
        {
            pagesId++;
            try
            {
                var (s, w, u, r) = SnapshotTask(task, directory, pagesId, parent, changes?.For(task.HostPid));
                scanned += s;
                read += r;
                written += w;
                unchanged += u;
                tasksRead++;
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
                                      || (e is IOException && !Directory.Exists($"/proc/{task.HostPid}")))
            {
                // The task exited while it was read. Its pages are simply not in this round.
                File.Delete(Path.Combine(directory, CriuPagemap.FileName(task.ImageId)));
                File.Delete(Path.Combine(directory, CriuPagemap.PagesFileName(pagesId)));
            }
        }

        return new SnapshotResult(directory, tasksRead, scanned, written, unchanged, stopwatch.Elapsed, read);
    }

    /// <summary>
    /// The memory of a lazy dump: every page CRIU's pagemaps in <paramref name="lazyDumpDirectory"/>
    /// mark lazy, read from the tree (which must be frozen, as the dump left it) into the image set
    /// <paramref name="directory"/>; pages identical to the parent chain are recorded as "in parent".
    /// The set covers every lazy page by construction: one that cannot be read fails the capture.
    /// With <paramref name="changes"/> (a write-tracking scan taken while frozen, after the parent
    /// round was read), pages it shows unchanged that the parent chain holds are not read at all.
    /// With <paramref name="leaveOnSource"/> (post-copy), the pages that would be read are not: they
    /// are listed as left on the source (<see cref="PagemapBuilder.AddRemote"/>), to be fetched from
    /// the frozen tree after the restore.
    /// </summary>
    public static SnapshotResult CaptureLazy(int rootPid, string lazyDumpDirectory, string directory, string? parentDirectory, MemoryChanges? changes = null,
        bool leaveOnSource = false)
    {
        var stopwatch = Stopwatch.StartNew();
        using var parent = CreateSet(ref directory, parentDirectory);

        var hostPids = LiveProcessTree.Enumerate(rootPid).ToDictionary(t => t.ImageId, t => t.HostPid);
        ulong scanned = 0, written = 0, unchanged = 0, remote = 0;
        uint pagesId = 0;
        int tasks = 0;
        var buffers = new PageBuffers { LeaveOnSource = leaveOnSource };
        foreach (var map in CriuPagemap.ReadAll(lazyDumpDirectory))
        {
            var lazy = map.Entries.Where(e => e.IsLeftLazy).ToList();
            if (lazy.Count == 0)
            {
                continue;
            }

            if (!hostPids.TryGetValue(map.Id, out int hostPid))
            {
                throw new InvalidOperationException($"task {map.Id} of the dump is not in the tree of process {rootPid} any more");
            }

            tasks++;
            var tracked = changes?.For(hostPid);
            using var memory = File.OpenHandle($"/proc/{hostPid}/mem", FileMode.Open, FileAccess.Read);
            using var builder = new PagemapBuilder(directory, map.Id, ++pagesId);
            foreach (var entry in lazy)
            {
                for (uint done = 0; done < entry.PageCount;)
                {
                    int count = (int)Math.Min(BatchPages, entry.PageCount - done);
                    ulong address = entry.Address + ((ulong)done * PagemapEntry.PageSize);
                    if (!CopyPages(memory, builder, parent, tracked, map.Id, address, count, buffers))
                    {
                        throw new IOException($"could not read lazy pages at 0x{address:x} of task {map.Id} (host PID {hostPid})");
                    }

                    scanned += (ulong)count;
                    done += (uint)count;
                }
            }

            builder.Complete();
            written += builder.PresentPages;
            unchanged += builder.ParentPages;
            remote += builder.RemotePages;
        }

        return new SnapshotResult(directory, tasks, scanned, written, unchanged, stopwatch.Elapsed, buffers.PagesRead, remote);
    }

    private static (ulong Scanned, ulong Written, ulong Unchanged, ulong Read) SnapshotTask(LiveTask task, string directory, uint pagesId, ImageChain? parent, TrackedPages? tracked)
    {
        var runs = ResidentRuns(task.HostPid);
        using var memory = File.OpenHandle($"/proc/{task.HostPid}/mem", FileMode.Open, FileAccess.Read);
        using var builder = new PagemapBuilder(directory, task.ImageId, pagesId);
        var buffers = new PageBuffers();
        ulong scanned = 0;
        foreach (var run in runs)
        {
            // a run not readable through /proc (e.g. a device mapping) is left to the final dump
            if (CopyPages(memory, builder, parent, tracked, task.ImageId, run.Start, (int)run.Pages, buffers))
            {
                scanned += run.Pages;
            }
        }

        builder.Complete();
        return (scanned, builder.PresentPages, builder.ParentPages, buffers.PagesRead);
    }

    /// <summary>
    /// The resident (or swapped) private pages of a process's readable mappings, by its pagemap: runs
    /// in address order, none longer than <see cref="BatchPages"/> nor across a batch's boundary.
    /// </summary>
    private static List<PageRange> ResidentRuns(int hostPid)
    {
        var runs = new List<PageRange>();
        using var pagemap = File.OpenHandle($"/proc/{hostPid}/pagemap", FileMode.Open, FileAccess.Read);
        var pageFlags = new byte[BatchPages * 8];
        foreach (var region in LiveProcessTree.ReadMaps(hostPid))
        {
            if (!region.IsReadable || !region.IsPrivate || region.IsSpecial)
            {
                continue;
            }

            for (ulong batchStart = region.Start; batchStart < region.End; batchStart += BatchPages * (ulong)PagemapEntry.PageSize)
            {
                int count = (int)Math.Min(BatchPages, (region.End - batchStart) / PagemapEntry.PageSize);
                if (!ReadPageFlags(pagemap, batchStart, pageFlags.AsSpan(0, count * 8)))
                {
                    break;
                }

                int i = 0;
                while (i < count)
                {
                    if (!IsPrivateResident(pageFlags, i))
                    {
                        i++;
                        continue;
                    }

                    int runStart = i;
                    while (i < count && IsPrivateResident(pageFlags, i))
                    {
                        i++;
                    }

                    ulong address = batchStart + ((ulong)runStart * PagemapEntry.PageSize);
                    runs.Add(new PageRange(address, address + ((ulong)(i - runStart) * PagemapEntry.PageSize)));
                }
            }
        }

        return runs;
    }

    /// <summary>
    /// A round laid out before its bytes are read, so that they can be sent while they are: every
    /// task's resident private pages are listed and its pagemap written at once, each pages file
    /// announced with its final size (<see cref="GrowingFiles"/>), then <paramref name="planned"/> is
    /// called, then the pages are read into those files in order. A first round (no
    /// <paramref name="parentDirectory"/>) lists every resident page; a later one needs
    /// <paramref name="changes"/>, a write-tracking scan taken after the parent round was read: the
    /// pages it shows unchanged that the parent chain holds are listed "in parent" and not read, as
    /// <see cref="Write"/> does, and the others are read without comparing them with the parent's.
    /// A stretch that cannot be read (a mapping gone meanwhile) is written as zeros and listed in
    /// <see cref="SnapshotResult.Unread"/>: the next round must read it again as if it were written
    /// (<see cref="MemoryChanges.WithWritten"/>). A task that ended before it was listed is not in
    /// the set.
    /// </summary>
    public static SnapshotResult WriteStreamed(int rootPid, string directory, Action planned, string? parentDirectory = null, MemoryChanges? changes = null)
    {
        ArgumentNullException.ThrowIfNull(planned);
        if (parentDirectory is not null && changes is null)
        {
            throw new ArgumentException("a round with a parent set is laid out before it is read only from a write-tracking scan: without one its pages are compared with the parent's as they are read", nameof(changes));
        }

        var stopwatch = Stopwatch.StartNew();
        var plans = new List<(int ImageId, int HostPid, uint PagesId, List<PlannedRun> Runs)>();
        using (var parent = CreateSet(ref directory, parentDirectory))
        {
            uint pagesId = 0;
            foreach (var task in LiveProcessTree.Enumerate(rootPid))
            {
                pagesId++;
                try
                {
                    plans.Add((task.ImageId, task.HostPid, pagesId, Plan(ResidentRuns(task.HostPid), changes?.For(task.HostPid), parent, task.ImageId)));
                }
                catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
                                          || (e is IOException && !Directory.Exists($"/proc/{task.HostPid}")))
                {
                    // ended before it was listed
                }
            }
        }

        var announced = new List<GrowingFiles.Registration>();
        try
        {
            foreach (var plan in plans)
            {
                var pagesPath = Path.Combine(directory, CriuPagemap.PagesFileName(plan.PagesId));
                File.WriteAllBytes(pagesPath, []);
                announced.Add(GrowingFiles.Begin(pagesPath, (long)ReadPages(plan.Runs) * PagemapEntry.PageSize));
                var map = new CriuPagemap(plan.ImageId, plan.PagesId, Entries(plan.Runs));
                map.Write(directory);
                ImageChain.Remember(Path.Combine(directory, CriuPagemap.FileName(plan.ImageId)), map);
            }

            planned();
            ulong read = 0;
            var unread = new Dictionary<int, IReadOnlyList<PageRange>>();
            var buffer = new byte[BatchPages * PagemapEntry.PageSize];
            foreach (var (plan, file) in plans.Zip(announced))
            {
                var unreadable = new List<PageRange>();
                using var pages = File.OpenHandle(file.File.Path, FileMode.Open, FileAccess.Write);
                SafeFileHandle? memory = null;
                try
                {
                    memory = File.OpenHandle($"/proc/{plan.HostPid}/mem", FileMode.Open, FileAccess.Read);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // ended since it was listed: nothing of it is read
                }

                using (memory)
                {
                    long offset = 0;
                    foreach (var run in plan.Runs.Where(r => !r.InParent))
                    {
                        var bytes = buffer.AsSpan(0, (int)run.Range.Pages * PagemapEntry.PageSize);
                        if (memory is null || !ReadMemory(memory, run.Range.Start, bytes))
                        {
                            bytes.Clear();
                            unreadable.Add(run.Range);
                        }
                        else
                        {
                            read += run.Range.Pages;
                        }

                        RandomAccess.Write(pages, bytes, offset);
                        offset += bytes.Length;
                        file.File.Advance(offset);
                    }
                }

                if (unreadable.Count > 0)
                {
                    unread[plan.HostPid] = unreadable;
                }
            }

            ulong listed = plans.Aggregate(0UL, (sum, p) => sum + p.Runs.Aggregate(0UL, (s, r) => s + r.Range.Pages));
            ulong written = plans.Aggregate(0UL, (sum, p) => sum + ReadPages(p.Runs));
            return new SnapshotResult(directory, plans.Count, listed, written, listed - written, stopwatch.Elapsed, read) { Unread = unread };
        }
        finally
        {
            foreach (var registration in announced)
            {
                registration.Dispose();
            }
        }
    }

    /// <summary>A stretch of a streamed round: read into its pages file, or held by the parent chain (write tracking shows it unchanged).</summary>
    private readonly record struct PlannedRun(PageRange Range, bool InParent);

    /// <summary>
    /// A task's resident runs cut where write tracking and the parent chain say a stretch need not be
    /// read (<see cref="KnownUnchanged"/>): those are "in parent", the rest is read. No run is
    /// longer than the batch it came from.
    /// </summary>
    private static List<PlannedRun> Plan(List<PageRange> resident, TrackedPages? tracked, ImageChain? parent, int id)
    {
        var runs = new List<PlannedRun>(resident.Count);
        foreach (var range in resident)
        {
            int count = (int)range.Pages;
            int page = 0;
            while (page < count)
            {
                ulong at = range.Start + ((ulong)page * PagemapEntry.PageSize);
                int unchanged = KnownUnchanged(tracked, parent, id, at, count - page);
                if (unchanged > 0)
                {
                    runs.Add(new PlannedRun(new PageRange(at, at + ((ulong)unchanged * PagemapEntry.PageSize)), InParent: true));
                    page += unchanged;
                    continue;
                }

                int start = page;
                while (page < count && KnownUnchanged(tracked, parent, id, range.Start + ((ulong)page * PagemapEntry.PageSize), 1) == 0)
                {
                    page++;
                }

                ulong from = range.Start + ((ulong)start * PagemapEntry.PageSize);
                runs.Add(new PlannedRun(new PageRange(from, from + ((ulong)(page - start) * PagemapEntry.PageSize)), InParent: false));
            }
        }

        return runs;
    }

    private static ulong ReadPages(List<PlannedRun> runs) => runs.Where(r => !r.InParent).Aggregate(0UL, (sum, r) => sum + r.Range.Pages);

    /// <summary>Entries for runs in address order, touching runs of the same kind merged (the pages file holds the read ones in that order either way).</summary>
    private static List<PagemapEntry> Entries(List<PlannedRun> runs)
    {
        var entries = new List<PagemapEntry>();
        foreach (var run in runs)
        {
            var flags = run.InParent ? PagemapFlags.Parent : PagemapFlags.Present;
            if (entries.Count > 0 && entries[^1].End == run.Range.Start && entries[^1].Flags == flags)
            {
                entries[^1] = entries[^1] with { PageCount = entries[^1].PageCount + (uint)run.Range.Pages };
            }
            else
            {
                entries.Add(new PagemapEntry(run.Range.Start, (uint)run.Range.Pages, flags));
            }
        }

        return entries;
    }

    /// <summary>
    /// Adds <paramref name="count"/> pages from <paramref name="address"/> on to the set: a page the
    /// write tracking shows unchanged that the parent chain holds as "in parent" without reading it;
    /// the others read from the process. Without tracking, a page read is recorded as "in parent"
    /// when its bytes equal the parent's; with tracking it was written since (or lies outside what is
    /// tracked) and is kept without that comparison, which would cost a read of the parent for
    /// every page written and seldom spare one. False (and nothing added from the unreadable stretch
    /// on) if the memory cannot be read.
    /// </summary>
    private static bool CopyPages(SafeFileHandle memory, PagemapBuilder builder, ImageChain? parent, TrackedPages? tracked, int id, ulong address, int count, PageBuffers buffers)
    {
        int page = 0;
        while (page < count)
        {
            ulong at = address + ((ulong)page * PagemapEntry.PageSize);
            int unchanged = KnownUnchanged(tracked, parent, id, at, count - page);
            if (unchanged > 0)
            {
                builder.AddParent(at, (uint)unchanged);
                page += unchanged;
                continue;
            }

            int runStart = page;
            while (page < count && KnownUnchanged(tracked, parent, id, address + ((ulong)page * PagemapEntry.PageSize), 1) == 0)
            {
                page++;
            }
            int run = page - runStart;
            if (buffers.LeaveOnSource)
            {
                builder.AddRemote(at, (uint)run);
                continue;
            }

            var pages = buffers.Content.AsSpan(0, run * PagemapEntry.PageSize);
            if (!ReadMemory(memory, at, pages))
            {
                return false;
            }

            buffers.PagesRead += (ulong)run;
            buffers.InParent.AsSpan().Clear();
            if (tracked is null)
            {
                // with write tracking these pages were written since the parent's read (or lie outside what is tracked): not compared
                parent?.Read(id, at, run, buffers.ParentContent, buffers.InParent);
            }
            for (int p = 0; p < run; p++)
            {
                var bytes = pages.Slice(p * PagemapEntry.PageSize, PagemapEntry.PageSize);
                ulong pageAddress = at + ((ulong)p * PagemapEntry.PageSize);
                if (buffers.InParent[p] && bytes.SequenceEqual(buffers.ParentContent.AsSpan(p * PagemapEntry.PageSize, PagemapEntry.PageSize)))
                {
                    builder.AddParent(pageAddress);
                }
                else
                {
                    builder.AddPresent(pageAddress, bytes);
                }
            }
        }

        return true;
    }

    /// <summary>Pages from <paramref name="address"/> on that write tracking shows unchanged and the parent chain holds (0 without tracking).</summary>
    private static int KnownUnchanged(TrackedPages? tracked, ImageChain? parent, int id, ulong address, int maxPages)
    {
        if (tracked is null || parent is null)
        {
            return 0;
        }

        int run = tracked.UnchangedRun(address, maxPages);
        return run > 0 ? parent.CoveredRun(id, address, run) : 0;
    }

    /// <summary>Buffers for one batch: the pages read, the parent's, and which of them the parent holds.</summary>
    private sealed class PageBuffers
    {
        public byte[] Content { get; } = new byte[BatchPages * PagemapEntry.PageSize];

        public byte[] ParentContent { get; } = new byte[BatchPages * PagemapEntry.PageSize];

        public bool[] InParent { get; } = new bool[BatchPages];

        public ulong PagesRead { get; set; }

        /// <summary>Pages not known unchanged are listed as left on the source instead of read (post-copy).</summary>
        public bool LeaveOnSource { get; init; }
    }

    private static bool IsPrivateResident(byte[] flags, int index)
    {
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(flags.AsSpan(index * 8, 8));
        return (entry & (PresentBit | SwappedBit)) != 0 && (entry & FileOrSharedBit) == 0;
    }

    private static bool ReadPageFlags(SafeFileHandle pagemap, ulong address, Span<byte> destination)
    {
        long offset = (long)(address / PagemapEntry.PageSize * 8);
        return RandomAccess.Read(pagemap, destination, offset) == destination.Length;
    }

    private static bool ReadMemory(SafeFileHandle memory, ulong address, Span<byte> destination)
    {
        try
        {
            int total = 0;
            while (total < destination.Length)
            {
                int read = RandomAccess.Read(memory, destination[total..], (long)address + total);
                if (read <= 0)
                {
                    return false;
                }

                total += read;
            }

            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Creates the (empty) image set <paramref name="directory"/> (made absolute) with its parent link; the parent chain, opened, or null.</summary>
    private static ImageChain? CreateSet(ref string directory, string? parentDirectory)
    {
        directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        if (System.IO.Directory.EnumerateFileSystemEntries(directory).Any())
        {
            throw new IOException($"snapshot directory {directory} is not empty");
        }

        if (parentDirectory is null)
        {
            return null;
        }

        var parent = ImageChain.Open(Path.GetFullPath(parentDirectory));
        File.CreateSymbolicLink(Path.Combine(directory, ImageChain.ParentLinkName), Path.GetRelativePath(directory, Path.GetFullPath(parentDirectory)));
        return parent;
    }
}

using Microsoft.Win32.SafeHandles;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>
/// Reads page contents out of an image set and its ancestors (the <c>parent</c> link CRIU follows
/// on restore), by task id and virtual address. A set whose pages files were given back
/// (<see cref="ReleasedPages"/>) still holds its pages (<see cref="Covers"/>, <see cref="CoveredRun"/>)
/// but none can be read from it.
/// </summary>
internal sealed class ImageChain : IDisposable
{
    /// <summary>The name of the link from an image set to its parent (CRIU's CR_PARENT_LINK).</summary>
    public const string ParentLinkName = "parent";

    private readonly string _directory;
    private readonly ImageChain? _parent;
    private readonly Dictionary<int, TaskPages?> _tasks = [];
    private readonly Dictionary<int, PageRange[]> _coverage = [];
    private IReadOnlyDictionary<string, ReleasedPages.Entry>? _released;

    private ImageChain(string directory, ImageChain? parent)
    {
        _directory = directory;
        _parent = parent;
    }

    /// <summary>Opens an image set and, through its parent links, every ancestor.</summary>
    public static ImageChain Open(string directory, int maxDepth = 64)
    {
        if (maxDepth <= 0)
        {
            throw new InvalidDataException($"image set chain at {directory} is deeper than allowed (a parent link loop?)");
        }

        var link = Path.Combine(directory, ParentLinkName);
        ImageChain? parent = null;
        if (System.IO.Directory.Exists(link))
        {
            parent = Open(Path.GetFullPath(Path.Combine(directory, ResolveLink(link))), maxDepth - 1);
        }

        return new ImageChain(directory, parent);
    }

    /// <summary>Copies the page at <paramref name="address"/> of task <paramref name="id"/> into
    /// <paramref name="destination"/>; false if no image set in the chain holds it.</summary>
    public bool TryReadPage(int id, ulong address, Span<byte> destination)
    {
        var task = GetTask(id);
        if (task is null)
        {
            return false;
        }

        int index = task.Find(address);
        if (index < 0)
        {
            return false;
        }

        var entry = task.Entries[index];
        if (entry.IsInParent)
        {
            return _parent is not null && _parent.TryReadPage(id, address, destination);
        }

        if (!entry.IsPresent || task.Pages is null)
        {
            return false;
        }

        long offset = task.FileOffsets[index] + (long)(address - entry.Address);
        return RandomAccess.Read(task.Pages, destination[..PagemapEntry.PageSize], offset) == PagemapEntry.PageSize;
    }

    /// <summary>
    /// Reads <paramref name="count"/> pages of task <paramref name="id"/> from <paramref name="address"/>
    /// on, one read per stretch the chain stores contiguously; <paramref name="found"/> says which
    /// pages some image set of the chain holds (the others are left as they were in the destination).
    /// </summary>
    public int Read(int id, ulong address, int count, Span<byte> destination, Span<bool> found)
    {
        if (destination.Length < count * PagemapEntry.PageSize || found.Length < count)
        {
            throw new ArgumentException("the destination must hold every page asked for");
        }

        // each stretch stored in a row (Locate's walk, through the parents) read at once
        int total = 0;
        int page = 0;
        while (page < count)
        {
            ulong at = address + ((ulong)page * PagemapEntry.PageSize);
            if (Locate(id, at, count - page) is not { } stored)
            {
                found[page++] = false;
                continue;
            }

            ReadExactly(stored.File, destination.Slice(page * PagemapEntry.PageSize, stored.Pages * PagemapEntry.PageSize), stored.Offset);
            found.Slice(page, stored.Pages).Fill(true);
            total += stored.Pages;
            page += stored.Pages;
        }

        return total;
    }

    /// <summary>
    /// Where task <paramref name="id"/>'s page at <paramref name="address"/> is stored: the pages file
    /// of the set that holds it readable and its offset there, with how many pages from it (at most
    /// <paramref name="maxPages"/>) follow it in that same file; null when no set of the chain holds
    /// it readable.
    /// </summary>
    public (SafeFileHandle File, long Offset, int Pages)? Locate(int id, ulong address, int maxPages)
    {
        var task = GetTask(id);
        int index = task?.Find(address) ?? -1;
        if (index < 0 || maxPages <= 0)
        {
            return null;
        }

        var entry = task!.Entries[index];
        int run = (int)Math.Min((ulong)maxPages, (entry.End - address) / PagemapEntry.PageSize);
        if (entry.IsInParent)
        {
            return _parent?.Locate(id, address, run);
        }

        if (!entry.IsPresent || task.Pages is null)
        {
            return null;
        }

        long offset = task.FileOffsets[index] + (long)(address - entry.Address);
        // entries that go on where this one ends, in the file as in memory, are one stretch of it
        for (int next = index + 1; run < maxPages && next < task.Entries.Count; next++)
        {
            var following = task.Entries[next];
            if (!following.IsPresent || following.IsInParent || following.Address != address + ((ulong)run * PagemapEntry.PageSize)
                || task.FileOffsets[next] != offset + ((long)run * PagemapEntry.PageSize))
            {
                break;
            }

            run += (int)Math.Min((ulong)(maxPages - run), (following.End - following.Address) / PagemapEntry.PageSize);
        }

        return (task.Pages, offset, run);
    }

    /// <summary>Opens the pages file of every task of every image set now, so the chain reads on
    /// even after its files were unlinked.</summary>
    public void OpenAll()
    {
        foreach (var id in CriuPagemap.Ids(_directory))
        {
            GetTask(id);
        }

        _parent?.OpenAll();
    }

    /// <summary>True if this set or an ancestor holds the page (without reading it).</summary>
    public bool Covers(int id, ulong address)
    {
        var task = GetTask(id);
        int index = task?.Find(address) ?? -1;
        if (index < 0)
        {
            return false;
        }

        var entry = task!.Entries[index];
        return entry.IsInParent ? _parent?.Covers(id, address) ?? false : entry.IsPresent && task.Held;
    }

    /// <summary>
    /// How many pages from <paramref name="address"/> on (at most <paramref name="maxPages"/>) this
    /// set or an ancestor holds, without reading them: the whole run, across the boundaries of
    /// entries in every set of the chain (a chain of rounds of scattered writes has thousands of
    /// short entries, and a run cut at each would cost a search per piece while the tree is frozen).
    /// </summary>
    public int CoveredRun(int id, ulong address, int maxPages)
    {
        var ranges = Coverage(id);
        int index = AddressRuns.IndexOf(ranges, address);
        return index < 0 || maxPages <= 0 ? 0 : (int)Math.Min((ulong)maxPages, (ranges[index].End - address) / PagemapEntry.PageSize);
    }

    /// <summary>
    /// Every page of task <paramref name="id"/> this set or an ancestor holds, as sorted ranges with
    /// touching ones merged: this set's present entries, and the stretches of its "in parent" entries
    /// the parent covers. Made once per set (from the parent's), so a lookup is one search however
    /// deep the chain and however many entries its sets have.
    /// </summary>
    private PageRange[] Coverage(int id)
    {
        if (_coverage.TryGetValue(id, out var known))
        {
            return known;
        }

        var task = GetTask(id);
        var parent = _parent?.Coverage(id) ?? [];
        var ranges = new List<PageRange>();
        int next = 0;
        foreach (var entry in task?.Entries ?? [])
        {
            if (entry.IsPresent && task!.Held)
            {
                Add(ranges, entry.Address, entry.End);
            }
            else if (entry.IsInParent)
            {
                // the parent's ranges are sorted as the entries are: walk both once
                while (next < parent.Length && parent[next].End <= entry.Address)
                {
                    next++;
                }

                for (int i = next; i < parent.Length && parent[i].Start < entry.End; i++)
                {
                    Add(ranges, Math.Max(parent[i].Start, entry.Address), Math.Min(parent[i].End, entry.End));
                }
            }
        }

        var result = ranges.ToArray();
        _coverage[id] = result;
        return result;

        static void Add(List<PageRange> ranges, ulong start, ulong end)
        {
            if (ranges.Count > 0 && ranges[^1].End == start)
            {
                ranges[^1] = ranges[^1] with { End = end };
            }
            else
            {
                ranges.Add(new PageRange(start, end));
            }
        }
    }

    /// <summary>
    /// How many pages from <paramref name="address"/> on (at most <paramref name="maxPages"/>) this
    /// set lists as left on the source (marked lazy, neither present nor in a parent: see
    /// <see cref="PagemapBuilder.AddRemote"/>). Only this set's own pagemap counts: such pages must
    /// not be read from an ancestor, which holds an older copy.
    /// </summary>
    public int RemoteRun(int id, ulong address, int maxPages)
    {
        var task = GetTask(id);
        int index = task?.Find(address) ?? -1;
        if (index < 0 || maxPages <= 0)
        {
            return 0;
        }

        var entry = task!.Entries[index];
        return entry.IsLeftLazy ? (int)Math.Min((ulong)maxPages, (entry.End - address) / PagemapEntry.PageSize) : 0;
    }

    /// <summary>True if some image set of the chain has a pagemap for task <paramref name="id"/>.</summary>
    public bool HasTask(int id) => GetTask(id) is not null || (_parent?.HasTask(id) ?? false);

    public void Dispose()
    {
        foreach (var task in _tasks.Values)
        {
            task?.Pages?.Dispose();
        }

        _parent?.Dispose();
    }

    private static void ReadExactly(SafeFileHandle file, Span<byte> destination, long offset)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int read = RandomAccess.Read(file, destination[done..], offset + done);
            if (read <= 0)
            {
                throw new InvalidDataException($"a pages file ends before the pages its pagemap lists (at offset {offset + done})");
            }

            done += read;
        }
    }

    internal static string ResolveLink(string link) =>
        new FileInfo(link).LinkTarget ?? new DirectoryInfo(link).LinkTarget ?? throw new InvalidDataException($"{link} is not a link");

    private TaskPages? GetTask(int id)
    {
        if (_tasks.TryGetValue(id, out var cached))
        {
            return cached;
        }

        var map = ParsedPagemaps.TryRead(_directory, id);
        TaskPages? task = null;
        if (map is not null)
        {
            var pagesPath = Path.Combine(_directory, CriuPagemap.PagesFileName(map.PagesId));
            _released ??= ReleasedPages.Read(_directory);
            bool released = _released.ContainsKey(Path.GetFileName(pagesPath));
            var pages = !released && File.Exists(pagesPath) ? File.OpenHandle(pagesPath, FileMode.Open, FileAccess.Read) : null;
            task = new TaskPages(map.Entries, pages, released);
        }

        _tasks[id] = task;
        return task;
    }

    private sealed class TaskPages
    {
        public TaskPages(IReadOnlyList<PagemapEntry> entries, SafeFileHandle? pages, bool released)
        {
            Entries = entries;
            Pages = pages;
            Held = pages is not null || released;
            FileOffsets = new long[entries.Count];
            long offset = 0;
            for (int i = 0; i < entries.Count; i++)
            {
                FileOffsets[i] = offset;
                if (entries[i].IsPresent)
                {
                    offset += (long)entries[i].PageCount * PagemapEntry.PageSize;
                }
            }
        }

        public IReadOnlyList<PagemapEntry> Entries { get; }

        /// <summary>Its pages file, to read from; null when it is missing or released.</summary>
        public SafeFileHandle? Pages { get; }

        /// <summary>Whether the set holds its present pages: a pages file here, or one released once another node held it.</summary>
        public bool Held { get; }

        public long[] FileOffsets { get; }

        /// <summary>Index of the entry covering <paramref name="address"/>, or -1. Entries are sorted.</summary>
        public int Find(ulong address) => AddressRuns.IndexOf(Entries, address);
    }

    /// <summary>The pagemaps of every task in an image directory, each parsed once per process (see <see cref="ParsedPagemaps"/>).</summary>
    public static IReadOnlyList<CriuPagemap> Pagemaps(string directory) =>
        [.. CriuPagemap.Ids(directory).Select(id => ParsedPagemaps.TryRead(directory, id)).OfType<CriuPagemap>()];

    /// <summary>The pagemap file at <paramref name="path"/>, just written from <paramref name="map"/>: a chain opened over its set later takes it as it is.</summary>
    public static void Remember(string path, CriuPagemap map)
    {
        var file = new FileInfo(path);
        if (file.Exists)
        {
            ParsedPagemaps.Add(file, map);
        }
    }

    /// <summary>
    /// Pagemaps already parsed, by path, size and time of last write: each pre-copy round opens the
    /// chain of every round before it, and a chain of rounds of scattered writes has tens of thousands
    /// of entries per set (parsing them took 7-74 ms a set, again at every round and once more while
    /// the pod is frozen). A set's pagemap is never rewritten in place (it is written under another
    /// name and renamed), so a file with the same size and time is the same file.
    /// </summary>
    private static class ParsedPagemaps
    {
        private const int Capacity = 256;
        private static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Path, long Length, long Written), CriuPagemap> Cache = new();

        public static CriuPagemap? TryRead(string directory, int id)
        {
            var file = new FileInfo(Path.Combine(directory, CriuPagemap.FileName(id)));
            if (!file.Exists)
            {
                return null;
            }

            if (Cache.TryGetValue(Key(file), out var known))
            {
                return known;
            }

            var map = CriuPagemap.Read(directory, id);
            Add(file, map);
            return map;
        }

        public static void Add(FileInfo file, CriuPagemap map)
        {
            if (Cache.Count >= Capacity)
            {
                // sets of migrations long over: start again rather than track which
                Cache.Clear();
            }

            Cache[Key(file)] = map;
        }

        private static (string, long, long) Key(FileInfo file) => (file.FullName, file.Length, file.LastWriteTimeUtc.Ticks);
    }
}

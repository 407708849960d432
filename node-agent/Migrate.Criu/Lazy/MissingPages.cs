using Migrate.Criu.Images;

namespace Migrate.Criu.Lazy;

/// <summary>A stretch of lazy pages to fill: where they are now, where the images hold them, how many.</summary>
/// <param name="Address">The first page's address in the restored process now.</param>
/// <param name="ImageAddress">The same page's address in the images (they differ once the process moved the memory with mremap).</param>
/// <param name="Pages">How many pages, all missing, all in one mapping.</param>
public readonly record struct MissingStretch(ulong Address, ulong ImageAddress, int Pages);

/// <summary>
/// The pages of one restored process still to be filled: its lazy pagemap entries, cut at its
/// mappings' boundaries (one fill never crosses a mapping), less what was filled, unmapped or
/// discarded, and following the memory where the process moved it. Pure bookkeeping: the
/// <see cref="MemoryFiller"/> does the I/O.
/// </summary>
public sealed class MissingPages
{
    private const ulong Page = PagemapEntry.PageSize;

    private List<Run> _runs;
    private int _cursor;

    private MissingPages(List<Run> runs)
    {
        _runs = runs;
        Left = runs.Sum(r => (long)r.Left);
    }

    /// <summary>Pages still missing.</summary>
    public long Left { get; private set; }

    /// <summary>
    /// The lazy pages of <paramref name="entries"/> (sorted, as a pagemap lists them), cut where
    /// <paramref name="mappings"/> (sorted start and end addresses) end; pages outside every mapping are left out.
    /// </summary>
    public static MissingPages Collect(IEnumerable<PagemapEntry> entries, IReadOnlyList<(ulong Start, ulong End)> mappings)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(mappings);
        var runs = new List<Run>();
        foreach (var entry in entries.Where(e => (e.Flags & PagemapFlags.Lazy) != 0))
        {
            foreach (var (start, end) in mappings)
            {
                ulong from = Math.Max(start, entry.Address), to = Math.Min(end, entry.End);
                if (from < to)
                {
                    runs.Add(new Run(from, from, (int)((to - from) / Page)));
                }
            }
        }

        runs.Sort((a, b) => a.Start.CompareTo(b.Start));
        return new MissingPages(runs);
    }

    /// <summary>A copy for a child the process forked: what the parent missed then, the child misses too.</summary>
    public MissingPages Clone() => new(_runs.Select(r => r.Copy()).ToList());

    /// <summary>Whether <paramref name="address"/> lies in a lazy stretch (missing or already filled).</summary>
    public bool IsLazy(ulong address) => Find(address) >= 0;

    /// <summary>
    /// The missing pages from <paramref name="address"/> (page-aligned down) on, at most
    /// <paramref name="maxPages"/>, for a fault there; null when that page is not missing.
    /// </summary>
    public MissingStretch? At(ulong address, int maxPages)
    {
        address &= ~(Page - 1);
        int index = Find(address);
        if (index < 0)
        {
            return null;
        }

        var run = _runs[index];
        int first = (int)((address - run.Start) / Page);
        return run.Missing[first] ? Stretch(run, first, maxPages) : null;
    }

    /// <summary>The next missing pages in address order (at most <paramref name="maxPages"/>); null when none is left.</summary>
    public MissingStretch? Next(int maxPages)
    {
        while (_cursor < _runs.Count)
        {
            var run = _runs[_cursor];
            if (run.Left > 0)
            {
                int first = Array.IndexOf(run.Missing, true, run.Scanned);
                run.Scanned = first;
                return Stretch(run, first, maxPages);
            }

            _cursor++;
        }

        return null;
    }

    /// <summary>Marks <paramref name="pages"/> pages from <paramref name="address"/> as in place.</summary>
    public void Filled(ulong address, int pages) => Clear(address, address + ((ulong)pages * Page));

    /// <summary>The process unmapped or discarded [<paramref name="start"/>, <paramref name="end"/>): nothing is filled there any more.</summary>
    public void Drop(ulong start, ulong end)
    {
        Split(start);
        Split(end);
        var kept = new List<Run>(_runs.Count);
        foreach (var run in _runs)
        {
            if (run.Start >= start && run.End <= end)
            {
                Left -= run.Left;
            }
            else
            {
                kept.Add(run);
            }
        }

        _runs = kept;
        _cursor = 0;
    }

    /// <summary>The process moved [<paramref name="from"/>, +<paramref name="length"/>) to <paramref name="to"/> (mremap): its missing pages move along.</summary>
    public void Remap(ulong from, ulong to, ulong length)
    {
        ulong end = from + length;
        Split(from);
        Split(end);
        foreach (var run in _runs.Where(r => r.Start >= from && r.End <= end))
        {
            run.Start = to + (run.Start - from);
        }

        _runs.Sort((a, b) => a.Start.CompareTo(b.Start));
        _cursor = 0;
    }

    private static MissingStretch Stretch(Run run, int first, int maxPages)
    {
        int count = 1;
        while (count < maxPages && first + count < run.Missing.Length && run.Missing[first + count])
        {
            count++;
        }

        ulong offset = (ulong)first * Page;
        return new MissingStretch(run.Start + offset, run.ImageStart + offset, count);
    }

    private void Clear(ulong start, ulong end)
    {
        for (int index = Math.Max(0, Find(start)); index < _runs.Count && _runs[index].Start < end; index++)
        {
            var run = _runs[index];
            if (run.End <= start)
            {
                continue;
            }

            int from = (int)((Math.Max(start, run.Start) - run.Start) / Page);
            int to = (int)((Math.Min(end, run.End) - run.Start) / Page);
            for (int i = from; i < to; i++)
            {
                if (run.Missing[i])
                {
                    run.Missing[i] = false;
                    run.Left--;
                    Left--;
                }
            }
        }
    }

    /// <summary>Cuts the run holding <paramref name="address"/> in two there (nothing when it starts there or none holds it).</summary>
    private void Split(ulong address)
    {
        int index = Find(address);
        if (index < 0 || _runs[index].Start == address)
        {
            return;
        }

        var run = _runs[index];
        int at = (int)((address - run.Start) / Page);
        var tail = new Run(address, run.ImageStart + ((ulong)at * Page), run.Missing[at..]);
        run.Truncate(at);
        _runs.Insert(index + 1, tail);
    }

    private int Find(ulong address) => AddressRuns.IndexOf(_runs, address);

    private sealed class Run : IAddressRun
    {
        public Run(ulong start, ulong imageStart, int pages)
            : this(start, imageStart, Enumerable.Repeat(true, pages).ToArray())
        {
        }

        public Run(ulong start, ulong imageStart, bool[] missing)
        {
            Start = start;
            ImageStart = imageStart;
            Missing = missing;
            Left = missing.Count(m => m);
        }

        public ulong Start { get; set; }

        public ulong ImageStart { get; }

        public bool[] Missing { get; private set; }

        public int Left { get; set; }

        /// <summary>No page before this index is missing (where the next search starts).</summary>
        public int Scanned { get; set; }

        public ulong End => Start + ((ulong)Missing.Length * Page);

        public Run Copy() => new(Start, ImageStart, (bool[])Missing.Clone());

        public void Truncate(int pages)
        {
            Missing = Missing[..pages];
            Left = Missing.Count(m => m);
            Scanned = Math.Min(Scanned, pages);
        }
    }
}

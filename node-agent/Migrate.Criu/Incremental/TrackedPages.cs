namespace Migrate.Criu.Incremental;

/// <summary>A run of pages [Start, End), addresses page-aligned.</summary>
public readonly record struct PageRange(ulong Start, ulong End) : Images.IAddressRun
{
    public ulong Pages => (End - Start) / Images.PagemapEntry.PageSize;
}

/// <summary>
/// What one write-tracking scan found in one process: the ranges still tracked (write-protected
/// by the agent's userfaultfd since it was armed) and, within them, the pages written since the
/// scan before. A page is unchanged only where it is tracked and was not written; every page
/// outside the tracked ranges (memory mapped after arming, a mapping moved by mremap) counts as
/// changed. Pure: built from the kernel's answers, tested as a table.
/// </summary>
public sealed class TrackedPages
{
    private readonly PageRange[] _tracked;
    private readonly PageRange[] _written;

    /// <param name="tracked">Ranges the kernel reports as write-protect-allowed, sorted by start, not overlapping.</param>
    /// <param name="written">Ranges written since the last scan, sorted by start, not overlapping.</param>
    public TrackedPages(IEnumerable<PageRange> tracked, IEnumerable<PageRange> written)
    {
        _tracked = Normalize(tracked);
        _written = Normalize(written);
    }

    public IReadOnlyList<PageRange> Tracked => _tracked;

    public IReadOnlyList<PageRange> Written => _written;

    /// <summary>Pages written since the last scan (within the tracked ranges or not).</summary>
    public ulong WrittenPages => _written.Aggregate(0UL, (sum, r) => sum + r.Pages);

    /// <summary>True if the page at <paramref name="address"/> is tracked and was not written since the last scan.</summary>
    public bool IsUnchanged(ulong address) => Contains(_tracked, address) && !Contains(_written, address);

    /// <summary>How many pages from <paramref name="address"/> on (at most <paramref name="maxPages"/>) are unchanged: 0 if that page is not.</summary>
    public int UnchangedRun(ulong address, int maxPages)
    {
        int tracked = Images.AddressRuns.IndexOf(_tracked, address);
        if (tracked < 0 || Contains(_written, address) || maxPages <= 0)
        {
            return 0;
        }

        ulong end = _tracked[tracked].End;
        // the first written range starting after the address ends the run
        int low = 0, high = _written.Length;
        while (low < high)
        {
            int middle = low + ((high - low) / 2);
            if (_written[middle].Start <= address)
            {
                low = middle + 1;
            }
            else
            {
                high = middle;
            }
        }

        if (low < _written.Length)
        {
            end = Math.Min(end, _written[low].Start);
        }

        return (int)Math.Min((ulong)maxPages, (end - address) / Images.PagemapEntry.PageSize);
    }

    private static bool Contains(PageRange[] ranges, ulong address) => Images.AddressRuns.IndexOf(ranges, address) >= 0;

    /// <summary>Sorted, with touching or overlapping ranges merged, empty ones dropped.</summary>
    private static PageRange[] Normalize(IEnumerable<PageRange> ranges)
    {
        var sorted = ranges.Where(r => r.End > r.Start).OrderBy(r => r.Start).ToList();
        var merged = new List<PageRange>(sorted.Count);
        foreach (var range in sorted)
        {
            if (merged.Count > 0 && range.Start <= merged[^1].End)
            {
                merged[^1] = merged[^1] with { End = Math.Max(merged[^1].End, range.End) };
            }
            else
            {
                merged.Add(range);
            }
        }

        return [.. merged];
    }
}

/// <summary>One write-tracking scan of a tree: per task, what <see cref="TrackedPages"/> says; tasks not armed have none.</summary>
public sealed class MemoryChanges(IReadOnlyDictionary<int, TrackedPages> byHostPid)
{
    /// <summary>The scan of the task with host PID <paramref name="hostPid"/>, or null when it is not tracked (every page counts as changed).</summary>
    public TrackedPages? For(int hostPid) => byHostPid.GetValueOrDefault(hostPid);

    public int Tasks => byHostPid.Count;

    public ulong WrittenPages => byHostPid.Values.Aggregate(0UL, (sum, t) => sum + t.WrittenPages);

    /// <summary>This scan with <paramref name="written"/> (by host PID) counted as written as well: stretches an earlier round listed but could not read.</summary>
    public MemoryChanges WithWritten(IReadOnlyDictionary<int, IReadOnlyList<PageRange>> written)
    {
        ArgumentNullException.ThrowIfNull(written);
        return written.Count == 0 ? this : new MemoryChanges(byHostPid.ToDictionary(
            t => t.Key,
            t => written.TryGetValue(t.Key, out var more) ? new TrackedPages(t.Value.Tracked, t.Value.Written.Concat(more)) : t.Value));
    }
}

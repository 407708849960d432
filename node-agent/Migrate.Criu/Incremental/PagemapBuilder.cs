using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>
/// Writes one task's pagemap and pages file page by page, merging neighbouring pages with the same
/// flags into one entry. Files are written under temporary names and moved into place by
/// <see cref="Complete"/>, so a pagemap being rewritten stays readable until then.
/// </summary>
internal sealed class PagemapBuilder : IDisposable
{
    private readonly string _directory;
    private readonly int _id;
    private readonly uint _pagesId;
    private readonly string _pagesTemp;
    private readonly FileStream _pages;
    private readonly List<PagemapEntry> _entries = [];
    private bool _completed;

    public PagemapBuilder(string directory, int id, uint pagesId)
    {
        _directory = directory;
        _id = id;
        _pagesId = pagesId;
        _pagesTemp = Path.Combine(directory, CriuPagemap.PagesFileName(pagesId) + ".partial");
        _pages = new FileStream(_pagesTemp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
    }

    public ulong PresentPages { get; private set; }

    public ulong ParentPages { get; private set; }

    /// <summary>Pages left on the source (post-copy): listed, with no bytes here or in a parent.</summary>
    public ulong RemotePages { get; private set; }

    public void AddPresent(ulong address, ReadOnlySpan<byte> page)
    {
        _pages.Write(page[..PagemapEntry.PageSize]);
        Append(address, 1, PagemapFlags.Present);
        PresentPages++;
    }

    public void AddParent(ulong address, uint count = 1)
    {
        Append(address, count, PagemapFlags.Parent);
        ParentPages += count;
    }

    /// <summary>
    /// Pages this set neither holds nor refers to a parent for: marked lazy only, so a page server
    /// over the chain fetches them from where they were left (the frozen source, in post-copy)
    /// instead of reading an older copy from a parent set.
    /// </summary>
    public void AddRemote(ulong address, uint count)
    {
        Append(address, count, PagemapFlags.Lazy);
        RemotePages += count;
    }

    /// <summary>Keeps an entry that holds no pages in this set (neither present nor parent) as it was.</summary>
    public void AddOther(PagemapEntry entry) => Append(entry.Address, entry.PageCount, entry.Flags);

    public CriuPagemap Complete()
    {
        _pages.Flush(flushToDisk: false);
        _pages.Dispose();
        var map = new CriuPagemap(_id, _pagesId, _entries);
        var finalPages = Path.Combine(_directory, CriuPagemap.PagesFileName(_pagesId));
        var stagingDirectory = Path.Combine(_directory, $".pagemap-{_id}.partial");
        Directory.CreateDirectory(stagingDirectory);
        map.Write(stagingDirectory);
        File.Move(_pagesTemp, finalPages, overwrite: true);
        var pagemap = Path.Combine(_directory, CriuPagemap.FileName(_id));
        File.Move(Path.Combine(stagingDirectory, CriuPagemap.FileName(_id)), pagemap, overwrite: true);
        Directory.Delete(stagingDirectory);
        // the next round opens this set as its parent: it need not parse what was just written
        ImageChain.Remember(pagemap, map);
        _completed = true;
        return map;
    }

    public void Dispose()
    {
        _pages.Dispose();
        if (!_completed)
        {
            File.Delete(_pagesTemp);
        }
    }

    private void Append(ulong address, uint count, PagemapFlags flags)
    {
        if (_entries.Count > 0)
        {
            var last = _entries[^1];
            if (address < last.End)
            {
                throw new InvalidOperationException($"pages must be added in address order (0x{address:x} after 0x{last.End:x})");
            }

            if (last.Flags == flags && last.End == address)
            {
                _entries[^1] = last with { PageCount = last.PageCount + count };
                return;
            }
        }

        _entries.Add(new PagemapEntry(address, count, flags));
    }
}

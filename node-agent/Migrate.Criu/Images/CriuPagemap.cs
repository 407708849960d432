using Migrate.Criu.Images.Proto;

namespace Migrate.Criu.Images;

/// <summary>Flags of a pagemap entry (CRIU's PE_* constants).</summary>
[Flags]
public enum PagemapFlags : uint
{
    None = 0,

    /// <summary>The pages are in the parent image set.</summary>
    Parent = 1,

    /// <summary>The pages can be restored lazily (post-copy).</summary>
    Lazy = 2,

    /// <summary>The pages are in this image set's pages file.</summary>
    Present = 4,
}

/// <summary>One run of pages of a task's address space.</summary>
public readonly record struct PagemapEntry(ulong Address, uint PageCount, PagemapFlags Flags) : IAddressRun
{
    public const int PageSize = 4096;

    ulong IAddressRun.Start => Address;

    public ulong End => Address + ((ulong)PageCount * PageSize);

    public bool IsPresent => (Flags & PagemapFlags.Present) != 0;

    public bool IsInParent => (Flags & PagemapFlags.Parent) != 0;

    /// <summary>
    /// The pages are left to a lazy restore: marked lazy and neither here nor in the parent. (CRIU marks
    /// every private anonymous run lazy, in any dump; only a lazy dump leaves such runs out.)
    /// </summary>
    public bool IsLeftLazy => (Flags & (PagemapFlags.Lazy | PagemapFlags.Present | PagemapFlags.Parent)) == PagemapFlags.Lazy;
}

/// <summary>
/// One task's <c>pagemap-&lt;id&gt;.img</c>: which pages of its memory the image set holds, which are
/// in the parent image set, and the pages file (<c>pages-&lt;PagesId&gt;.img</c>) holding the present ones.
/// </summary>
public sealed record CriuPagemap(int Id, uint PagesId, IReadOnlyList<PagemapEntry> Entries)
{
    public const string FilePrefix = "pagemap-";
    public const string FileSuffix = ".img";

    public static string FileName(int id) => $"{FilePrefix}{id}{FileSuffix}";

    public static string PagesFileName(uint pagesId) => $"pages-{pagesId}.img";

    /// <summary>Pages held in this image set's pages file.</summary>
    public ulong PresentPages => Entries.Where(e => e.IsPresent).Aggregate(0UL, (sum, e) => sum + e.PageCount);

    /// <summary>Pages referred to the parent image set.</summary>
    public ulong ParentPages => Entries.Where(e => e.IsInParent).Aggregate(0UL, (sum, e) => sum + e.PageCount);

    /// <summary>Reads the pagemaps of every task in an image directory (shared-memory pagemaps excluded).</summary>
    public static IReadOnlyList<CriuPagemap> ReadAll(string imagesDirectory)
    {
        var result = new List<CriuPagemap>();
        foreach (var path in Directory.EnumerateFiles(imagesDirectory, FilePrefix + "*" + FileSuffix))
        {
            var name = Path.GetFileName(path);
            var idText = name[FilePrefix.Length..^FileSuffix.Length];
            if (int.TryParse(idText, out int id))
            {
                result.Add(Read(imagesDirectory, id));
            }
        }

        result.Sort((a, b) => a.Id.CompareTo(b.Id));
        return result;
    }

    /// <summary>Reads <c>pagemap-&lt;id&gt;.img</c> from an image directory, or returns null if there is none.</summary>
    public static CriuPagemap? TryRead(string imagesDirectory, int id) =>
        File.Exists(Path.Combine(imagesDirectory, FileName(id))) ? Read(imagesDirectory, id) : null;

    public static CriuPagemap Read(string imagesDirectory, int id)
    {
        var path = Path.Combine(imagesDirectory, FileName(id));
        var (magic, records) = CriuImageFile.Read(path);
        if (magic != CriuImageFile.PagemapMagic || records.Count == 0)
        {
            throw new InvalidDataException($"{path} is not a CRIU pagemap image (magic 0x{magic:x8})");
        }

        var head = PagemapHead.Parser.ParseFrom(records[0]);
        var entries = new List<PagemapEntry>(records.Count - 1);
        for (int i = 1; i < records.Count; i++)
        {
            var raw = Proto.PagemapEntry.Parser.ParseFrom(records[i]);
            // Images written before the flags field mark parent pages with in_parent and imply present.
            var flags = raw.HasFlags ? (PagemapFlags)raw.Flags
                : raw.HasInParent && raw.InParent ? PagemapFlags.Parent
                : PagemapFlags.Present;
            // CRIU 4.2 counts pages in nr_pages (64 bits) and leaves compat_nr_pages 0; earlier releases only have compat_nr_pages
            ulong count = raw.HasNrPages ? raw.NrPages : raw.CompatNrPages;
            if (count > uint.MaxValue)
            {
                throw new InvalidDataException($"{path}: entry {i} at 0x{raw.Vaddr:x} claims {count} pages");
            }

            entries.Add(new PagemapEntry(raw.Vaddr, (uint)count, flags));
        }

        return new CriuPagemap(id, head.PagesId, entries);
    }

    /// <summary>Writes this pagemap as <c>pagemap-&lt;Id&gt;.img</c> into a directory.</summary>
    public void Write(string imagesDirectory)
    {
        var records = new List<Google.Protobuf.IMessage>(Entries.Count + 1) { new PagemapHead { PagesId = PagesId } };
        foreach (var e in Entries)
        {
            // both counts: CRIU 4.2 reads nr_pages, 4.1 reads compat_nr_pages (and skips the field it does not know)
            records.Add(new Proto.PagemapEntry { Vaddr = e.Address, CompatNrPages = e.PageCount, NrPages = e.PageCount, Flags = (uint)e.Flags });
        }

        CriuImageFile.Write(Path.Combine(imagesDirectory, FileName(Id)), CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic, records);
    }
}

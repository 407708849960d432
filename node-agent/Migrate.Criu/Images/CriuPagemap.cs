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
    public static IReadOnlyList<CriuPagemap> ReadAll(string imagesDirectory) => [.. Ids(imagesDirectory).Select(id => Read(imagesDirectory, id))];

    /// <summary>The tasks an image directory has pagemaps of, in order (shared-memory pagemaps excluded), from the files' names.</summary>
    public static IReadOnlyList<int> Ids(string imagesDirectory)
    {
        var ids = new List<int>();
        foreach (var path in Directory.EnumerateFiles(imagesDirectory, FilePrefix + "*" + FileSuffix))
        {
            var name = Path.GetFileName(path);
            if (int.TryParse(name[FilePrefix.Length..^FileSuffix.Length], out int id))
            {
                ids.Add(id);
            }
        }

        ids.Sort();
        return ids;
    }

    /// <summary>Reads <c>pagemap-&lt;id&gt;.img</c> from an image directory, or returns null if there is none.</summary>
    public static CriuPagemap? TryRead(string imagesDirectory, int id) =>
        File.Exists(Path.Combine(imagesDirectory, FileName(id))) ? Read(imagesDirectory, id) : null;

    public static CriuPagemap Read(string imagesDirectory, int id)
    {
        var path = Path.Combine(imagesDirectory, FileName(id));
        var (magic, data, records) = CriuImageFile.ReadWhole(path);
        if (magic != CriuImageFile.PagemapMagic || records.Count == 0)
        {
            throw new InvalidDataException($"{path} is not a CRIU pagemap image (magic 0x{magic:x8})");
        }

        // decoded here rather than by the generated parser: a pagemap of scattered writes has hundreds
        // of thousands of entries, and a message object per entry made reading one take a second
        var (headAt, headLength) = records[0];
        uint pagesId = (uint)PagemapWire.Field(data.AsSpan(headAt, headLength), PagemapWire.PagesIdField, path, 0);
        var entries = new PagemapEntry[records.Count - 1];
        for (int i = 1; i < records.Count; i++)
        {
            var (offset, length) = records[i];
            entries[i - 1] = PagemapWire.Entry(data.AsSpan(offset, length), path, i);
        }

        return new CriuPagemap(id, pagesId, entries);
    }

    /// <summary>
    /// Writes this pagemap as <c>pagemap-&lt;Id&gt;.img</c> into a directory, each entry with both
    /// counts (CRIU 4.2 reads nr_pages, 4.1 reads compat_nr_pages and skips the field it does not
    /// know), encoded by hand as the generated code would (see <see cref="PagemapWire"/>): a final
    /// dump writes its pagemap while the pod is frozen.
    /// </summary>
    public void Write(string imagesDirectory)
    {
        using var stream = CriuImageFile.Create(Path.Combine(imagesDirectory, FileName(Id)), CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic);
        Span<byte> record = stackalloc byte[PagemapWire.MaxEntryBytes];
        CriuImageFile.WriteRecord(stream, record[..PagemapWire.EncodeHead(PagesId, record)]);
        foreach (var entry in Entries)
        {
            CriuImageFile.WriteRecord(stream, record[..PagemapWire.EncodeEntry(entry, record)]);
        }
    }
}

/// <summary>
/// CRIU's pagemap records in protobuf's wire format, decoded by hand (images/pagemap.proto:
/// pagemap_head { pages_id = 1 }, pagemap_entry { vaddr = 1, compat_nr_pages = 2, in_parent = 3,
/// flags = 4, nr_pages = 5 }, all varints); fields of other numbers are skipped, as a protobuf
/// parser skips fields it does not know.
/// </summary>
internal static class PagemapWire
{
    public const int PagesIdField = 1;
    private const int VaddrField = 1;
    private const int CompatNrPagesField = 2;
    private const int InParentField = 3;
    private const int FlagsField = 4;
    private const int NrPagesField = 5;

    /// <summary>One pagemap entry: flags when given (images before them mark parent pages with in_parent and imply present), the page count from nr_pages when given (CRIU 4.2), else from compat_nr_pages.</summary>
    public static PagemapEntry Entry(ReadOnlySpan<byte> record, string path, int index)
    {
        ulong vaddr = 0, compat = 0, nrPages = 0, flags = 0;
        bool inParent = false, hasFlags = false, hasNrPages = false;
        int at = 0;
        while (at < record.Length)
        {
            if (!NextVarint(record, ref at, path, index, out int field, out ulong value))
            {
                continue;
            }

            switch (field)
            {
                case VaddrField: vaddr = value; break;
                case CompatNrPagesField: compat = (uint)value; break;
                case InParentField: inParent = value != 0; break;
                case FlagsField: flags = (uint)value; hasFlags = true; break;
                case NrPagesField: nrPages = value; hasNrPages = true; break;
                default: break;
            }
        }

        var kind = hasFlags ? (PagemapFlags)flags : inParent ? PagemapFlags.Parent : PagemapFlags.Present;
        ulong count = hasNrPages ? nrPages : compat;
        if (count > uint.MaxValue)
        {
            throw new InvalidDataException($"{path}: entry {index} at 0x{vaddr:x} claims {count} pages");
        }

        return new PagemapEntry(vaddr, (uint)count, kind);
    }

    /// <summary>The most bytes an encoded entry takes: four tags and four varints.</summary>
    public const int MaxEntryBytes = 4 + 10 + 5 + 5 + 10;

    /// <summary>pagemap_head { pages_id } into <paramref name="destination"/>; returns its length.</summary>
    public static int EncodeHead(uint pagesId, Span<byte> destination)
    {
        int at = 0;
        Put(destination, ref at, PagesIdField, pagesId);
        return at;
    }

    /// <summary>An entry with vaddr, compat_nr_pages, flags and nr_pages, in field order, into <paramref name="destination"/>; returns its length.</summary>
    public static int EncodeEntry(PagemapEntry entry, Span<byte> destination)
    {
        int at = 0;
        Put(destination, ref at, VaddrField, entry.Address);
        Put(destination, ref at, CompatNrPagesField, entry.PageCount);
        Put(destination, ref at, FlagsField, (uint)entry.Flags);
        Put(destination, ref at, NrPagesField, entry.PageCount);
        return at;
    }

    private static void Put(Span<byte> destination, ref int at, int field, ulong value)
    {
        destination[at++] = (byte)(field << 3);
        while (value >= 0x80)
        {
            destination[at++] = (byte)(value | 0x80);
            value >>= 7;
        }

        destination[at++] = (byte)value;
    }

    /// <summary>The varint field <paramref name="wanted"/> of a record (0 when absent).</summary>
    public static ulong Field(ReadOnlySpan<byte> record, int wanted, string path, int index)
    {
        ulong found = 0;
        int at = 0;
        while (at < record.Length)
        {
            if (NextVarint(record, ref at, path, index, out int field, out ulong value) && field == wanted)
            {
                found = value;
            }
        }

        return found;
    }

    /// <summary>Reads the field at <paramref name="at"/>: true with its number and value when it is a varint; false when it was of another wire type, skipped.</summary>
    private static bool NextVarint(ReadOnlySpan<byte> record, ref int at, string path, int index, out int field, out ulong value)
    {
        ulong tag = Varint(record, ref at, path, index);
        ulong number = tag >> 3;
        field = number is > 0 and <= int.MaxValue ? (int)number : throw Malformed(path, index, $"field number {number}");
        int wire = (int)(tag & 7);
        if (wire != 0)
        {
            Skip(record, ref at, wire, path, index);
            value = 0;
            return false;
        }

        value = Varint(record, ref at, path, index);
        return true;
    }

    private static ulong Varint(ReadOnlySpan<byte> record, ref int at, string path, int index)
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (at >= record.Length)
            {
                throw Malformed(path, index, "a varint cut short");
            }

            byte b = record[at++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80)
            {
                return value;
            }
        }

        throw Malformed(path, index, "a varint longer than 10 bytes");
    }

    private static void Skip(ReadOnlySpan<byte> record, ref int at, int wire, string path, int index)
    {
        long size = wire switch
        {
            1 => 8,
            2 => (long)Varint(record, ref at, path, index),
            5 => 4,
            _ => throw Malformed(path, index, $"wire type {wire}"),
        };
        if (size < 0 || size > record.Length - at)
        {
            throw Malformed(path, index, "a field running past its record");
        }

        at += (int)size;
    }

    private static InvalidDataException Malformed(string path, int index, string what) => new($"{path}: record {index} is not a pagemap record ({what})");
}

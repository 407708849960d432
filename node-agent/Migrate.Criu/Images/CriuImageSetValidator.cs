using Migrate.Criu.Incremental;

namespace Migrate.Criu.Images;

/// <summary>
/// Checks an image set (and its parent chain) for the damage CRIU handles worst, before CRIU sees
/// it. A pages file shorter than its pagemap says makes CRIU's restorer loop forever at full CPU
/// instead of failing, so this is not optional for restore.
/// </summary>
public static class CriuImageSetValidator
{
    private const uint InventoryMagic = 0x58313116;
    private const int MaxChainDepth = 64;

    /// <summary>Every problem found; empty when the set looks restorable.</summary>
    public static IReadOnlyList<string> Validate(string directory)
    {
        var problems = new List<string>();
        directory = Path.GetFullPath(directory);
        var inventory = Path.Combine(directory, "inventory.img");
        if (!File.Exists(inventory))
        {
            problems.Add($"{directory} has no inventory.img (not a complete dump)");
        }
        else if (!HasMagic(inventory, InventoryMagic))
        {
            problems.Add($"{inventory} does not start with CRIU's inventory magic");
        }

        ValidatePages(directory, problems, depth: 0);
        return problems;
    }

    private static void ValidatePages(string directory, List<string> problems, int depth)
    {
        if (depth > MaxChainDepth)
        {
            problems.Add($"parent chain deeper than {MaxChainDepth} at {directory} (a loop?)");
            return;
        }

        IReadOnlyList<CriuPagemap> maps;
        try
        {
            maps = CriuPagemap.ReadAll(directory);
        }
        catch (InvalidDataException e)
        {
            problems.Add(e.Message);
            return;
        }

        var link = Path.Combine(directory, ImageChain.ParentLinkName);
        bool hasParent = Directory.Exists(link);
        foreach (var map in maps)
        {
            ulong previousEnd = 0;
            foreach (var entry in map.Entries)
            {
                if (entry.Address % PagemapEntry.PageSize != 0 || entry.Address < previousEnd)
                {
                    problems.Add($"{CriuPagemap.FileName(map.Id)} in {directory}: entry at 0x{entry.Address:x} is unaligned or out of order");
                }

                previousEnd = entry.End;
            }

            var pages = Path.Combine(directory, CriuPagemap.PagesFileName(map.PagesId));
            long expected = (long)map.PresentPages * PagemapEntry.PageSize;
            long actual = File.Exists(pages) ? new FileInfo(pages).Length : -1;
            if (actual != expected)
            {
                problems.Add(actual < 0
                    ? $"{pages} is missing; {CriuPagemap.FileName(map.Id)} lists {map.PresentPages} pages in it"
                    : $"{pages} holds {actual} bytes but {CriuPagemap.FileName(map.Id)} lists {map.PresentPages} pages ({expected} bytes)");
            }

            if (map.ParentPages > 0 && !hasParent)
            {
                problems.Add($"{CriuPagemap.FileName(map.Id)} in {directory} refers {map.ParentPages} pages to a parent image set, but there is no parent link");
            }
        }

        if (!hasParent)
        {
            return;
        }

        var parentDirectory = Path.GetFullPath(Path.Combine(directory, ImageChain.ResolveLink(link)));
        ValidatePages(parentDirectory, problems, depth + 1);
        if (problems.Count > 0)
        {
            return;
        }

        using var chain = ImageChain.Open(parentDirectory);
        foreach (var map in maps)
        {
            foreach (var entry in map.Entries.Where(e => e.IsInParent))
            {
                for (ulong address = entry.Address; address < entry.End; address += PagemapEntry.PageSize)
                {
                    if (!chain.Covers(map.Id, address))
                    {
                        problems.Add($"{CriuPagemap.FileName(map.Id)} in {directory} takes page 0x{address:x} from the parent chain, which does not hold it");
                        return;
                    }
                }
            }
        }
    }

    private static bool HasMagic(string path, uint magic)
    {
        using var stream = File.OpenRead(path);
        Span<byte> word = stackalloc byte[4];
        return stream.ReadAtLeast(word, 4, throwOnEndOfStream: false) == 4
               && System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(word) == magic;
    }
}

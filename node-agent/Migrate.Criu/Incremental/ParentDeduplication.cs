using System.Diagnostics;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>Figures of one deduplication pass.</summary>
/// <param name="PagesScanned">Pages the full dump held.</param>
/// <param name="PagesKept">Pages still written in the dump: new or changed since the parent set.</param>
/// <param name="PagesInParent">Pages replaced by a reference to the identical page of the parent chain.</param>
/// <param name="Elapsed">Wall time of the pass.</param>
public sealed record DeduplicationResult(ulong PagesScanned, ulong PagesKept, ulong PagesInParent, TimeSpan Elapsed)
{
    public long BytesRemoved => (long)PagesInParent * PagemapEntry.PageSize;
}

/// <summary>
/// Turns a full CRIU dump into an incremental one: every page whose bytes equal the page at the
/// same address of the same task in the parent chain is dropped from the dump's pages file and
/// marked "in parent" in its pagemap, and a <c>parent</c> link is added. CRIU's restore follows
/// the link (the same format its own memory-tracked dumps use), so the result restores exactly as
/// the full dump would, while only the changed pages need to travel with it.
/// </summary>
public static class ParentDeduplication
{
    /// <param name="directory">A complete image set written by CRIU's dump, without a parent link.</param>
    /// <param name="parentDirectory">The parent image set (a <see cref="MemorySnapshot"/> round, or a CRIU pre-dump).</param>
    public static DeduplicationResult Apply(string directory, string parentDirectory)
    {
        var stopwatch = Stopwatch.StartNew();
        directory = Path.GetFullPath(directory);
        parentDirectory = Path.GetFullPath(parentDirectory);
        var link = Path.Combine(directory, ImageChain.ParentLinkName);
        if (Path.Exists(link))
        {
            throw new InvalidOperationException($"{directory} already has a parent image set");
        }

        if (!File.Exists(Path.Combine(directory, "inventory.img")))
        {
            throw new InvalidOperationException($"{directory} is not a complete CRIU dump (no inventory.img)");
        }

        ulong scanned = 0, kept = 0, inParent = 0;
        using (var parent = ImageChain.Open(parentDirectory))
        {
            var page = new byte[PagemapEntry.PageSize];
            var parentPage = new byte[PagemapEntry.PageSize];
            foreach (var map in CriuPagemap.ReadAll(directory))
            {
                if (map.ParentPages > 0)
                {
                    throw new InvalidOperationException($"{directory}: pagemap {map.Id} already refers to a parent");
                }

                EnsureTaskInChain(parentDirectory, map.Id);
                var pagesPath = Path.Combine(directory, CriuPagemap.PagesFileName(map.PagesId));
                using var source = new FileStream(pagesPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
                using var builder = new PagemapBuilder(directory, map.Id, map.PagesId);
                foreach (var entry in map.Entries)
                {
                    if (!entry.IsPresent)
                    {
                        builder.AddOther(entry);
                        continue;
                    }

                    for (uint i = 0; i < entry.PageCount; i++)
                    {
                        source.ReadExactly(page);
                        ulong address = entry.Address + ((ulong)i * PagemapEntry.PageSize);
                        scanned++;
                        if (parent.TryReadPage(map.Id, address, parentPage) && page.AsSpan().SequenceEqual(parentPage))
                        {
                            builder.AddParent(address);
                        }
                        else
                        {
                            builder.AddPresent(address, page);
                        }
                    }
                }

                builder.Complete();
                kept += builder.PresentPages;
                inParent += builder.ParentPages;
            }
        }

        File.CreateSymbolicLink(link, Path.GetRelativePath(directory, parentDirectory));
        return new DeduplicationResult(scanned, kept, inParent, stopwatch.Elapsed);
    }

    /// <summary>
    /// CRIU's restore opens the parent's pagemap of every task of an image set that has a parent
    /// link, so each set of the chain gets an (empty) pagemap for tasks it did not see.
    /// </summary>
    internal static void EnsureTaskInChain(string directory, int id)
    {
        while (true)
        {
            if (!File.Exists(Path.Combine(directory, CriuPagemap.FileName(id))))
            {
                uint pagesId = NextFreePagesId(directory);
                File.WriteAllBytes(Path.Combine(directory, CriuPagemap.PagesFileName(pagesId)), []);
                new CriuPagemap(id, pagesId, []).Write(directory);
            }

            var link = Path.Combine(directory, ImageChain.ParentLinkName);
            if (!Directory.Exists(link))
            {
                return;
            }

            directory = Path.GetFullPath(Path.Combine(directory, ImageChain.ResolveLink(link)));
        }
    }

    private static uint NextFreePagesId(string directory)
    {
        uint id = 1;
        while (File.Exists(Path.Combine(directory, CriuPagemap.PagesFileName(id))))
        {
            id++;
        }

        return id;
    }
}

using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>
/// What the memory filler still has to fill in a lazily restored process: lazy pages only, cut at
/// mappings, less what was filled, and following what the process unmapped, discarded, moved or
/// forked. A page filled twice, or one filled where the process discarded it, would be wrong memory.
/// </summary>
public sealed class MissingPagesTests
{
    private const ulong P = PagemapEntry.PageSize;
    private const ulong A = 0x10000000;

    private static PagemapEntry Lazy(ulong page, uint count) => new(A + (page * P), count, PagemapFlags.Lazy | PagemapFlags.Parent);

    private static (ulong, ulong) Mapping(ulong fromPage, ulong toPage) => (A + (fromPage * P), A + (toPage * P));

    /// <summary>Every stretch <see cref="MissingPages.Next"/> gives, marking each filled, as "page+count@imagePage".</summary>
    private static string Drain(MissingPages missing, int maxPages)
    {
        var seen = new List<string>();
        while (missing.Next(maxPages) is { } s)
        {
            seen.Add($"{(s.Address - A) / P}+{s.Pages}@{(s.ImageAddress - A) / P}");
            missing.Filled(s.Address, s.Pages);
        }

        return string.Join(" ", seen);
    }

    public static TheoryData<string, PagemapEntry[], (ulong, ulong)[], int, string> Collected() => new()
    {
        { "one entry in one mapping, in pieces", [Lazy(0, 10)], [Mapping(0, 16)], 4, "0+4@0 4+4@4 8+2@8" },
        { "an entry across two mappings is cut where the first ends", [Lazy(2, 6)], [Mapping(0, 4), Mapping(4, 16)], 16, "2+2@2 4+4@4" },
        { "pages outside every mapping are left out", [Lazy(0, 8)], [Mapping(2, 4), Mapping(6, 7)], 16, "2+2@2 6+1@6" },
        { "entries not lazy are not filled", [new PagemapEntry(A, 4, PagemapFlags.Present), Lazy(8, 2)], [Mapping(0, 16)], 16, "8+2@8" },
    };

    [Theory]
    [MemberData(nameof(Collected))]
    public void Collects_the_lazy_pages_cut_at_mappings(string _, PagemapEntry[] entries, (ulong, ulong)[] mappings, int maxPages, string expected)
    {
        var missing = MissingPages.Collect(entries, mappings);
        Assert.Equal(expected, Drain(missing, maxPages));
        Assert.Equal(0, missing.Left);
    }

    [Fact]
    public void A_fault_takes_the_missing_pages_from_the_one_touched_and_the_background_skips_them()
    {
        var missing = MissingPages.Collect([Lazy(0, 16)], [Mapping(0, 16)]);
        var fault = missing.At(A + (5 * P) + 123, 4);
        Assert.Equal(new MissingStretch(A + (5 * P), A + (5 * P), 4), fault);
        missing.Filled(fault!.Value.Address, fault.Value.Pages);
        Assert.Null(missing.At(A + (6 * P), 4));   // filled: a second fault there only wakes
        Assert.True(missing.IsLazy(A + (6 * P)));
        Assert.False(missing.IsLazy(A + (16 * P))); // not lazy: a zero page
        Assert.Equal(new MissingStretch(A + (9 * P), A + (9 * P), 2), missing.At(A + (9 * P), 2));
        Assert.Equal("0+5@0 9+7@9", Drain(missing, 16));
    }

    [Fact]
    public void Unmapped_or_discarded_pages_are_never_filled()
    {
        var missing = MissingPages.Collect([Lazy(0, 16)], [Mapping(0, 16)]);
        missing.Drop(A + (4 * P), A + (8 * P));
        Assert.Equal(12, missing.Left);
        Assert.Null(missing.At(A + (5 * P), 1));
        Assert.False(missing.IsLazy(A + (5 * P)));
        Assert.Equal("0+4@0 8+8@8", Drain(missing, 16));
    }

    [Fact]
    public void Moved_memory_is_filled_where_it_is_now_with_the_pages_from_where_the_images_have_it()
    {
        var missing = MissingPages.Collect([Lazy(0, 8)], [Mapping(0, 8)]);
        missing.Filled(A, 1);
        missing.Remap(A, A + (100 * P), 4 * P); // pages 0-3 now at 100-103; page 0 was filled before the move
        Assert.Equal(7, missing.Left);
        Assert.Null(missing.At(A + (2 * P), 1));
        Assert.Equal(new MissingStretch(A + (101 * P), A + P, 3), missing.At(A + (101 * P), 8));
        Assert.Equal("4+4@4 101+3@1", Drain(missing, 8));
    }

    [Fact]
    public void A_forked_child_misses_what_its_parent_missed_then_and_each_fills_on_its_own()
    {
        var parent = MissingPages.Collect([Lazy(0, 8)], [Mapping(0, 8)]);
        parent.Filled(A, 3);
        var child = parent.Clone();
        parent.Filled(A + (3 * P), 5);
        Assert.Equal(0, parent.Left);
        Assert.Equal(5, child.Left);
        Assert.Equal("3+5@3", Drain(child, 8));
    }
}

using System.Buffers.Binary;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>CRIU's image formats and the parent-chain logic, without CRIU.</summary>
public sealed class ImageFormatTests : IDisposable
{
    private const int Page = PagemapEntry.PageSize;
    private readonly string _root = Directory.CreateTempSubdirectory("migrate-images-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    [InlineData("(00.000123) Version: 4.1.1", 0.000123)]
    [InlineData("(12.500000) pie: 1: Restore finished successfully", 12.5)]
    [InlineData("( 3.25) padded", 3.25)]
    [InlineData("Warn  (criu/kerndat.c:1): no stamp", null)]
    [InlineData("() empty", null)]
    [InlineData("(abc) not a number", null)]
    [InlineData("(-1.0) negative", null)]
    [InlineData("", null)]
    public void A_criu_log_line_gives_its_stamp_or_none(string line, double? seconds)
    {
        var stamp = CriuStatisticsReader.LineStamp(line);
        Assert.Equal(seconds, stamp?.TotalSeconds);
    }

    [Fact]
    public void A_criu_log_spans_to_its_last_stamped_line()
    {
        var log = Path.Combine(_root, "restore.log");
        File.WriteAllLines(log, ["(00.000010) Version", "a continuation line without a stamp", "(00.412000) cr_restore_tasks", "(00.731500) Restore finished", "trailing text"]);

        Assert.Equal(TimeSpan.FromMilliseconds(731.5), CriuStatisticsReader.LogSpan(log));
        Assert.Null(CriuStatisticsReader.LogSpan(Path.Combine(_root, "missing.log")));
        File.WriteAllText(log, "no stamps at all\n");
        Assert.Null(CriuStatisticsReader.LogSpan(log));
    }

    [Fact]
    public void A_covered_run_is_every_page_from_there_that_some_set_of_the_chain_holds_across_entry_boundaries()
    {
        // three rounds of scattered writes over 64 pages, and holes: the run from each address must be
        // exactly the pages Covers says, one by one, counted until the first it does not
        var round1 = Directory.CreateDirectory(Path.Combine(_root, "round-1")).FullName;
        var round2 = Directory.CreateDirectory(Path.Combine(_root, "round-2")).FullName;
        var round3 = Directory.CreateDirectory(Path.Combine(_root, "round-3")).FullName;
        File.CreateSymbolicLink(Path.Combine(round2, "parent"), "../round-1");
        File.CreateSymbolicLink(Path.Combine(round3, "parent"), "../round-2");
        const ulong start = 0x100000;
        var random = new Random(11);
        WriteRound(round1, start, 64, page => page is 20 or 21 or 40 ? 'h' : 'p');                    // holes at 20, 21, 40
        WriteRound(round2, start, 64, page => page == 50 ? 'h' : random.Next(4) == 0 ? 'p' : 'i');    // scattered; 50 missing here
        WriteRound(round3, start, 64, page => page == 60 ? 'h' : random.Next(3) == 0 ? 'p' : 'i');
        using var chain = ImageChain.Open(round3);

        for (int from = 0; from < 66; from++)
        {
            foreach (int max in new[] { 1, 3, 17, 80 })
            {
                int expected = 0;
                while (expected < max && chain.Covers(7, start + ((ulong)(from + expected) * Page)))
                {
                    expected++;
                }

                Assert.True(expected == chain.CoveredRun(7, start + ((ulong)from * Page), max), $"from page {from}, at most {max}: {expected} expected");
            }
        }

        Assert.Equal(20, chain.CoveredRun(7, start, 64)); // round 1's first hole ends it, whatever the entries above
        Assert.Equal(0, chain.CoveredRun(7, start + (20 * Page), 64));
        Assert.Equal(0, chain.CoveredRun(8, start, 64)); // a task no set has
    }

    [Fact]
    public void A_set_whose_pagemap_was_replaced_is_read_anew_not_as_it_was_remembered()
    {
        // the builder hands what it wrote to later chains; a pagemap written over it since must win
        var set = Directory.CreateDirectory(Path.Combine(_root, "replaced")).FullName;
        const ulong start = 0x200000;
        WriteRound(set, start, 8, _ => 'p');
        using (var first = ImageChain.Open(set))
        {
            Assert.Equal(8, first.CoveredRun(7, start, 64));
        }

        WriteRound(set, start, 8, page => page == 3 ? 'h' : 'p');
        using (var second = ImageChain.Open(set))
        {
            Assert.Equal(3, second.CoveredRun(7, start, 64));
        }

        // written by another hand (as CRIU writes its own): parsed from the file
        Thread.Sleep(10);
        new CriuPagemap(7, 1, [new PagemapEntry(start, 2, PagemapFlags.Present), new PagemapEntry(start + (4 * Page), 4, PagemapFlags.Present)]).Write(set);
        using var third = ImageChain.Open(set);
        Assert.Equal(2, third.CoveredRun(7, start, 64));
        Assert.Equal(4, third.CoveredRun(7, start + (4 * Page), 64));
    }

    [Fact]
    public void A_released_set_still_holds_its_pages_for_the_chain_but_gives_none_to_read()
    {
        var round1 = Directory.CreateDirectory(Path.Combine(_root, "released-1")).FullName;
        var round2 = Directory.CreateDirectory(Path.Combine(_root, "released-2")).FullName;
        File.CreateSymbolicLink(Path.Combine(round2, "parent"), "../released-1");
        const ulong start = 0x300000;
        WriteRound(round1, start, 8, page => page == 6 ? 'h' : 'p');
        WriteRound(round2, start, 8, page => page is 1 or 7 ? 'p' : 'i');
        var pages = new FileInfo(Path.Combine(round1, CriuPagemap.PagesFileName(1)));
        long length = pages.Length;
        var content = File.ReadAllBytes(pages.FullName);

        long released = ReleasedPages.Release(round1, file => new Dictionary<string, string> { ["Test"] = Convert.ToHexString(File.ReadAllBytes(file.FullName)[..8]) });

        Assert.Equal(length, released);
        pages.Refresh();
        Assert.Equal(length, pages.Length);
        Assert.True(Posix.LinksAndAllocation(pages.FullName).AllocatedBytes < length, "the pages file became a hole");
        var entry = Assert.Single(ReleasedPages.Read(round1)).Value;
        Assert.Equal((pages.Name, length, Convert.ToHexString(content[..8])), (entry.Name, entry.Size, entry.Digests["Test"]));
        Assert.Equal((entry.Name, entry.Size), (ReleasedPages.Find(pages.FullName)?.Name, ReleasedPages.Find(pages.FullName)?.Size));
        Assert.Null(ReleasedPages.Find(Path.Combine(round1, CriuPagemap.FileName(7))));
        Assert.Equal(0, ReleasedPages.Release(round1, _ => throw new InvalidOperationException("nothing is left to release")));

        using var chain = ImageChain.Open(round2);
        // held: what round 1 held counts for coverage, through round 2's "in parent" entries
        Assert.Equal(6, chain.CoveredRun(7, start, 64));
        Assert.True(chain.Covers(7, start + (3 * Page)));
        Assert.False(chain.Covers(7, start + (6 * Page)));
        // not readable: a page only round 1 holds is not found (never zeros taken for its content); round 2's own are
        var buffer = new byte[8 * Page];
        var found = new bool[8];
        chain.Read(7, start, 8, buffer, found);
        Assert.Equal([false, true, false, false, false, false, false, true], found);
        Assert.Equal(Fill(1), buffer.AsSpan(Page, Page).ToArray());
        Assert.False(chain.TryReadPage(7, start, buffer));
        Assert.True(chain.TryReadPage(7, start + Page, buffer));
    }

    [Fact]
    public void A_set_listed_as_released_is_read_as_released_before_its_bytes_go()
    {
        // the agent lists a round's files as released, then gives their bytes back on another thread
        var round1 = Directory.CreateDirectory(Path.Combine(_root, "listed-1")).FullName;
        var round2 = Directory.CreateDirectory(Path.Combine(_root, "listed-2")).FullName;
        File.CreateSymbolicLink(Path.Combine(round2, "parent"), "../listed-1");
        const ulong start = 0x500000;
        WriteRound(round1, start, 8, _ => 'p');
        WriteRound(round2, start, 8, page => page is 1 or 7 ? 'p' : 'i');
        var pages = new FileInfo(Path.Combine(round1, CriuPagemap.PagesFileName(1)));
        var content = File.ReadAllBytes(pages.FullName);

        var listed = ReleasedPages.List(round1, _ => new Dictionary<string, string> { ["Test"] = "00" });

        Assert.Equal(pages.FullName, Assert.Single(listed).FullName);
        Assert.Equal(content, File.ReadAllBytes(pages.FullName)); // the bytes are still there
        Assert.NotNull(ReleasedPages.Find(pages.FullName));
        Assert.Empty(ReleasedPages.List(round1, _ => throw new InvalidOperationException("listed already")));
        using (var chain = ImageChain.Open(round2))
        {
            // already never read: only round 2's own pages are found
            var found = new bool[8];
            chain.Read(7, start, 8, new byte[8 * Page], found);
            Assert.Equal([false, true, false, false, false, false, false, true], found);
        }

        Assert.Equal(content.Length, ReleasedPages.GiveBack(listed));
        pages.Refresh();
        Assert.Equal(content.Length, pages.Length);
        Assert.True(Posix.LinksAndAllocation(pages.FullName).AllocatedBytes < content.Length, "the pages file became a hole");
    }

    [Fact]
    public void Only_a_sets_own_unlinked_pages_files_are_released_and_a_malformed_list_is_refused()
    {
        var set = Directory.CreateDirectory(Path.Combine(_root, "linked")).FullName;
        WriteRound(set, 0x400000, 4, _ => 'p');
        var pages = Path.Combine(set, CriuPagemap.PagesFileName(1));
        var elsewhere = Path.Combine(_root, "kept-pages.img");
        Assert.Equal(0, Posix.Link(pages, elsewhere));
        var before = File.ReadAllBytes(pages);

        Assert.Equal(0, ReleasedPages.Release(set, _ => new Dictionary<string, string>()));
        Assert.Equal(before, File.ReadAllBytes(elsewhere));
        Assert.Empty(ReleasedPages.Read(set));

        File.WriteAllText(Path.Combine(set, ReleasedPages.FileName), "pages-1.img\tnot-a-length\n");
        Assert.Contains("malformed line", Assert.Throws<InvalidDataException>(() => ReleasedPages.Read(set)).Message);
        File.WriteAllText(Path.Combine(set, ReleasedPages.FileName), "pages-1.img\t16384\tno-equals-sign\n");
        Assert.Contains("malformed digest", Assert.Throws<InvalidDataException>(() => ReleasedPages.Read(set)).Message);
    }

    /// <summary>An image set of task 7 over <paramref name="pages"/> pages: present ('p'), in the parent ('i') or absent ('h') per page.</summary>
    private static void WriteRound(string directory, ulong start, int pages, Func<int, char> kind)
    {
        using var builder = new PagemapBuilder(directory, 7, 1);
        for (int page = 0; page < pages; page++)
        {
            ulong at = start + ((ulong)page * Page);
            switch (kind(page))
            {
                case 'p':
                    builder.AddPresent(at, Fill(page));
                    break;
                case 'i':
                    builder.AddParent(at);
                    break;
            }
        }

        builder.Complete();
    }

    [Fact]
    public void A_pagemap_written_reads_back_identically()
    {
        var map = new CriuPagemap(7, 3, [
            new PagemapEntry(0x400000, 2, PagemapFlags.Present),
            new PagemapEntry(0x402000, 5, PagemapFlags.Parent),
            new PagemapEntry(0x7ff000, 1, PagemapFlags.Present | PagemapFlags.Lazy),
        ]);

        map.Write(_root);
        var read = CriuPagemap.Read(_root, 7);

        Assert.Equal(map.PagesId, read.PagesId);
        Assert.Equal(map.Entries, read.Entries);
        Assert.Equal(3UL, read.PresentPages);
        Assert.Equal(5UL, read.ParentPages);
    }

    [Fact]
    public void Old_style_entries_without_flags_are_present_or_in_parent()
    {
        var path = Path.Combine(_root, CriuPagemap.FileName(1));
        CriuImageFile.Write(path, CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic, [
            new Images.Proto.PagemapHead { PagesId = 1 },
            new Images.Proto.PagemapEntry { Vaddr = 0x1000, CompatNrPages = 1 },
            new Images.Proto.PagemapEntry { Vaddr = 0x2000, CompatNrPages = 1, InParent = true },
        ]);

        var read = CriuPagemap.Read(_root, 1);

        Assert.Equal(PagemapFlags.Present, read.Entries[0].Flags);
        Assert.Equal(PagemapFlags.Parent, read.Entries[1].Flags);
    }

    [Fact]
    public void Criu_4_2_entries_count_their_pages_in_nr_pages_and_what_is_written_is_read_by_both_releases()
    {
        var path = Path.Combine(_root, CriuPagemap.FileName(4));
        CriuImageFile.Write(path, CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic, [
            new Images.Proto.PagemapHead { PagesId = 1 },
            new Images.Proto.PagemapEntry { Vaddr = 0x1000, CompatNrPages = 0, NrPages = 16, Flags = (uint)PagemapFlags.Present },
            new Images.Proto.PagemapEntry { Vaddr = 0x20000, CompatNrPages = 0, NrPages = 2, Flags = (uint)PagemapFlags.Parent },
        ]);

        var read = CriuPagemap.Read(_root, 4);
        Assert.Equal([16u, 2u], read.Entries.Select(e => e.PageCount));
        Assert.Equal(16UL, read.PresentPages);

        // written back: both counts, so CRIU 4.1 (compat_nr_pages) and 4.2 (nr_pages) read the same entries
        read.Write(_root);
        var entry = Images.Proto.PagemapEntry.Parser.ParseFrom(CriuImageFile.Read(path).Records[1]);
        Assert.Equal((16u, 16UL), (entry.CompatNrPages, entry.NrPages));

        CriuImageFile.Write(path, CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic, [
            new Images.Proto.PagemapHead { PagesId = 1 },
            new Images.Proto.PagemapEntry { Vaddr = 0x1000, CompatNrPages = 0, NrPages = 1UL << 40, Flags = (uint)PagemapFlags.Present },
        ]);
        Assert.Contains("claims 1099511627776 pages", Assert.Throws<InvalidDataException>(() => CriuPagemap.Read(_root, 4)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_truncated_image_is_refused_with_the_offset()
    {
        var path = Path.Combine(_root, CriuPagemap.FileName(2));
        new CriuPagemap(2, 1, [new PagemapEntry(0x1000, 1, PagemapFlags.Present)]).Write(_root);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^2]);

        var error = Assert.Throws<InvalidDataException>(() => CriuPagemap.Read(_root, 2));

        Assert.Contains("truncated", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_record_length_beyond_any_real_image_is_refused()
    {
        var path = Path.Combine(_root, CriuPagemap.FileName(3));
        var bytes = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, CriuImageFile.CommonMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), CriuImageFile.PagemapMagic);
        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(8), int.MaxValue);
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<InvalidDataException>(() => CriuPagemap.Read(_root, 3));

        Assert.Contains("out of range", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Deduplication_keeps_changed_pages_refers_equal_ones_to_the_parent_and_reads_back_the_same_bytes()
    {
        // Parent: task 1 has pages A B C at 0x10000..; the dump has A B' C D (B changed, D new).
        var parent = Directory.CreateDirectory(Path.Combine(_root, "round-1")).FullName;
        WriteSet(parent, 1, 0x10000, [Fill(1), Fill(2), Fill(3)]);
        var final = Directory.CreateDirectory(Path.Combine(_root, "final")).FullName;
        WriteSet(final, 1, 0x10000, [Fill(1), Fill(20), Fill(3), Fill(4)]);
        File.WriteAllBytes(Path.Combine(final, "inventory.img"), []);

        var result = ParentDeduplication.Apply(final, parent);

        Assert.Equal(4UL, result.PagesScanned);
        Assert.Equal(2UL, result.PagesKept);
        Assert.Equal(2UL, result.PagesInParent);
        var map = CriuPagemap.Read(final, 1);
        Assert.Equal(
            [
                new PagemapEntry(0x10000, 1, PagemapFlags.Parent),
                new PagemapEntry(0x11000, 1, PagemapFlags.Present),
                new PagemapEntry(0x12000, 1, PagemapFlags.Parent),
                new PagemapEntry(0x13000, 1, PagemapFlags.Present),
            ],
            map.Entries);
        Assert.Equal(2 * Page, new FileInfo(Path.Combine(final, CriuPagemap.PagesFileName(map.PagesId))).Length);
        Assert.Equal("../round-1", new FileInfo(Path.Combine(final, "parent")).LinkTarget);

        using var chain = ImageChain.Open(final);
        var page = new byte[Page];
        foreach (var (address, fill) in new[] { (0x10000UL, 1), (0x11000UL, 20), (0x12000UL, 3), (0x13000UL, 4) })
        {
            Assert.True(chain.TryReadPage(1, address, page));
            Assert.Equal(Fill(fill), page);
        }

        Assert.False(chain.TryReadPage(1, 0x14000, page));
    }

    [Fact]
    public void Deduplication_gives_every_task_a_pagemap_in_each_ancestor()
    {
        var grandparent = Directory.CreateDirectory(Path.Combine(_root, "round-1")).FullName;
        WriteSet(grandparent, 1, 0x10000, [Fill(1)]);
        var parent = Directory.CreateDirectory(Path.Combine(_root, "round-2")).FullName;
        WriteSet(parent, 1, 0x10000, [Fill(1)]);
        File.CreateSymbolicLink(Path.Combine(parent, "parent"), "../round-1");
        var final = Directory.CreateDirectory(Path.Combine(_root, "final")).FullName;
        WriteSet(final, 9, 0x20000, [Fill(5)]); // a task the rounds never saw
        File.WriteAllBytes(Path.Combine(final, "inventory.img"), []);

        var result = ParentDeduplication.Apply(final, parent);

        Assert.Equal(1UL, result.PagesKept);
        Assert.Empty(CriuPagemap.Read(parent, 9).Entries);
        Assert.Empty(CriuPagemap.Read(grandparent, 9).Entries);
    }

    [Fact]
    public void Deduplication_refuses_a_directory_that_is_not_a_complete_dump()
    {
        var parent = Directory.CreateDirectory(Path.Combine(_root, "p")).FullName;
        var final = Directory.CreateDirectory(Path.Combine(_root, "f")).FullName;

        var error = Assert.Throws<InvalidOperationException>(() => ParentDeduplication.Apply(final, parent));

        Assert.Contains("inventory.img", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_parent_link_loop_is_detected()
    {
        var a = Directory.CreateDirectory(Path.Combine(_root, "a")).FullName;
        var b = Directory.CreateDirectory(Path.Combine(_root, "b")).FullName;
        File.CreateSymbolicLink(Path.Combine(a, "parent"), "../b");
        File.CreateSymbolicLink(Path.Combine(b, "parent"), "../a");

        var error = Assert.Throws<InvalidDataException>(() => ImageChain.Open(a));

        Assert.Contains("loop", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(40101, 4, 1, 1)]
    [InlineData(31701, 3, 17, 1)]
    [InlineData(40200, 4, 2, 0)]
    public void Versions_decode_from_libcriu_numbers(int number, int major, int minor, int sublevel)
    {
        var version = CriuVersion.FromNumber(number);

        Assert.Equal(new CriuVersion(major, minor, sublevel), version);
        Assert.Equal(number, version.Number);
        Assert.Equal(number >= 40100, version >= CriuVersion.Minimum);
    }

    [Theory]
    [InlineData(PagemapFlags.Lazy, true)] // a lazy dump left it out
    [InlineData(PagemapFlags.Lazy | PagemapFlags.Present, false)] // any dump marks private anonymous memory lazy and writes it
    [InlineData(PagemapFlags.Lazy | PagemapFlags.Parent, false)]
    [InlineData(PagemapFlags.Present, false)]
    [InlineData(PagemapFlags.None, false)]
    public void Only_lazy_pages_that_are_not_in_the_image_chain_are_left_to_a_lazy_restore(PagemapFlags flags, bool left)
    {
        Assert.Equal(left, new PagemapEntry(0x1000, 1, flags).IsLeftLazy);
    }

    [Theory]
    [InlineData("Version: 4.1.1\n", "4.1.1")]
    [InlineData("Version: 4.2\nGitID: v4.2-12-gabc\n", "4.2.0")]
    [InlineData("  Version: 3.17.1  \n", "3.17.1")]
    [InlineData("Version: 4\n", null)]
    [InlineData("Version: 4.x.1\n", null)]
    [InlineData("Version: 4.1.1.1\n", null)]
    [InlineData("criu: command not found\n", null)]
    [InlineData("", null)]
    public void Versions_parse_from_criu_version_output(string output, string? expected)
    {
        Assert.Equal(expected, CriuVersion.TryParse(output)?.ToString());
    }

    [Fact]
    public void A_dump_without_a_pid_or_images_directory_is_refused_before_criu_runs()
    {
        var criu = new CriuClient();

        Assert.Throws<ArgumentException>(() => criu.Dump(new CriuOptions { ImagesDirectory = _root }));
        Assert.Throws<ArgumentException>(() => criu.Dump(new CriuOptions { Pid = 1 }));
        Assert.Throws<DirectoryNotFoundException>(() => criu.Restore(new CriuOptions { ImagesDirectory = Path.Combine(_root, "nope") }));
    }

    private static void WriteSet(string directory, int id, ulong start, byte[][] pages)
    {
        using (var builder = new PagemapBuilder(directory, id, 1))
        {
            for (int i = 0; i < pages.Length; i++)
            {
                builder.AddPresent(start + ((ulong)i * Page), pages[i]);
            }

            builder.Complete();
        }
    }

    private static byte[] Fill(int value)
    {
        var page = new byte[Page];
        BinaryPrimitives.WriteInt32LittleEndian(page, value);
        page.AsSpan(4).Fill((byte)value);
        return page;
    }
}

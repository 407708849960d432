using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>How a chunk is split into its own bytes and references to pages sent before, as a table over pages named by letters.</summary>
public sealed class SentPagesTests
{
    private const int Page = SentPages.PageSize;

    /// <summary>
    /// Each case: the chunks sent in order ("file@page:contents", a letter per 4 KiB page, '+' for a
    /// 100-byte tail) and the pieces expected for the last one: "=n" own bytes of n pages, "f.p" a
    /// reference to file f's page p, "f.p*n" one reference of n consecutive pages, "+" a tail of
    /// own bytes.
    /// </summary>
    public static TheoryData<string, string[], string> Cases() => new()
    {
        { "all new", ["0@0:ABCD"], "=4" },
        { "a child's copy of its parent's memory: one reference", ["0@0:ABCD", "1@0:ABCD"], "0.0*4" },
        { "repeats inside one chunk point backwards", ["0@0:ABAB"], "=2 0.0*2" },
        { "mixed", ["0@0:ABC", "1@0:XBCY"], "=1 0.1*2 =1" },
        { "first copies that are not consecutive are separate references", ["0@0:ABC", "1@0:CA"], "0.2 0.0" },
        { "the same page three times: every copy names the first", ["0@0:A", "1@0:AA"], "0.0 0.0" },
        { "a tail shorter than a page is always its own", ["0@0:AB", "1@0:AB+"], "0.0*2 +" },
        { "a chunk further into its file", ["0@0:AB", "1@3:AB"], "0.0*2" },
        { "references name the offset in the earlier file", ["0@5:AB", "1@0:B"], "0.6" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Splits_a_chunk_into_own_bytes_and_references(string name, string[] chunks, string expected)
    {
        var pages = new SentPages();
        IReadOnlyList<ChunkPiece> last = [];
        int length = 0;
        foreach (var chunk in chunks)
        {
            var (file, offset, bytes) = Parse(chunk);
            last = pages.Split(bytes, file, offset);
            length = bytes.Length;
        }

        Assert.True(Covers(last, length), $"{name}: the pieces do not cover the chunk in order");
        Assert.Equal(expected, Describe(last));
    }

    [Fact]
    public void A_chunk_not_aligned_to_pages_looks_only_at_its_whole_aligned_pages()
    {
        var pages = new SentPages();
        var page = Content('A');
        pages.Split(page, 0, 0);
        // 100 bytes in: the first page boundary of the chunk is 3996 bytes on
        var chunk = new byte[(Page * 2) + 100];
        page.CopyTo(chunk, Page - 100);

        var pieces = pages.Split(chunk, 1, 100);

        Assert.Equal([new ChunkPiece(0, Page - 100), new ChunkPiece(Page - 100, Page, 0, 0), new ChunkPiece((Page * 2) - 100, 200)], pieces);
    }

    [Fact]
    public void Beyond_its_limit_it_remembers_no_new_page_but_still_finds_those_it_has()
    {
        var pages = new SentPages(maxPages: 1);
        pages.Split(Chunk("AB"), 0, 0);

        Assert.Equal(1, pages.Count);
        Assert.Equal("0.0 =1", Describe(pages.Split(Chunk("AB"), 1, 0)));
    }

    [Fact]
    public void Indexing_only_zero_pages_finds_those_and_nothing_else()
    {
        var pages = new SentPages(everyPage: false);
        byte[] zero = new byte[Page];
        pages.Split([.. Chunk("AB"), .. zero], 0, 0);

        Assert.Equal("0.2 =1 0.2", Describe(pages.Split([.. zero, .. Chunk("A"), .. zero], 1, 0)));
        Assert.Equal(1, pages.Count);
    }

    [Theory]
    [InlineData(false, new[] { "containers/main/round-1/pagemap-7.img", "containers/main/round-1/pages-1.img", "containers/main/final/pagemap-7.img" })]
    [InlineData(true, new[] { "containers/main/round-1/pagemap-7.img", "containers/main/round-1/pagemap-9.img", "containers/main/round-1/pages-1.img" })]
    [InlineData(false, new[] { "containers/a/round-1/pagemap-1.img", "containers/b/round-1/pagemap-1.img" })] // two containers, one process each
    [InlineData(false, new[] { "rootfs/main.tar", "containers/main/final/pagemap-1.img.tmp", "containers/main/final/pagemap-2.txt" })]
    [InlineData(false, new string[0])]
    public void Every_page_is_indexed_only_where_an_image_set_holds_several_processes(bool several, string[] paths) =>
        Assert.Equal(several, SentPages.SeveralProcesses(paths));

    private static (uint File, ulong Offset, byte[] Bytes) Parse(string chunk)
    {
        var at = chunk.Split('@', ':');
        return (uint.Parse(at[0], System.Globalization.CultureInfo.InvariantCulture), ulong.Parse(at[1], System.Globalization.CultureInfo.InvariantCulture) * Page, Chunk(at[2]));
    }

    private static byte[] Chunk(string letters) =>
        [.. letters.SelectMany(l => l == '+' ? Enumerable.Repeat((byte)'+', 100) : Content(l))];

    /// <summary>A page whose bytes are all different from any other letter's.</summary>
    private static byte[] Content(char letter)
    {
        var bytes = new byte[Page];
        new Random(letter).NextBytes(bytes);
        return bytes;
    }

    private static bool Covers(IReadOnlyList<ChunkPiece> pieces, int length)
    {
        int at = 0;
        foreach (var piece in pieces)
        {
            if (piece.Start != at || piece.Length <= 0)
            {
                return false;
            }

            at += piece.Length;
        }

        return at == length;
    }

    private static string Describe(IReadOnlyList<ChunkPiece> pieces) => string.Join(' ', pieces.Select(p => p switch
    {
        { IsReference: true, Length: Page } => $"{p.FromFile}.{p.FromOffset / Page}",
        { IsReference: true } => $"{p.FromFile}.{p.FromOffset / Page}*{p.Length / Page}",
        { Length: < Page } => "+",
        _ => $"={p.Length / Page}",
    }));
}

using System.Diagnostics;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Criu.Tests;

/// <summary>
/// Which requests the source's frozen memory answers: only pages its final dump left there, each
/// request inside one run of them, whatever the address (a hostile one near 2^64 included); and
/// found without scanning every run, since a stream asks for each of tens of thousands in turn.
/// </summary>
public sealed class LivePagesTests(ITestOutputHelper output)
{
    private const ulong P = PagemapEntry.PageSize;
    private const ulong A = 0x7f0000000000;

    // runs of 3 pages with gaps of 2, then two runs that touch (pages 100-101 and 102-104)
    private static readonly PagemapEntry[] Remote =
    [
        new(A, 3, PagemapFlags.Lazy), new(A + (5 * P), 3, PagemapFlags.Lazy), new(A + (10 * P), 3, PagemapFlags.Lazy),
        new(A + (100 * P), 2, PagemapFlags.Lazy), new(A + (102 * P), 3, PagemapFlags.Lazy),
    ];

    [Theory]
    [InlineData("the first page", 0UL, 1, true)]
    [InlineData("a whole run", 5UL, 3, true)]
    [InlineData("the end of a run", 12UL, 1, true)]
    [InlineData("past the end of a run", 12UL, 2, false)]
    [InlineData("in a gap", 3UL, 1, false)]
    [InlineData("from a gap into a run", 4UL, 2, false)]
    [InlineData("across two touching runs", 101UL, 2, false)]
    [InlineData("the second of two touching runs", 102UL, 3, true)]
    [InlineData("after the last run", 105UL, 1, false)]
    [InlineData("no pages", 5UL, 0, false)]
    public void A_request_is_answered_only_inside_one_run_left_on_the_source(string why, ulong page, int pages, bool answered)
    {
        Assert.True(answered == LivePages.IsLeft(Remote, A + (page * P), pages), why);
    }

    [Fact]
    public void Hostile_addresses_are_refused_without_overflowing()
    {
        Assert.False(LivePages.IsLeft(Remote, ulong.MaxValue - P + 1, 2));
        Assert.False(LivePages.IsLeft(Remote, 0, 1));
        Assert.False(LivePages.IsLeft(Remote, A + (2 * P), int.MaxValue));
        Assert.False(LivePages.IsLeft([], A, 1));
        Assert.False(LivePages.IsLeft(Remote, A, -1));
    }

    [Fact]
    public void Tens_of_thousands_of_runs_are_each_found_in_a_search_not_a_scan()
    {
        // a 4 GiB pod dirtying its memory left about 80,000 scattered runs on its source, and its stream asks for every one
        const int runs = 80_000;
        var remote = Enumerable.Range(0, runs).Select(i => new PagemapEntry(A + ((ulong)i * 4 * P), 1, PagemapFlags.Lazy)).ToArray();
        var clock = Stopwatch.StartNew();
        int found = 0;
        for (int i = 0; i < runs; i++)
        {
            found += LivePages.IsLeft(remote, A + ((ulong)i * 4 * P), 1) ? 1 : 0;
            found -= LivePages.IsLeft(remote, A + (((ulong)i * 4) + 1) * P, 1) ? 1 : 0;
        }

        output.WriteLine($"{2 * runs} lookups among {runs} runs in {clock.Elapsed.TotalMilliseconds:0.0} ms");
        Assert.Equal(runs, found);
    }
}

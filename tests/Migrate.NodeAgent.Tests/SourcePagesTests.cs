using System.Collections.Concurrent;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// How the target's page server gets the pages a post-copy dump left on the source: fetched once each,
/// in the background with several requests in flight, the daemon's requests served from what is here,
/// waiting for what is on its way, fetching the rest at once.
/// </summary>
public sealed class SourcePagesTests : IDisposable
{
    private const int Page = PagemapEntry.PageSize;

    // task 1: a run longer than a piece, and a short one; task 2: one short run
    private static readonly Dictionary<int, PagemapEntry[]> Remote = new()
    {
        [1] = [new PagemapEntry(0x10000, 300, PagemapFlags.Lazy), new PagemapEntry(0x200000, 3, PagemapFlags.Lazy)],
        [2] = [new PagemapEntry(0x10000, 5, PagemapFlags.Lazy)],
    };

    private readonly string _directory = Directory.CreateTempSubdirectory("migrate-source-pages-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void The_stream_asks_for_every_page_once_in_order_before_any_answer_and_reads_then_fetch_nothing()
    {
        var faults = new PatternSource();
        using var pages = new SourcePages(Remote, _directory, faults);
        // the file the pages are kept in is unlinked from the start: nothing to leave behind
        Assert.Empty(Directory.EnumerateFileSystemEntries(_directory));
        var pipeline = new InProcessPipeline(new PatternSource());
        pages.StartPrefetch(() => pipeline);
        WaitFor(() => pages.Report().Fetched == pages.Pages, "every page streamed");

        Assert.Equal([(1, 0x10000UL, 256), (1, 0x10000UL + (256 * Page), 44), (1, 0x200000UL, 3), (2, 0x10000UL, 5)], pipeline.Sent);
        Assert.True(pipeline.EndedBeforeFirstAnswer, "all requests, then the end of them, before any answer is read");
        Assert.Equal(new SourcePagesReport(308, 308, 308, null), pages.Report());
        WaitFor(() => pipeline.Disposed, "the stream's connection closed once all had come");

        var buffer = new byte[10 * Page];
        pages.Read(1, 0x10000 + (250 * Page), 10, buffer);
        PatternSource.Check(1, 0x10000 + (250 * Page), buffer);
        pages.Read(2, 0x10000, 5, buffer);
        PatternSource.Check(2, 0x10000, buffer.AsSpan(0, 5 * Page));
        Assert.Empty(faults.Asked);
    }

    [Fact]
    public void More_pieces_than_one_lane_carries_are_streamed_on_several_connections_one_after_the_other()
    {
        var faults = new PatternSource();
        using var pages = new SourcePages(Remote, _directory, faults);
        var connections = new List<InProcessPipeline>();
        bool overlapped = false;
        pages.StartPrefetch(() =>
        {
            // each opened only once the one before has answered all it was asked (and is closed)
            overlapped |= connections.Any(c => !c.Disposed);
            var pipeline = new InProcessPipeline(new PatternSource());
            connections.Add(pipeline);
            return pipeline;
        }, maxRequests: 3);
        WaitFor(() => pages.Report().Fetched == pages.Pages, "every page streamed");
        WaitFor(() => connections.Count == 2 && connections.All(c => c.Disposed), "both connections closed");
        Assert.False(overlapped, "a connection was opened before the one before it was done");

        Assert.Equal([(1, 0x10000UL, 256), (1, 0x10000UL + (256 * Page), 44), (1, 0x200000UL, 3)], connections[0].Sent);
        Assert.Equal([(2, 0x10000UL, 5)], connections[1].Sent);
        Assert.All(connections, c => Assert.True(c.EndedBeforeFirstAnswer, "each connection's requests, then their end, before any answer"));
        Assert.Equal(new SourcePagesReport(308, 308, 308, null), pages.Report());
        var buffer = new byte[5 * Page];
        pages.Read(2, 0x10000, 5, buffer);
        PatternSource.Check(2, 0x10000, buffer);
        Assert.Empty(faults.Asked);
    }

    [Fact]
    public async Task A_fault_is_fetched_at_once_while_the_background_fill_waits_for_the_stream_and_no_page_is_kept_twice()
    {
        var faults = new PatternSource();
        using var pages = new SourcePages(Remote, _directory, faults);
        using var gate = new ManualResetEventSlim();
        var pipeline = new InProcessPipeline(new PatternSource()) { Gate = gate };
        pages.StartPrefetch(() => pipeline);
        WaitFor(() => pipeline.Sent.Count == 4, "the stream's requests");

        // the stream is stuck before its first answer: a fault (one page a process touched) cannot wait for it
        var page = new byte[Page];
        await Task.Run(() => pages.Read(2, 0x10000, 1, page, fault: true)).WaitAsync(TimeSpan.FromSeconds(5));
        PatternSource.Check(2, 0x10000, page);

        // the background fill asks for pages the stream is bringing: it waits for them rather than fetch them twice
        var buffer = new byte[2 * Page];
        var fill = Task.Run(() => pages.Read(1, 0x10000 + Page, 2, buffer));
        await Task.Delay(200);
        Assert.False(fill.IsCompleted, "the background fill must wait for the pages the stream brings");

        gate.Set();
        await fill.WaitAsync(TimeSpan.FromSeconds(10));
        PatternSource.Check(1, 0x10000 + Page, buffer);
        WaitFor(() => pipeline.Disposed, "the stream to end");
        Assert.Equal([(2, 0x10000UL, 1)], faults.Asked);
        // every page kept once: the fault's from its own fetch, the other 307 from the stream
        Assert.Equal(new SourcePagesReport(308, 308, 307, null), pages.Report());
        var all = new byte[5 * Page];
        pages.Read(2, 0x10000, 5, all);
        PatternSource.Check(2, 0x10000, all);
        Assert.Single(faults.Asked);
    }

    [Fact]
    public void When_the_stream_fails_reads_fetch_what_it_did_not_bring()
    {
        var faults = new PatternSource();
        using var pages = new SourcePages(Remote, _directory, faults);
        var pipeline = new InProcessPipeline(new PatternSource()) { FailAt = r => r.Address == 0x200000 };
        pages.StartPrefetch(() => pipeline);
        WaitFor(() => pages.Report().PrefetchFailure is not null, "the stream to stop");
        Assert.Contains("prefetch link down", pages.Report().PrefetchFailure, StringComparison.Ordinal);
        WaitFor(() => pipeline.Disposed, "the stream's connection closed");

        var buffer = new byte[256 * Page];
        foreach (var (task, runs) in Remote)
        {
            foreach (var run in runs)
            {
                for (ulong at = run.Address; at < run.End; at += 256 * Page)
                {
                    int count = (int)Math.Min(256, (run.End - at) / Page);
                    pages.Read(task, at, count, buffer);
                    PatternSource.Check(task, at, buffer.AsSpan(0, count * Page));
                }
            }
        }

        // the piece that failed and the one after it are fetched by the reads, once
        Assert.Equal([(1, 0x200000UL, 3), (2, 0x10000UL, 5)], faults.Asked);
        Assert.Equal(new SourcePagesReport(308, 308, 300, pages.Report().PrefetchFailure), pages.Report());
    }

    [Fact]
    public void Pages_not_left_on_the_source_are_refused_and_a_failed_fetch_is_tried_again_by_the_next_read()
    {
        var faults = new PatternSource();
        using var pages = new SourcePages(Remote, _directory, faults);
        var buffer = new byte[4 * Page];
        foreach (var (task, address, count) in new[] { (1, 0x0UL, 1), (3, 0x10000UL, 1), (1, 0x200000UL + (2 * Page), 2), (1, 0x10001UL, 1), (2, 0x10000UL, 0) })
        {
            var refused = Assert.Throws<PageServerException>(() => pages.Read(task, address, count, buffer));
            Assert.Contains("not left on the source", refused.Message, StringComparison.Ordinal);
        }

        faults.FailNext = true;
        Assert.Throws<PageServerException>(() => pages.Read(2, 0x10000, 4, buffer));
        pages.Read(2, 0x10000, 4, buffer);
        PatternSource.Check(2, 0x10000, buffer);
        Assert.Equal([(2, 0x10000UL, 4)], faults.Asked);
        Assert.Equal(4, pages.Report().Fetched);
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            Thread.Sleep(10);
        }
    }

    /// <summary>Pages whose every byte says which task and page they are; records what it was asked for.</summary>
    private sealed class PatternSource : IPageSource
    {
        private readonly ConcurrentQueue<(int Task, ulong Address, int Pages)> _asked = new();

        public IReadOnlyList<(int Task, ulong Address, int Pages)> Asked => [.. _asked];

        public bool FailNext { get; set; }

        public static byte Of(int task, ulong address) => (byte)((task * 31) + (int)(address / Page));

        public static void Check(int task, ulong address, ReadOnlySpan<byte> pages)
        {
            for (int page = 0; page < pages.Length / Page; page++)
            {
                byte expected = Of(task, address + (ulong)(page * Page));
                Assert.True(pages.Slice(page * Page, Page).IndexOfAnyExcept(expected) < 0, $"page 0x{address + (ulong)(page * Page):x} of task {task} is not its own");
            }
        }

        public void Read(int taskId, ulong address, int pages, Span<byte> destination)
        {
            if (FailNext)
            {
                FailNext = false;
                throw new PageServerException("link down");
            }

            _asked.Enqueue((taskId, address, pages));
            for (int page = 0; page < pages; page++)
            {
                destination.Slice(page * Page, Page).Fill(Of(taskId, address + (ulong)(page * Page)));
            }
        }
    }
}

/// <summary>A pipelined connection inside the test's process: requests noted, answered in order when received.</summary>
internal sealed class InProcessPipeline(IPageSource inner) : IPipelinedPageSource
{
    private readonly ConcurrentQueue<(int Task, ulong Address, int Pages)> _asked = new();
    private readonly ConcurrentQueue<(int Task, ulong Address, int Pages)> _sent = new();
    private bool _answered;

    public IReadOnlyList<(int Task, ulong Address, int Pages)> Sent => [.. _sent];

    public Func<(int Task, ulong Address, int Pages), bool>? FailAt { get; init; }

    public ManualResetEventSlim? Gate { get; init; }

    public bool EndedBeforeFirstAnswer { get; private set; }

    public bool Disposed { get; private set; }

    public void Send(int taskId, ulong address, int pages)
    {
        _asked.Enqueue((taskId, address, pages));
        _sent.Enqueue((taskId, address, pages));
    }

    public void EndOfRequests()
    {
        EndedBeforeFirstAnswer = !_answered;
    }

    public void Receive(Span<byte> destination)
    {
        Gate?.Wait(TimeSpan.FromSeconds(10));
        _answered = true;
        if (!_asked.TryDequeue(out var request))
        {
            throw new InvalidOperationException("nothing was asked for");
        }

        if (FailAt?.Invoke(request) == true)
        {
            throw new PageServerException("prefetch link down");
        }

        inner.Read(request.Task, request.Address, request.Pages, destination);
    }

    public void Dispose() => Disposed = true;
}

using System.Diagnostics;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;

namespace Migrate.Criu.Lazy;

/// <summary>What one page-server session did.</summary>
/// <param name="Requests">Page requests answered.</param>
/// <param name="PagesServed">Pages sent.</param>
/// <param name="ClosedByDaemon">The daemon ended the session (it had every page it needed); false if the connection just ended.</param>
/// <param name="Elapsed">Wall time of the session.</param>
/// <param name="PagesFromSource">Of those, pages that came from the source (left there by a post-copy dump).</param>
/// <param name="PagesFetched">Pages fetched from the source, read ahead of the requests (at least <paramref name="PagesFromSource"/>).</param>
public sealed record PageServerReport(long Requests, long PagesServed, bool ClosedByDaemon, TimeSpan Elapsed, long PagesFromSource = 0, long PagesFetched = 0)
{
    public long BytesServed => PagesServed * PagemapEntry.PageSize;
}

/// <summary>A request the page server cannot answer; the session ends (CRIU's own server does the same).</summary>
public sealed class PageServerException(string message) : Exception(message);

/// <summary>
/// Serves the pages of a lazily restored process tree to CRIU's lazy-pages daemon from image sets
/// already on this node: the memory a final dump captured and, through its parent links, the
/// pre-copy rounds before it. The daemon asks for pages as the restored processes touch them
/// (and, in the background, for all the others), so the processes run before their memory is in
/// place and nothing depends on the source node.
/// </summary>
public sealed class PageServer : IDisposable
{
    /// <summary>The most bytes read and sent in one piece, whatever the daemon asks for.</summary>
    private const int PiecePages = 256;

    /// <summary>A request for pages left on the source of at least this many pages reads ahead to <see cref="PiecePages"/>.</summary>
    private const int ReadAheadFrom = 16;

    private static readonly byte[] SessionOver = [0, 0, 0, 0];

    private readonly ImageChain _chain;
    private readonly PageServerProtocol _protocol;
    private readonly IPageSource? _source;
    private readonly ReadAhead _ahead = new();
    private long _fromSource;
    private long _fetched;

    /// <param name="memoryDirectory">The image set that holds (or refers to its parents for) every lazy page, or lists it as left on the source.</param>
    /// <param name="protocol">The wire format of the CRIU that runs the daemon.</param>
    /// <param name="source">Where the pages left on the source come from (null: nowhere; a request for one ends the session).</param>
    public PageServer(string memoryDirectory, PageServerProtocol protocol, IPageSource? source = null)
    {
        ArgumentNullException.ThrowIfNull(protocol);
        _protocol = protocol;
        _source = source;
        _chain = ImageChain.Open(Path.GetFullPath(memoryDirectory));
        // every file is open from the start: the node may delete the staged images while the daemon still fills pages
        _chain.OpenAll();
    }

    /// <summary>
    /// At most this many bytes of pages a second (0: as fast as the daemon asks). Emulates a slow
    /// supply of pages (a slow disk, or pages coming over a slow link) in the sandbox's fault tests.
    /// </summary>
    public long BytesPerSecond { get; init; }

    /// <summary>Answers the daemon's requests on <paramref name="connection"/> until it closes the session.</summary>
    public PageServerReport Serve(Stream connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var clock = Stopwatch.StartNew();
        var header = new byte[_protocol.HeaderSize];
        var pages = new byte[PiecePages * PagemapEntry.PageSize];
        var found = new bool[PiecePages];
        long requests = 0, served = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int got = ReadHeader(connection, header);
            if (got == 0)
            {
                return new PageServerReport(requests, served, false, clock.Elapsed, _fromSource, _fetched);
            }

            var request = _protocol.Decode(header);
            switch ((PageServerCommand)request.Command)
            {
                case PageServerCommand.Get:
                    served += Answer(connection, request, header, pages, found);
                    requests++;
                    Pace(served, clock);
                    break;
                case PageServerCommand.Close or PageServerCommand.ForceClose:
                    // the status CRIU's own page server answers: all done
                    connection.Write(SessionOver);
                    connection.Flush();
                    return new PageServerReport(requests, served, true, clock.Elapsed, _fromSource, _fetched);
                default:
                    throw new PageServerException($"the lazy-pages daemon sent command 0x{request.Command:x}, which a page server for a restore does not take");
            }
        }
    }

    public void Dispose() => _chain.Dispose();

    /// <summary>Holds back until <paramref name="served"/> pages fit <see cref="BytesPerSecond"/> since the session began.</summary>
    private void Pace(long served, Stopwatch clock)
    {
        if (BytesPerSecond <= 0)
        {
            return;
        }

        var due = TimeSpan.FromSeconds((double)served * PagemapEntry.PageSize / BytesPerSecond);
        if (due > clock.Elapsed)
        {
            Thread.Sleep(due - clock.Elapsed);
        }
    }

    private long Answer(Stream connection, PageServerHeader request, byte[] header, byte[] pages, bool[] found)
    {
        if (request.Pages == 0 || request.Pages > int.MaxValue || request.TaskId > int.MaxValue || request.Address % PagemapEntry.PageSize != 0)
        {
            throw new PageServerException($"malformed page request: {request.Pages} pages at 0x{request.Address:x} of task {request.TaskId}");
        }

        int id = (int)request.TaskId;
        int wanted = (int)request.Pages;
        int remote = _chain.RemoteRun(id, request.Address, wanted);
        if (remote > 0)
        {
            return AnswerFromSource(connection, request, header, pages, remote);
        }

        // the reply says how many pages follow: as many of those asked for as the chain holds in a row
        int available = 0;
        while (available < wanted && _chain.Covers(id, request.Address + ((ulong)available * PagemapEntry.PageSize)))
        {
            available++;
        }

        if (available == 0)
        {
            throw new PageServerException($"task {id} has no page at 0x{request.Address:x} in the staged images");
        }

        _protocol.Encode(new PageServerHeader((uint)PageServerCommand.AddWithFlags, PageServerProtocol.PresentFlag, (ulong)available, request.Address, request.TaskId), header);
        connection.Write(header);
        for (int sent = 0; sent < available;)
        {
            int piece = Math.Min(PiecePages, available - sent);
            _chain.Read(id, request.Address + ((ulong)sent * PagemapEntry.PageSize), piece, pages, found);
            connection.Write(pages, 0, piece * PagemapEntry.PageSize);
            sent += piece;
        }

        connection.Flush();
        return available;
    }

    /// <summary>
    /// Answers with pages the final dump left on the source: they are fetched from there, never read
    /// from an older set of the chain. A large request reads ahead to the end of the run of such pages
    /// (at most <see cref="PiecePages"/>): the daemon's background fill asks for some dozens of pages at a
    /// time and goes on from there, and every fetch is a round trip to the source node.
    /// </summary>
    private long AnswerFromSource(Stream connection, PageServerHeader request, byte[] header, byte[] pages, int available)
    {
        int id = (int)request.TaskId;
        if (_source is null)
        {
            throw new PageServerException($"task {id}'s pages at 0x{request.Address:x} were left on the source, and this page server has no way to fetch them");
        }

        for (int sent = 0; sent < available;)
        {
            ulong at = request.Address + ((ulong)sent * PagemapEntry.PageSize);
            int held = _ahead.PagesFrom(id, at);
            if (held == 0)
            {
                // fetched before the header goes out: a failure ends the session without a reply CRIU would misread
                // a large request is the daemon's background fill, which goes on from there: read ahead; a small one is a
                // fault of the running process, wherever it touched: fetch just that
                int wantedHere = available - sent;
                int fetch = _ahead.Before(id, at, wantedHere >= ReadAheadFrom ? _chain.RemoteRun(id, at, PiecePages) : wantedHere);
                try
                {
                    _source.Read(id, at, fetch, _ahead.Take(id, at, fetch));
                }
                catch
                {
                    _ahead.DropNewest();
                    throw;
                }

                _fetched += fetch;
                held = fetch;
            }

            if (sent == 0)
            {
                _protocol.Encode(new PageServerHeader((uint)PageServerCommand.AddWithFlags, PageServerProtocol.PresentFlag, (ulong)available, request.Address, request.TaskId), header);
                connection.Write(header);
            }

            int piece = Math.Min(held, available - sent);
            connection.Write(_ahead.Slice(at, piece));
            sent += piece;
        }

        connection.Flush();
        _fromSource += available;
        return available;
    }

    /// <summary>
    /// The runs last fetched from the source (a few, each of one task: the daemon's background fill and
    /// the faults of the running processes ask at different places in turn). A page is served once, so a
    /// run is dropped when the newest ones need its room.
    /// </summary>
    private sealed class ReadAhead
    {
        private const int Runs = 64;
        private readonly LinkedList<Run> _runs = new();

        /// <summary>How many pages from <paramref name="address"/> on are held (0: none); the run holding them becomes the newest.</summary>
        public int PagesFrom(int task, ulong address)
        {
            for (var node = _runs.First; node is not null; node = node.Next)
            {
                var run = node.Value;
                if (run.Task == task && address >= run.Start && address < run.End)
                {
                    _runs.Remove(node);
                    _runs.AddFirst(node);
                    return (int)((run.End - address) / PagemapEntry.PageSize);
                }
            }

            return 0;
        }

        /// <summary>How many of <paramref name="pages"/> pages from <paramref name="address"/> on come before a run already held (so that none is fetched twice).</summary>
        public int Before(int task, ulong address, int pages)
        {
            ulong end = address + ((ulong)pages * PagemapEntry.PageSize);
            foreach (var run in _runs)
            {
                if (run.Task == task && run.Start > address && run.Start < end)
                {
                    end = run.Start;
                }
            }

            return (int)((end - address) / PagemapEntry.PageSize);
        }

        /// <summary>Room for a new run of <paramref name="pages"/> pages (the oldest run's, once there are enough).</summary>
        public Span<byte> Take(int task, ulong start, int pages)
        {
            Run run;
            if (_runs.Count < Runs)
            {
                run = new Run(new byte[PiecePages * PagemapEntry.PageSize]);
            }
            else
            {
                run = _runs.Last!.Value;
                _runs.RemoveLast();
            }

            (run.Task, run.Start, run.End) = (task, start, start + ((ulong)pages * PagemapEntry.PageSize));
            _runs.AddFirst(run);
            return run.Buffer.AsSpan(0, pages * PagemapEntry.PageSize);
        }

        /// <summary>The bytes of pages held from <paramref name="address"/> on (the newest run holds them: see <see cref="PagesFrom"/>).</summary>
        public ReadOnlySpan<byte> Slice(ulong address, int pages)
        {
            var run = _runs.First!.Value;
            return run.Buffer.AsSpan((int)(address - run.Start), pages * PagemapEntry.PageSize);
        }

        /// <summary>Drops the newest run (its fetch failed).</summary>
        public void DropNewest() => _runs.RemoveFirst();

        private sealed class Run(byte[] buffer)
        {
            public byte[] Buffer { get; } = buffer;

            public int Task { get; set; }

            public ulong Start { get; set; }

            public ulong End { get; set; }
        }
    }

    /// <summary>Reads a whole header; 0 at a clean end of the stream.</summary>
    private static int ReadHeader(Stream connection, byte[] header)
    {
        int done = 0;
        while (done < header.Length)
        {
            int read = connection.Read(header, done, header.Length - done);
            if (read == 0)
            {
                return done == 0 ? 0 : throw new PageServerException($"the lazy-pages daemon's connection ended inside a request header ({done} of {header.Length} bytes)");
            }

            done += read;
        }

        return done;
    }
}

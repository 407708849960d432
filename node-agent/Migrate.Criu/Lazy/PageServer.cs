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
/// <param name="PagesFetched">Pages fetched from the source (each at most once), whether asked for or fetched ahead.</param>
/// <param name="PagesPrefetched">Of those, pages fetched in the background, ahead of any request.</param>
/// <param name="SinglePageRequests">Requests for one page: the daemon asks so for a page a restored process touched.</param>
/// <param name="Answering">Of <paramref name="Elapsed"/>, the time spent answering (the rest is the daemon's: waiting for its next request).</param>
public sealed record PageServerReport(long Requests, long PagesServed, bool ClosedByDaemon, TimeSpan Elapsed, long PagesFromSource = 0, long PagesFetched = 0, long PagesPrefetched = 0,
    long SinglePageRequests = 0, TimeSpan Answering = default)
{
    public long BytesServed => PagesServed * PagemapEntry.PageSize;
}

/// <summary>A request the page server cannot answer; the session ends (CRIU's own server does the same).</summary>
public class PageServerException(string message) : Exception(message);

/// <summary>The connection to the node's agent broke, or the agent did not answer: a restarting agent may be back soon.</summary>
internal sealed class AgentConnectionException(string message) : PageServerException(message);

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

    private static readonly byte[] SessionOver = [0, 0, 0, 0];

    private readonly ImageChain _chain;
    private readonly PageServerProtocol _protocol;
    private readonly SourcePages? _fromSourceStore;
    private long _fromSource;

    /// <param name="memoryDirectory">The image set that holds (or refers to its parents for) every lazy page, or lists it as left on the source.</param>
    /// <param name="protocol">The wire format of the CRIU that runs the daemon.</param>
    /// <param name="source">Where the pages left on the source come from when asked for (null: nowhere; a request for one ends the session).</param>
    public PageServer(string memoryDirectory, PageServerProtocol protocol, IPageSource? source = null)
    {
        ArgumentNullException.ThrowIfNull(protocol);
        _protocol = protocol;
        var directory = Path.GetFullPath(memoryDirectory);
        _chain = ImageChain.Open(directory);
        // every file is open from the start: the node may delete the staged images while the daemon still fills pages
        _chain.OpenAll();
        var remote = SourcePages.LeftIn(directory);
        if (remote.Count > 0 && source is not null)
        {
            _fromSourceStore = new SourcePages(remote, directory, source);
        }
    }

    /// <summary>
    /// Streams all the pages left on the source in the background, on connections
    /// <paramref name="connect"/> opens (<see cref="SourcePages.StartPrefetch"/>), so that the daemon
    /// finds most of them here. Without pages left on the source (or a source), none is opened.
    /// </summary>
    public void StartPrefetch(Func<IPipelinedPageSource> connect)
    {
        ArgumentNullException.ThrowIfNull(connect);
        if (_fromSourceStore is null)
        {
            return;
        }

        _fromSourceStore.StartPrefetch(connect, BytesPerSecond);
    }

    /// <summary>
    /// At most this many bytes of pages a second (0: as fast as the daemon asks), served and fetched in
    /// the background alike. Emulates a slow supply of pages (a slow disk, or pages coming over a slow
    /// link) in the sandbox's fault tests.
    /// </summary>
    public long BytesPerSecond { get; init; }

    /// <summary>Answers the daemon's requests on <paramref name="connection"/> until it closes the session.</summary>
    public PageServerReport Serve(Stream connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var clock = Stopwatch.StartNew();
        var header = new byte[_protocol.HeaderSize];
        // a reply's header, then a piece of its pages (see WritePiece)
        var pages = new byte[header.Length + (PiecePages * PagemapEntry.PageSize)];
        var found = new bool[PiecePages];
        long requests = 0, served = 0, single = 0;
        long answering = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int got = ReadHeader(connection, header);
            if (got == 0)
            {
                return Report(requests, served, single, answering, false, clock);
            }

            var request = _protocol.Decode(header);
            switch ((PageServerCommand)request.Command)
            {
                case PageServerCommand.Get:
                    long began = Stopwatch.GetTimestamp();
                    served += Answer(connection, request, header, pages, found);
                    answering += Stopwatch.GetTimestamp() - began;
                    requests++;
                    single += request.Pages == 1 ? 1 : 0;
                    Pace(served, clock);
                    break;
                case PageServerCommand.Close or PageServerCommand.ForceClose:
                    // the status CRIU's own page server answers: all done
                    connection.Write(SessionOver);
                    connection.Flush();
                    return Report(requests, served, single, answering, true, clock);
                default:
                    throw new PageServerException($"the lazy-pages daemon sent command 0x{request.Command:x}, which a page server for a restore does not take");
            }
        }
    }

    public void Dispose()
    {
        _fromSourceStore?.Dispose();
        _chain.Dispose();
    }

    private PageServerReport Report(long requests, long served, long single, long answeringTicks, bool closed, Stopwatch clock)
    {
        var fetching = _fromSourceStore?.Report();
        return new PageServerReport(requests, served, closed, clock.Elapsed, _fromSource, fetching?.Fetched ?? 0, fetching?.Prefetched ?? 0,
            single, Stopwatch.GetElapsedTime(0, answeringTicks));
    }

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
        int available = _chain.CoveredRun(id, request.Address, wanted);
        if (available == 0)
        {
            throw new PageServerException($"task {id} has no page at 0x{request.Address:x} in the staged images");
        }

        _protocol.Encode(new PageServerHeader((uint)PageServerCommand.AddWithFlags, PageServerProtocol.PresentFlag, (ulong)available, request.Address, request.TaskId), header);
        for (int sent = 0; sent < available;)
        {
            int piece = Math.Min(PiecePages, available - sent);
            _chain.Read(id, request.Address + ((ulong)sent * PagemapEntry.PageSize), piece, pages.AsSpan(header.Length), found);
            WritePiece(connection, header, pages, piece, first: sent == 0);
            sent += piece;
        }

        connection.Flush();
        return available;
    }

    /// <summary>
    /// Answers with pages the final dump left on the source: they come from there (fetched now, or
    /// already in the background), never from an older set of the chain.
    /// </summary>
    private long AnswerFromSource(Stream connection, PageServerHeader request, byte[] header, byte[] pages, int available)
    {
        int id = (int)request.TaskId;
        var store = _fromSourceStore
            ?? throw new PageServerException($"task {id}'s pages at 0x{request.Address:x} were left on the source, and this page server has no way to fetch them");
        for (int sent = 0; sent < available;)
        {
            int piece = Math.Min(PiecePages, available - sent);
            // the first piece is had before the header goes out: a failure ends the session without a reply CRIU would misread
            // the daemon asks for the one page a process touched (its faults), or for more in the background
            store.Read(id, request.Address + ((ulong)sent * PagemapEntry.PageSize), piece, pages.AsSpan(header.Length), fault: request.Pages == 1);
            if (sent == 0)
            {
                _protocol.Encode(new PageServerHeader((uint)PageServerCommand.AddWithFlags, PageServerProtocol.PresentFlag, (ulong)available, request.Address, request.TaskId), header);
            }

            WritePiece(connection, header, pages, piece, first: sent == 0);
            sent += piece;
        }

        connection.Flush();
        _fromSource += available;
        return available;
    }

    /// <summary>
    /// Sends a piece of pages read into <paramref name="buffer"/> after its first header-sized bytes;
    /// the first piece of a reply goes in one write with the reply's header before it, so that the
    /// daemon finds the pages with the header and does not wait for them a second time.
    /// </summary>
    private static void WritePiece(Stream connection, byte[] header, byte[] buffer, int pieces, bool first)
    {
        int bytes = pieces * PagemapEntry.PageSize;
        if (first)
        {
            header.CopyTo(buffer, 0);
            connection.Write(buffer, 0, header.Length + bytes);
        }
        else
        {
            connection.Write(buffer, header.Length, bytes);
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

using System.Diagnostics;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;

namespace Migrate.Criu.Lazy;

/// <summary>What one page-server session did.</summary>
/// <param name="Requests">Page requests answered.</param>
/// <param name="PagesServed">Pages sent.</param>
/// <param name="ClosedByDaemon">The daemon ended the session (it had every page it needed); false if the connection just ended.</param>
/// <param name="Elapsed">Wall time of the session.</param>
public sealed record PageServerReport(long Requests, long PagesServed, bool ClosedByDaemon, TimeSpan Elapsed)
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

    private static readonly byte[] SessionOver = [0, 0, 0, 0];

    private readonly ImageChain _chain;
    private readonly PageServerProtocol _protocol;

    /// <param name="memoryDirectory">The image set that holds (or refers to its parents for) every lazy page.</param>
    /// <param name="protocol">The wire format of the CRIU that runs the daemon.</param>
    public PageServer(string memoryDirectory, PageServerProtocol protocol)
    {
        ArgumentNullException.ThrowIfNull(protocol);
        _protocol = protocol;
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
                return new PageServerReport(requests, served, false, clock.Elapsed);
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
                    return new PageServerReport(requests, served, true, clock.Elapsed);
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

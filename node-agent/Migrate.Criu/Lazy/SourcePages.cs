using Microsoft.Win32.SafeHandles;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;

namespace Migrate.Criu.Lazy;

/// <summary>
/// A connection to the pages left on the source that takes all its requests before their answers,
/// which come back in the order asked, in one stream (no round trip per request).
/// </summary>
public interface IPipelinedPageSource : IDisposable
{
    /// <summary>Asks for <paramref name="pages"/> pages of task <paramref name="taskId"/> from <paramref name="address"/> on.</summary>
    void Send(int taskId, ulong address, int pages);

    /// <summary>Says no more requests come.</summary>
    void EndOfRequests();

    /// <summary>Reads the answer to the oldest request not yet answered; throws when it was refused or the connection failed.</summary>
    void Receive(Span<byte> destination);
}

/// <summary>What became of the pages a post-copy dump left on the source, seen from the target.</summary>
/// <param name="Pages">Pages left on the source, in all.</param>
/// <param name="Fetched">Pages fetched so far (each at most once).</param>
/// <param name="Prefetched">Of those, pages fetched ahead of any request, in the background.</param>
/// <param name="PrefetchFailure">Why the background fetching stopped early (null: it did not).</param>
public sealed record SourcePagesReport(long Pages, long Fetched, long Prefetched, string? PrefetchFailure);

/// <summary>
/// The pages a post-copy final dump left on the source, as the target's page server gets them: each
/// kept once, in a file of this node (unlinked at once: nothing is left behind), and served from
/// there. In the background, <see cref="StartPrefetch"/> streams all of them from the source in
/// address order. The lazy-pages daemon's requests take what is already here; a fault of the
/// restored processes fetches what is not at once, on its own connection, and the stream then
/// skips it; the daemon's background fill, which goes in the same order as the stream, waits for the
/// stream instead of fetching the same pages a second time.
/// </summary>
public sealed class SourcePages : IDisposable
{
    /// <summary>The most pages one request asks for (see <see cref="RemotePagesProtocol.MaxPages"/>).</summary>
    public const int PiecePages = RemotePagesProtocol.MaxPages;

    private const byte Missing = 0;
    private const byte Fetching = 1;
    private const byte Held = 2;

    /// <summary>Asked for in the stream, not come yet.</summary>
    private const byte Coming = 3;

    private readonly object _gate = new();
    private readonly Run[] _runs;
    private readonly Dictionary<int, Run[]> _byTask;
    private readonly byte[] _state;
    private readonly SafeFileHandle _file;
    private readonly IPageSource _faults;
    private Thread? _prefetch;
    private IPipelinedPageSource? _stream;
    private volatile bool _stopping;
    private long _fetched;
    private long _prefetched;
    private string? _prefetchFailure;

    /// <param name="remote">The runs of pages each task left on the source.</param>
    /// <param name="spillDirectory">Where the fetched pages are kept until asked for (a file there, unlinked at once).</param>
    /// <param name="faults">Where pages asked for and not yet here are fetched from, one request at a time.</param>
    public SourcePages(IReadOnlyDictionary<int, PagemapEntry[]> remote, string spillDirectory, IPageSource faults)
    {
        ArgumentNullException.ThrowIfNull(remote);
        ArgumentNullException.ThrowIfNull(faults);
        _faults = faults;
        var runs = new List<Run>();
        long next = 0;
        foreach (var (task, entries) in remote.OrderBy(t => t.Key))
        {
            foreach (var entry in entries.Where(e => e.PageCount > 0).OrderBy(e => e.Address))
            {
                runs.Add(new Run(task, entry.Address, checked((long)entry.PageCount), next));
                next = checked(next + (long)entry.PageCount);
            }
        }

        _runs = [.. runs];
        _byTask = _runs.GroupBy(r => r.Task).ToDictionary(g => g.Key, g => g.ToArray());
        _state = new byte[next];
        var path = Path.Combine(spillDirectory, $".source-pages-{Environment.ProcessId}-{Guid.NewGuid():N}");
        _file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        File.Delete(path);
    }

    /// <summary>By task, the runs of pages the image set in <paramref name="memoryDirectory"/> lists as left on the source (none: empty).</summary>
    public static Dictionary<int, PagemapEntry[]> LeftIn(string memoryDirectory) =>
        ImageChain.Pagemaps(memoryDirectory)
            .Select(m => (m.Id, Runs: m.Entries.Where(e => e.IsLeftLazy).ToArray()))
            .Where(t => t.Runs.Length > 0)
            .ToDictionary(t => t.Id, t => t.Runs);

    /// <summary>Pages left on the source, in all.</summary>
    public long Pages => _state.Length;

    /// <summary>How far the fetching got.</summary>
    public SourcePagesReport Report()
    {
        lock (_gate)
        {
            return new SourcePagesReport(Pages, _fetched, _prefetched, _prefetchFailure);
        }
    }

    /// <summary>
    /// Streams every page from the source on connections <paramref name="connect"/> opens (each
    /// owned, and closed when its part is done): on each, up to <paramref name="maxRequests"/>
    /// requests (what one pages lane carries), then their answers in order, each stored unless a
    /// request fetched its pages first; until all have come or a connection fails (the requests then
    /// fetch what they need themselves). Pages left in many short runs need more requests than one
    /// lane carries (a pod writing its memory a page here and there): they take several connections,
    /// one after the other. With <paramref name="bytesPerSecond"/>, no faster than that (a slow link,
    /// emulated for the sandbox's fault tests).
    /// </summary>
    public void StartPrefetch(Func<IPipelinedPageSource> connect, long bytesPerSecond = 0, int maxRequests = PagesLane.MaxRequests)
    {
        ArgumentNullException.ThrowIfNull(connect);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRequests, 1);
        if (_prefetch is not null)
        {
            throw new InvalidOperationException("the pages are being prefetched already");
        }

        lock (_gate)
        {
            for (int i = 0; i < _state.Length; i++)
            {
                if (_state[i] == Missing)
                {
                    _state[i] = Coming;
                }
            }
        }

        _prefetch = new Thread(() => Prefetch(connect, bytesPerSecond, maxRequests)) { IsBackground = true, Name = "source-pages-prefetch" };
        _prefetch.Start();
    }

    /// <summary>
    /// Reads <paramref name="pages"/> pages of task <paramref name="taskId"/> from <paramref name="address"/>
    /// on (all of them left on the source, in one run) into <paramref name="destination"/>: what is here
    /// from here, what is being stored once it is, the rest fetched now. A <paramref name="fault"/> (a
    /// page the restored process touched, which waits for it) fetches what is not here at once; any
    /// other request (the daemon's background fill, which goes in the stream's order) waits for the
    /// stream to bring what it is bringing rather than send those pages twice. Throws when a fetch fails.
    /// </summary>
    public void Read(int taskId, ulong address, int pages, Span<byte> destination, bool fault = false)
    {
        long first = Locate(taskId, address, pages);
        int length = checked(pages * PagemapEntry.PageSize);
        List<(long Index, int Count)> wanted;
        lock (_gate)
        {
            while (Any(first, pages, Fetching) || (!fault && Any(first, pages, Coming)))
            {
                Monitor.Wait(_gate);
            }

            wanted = Claim(first, pages);
        }

        for (int w = 0; w < wanted.Count; w++)
        {
            var (index, count) = wanted[w];
            try
            {
                var buffer = destination[..(count * PagemapEntry.PageSize)];
                _faults.Read(taskId, address + (ulong)((index - first) * PagemapEntry.PageSize), count, buffer);
                RandomAccess.Write(_file, buffer, index * PagemapEntry.PageSize);
            }
            catch
            {
                lock (_gate)
                {
                    foreach (var (rest, restCount) in wanted.Skip(w))
                    {
                        Mark(rest, restCount, Missing);
                    }

                    Monitor.PulseAll(_gate);
                }

                throw;
            }

            lock (_gate)
            {
                Mark(index, count, Held);
                _fetched += count;
                Monitor.PulseAll(_gate);
            }
        }

        ReadHeld(first * PagemapEntry.PageSize, destination[..length]);
    }

    /// <summary>
    /// How many of <paramref name="pages"/> pages of task <paramref name="taskId"/> from
    /// <paramref name="address"/> on (all left on the source, in one run) a background
    /// <see cref="Read"/> takes without waiting: the leading ones here already, or that nothing is
    /// bringing (the read fetches those itself). 0 when the first is still on its way in the stream,
    /// or being fetched: a caller with other work does that first.
    /// </summary>
    public int ReadyRun(int taskId, ulong address, int pages)
    {
        long first = Locate(taskId, address, pages);
        lock (_gate)
        {
            int ready = 0;
            while (ready < pages && _state[first + ready] is Held or Missing)
            {
                ready++;
            }

            return ready;
        }
    }

    public void Dispose()
    {
        _stopping = true;
        lock (_gate)
        {
            Monitor.PulseAll(_gate);
        }

        // closing the stream's connection ends a read that waits on it: a stuck stream does not hold the page server's exit
        IPipelinedPageSource? stream;
        lock (_gate)
        {
            stream = _stream;
        }

        stream?.Dispose();
        _prefetch?.Join(TimeSpan.FromSeconds(10));
        _file.Dispose();
    }

    private void Prefetch(Func<IPipelinedPageSource> connect, long bytesPerSecond, int maxRequests)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var buffer = new byte[PiecePages * PagemapEntry.PageSize];
        var pieces = new List<(Run Run, long Index, int Count)>();
        foreach (var run in _runs)
        {
            for (long index = run.First; index < run.First + run.Pages; index += PiecePages)
            {
                pieces.Add((run, index, (int)Math.Min(PiecePages, run.First + run.Pages - index)));
            }
        }

        {
            try
            {
                long received = 0;
                for (int start = 0; start < pieces.Count; start += maxRequests)
                {
                    var batch = pieces.GetRange(start, Math.Min(maxRequests, pieces.Count - start));
                    using var connection = connect();
                    lock (_gate)
                    {
                        _stream = connection;
                    }

                    if (_stopping)
                    {
                        return; // disposed meanwhile: this connection is closed here, not by Dispose
                    }

                    foreach (var (run, index, count) in batch)
                    {
                        connection.Send(run.Task, run.Address + (ulong)((index - run.First) * PagemapEntry.PageSize), count);
                    }

                    connection.EndOfRequests();
                    foreach (var (_, index, count) in batch)
                    {
                        if (_stopping)
                        {
                            return;
                        }

                        var pages = buffer.AsSpan(0, count * PagemapEntry.PageSize);
                        connection.Receive(pages);
                        received += count;
                        Pace(received, bytesPerSecond, clock);
                        Store(index, pages);
                    }
                }
            }
            catch (Exception e) when (e is PageServerException or IOException or System.Net.Sockets.SocketException or ObjectDisposedException or InvalidDataException)
            {
                lock (_gate)
                {
                    _prefetchFailure = e.Message;
                }
            }
            finally
            {
                // what the stream did not bring is fetched by whoever asks for it
                lock (_gate)
                {
                    for (int i = 0; i < _state.Length; i++)
                    {
                        if (_state[i] == Coming)
                        {
                            _state[i] = Missing;
                        }
                    }

                    Monitor.PulseAll(_gate);
                }
            }
        }
    }

    private static bool Fetchable(byte state) => state is Missing or Coming;

    /// <summary>The runs of pages among <paramref name="count"/> from <paramref name="first"/> that are neither here nor being stored, now being fetched (under the gate).</summary>
    private List<(long Index, int Count)> Claim(long first, int count)
    {
        var claimed = new List<(long Index, int Count)>();
        for (long i = first; i < first + count;)
        {
            if (!Fetchable(_state[i]))
            {
                i++;
                continue;
            }

            long start = i;
            while (i < first + count && Fetchable(_state[i]))
            {
                _state[i++] = Fetching;
            }

            claimed.Add((start, (int)(i - start)));
        }

        return claimed;
    }

    /// <summary>Stores the pages of a piece that came in the stream, except those a request fetched (or is fetching) itself.</summary>
    private void Store(long first, ReadOnlySpan<byte> pages)
    {
        int count = pages.Length / PagemapEntry.PageSize;
        List<(long Index, int Count)> missing;
        lock (_gate)
        {
            missing = Claim(first, count);
        }

        int stored = 0;
        try
        {
            foreach (var (index, n) in missing)
            {
                RandomAccess.Write(_file, pages.Slice((int)(index - first) * PagemapEntry.PageSize, n * PagemapEntry.PageSize), index * PagemapEntry.PageSize);
                stored++;
            }
        }
        finally
        {
            lock (_gate)
            {
                for (int m = 0; m < missing.Count; m++)
                {
                    var (index, n) = missing[m];
                    Mark(index, n, m < stored ? Held : Missing);
                    if (m < stored)
                    {
                        _fetched += n;
                        _prefetched += n;
                    }
                }

                Monitor.PulseAll(_gate);
            }
        }
    }

    private static void Pace(long pages, long bytesPerSecond, System.Diagnostics.Stopwatch clock)
    {
        if (bytesPerSecond > 0)
        {
            var due = TimeSpan.FromSeconds((double)pages * PagemapEntry.PageSize / bytesPerSecond);
            if (due > clock.Elapsed)
            {
                Thread.Sleep(due - clock.Elapsed);
            }
        }
    }

    private long Locate(int taskId, ulong address, int pages)
    {
        if (pages <= 0 || address % PagemapEntry.PageSize != 0 || !_byTask.TryGetValue(taskId, out var runs))
        {
            throw new PageServerException($"{pages} pages at 0x{address:x} of task {taskId} were not left on the source");
        }

        int found = AddressRuns.IndexOf(runs, address);
        if (found < 0 || (address - runs[found].Address) / PagemapEntry.PageSize + (ulong)pages > (ulong)runs[found].Pages)
        {
            throw new PageServerException($"{pages} pages at 0x{address:x} of task {taskId} were not left on the source");
        }

        return runs[found].First + (long)((address - runs[found].Address) / PagemapEntry.PageSize);
    }

    private Run RunAt(long index)
    {
        int lo = 0, hi = _runs.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (_runs[mid].First <= index)
            {
                lo = mid;
            }
            else
            {
                hi = mid - 1;
            }
        }

        return _runs[lo];
    }

    private bool Any(long first, int count, byte state)
    {
        for (long i = first; i < first + count; i++)
        {
            if (_state[i] == state)
            {
                return true;
            }
        }

        return false;
    }

    private void Mark(long first, int count, byte state) => _state.AsSpan((int)first, count).Fill(state);

    private void ReadHeld(long offset, Span<byte> destination)
    {
        for (int done = 0; done < destination.Length;)
        {
            int read = RandomAccess.Read(_file, destination[done..], offset + done);
            if (read <= 0)
            {
                throw new IOException($"the fetched pages at offset {offset + done} of the page server's file could not be read back");
            }

            done += read;
        }
    }

    private sealed record Run(int Task, ulong Address, long Pages, long First) : IAddressRun
    {
        public ulong Start => Address;

        public ulong End => Address + ((ulong)Pages * PagemapEntry.PageSize);
    }
}

using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;

namespace Migrate.Criu.Lazy;

/// <summary>Where a page server gets the pages an image set left on the source (post-copy).</summary>
public interface IPageSource
{
    /// <summary>
    /// Reads <paramref name="pages"/> pages of task <paramref name="taskId"/> from
    /// <paramref name="address"/> on into <paramref name="destination"/>; throws when they cannot be
    /// had (the page server then ends, and the restore is judged failed).
    /// </summary>
    void Read(int taskId, ulong address, int pages, Span<byte> destination);
}

/// <summary>
/// The pages a post-copy final dump left on the source, read from the frozen process tree itself.
/// Only the pages its memory set lists as left on the source can be read: a request for any other
/// address is refused, whoever asks.
/// </summary>
public sealed class LivePages : IPageSource, IDisposable
{
    private readonly Dictionary<int, (SafeFileHandle Memory, PagemapEntry[] Remote)> _tasks;

    private LivePages(Dictionary<int, (SafeFileHandle, PagemapEntry[])> tasks)
    {
        _tasks = tasks;
        RemotePages = tasks.Values.Aggregate(0UL, (sum, t) => sum + t.Item2.Aggregate(0UL, (s, e) => s + e.PageCount));
    }

    /// <summary>Pages left on the source, in all.</summary>
    public ulong RemotePages { get; }

    /// <summary>
    /// Opens the memory of the tree rooted at <paramref name="rootPid"/> (frozen, as the final dump
    /// left it) for the pages <paramref name="memoryDirectory"/> lists as left on the source.
    /// </summary>
    public static LivePages Open(int rootPid, string memoryDirectory)
    {
        var hostPids = LiveProcessTree.Enumerate(rootPid).ToDictionary(t => t.ImageId, t => t.HostPid);
        var tasks = new Dictionary<int, (SafeFileHandle, PagemapEntry[])>();
        try
        {
            // the agent wrote this set moments ago and remembered what it wrote: taken as it is, not parsed again
            foreach (var map in ImageChain.Pagemaps(memoryDirectory))
            {
                var remote = Sorted(map.Entries.Where(e => e.IsLeftLazy), map.Id);
                if (remote.Length == 0)
                {
                    continue;
                }

                if (!hostPids.TryGetValue(map.Id, out int hostPid))
                {
                    throw new InvalidOperationException($"task {map.Id} left pages on the source but is not in the tree of process {rootPid} any more");
                }

                tasks[map.Id] = (File.OpenHandle($"/proc/{hostPid}/mem", FileMode.Open, FileAccess.Read), remote);
            }
        }
        catch
        {
            foreach (var (memory, _) in tasks.Values)
            {
                memory.Dispose();
            }

            throw;
        }

        return new LivePages(tasks);
    }

    public void Read(int taskId, ulong address, int pages, Span<byte> destination)
    {
        int length = checked(pages * PagemapEntry.PageSize);
        if (pages <= 0 || destination.Length < length || address % PagemapEntry.PageSize != 0)
        {
            throw new PageServerException($"malformed page request: {pages} pages at 0x{address:x} of task {taskId}");
        }

        if (!_tasks.TryGetValue(taskId, out var task))
        {
            throw new PageServerException($"task {taskId} left no pages on the source");
        }

        if (!IsLeft(task.Remote, address, pages))
        {
            throw new PageServerException($"{pages} pages from 0x{address:x} of task {taskId} are not among those left on the source");
        }

        for (int done = 0; done < length;)
        {
            int read = RandomAccess.Read(task.Memory, destination[done..length], (long)address + done);
            if (read <= 0)
            {
                throw new IOException($"could not read the pages at 0x{address + (ulong)done:x} of task {taskId} from the frozen source");
            }

            done += read;
        }
    }

    /// <summary>
    /// Whether the <paramref name="pages"/> pages from <paramref name="address"/> all lie in one run of
    /// <paramref name="remote"/> (sorted by address, not overlapping): found by a binary search, as a
    /// stream asks for each of tens of thousands of runs in turn (a scan of all of them for every
    /// request made a 4 GiB pod's stream quadratic). Compared without adding to the address, which a
    /// hostile request may put near 2^64.
    /// </summary>
    public static bool IsLeft(PagemapEntry[] remote, ulong address, int pages)
    {
        ArgumentNullException.ThrowIfNull(remote);
        int found = AddressRuns.IndexOf(remote, address);
        return found >= 0 && pages > 0 && (ulong)pages * PagemapEntry.PageSize <= remote[found].End - address;
    }

    /// <summary>A task's runs left on the source in address order; runs that overlap make the images malformed.</summary>
    private static PagemapEntry[] Sorted(IEnumerable<PagemapEntry> runs, int taskId)
    {
        var sorted = runs.OrderBy(e => e.Address).ToArray();
        for (int i = 1; i < sorted.Length; i++)
        {
            if (sorted[i].Address < sorted[i - 1].End)
            {
                throw new InvalidDataException($"the memory images list pages of task {taskId} at 0x{sorted[i].Address:x} as left on the source twice");
            }
        }

        return sorted;
    }

    public void Dispose()
    {
        foreach (var (memory, _) in _tasks.Values)
        {
            memory.Dispose();
        }
    }
}

/// <summary>What a page server's connection to its agent is for (see <see cref="RemotePagesProtocol"/>).</summary>
public enum RemotePagesKind : ushort
{
    /// <summary>Requests passed on one by one, as they come.</summary>
    Fetch = 1,

    /// <summary>All requests first, then all answers, fetched in one go.</summary>
    Stream = 2,
}

/// <summary>
/// The local protocol between a restore's page server and its node's agent, which fetches the pages
/// a post-copy dump left on the source from the source's agent. Over a Unix socket in the migration's
/// directory (owner only). The page server opens with a hello naming its container and the kind of
/// connection; then each request is <c>{u32 task; u32 pages; u64 address}</c> and each answer a u32
/// status: 0 and the pages' bytes, or 1, a u32 length and a UTF-8 reason, after which the agent
/// closes the connection. On a <see cref="RemotePagesKind.Fetch"/> connection the agent passes each
/// request on as it comes (the restored processes' faults); on a <see cref="RemotePagesKind.Stream"/>
/// one the page server sends all its requests and ends its side, and the agent fetches them all in
/// one go on the pages lane. Little-endian throughout.
/// </summary>
public static class RemotePagesProtocol
{
    /// <summary>The socket's name in the migration's incoming directory.</summary>
    public const string SocketName = "pages.sock";

    /// <summary>The most pages one request may ask for.</summary>
    public const int MaxPages = 256;

    public const int RequestSize = 16;

    private const uint Magic = 0x47504d50; // "PMPG"
    private const int MaxNameBytes = 253;

    public static void WriteHello(Stream stream, string container, RemotePagesKind kind = RemotePagesKind.Fetch)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var name = Encoding.UTF8.GetBytes(container);
        if (name.Length is 0 or > MaxNameBytes)
        {
            throw new ArgumentException($"container name '{container}' is not one a pod can have", nameof(container));
        }

        var hello = new byte[8 + name.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(hello, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(hello.AsSpan(4), (ushort)kind);
        BinaryPrimitives.WriteUInt16LittleEndian(hello.AsSpan(6), (ushort)name.Length);
        name.CopyTo(hello, 8);
        stream.Write(hello);
    }

    /// <summary>The container a hello names, and the kind of connection; throws <see cref="InvalidDataException"/> for anything else.</summary>
    public static async Task<(string Container, RemotePagesKind Kind)> ReadHelloAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var head = new byte[8];
        await stream.ReadExactlyAsync(head, cancellationToken);
        var kind = (RemotePagesKind)BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(4));
        if (BinaryPrimitives.ReadUInt32LittleEndian(head) != Magic || kind is not (RemotePagesKind.Fetch or RemotePagesKind.Stream))
        {
            throw new InvalidDataException("the connection did not open with a page server's hello");
        }

        int length = BinaryPrimitives.ReadUInt16LittleEndian(head.AsSpan(6));
        if (length is 0 or > MaxNameBytes)
        {
            throw new InvalidDataException($"a hello's container name of {length} bytes");
        }

        var name = new byte[length];
        await stream.ReadExactlyAsync(name, cancellationToken);
        return (Encoding.UTF8.GetString(name), kind);
    }

    public static void WriteRequest(Span<byte> destination, int taskId, ulong address, int pages)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, checked((uint)taskId));
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], checked((uint)pages));
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], address);
    }

    /// <summary>A request (null at a clean end of the stream); throws <see cref="InvalidDataException"/> for a malformed one.</summary>
    public static async Task<(int TaskId, ulong Address, int Pages)?> ReadRequestAsync(Stream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(buffer);
        int got = await stream.ReadAtLeastAsync(buffer.AsMemory(0, RequestSize), RequestSize, throwOnEndOfStream: false, cancellationToken);
        if (got == 0)
        {
            return null;
        }

        if (got < RequestSize)
        {
            throw new InvalidDataException($"the page server's connection ended inside a request ({got} of {RequestSize} bytes)");
        }

        return ParseRequest(buffer.AsSpan(0, RequestSize), "a page request");
    }

    /// <summary>
    /// One request, <see cref="RequestSize"/> bytes <c>{u32 task; u32 pages; u64 address}</c>, checked: a
    /// task that can be, 1 to <see cref="MaxPages"/> pages, an aligned address whose range does not
    /// wrap. Throws <see cref="InvalidDataException"/> naming <paramref name="what"/> for anything else.
    /// The one reader of this format, for the page server's connection and the pages lane alike.
    /// </summary>
    public static (int TaskId, ulong Address, int Pages) ParseRequest(ReadOnlySpan<byte> request, string what)
    {
        if (request.Length != RequestSize)
        {
            throw new InvalidDataException($"{what} has {request.Length} bytes, not {RequestSize}");
        }

        uint task = BinaryPrimitives.ReadUInt32LittleEndian(request);
        uint pages = BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
        ulong address = BinaryPrimitives.ReadUInt64LittleEndian(request[8..]);
        if (task is 0 or > int.MaxValue || pages is 0 or > MaxPages || address % PagemapEntry.PageSize != 0
            || address > ulong.MaxValue - ((ulong)pages * PagemapEntry.PageSize))
        {
            throw new InvalidDataException($"{what} is malformed: {pages} pages at 0x{address:x} of task {task}");
        }

        return ((int)task, address, (int)pages);
    }

    public static async Task WriteAnswerAsync(Stream stream, ReadOnlyMemory<byte> pages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        await stream.WriteAsync(new byte[4], cancellationToken);
        await stream.WriteAsync(pages, cancellationToken);
    }

    public static async Task WriteRefusalAsync(Stream stream, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var text = Encoding.UTF8.GetBytes(reason.Length > 1000 ? reason[..1000] : reason);
        var head = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(head, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(head.AsSpan(4), (uint)text.Length);
        await stream.WriteAsync(head, cancellationToken);
        await stream.WriteAsync(text, cancellationToken);
    }

    /// <summary>Reads an answer's status and, for a refusal, throws with its reason.</summary>
    public static void ReadAnswer(Stream stream, Span<byte> pages)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Span<byte> head = stackalloc byte[4];
        stream.ReadExactly(head);
        uint status = BinaryPrimitives.ReadUInt32LittleEndian(head);
        if (status == 0)
        {
            stream.ReadExactly(pages);
            return;
        }

        stream.ReadExactly(head);
        int length = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(head), 4096);
        var text = new byte[length];
        stream.ReadExactly(text);
        throw new PageServerException("the node's agent could not fetch pages from the source: " + Encoding.UTF8.GetString(text));
    }
}

/// <summary>
/// A page server's way to the pages left on the source: its node's agent, over the migration's
/// <see cref="RemotePagesProtocol.SocketName"/>, connected at the first request.
/// </summary>
public sealed class RemotePageClient(string socketPath, string container, RemotePagesKind kind = RemotePagesKind.Fetch) : IPageSource, IPipelinedPageSource
{
    private readonly Queue<int> _asked = new();
    private readonly byte[] _request = new byte[RemotePagesProtocol.RequestSize];
    private Socket? _socket;
    private NetworkStream? _stream;

    /// <summary>Pages fetched so far.</summary>
    public long PagesFetched { get; private set; }

    /// <summary>
    /// How long <see cref="Read"/> keeps trying to reach the node's agent again when its connection
    /// broke or the agent does not answer (an agent restarting: it listens again on the same socket),
    /// asking again for the pages it had asked for; zero: not at all. A refusal is never retried.
    /// </summary>
    public TimeSpan ReconnectWindow { get; init; } = TimeSpan.Zero;

    /// <summary>The pause between two attempts to reach the agent again.</summary>
    public TimeSpan ReconnectDelay { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Times the connection to the agent was made again after it broke.</summary>
    public int Reconnects { get; private set; }

    public void Read(int taskId, ulong address, int pages, Span<byte> destination)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool again = false;
        while (true)
        {
            try
            {
                Send(taskId, address, pages);
                Receive(destination);
                Reconnects += again ? 1 : 0;
                return;
            }
            catch (AgentConnectionException) when (clock.Elapsed + ReconnectDelay < ReconnectWindow)
            {
                // a page asked twice is the same page: the source serves what it left, as often as asked
                Disconnect();
                again = true;
                Thread.Sleep(ReconnectDelay);
            }
        }
    }

    private void Disconnect()
    {
        _asked.Clear();
        _stream?.Dispose();
        _socket?.Dispose();
        _stream = null;
        _socket = null;
    }

    public void Send(int taskId, ulong address, int pages)
    {
        var stream = Connect();
        RemotePagesProtocol.WriteRequest(_request, taskId, address, pages);
        try
        {
            stream.Write(_request);
        }
        catch (IOException e)
        {
            throw Broke(e);
        }

        _asked.Enqueue(pages);
    }

    public void Receive(Span<byte> destination)
    {
        if (_stream is null || !_asked.TryDequeue(out int pages))
        {
            throw new InvalidOperationException("no request waits for its answer");
        }

        try
        {
            RemotePagesProtocol.ReadAnswer(_stream, destination[..(pages * PagemapEntry.PageSize)]);
        }
        catch (IOException e)
        {
            throw Broke(e);
        }

        PagesFetched += pages;
    }

    public void EndOfRequests()
    {
        try
        {
            Connect();
            _socket!.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException e)
        {
            throw Broke(e);
        }
    }

    private AgentConnectionException Broke(Exception e) =>
        new($"the connection to the node's agent at {socketPath}, which fetches the pages left on the source, broke: {(e.InnerException ?? e).Message}");

    private NetworkStream Connect()
    {
        if (_stream is not null)
        {
            return _stream;
        }

        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            UnixSocketPath.Use(socketPath, path => socket.Connect(new UnixDomainSocketEndPoint(path)));
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            socket.Dispose();
            throw new AgentConnectionException($"pages were left on the source, but the node's agent does not answer at {socketPath}: {e.Message}");
        }

        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        try
        {
            RemotePagesProtocol.WriteHello(_stream, container, kind);
        }
        catch (IOException e)
        {
            throw Broke(e);
        }

        return _stream;
    }

    public void Dispose() => Disconnect();
}

/// <summary>
/// A Unix socket's path that fits the kernel's 108 bytes: a long one is reached through a descriptor of
/// its directory (<c>/proc/self/fd/N/name</c>), held open while <see cref="Use"/> binds or connects.
/// </summary>
public static class UnixSocketPath
{
    private const int MaxPath = 100;

    public static void Use(string path, Action<string> bindOrConnect)
    {
        ArgumentNullException.ThrowIfNull(bindOrConnect);
        if (System.Text.Encoding.UTF8.GetByteCount(path) <= MaxPath)
        {
            bindOrConnect(path);
            return;
        }

        var directory = Path.GetDirectoryName(Path.GetFullPath(path)) ?? throw new ArgumentException($"{path} has no directory", nameof(path));
        int fd = Posix.Open(directory, Posix.ORdOnly | Posix.ODirectory | Posix.OCloExec);
        if (fd < 0)
        {
            throw new IOException($"could not open {directory}: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
        }

        try
        {
            bindOrConnect($"/proc/self/fd/{fd.ToString(System.Globalization.CultureInfo.InvariantCulture)}/{Path.GetFileName(path)}");
        }
        finally
        {
            Posix.Close(fd);
        }
    }
}

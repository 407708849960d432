using System.IO.Hashing;
using System.Net.Sockets;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The post-copy contracts: what the target's agent hands on from the source, and the page server's local protocol.</summary>
public sealed class PostCopyProtocolTests
{
    public static TheoryData<string, int, int, int, string?> Answers => new()
    {
        // case, bytes sent, pages asked, which byte of the data was flipped after hashing (-1: none), why refused
        { "whole and intact", 2 * PagemapEntry.PageSize, 2, -1, null },
        { "one flipped byte", 2 * PagemapEntry.PageSize, 2, 4097, "do not match their checksum" },
        { "first byte flipped", PagemapEntry.PageSize, 1, 0, "do not match their checksum" },
        { "short", PagemapEntry.PageSize, 2, -1, "sent 4096 bytes for 2 pages (8192 bytes)" },
        { "long", 3 * PagemapEntry.PageSize, 2, -1, "sent 12288 bytes for 2 pages" },
        { "empty", 0, 1, -1, "sent 0 bytes for 1 pages" },
    };

    [Theory]
    [MemberData(nameof(Answers))]
    public void Pages_from_the_source_are_handed_on_only_whole_and_matching_their_checksum(string name, int length, int pages, int flipped, string? says)
    {
        var data = new byte[length];
        new Random(length + pages).NextBytes(data);
        ulong checksum = XxHash64.HashToUInt64(data);
        if (flipped >= 0)
        {
            data[flipped] ^= 0x20;
        }

        var why = PostCopyRelay.Check(data, checksum, pages);
        if (says is null)
        {
            Assert.True(why is null, $"{name}: {why}");
        }
        else
        {
            Assert.True(why?.Contains(says, StringComparison.Ordinal) == true, $"{name}: {why}");
        }
    }

    public static TheoryData<string, uint, uint, ulong, string> BadRequests => new()
    {
        { "no task", 0, 1, 0x10000, "a page request is malformed" },
        { "no pages", 7, 0, 0x10000, "a page request is malformed" },
        { "too many pages", 7, RemotePagesProtocol.MaxPages + 1, 0x10000, "a page request is malformed" },
        { "unaligned", 7, 1, 0x10010, "a page request is malformed" },
        { "task beyond a PID", 0x80000000, 1, 0x10000, "a page request is malformed" },
        { "wrapping", 7, 2, ulong.MaxValue - 4095, "a page request is malformed" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task The_agent_refuses_a_malformed_request_from_a_page_server(string name, uint task, uint pages, ulong address, string says)
    {
        var raw = new byte[RemotePagesProtocol.RequestSize];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(raw, task);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(4), pages);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(raw.AsSpan(8), address);
        using var stream = new MemoryStream(raw);
        var error = await Assert.ThrowsAsync<InvalidDataException>(() => RemotePagesProtocol.ReadRequestAsync(stream, new byte[RemotePagesProtocol.RequestSize], CancellationToken.None));
        Assert.True(error.Message.Contains(says, StringComparison.Ordinal), $"{name}: {error.Message}");
    }

    [Fact]
    public async Task A_page_server_and_its_agent_agree_on_hello_requests_answers_and_refusals()
    {
        var (ours, theirs) = DetachedProcess.SocketPair();
        using var agentSide = new NetworkStream(theirs, ownsSocket: true);
        var agent = Task.Run(async () =>
        {
            var container = await RemotePagesProtocol.ReadHelloAsync(agentSide, CancellationToken.None);
            var buffer = new byte[RemotePagesProtocol.RequestSize];
            var first = await RemotePagesProtocol.ReadRequestAsync(agentSide, buffer, CancellationToken.None);
            await RemotePagesProtocol.WriteAnswerAsync(agentSide, Enumerable.Repeat((byte)5, first!.Value.Pages * PagemapEntry.PageSize).ToArray(), CancellationToken.None);
            var second = await RemotePagesProtocol.ReadRequestAsync(agentSide, buffer, CancellationToken.None);
            await RemotePagesProtocol.WriteRefusalAsync(agentSide, "the source's agent is gone", CancellationToken.None);
            return (container, first, second);
        });

        using var client = new NetworkStream(ours, ownsSocket: true);
        RemotePagesProtocol.WriteHello(client, "main");
        var request = new byte[RemotePagesProtocol.RequestSize];
        RemotePagesProtocol.WriteRequest(request, 42, 0x7f0000001000, 3);
        client.Write(request);
        var pages = new byte[3 * PagemapEntry.PageSize];
        RemotePagesProtocol.ReadAnswer(client, pages);
        Assert.All(pages, b => Assert.Equal(5, b));

        RemotePagesProtocol.WriteRequest(request, 42, 0x7f0000004000, 1);
        client.Write(request);
        var refused = Assert.Throws<PageServerException>(() => RemotePagesProtocol.ReadAnswer(client, pages.AsSpan(0, PagemapEntry.PageSize)));
        Assert.Contains("the source's agent is gone", refused.Message, StringComparison.Ordinal);

        var (container, first, second) = await agent;
        Assert.Equal(("main", RemotePagesKind.Fetch), container);
        Assert.Equal((42, 0x7f0000001000UL, 3), first!.Value);
        Assert.Equal((42, 0x7f0000004000UL, 1), second!.Value);
    }

    [Theory]
    [InlineData(RemotePagesKind.Fetch, null)]
    [InlineData(RemotePagesKind.Stream, null)]
    [InlineData((RemotePagesKind)0, "did not open with a page server's hello")]
    [InlineData((RemotePagesKind)3, "did not open with a page server's hello")]
    public async Task A_hello_says_what_the_connection_is_for_and_an_unknown_kind_is_refused(RemotePagesKind kind, string? refused)
    {
        using var wire = new MemoryStream();
        RemotePagesProtocol.WriteHello(wire, "main", kind);
        wire.Position = 0;
        if (refused is null)
        {
            Assert.Equal(("main", kind), await RemotePagesProtocol.ReadHelloAsync(wire, CancellationToken.None));
        }
        else
        {
            var error = await Assert.ThrowsAsync<InvalidDataException>(() => RemotePagesProtocol.ReadHelloAsync(wire, CancellationToken.None));
            Assert.Contains(refused, error.Message, StringComparison.Ordinal);
        }
    }

    public static TheoryData<string, byte[], string> BadLaneBodies => new()
    {
        { "empty", [], "is not 1 to 65536 requests" },
        { "a request cut short", new byte[PagesLane.RequestSize + 3], "is not 1 to 65536 requests" },
        { "no task", LaneRequest(0, 1, 0x10000), "request 0 of the pages lane is malformed" },
        { "no pages", LaneRequest(7, 0, 0x10000), "is malformed: 0 pages" },
        { "too many pages", LaneRequest(7, PagesLane.MaxPages + 1, 0x10000), "is malformed: 257 pages" },
        { "unaligned", LaneRequest(7, 1, 0x10010), "is malformed" },
        { "wrapping", LaneRequest(7, 2, ulong.MaxValue - 4095), "is malformed" },
        { "the second bad", [.. LaneRequest(7, 1, 0x10000), .. LaneRequest(0x80000000, 1, 0x10000)], "request 1 of the pages lane is malformed" },
    };

    [Theory]
    [MemberData(nameof(BadLaneBodies))]
    public void The_source_refuses_a_malformed_pages_lane_body_before_reading_any_page(string name, byte[] body, string says)
    {
        var error = Assert.Throws<InvalidDataException>(() => PagesLane.ReadRequests(body));
        Assert.True(error.Message.Contains(says, StringComparison.Ordinal), $"{name}: {error.Message}");
    }

    [Fact]
    public async Task The_pages_lane_answers_read_back_as_written_and_a_refusal_or_an_early_end_is_an_error()
    {
        Assert.Equal([(7, 0x10000UL, 2), (9, 0x7f0000000000UL, 256)], PagesLane.ReadRequests([.. LaneRequest(7, 2, 0x10000), .. LaneRequest(9, 256, 0x7f0000000000)]));
        var pages = Enumerable.Range(0, 2 * PagesLane.PageSize).Select(i => (byte)i).ToArray();
        var head = new byte[PagesLane.AnswerHeadSize];
        PagesLane.WriteAnswerHead(head, 0x1122334455667788);
        using var wire = new MemoryStream([.. head, .. pages, .. PagesLane.Refusal("migration m is RolledBack: it has no pages to give")]);
        var got = new byte[2 * PagesLane.PageSize];
        Assert.Equal(0x1122334455667788UL, await PagesLane.ReadAnswerAsync(wire, 2, got, CancellationToken.None));
        Assert.Equal(pages, got);
        var refused = await Assert.ThrowsAsync<InvalidDataException>(() => PagesLane.ReadAnswerAsync(wire, 1, got, CancellationToken.None));
        Assert.Contains("the source refused: migration m is RolledBack", refused.Message, StringComparison.Ordinal);

        using var cut = new MemoryStream([.. head, .. pages.AsSpan(0, 100)]);
        await Assert.ThrowsAsync<EndOfStreamException>(() => PagesLane.ReadAnswerAsync(cut, 2, got, CancellationToken.None));
        using var odd = new MemoryStream([7, 0, 0, 0]);
        var status = await Assert.ThrowsAsync<InvalidDataException>(() => PagesLane.ReadAnswerAsync(odd, 1, got, CancellationToken.None));
        Assert.Contains("status 7", status.Message, StringComparison.Ordinal);
    }

    private static byte[] LaneRequest(uint task, uint pages, ulong address)
    {
        var raw = new byte[PagesLane.RequestSize];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(raw, task);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(4), pages);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(raw.AsSpan(8), address);
        return raw;
    }

    [Fact]
    public void A_page_server_whose_agent_does_not_listen_says_where_it_looked()
    {
        var directory = Directory.CreateTempSubdirectory("podmig-pages-" + new string('x', 120)).FullName;
        try
        {
            var socket = Path.Combine(directory, RemotePagesProtocol.SocketName);
            using var client = new RemotePageClient(socket, "main");
            var error = Assert.ThrowsAny<PageServerException>(() => client.Read(1, 0x10000, 1, new byte[PagemapEntry.PageSize]));
            Assert.Contains("does not answer at " + socket, error.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// The node's agent restarts while a fault waits for its pages: the page server asks again on the
    /// same socket until the new agent listens, within its window; a refusal is never asked again.
    /// </summary>
    [Fact]
    public async Task A_fetch_whose_agent_went_away_asks_again_once_a_new_one_listens_and_a_refusal_is_not_asked_again()
    {
        var directory = Directory.CreateTempSubdirectory("podmig-reconnect-").FullName;
        try
        {
            var path = Path.Combine(directory, RemotePagesProtocol.SocketName);
            var pages = Enumerable.Range(0, 2 * PagemapEntry.PageSize).Select(i => (byte)(i * 7)).ToArray();
            using var client = new RemotePageClient(path, "main") { ReconnectWindow = TimeSpan.FromSeconds(20), ReconnectDelay = TimeSpan.FromMilliseconds(50) };
            var got = new byte[pages.Length];

            // nobody listens yet: the fault waits
            var reading = Task.Run(() => client.Read(3, 0x10000, 2, got));
            await Task.Delay(300);
            Assert.False(reading.IsCompleted, "the read must wait for an agent");

            // an agent takes the request and dies before it answers
            using (var first = Listen(path))
            {
                using var dying = await first.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(10));
                await using var stream = new NetworkStream(dying);
                Assert.Equal(("main", RemotePagesKind.Fetch), await RemotePagesProtocol.ReadHelloAsync(stream, CancellationToken.None));
                Assert.NotNull(await RemotePagesProtocol.ReadRequestAsync(stream, new byte[RemotePagesProtocol.RequestSize], CancellationToken.None));
            }

            await Task.Delay(200);
            Assert.False(reading.IsCompleted, "a broken connection must be tried again, not taken for an answer");

            // its successor listens on the same socket: the same request comes again, and its answer is the read's
            File.Delete(path);
            using var second = Listen(path);
            using var connection = await second.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(10));
            await using var again = new NetworkStream(connection);
            await RemotePagesProtocol.ReadHelloAsync(again, CancellationToken.None);
            var request = await RemotePagesProtocol.ReadRequestAsync(again, new byte[RemotePagesProtocol.RequestSize], CancellationToken.None);
            Assert.Equal((3, 0x10000UL, 2), request);
            await RemotePagesProtocol.WriteAnswerAsync(again, pages, CancellationToken.None);
            await reading.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(pages, got);
            Assert.Equal(1, client.Reconnects);

            // a refusal is the answer: the page server fails at once, on the same connection
            var refusedRead = Task.Run(() => client.Read(3, 0x20000, 1, got));
            Assert.Equal((3, 0x20000UL, 1), await RemotePagesProtocol.ReadRequestAsync(again, new byte[RemotePagesProtocol.RequestSize], CancellationToken.None));
            await RemotePagesProtocol.WriteRefusalAsync(again, "1 pages from the source do not match their checksum: refused", CancellationToken.None);
            var refused = await Assert.ThrowsAsync<PageServerException>(() => refusedRead.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Contains("do not match their checksum: refused", refused.Message, StringComparison.Ordinal);
            var another = second.AcceptAsync();
            Assert.False(await Task.WhenAny(another, Task.Delay(500)) == another, "a refused request must not be asked again");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void A_fetch_gives_up_when_no_agent_listens_within_its_window()
    {
        var directory = Directory.CreateTempSubdirectory("podmig-reconnect-").FullName;
        try
        {
            var path = Path.Combine(directory, RemotePagesProtocol.SocketName);
            using var client = new RemotePageClient(path, "main") { ReconnectWindow = TimeSpan.FromMilliseconds(800), ReconnectDelay = TimeSpan.FromMilliseconds(100) };
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var error = Assert.ThrowsAny<PageServerException>(() => client.Read(1, 0x10000, 1, new byte[PagemapEntry.PageSize]));
            Assert.Contains("does not answer at " + path, error.Message, StringComparison.Ordinal);
            Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(500), $"gave up after {clock.ElapsedMilliseconds} ms: it must try for its window");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static Socket Listen(string path)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        UnixSocketPath.Use(path, p => listener.Bind(new UnixDomainSocketEndPoint(p)));
        listener.Listen(4);
        return listener;
    }

    [Fact]
    public async Task A_socket_in_a_directory_too_deep_for_a_socket_address_is_bound_and_reached()
    {
        var directory = Directory.CreateTempSubdirectory("podmig-pages-" + new string('y', 120)).FullName;
        try
        {
            var path = Path.Combine(directory, RemotePagesProtocol.SocketName);
            Assert.True(path.Length > 108, "the path must be longer than a socket address holds");
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            UnixSocketPath.Use(path, p => listener.Bind(new UnixDomainSocketEndPoint(p)));
            listener.Listen(1);
            Assert.True(File.Exists(path), "the socket is made in its own directory");
            var accepting = listener.AcceptAsync();
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            UnixSocketPath.Use(path, p => client.Connect(new UnixDomainSocketEndPoint(p)));
            using var accepted = await accepting.WaitAsync(TimeSpan.FromSeconds(5));
            client.Send([1, 2, 3]);
            var got = new byte[3];
            Assert.Equal(3, accepted.Receive(got));
            Assert.Equal([1, 2, 3], got);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}

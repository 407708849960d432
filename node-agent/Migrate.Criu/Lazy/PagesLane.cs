using System.Buffers.Binary;
using System.Text;

namespace Migrate.Criu.Lazy;

/// <summary>
/// The pages lane of post-copy: the target's agent fetches, in one HTTP/1.1 POST to the source's
/// agent (mutual TLS on the agents' own port, as the images' bulk lane), every page a post-copy dump
/// left on the source for one container, in the order its page server will want them, with no
/// per-message protobuf or HTTP/2 framing (whose flow control held the pages to some 30 MB/s on a
/// 2-core node). The request's body is the requests, each the 16 bytes of a page server's request
/// (<see cref="RemotePagesProtocol.ParseRequest"/>), which the target's agent passes on unchanged.
/// Beside the page server's own protocol, as both agents' ends use it. The answer's body is, for each request in turn, <c>{u32 0; u64
/// XXH64; the pages}</c>, or <c>{u32 1; u32 length; UTF-8 reason}</c>, after which it ends.
/// Little-endian throughout. The migration, its token and the container are in headers.
/// </summary>
public static class PagesLane
{
    public const string Path = "/migrate.agent.v1.ImageTransfer/Pages";

    public const string MigrationHeader = "podmig-migration";

    public const string TokenHeader = "podmig-token";

    public const string ContainerHeader = "podmig-container";

    public const int RequestSize = RemotePagesProtocol.RequestSize;

    /// <summary>The most pages one request may ask for.</summary>
    public const int MaxPages = RemotePagesProtocol.MaxPages;

    /// <summary>The most requests one lane carries (16 GiB of pages).</summary>
    public const int MaxRequests = 1 << 16;

    /// <summary>An answer's head before its pages: the status and the checksum.</summary>
    public const int AnswerHeadSize = 12;

    public const int MaxReasonBytes = 4096;

    public const int PageSize = Images.PagemapEntry.PageSize;

    /// <summary>The requests in a body, each checked as a page server's; throws <see cref="InvalidDataException"/> naming the first bad one.</summary>
    public static IReadOnlyList<(int TaskId, ulong Address, int Pages)> ReadRequests(ReadOnlySpan<byte> body)
    {
        if (body.Length == 0 || body.Length % RequestSize != 0 || body.Length / RequestSize > MaxRequests)
        {
            throw new InvalidDataException($"a pages lane's body of {body.Length} bytes is not 1 to {MaxRequests} requests of {RequestSize} bytes");
        }

        var requests = new List<(int, ulong, int)>(body.Length / RequestSize);
        for (int at = 0; at < body.Length; at += RequestSize)
        {
            requests.Add(RemotePagesProtocol.ParseRequest(body.Slice(at, RequestSize), $"request {at / RequestSize} of the pages lane"));
        }

        return requests;
    }

    public static void WriteAnswerHead(Span<byte> destination, ulong checksum)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, 0);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[4..], checksum);
    }

    public static byte[] Refusal(string reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        var text = Encoding.UTF8.GetBytes(reason.Length > 1000 ? reason[..1000] : reason);
        var frame = new byte[8 + text.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(frame, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), (uint)text.Length);
        text.CopyTo(frame, 8);
        return frame;
    }

    /// <summary>
    /// Reads the answer to a request for <paramref name="pages"/> pages into <paramref name="destination"/>
    /// and returns its checksum; throws <see cref="InvalidDataException"/> with the source's reason for a
    /// refusal, <see cref="EndOfStreamException"/> when the body ends early.
    /// </summary>
    public static async Task<ulong> ReadAnswerAsync(Stream lane, int pages, Memory<byte> destination, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lane);
        var head = new byte[AnswerHeadSize];
        await lane.ReadExactlyAsync(head.AsMemory(0, 4), cancellationToken);
        uint status = BinaryPrimitives.ReadUInt32LittleEndian(head);
        if (status == 0)
        {
            await lane.ReadExactlyAsync(head.AsMemory(4, 8), cancellationToken);
            await lane.ReadExactlyAsync(destination[..(pages * PageSize)], cancellationToken);
            return BinaryPrimitives.ReadUInt64LittleEndian(head.AsSpan(4));
        }

        if (status != 1)
        {
            throw new InvalidDataException($"the source's pages lane sent status {status}");
        }

        await lane.ReadExactlyAsync(head.AsMemory(0, 4), cancellationToken);
        int length = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(head), MaxReasonBytes);
        var text = new byte[length];
        await lane.ReadExactlyAsync(text, cancellationToken);
        throw new InvalidDataException("the source refused: " + Encoding.UTF8.GetString(text));
    }
}

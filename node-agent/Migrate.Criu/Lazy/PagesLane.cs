using System.Buffers.Binary;
using System.Text;

namespace Migrate.Agent.Contracts.Transfer;

/// <summary>
/// The pages lane of post-copy: the target's agent fetches, in one HTTP/1.1 POST to the source's
/// agent (mutual TLS on the agents' own port, as the images' bulk lane), every page a post-copy dump
/// left on the source for one container, in the order its page server will want them, with no
/// per-message protobuf or HTTP/2 framing (whose flow control held the pages to some 30 MB/s on a
/// 2-core node). The request's body is the requests, <see cref="RequestSize"/> bytes each: <c>{u32
/// task; u32 pages; u64 address}</c>. The answer's body is, for each request in turn, <c>{u32 0; u64
/// XXH64; the pages}</c>, or <c>{u32 1; u32 length; UTF-8 reason}</c>, after which it ends.
/// Little-endian throughout. The migration, its token and the container are in headers.
/// </summary>
public static class PagesLane
{
    public const string Path = "/migrate.agent.v1.ImageTransfer/Pages";

    public const string MigrationHeader = "podmig-migration";

    public const string TokenHeader = "podmig-token";

    public const string ContainerHeader = "podmig-container";

    public const int RequestSize = 16;

    /// <summary>The most pages one request may ask for.</summary>
    public const int MaxPages = 256;

    /// <summary>The most requests one lane carries (16 GiB of pages).</summary>
    public const int MaxRequests = 1 << 16;

    /// <summary>An answer's head before its pages: the status and the checksum.</summary>
    public const int AnswerHeadSize = 12;

    public const int MaxReasonBytes = 4096;

    public const int PageSize = 4096;

    /// <summary>
    /// The requests in a body, each checked (a task that can be, 1 to <see cref="MaxPages"/> pages, an
    /// aligned address that does not wrap); throws <see cref="InvalidDataException"/> naming the first bad one.
    /// </summary>
    public static IReadOnlyList<(int TaskId, ulong Address, int Pages)> ReadRequests(ReadOnlySpan<byte> body)
    {
        if (body.Length == 0 || body.Length % RequestSize != 0 || body.Length / RequestSize > MaxRequests)
        {
            throw new InvalidDataException($"a pages lane's body of {body.Length} bytes is not 1 to {MaxRequests} requests of {RequestSize} bytes");
        }

        var requests = new List<(int, ulong, int)>(body.Length / RequestSize);
        for (int at = 0; at < body.Length; at += RequestSize)
        {
            var request = body.Slice(at, RequestSize);
            uint task = BinaryPrimitives.ReadUInt32LittleEndian(request);
            uint pages = BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(request[8..]);
            if (task is 0 or > int.MaxValue || pages is 0 or > MaxPages || address % PageSize != 0 || address > ulong.MaxValue - ((ulong)pages * PageSize))
            {
                throw new InvalidDataException($"request {at / RequestSize} of the pages lane is malformed: {pages} pages at 0x{address:x} of task {task}");
            }

            requests.Add(((int)task, address, (int)pages));
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

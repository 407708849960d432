using System.Buffers.Binary;

namespace Migrate.Agent.Contracts.Transfer;

/// <summary>
/// The bulk lane of an image upload: the file bytes travel in the body of one HTTP/1.1 POST on the
/// agents' own port (mutual TLS as for gRPC), as frames with no per-message protobuf or HTTP/2
/// framing, while the gRPC Upload stream that handed out the ticket carries the manifest, the acks,
/// the errors and the verdict. The body is <see cref="Preamble"/>, then frames, then <see cref="BulkFrame.End"/>.
/// </summary>
public static class BulkLane
{
    public const string Path = "/migrate.agent.v1.ImageTransfer/Bulk";

    /// <summary>The request header that carries the ticket the target gave in UploadAccepted.bulk_ticket.</summary>
    public const string TicketHeader = "podmig-bulk-ticket";

    /// <summary>The first bytes of a body: the lane's name and version ("PMB1").</summary>
    public static ReadOnlySpan<byte> Preamble => "PMB1"u8;
}

/// <summary>
/// One frame's header, 20 bytes, little-endian: the file's index in the manifest, the offset of the
/// frame's bytes in the file, their length uncompressed, and how many bytes follow the header (the
/// same as the length unless the upload is compressed). The end of the body is the frame whose file
/// is <see cref="uint.MaxValue"/> and whose other fields are zero.
/// </summary>
public readonly record struct BulkFrame(uint File, ulong Offset, uint Length, uint WireLength)
{
    public const int HeaderBytes = 20;

    public static BulkFrame End { get; } = new(uint.MaxValue, 0, 0, 0);

    public bool IsEnd => this == End;

    public void Write(Span<byte> header)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(header, File);
        BinaryPrimitives.WriteUInt64LittleEndian(header[4..], Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], WireLength);
    }

    public static BulkFrame Read(ReadOnlySpan<byte> header) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(header),
        BinaryPrimitives.ReadUInt64LittleEndian(header[4..]),
        BinaryPrimitives.ReadUInt32LittleEndian(header[12..]),
        BinaryPrimitives.ReadUInt32LittleEndian(header[16..]));
}

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
/// is <see cref="uint.MaxValue"/> and whose other fields are zero. A frame with a length and no wire
/// bytes is a page reference (only where the target accepted them): a <see cref="BulkCopy"/> follows
/// the header, and the frame's bytes are those already sent there.
/// </summary>
public readonly record struct BulkFrame(uint File, ulong Offset, uint Length, uint WireLength)
{
    public const int HeaderBytes = 20;

    public static BulkFrame End { get; } = new(uint.MaxValue, 0, 0, 0);

    public bool IsEnd => this == End;

    /// <summary>A page reference: <see cref="Length"/> bytes to copy from where a <see cref="BulkCopy"/> after the header says.</summary>
    public bool IsCopy => WireLength == 0 && Length > 0 && File != uint.MaxValue;

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

/// <summary>
/// What follows a page reference's header, 12 bytes, little-endian: the manifest index of the file
/// that already holds the frame's bytes and their offset there. The target copies them from its own
/// copy of that file, which must already hold all of them.
/// </summary>
public readonly record struct BulkCopy(uint File, ulong Offset)
{
    public const int Bytes = 12;

    public void Write(Span<byte> bytes)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, File);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes[4..], Offset);
    }

    public static BulkCopy Read(ReadOnlySpan<byte> bytes) => new(
        BinaryPrimitives.ReadUInt32LittleEndian(bytes),
        BinaryPrimitives.ReadUInt64LittleEndian(bytes[4..]));
}

using System.Buffers.Binary;

namespace Migrate.Criu.Lazy;

/// <summary>Commands of CRIU's page-server protocol that a lazy-pages daemon sends (criu/page-xfer.c).</summary>
public enum PageServerCommand : uint
{
    /// <summary>Pages follow (PS_IOV_ADD_F); the flags in the command's upper half say which kind.</summary>
    AddWithFlags = 6,

    /// <summary>Send me these pages (PS_IOV_GET).</summary>
    Get = 7,

    /// <summary>The session is over; answer with a 32-bit status (PS_IOV_CLOSE).</summary>
    Close = 0x1023,

    /// <summary>The session is over even if the socket stays open elsewhere (PS_IOV_FORCE_CLOSE).</summary>
    ForceClose = 0x1024,
}

/// <summary>One request or reply header of the page-server protocol.</summary>
/// <param name="Command">The command (lower 16 bits of the wire field).</param>
/// <param name="Flags">The command's flags (upper 16 bits): pagemap flags for <see cref="PageServerCommand.AddWithFlags"/>.</param>
/// <param name="Pages">How many pages.</param>
/// <param name="Address">The first page's virtual address.</param>
/// <param name="TaskId">The task the pages belong to (its PID as CRIU's images name it).</param>
public readonly record struct PageServerHeader(uint Command, uint Flags, ulong Pages, ulong Address, ulong TaskId);

/// <summary>
/// The wire format of CRIU's page-server protocol, which the lazy-pages daemon (<c>criu lazy-pages
/// --page-server</c>) speaks to fetch the pages of a lazily restored process. All fields are the
/// host's byte order (little-endian here) in a C struct: CRIU 4.1 sends <c>{u32 cmd; u32 nr_pages;
/// u64 vaddr; u64 dst_id}</c> (24 bytes); CRIU 4.2 widened <c>nr_pages</c> to 64 bits, which
/// aligns the struct to <c>{u32 cmd; u32 pad; u64 nr_pages; u64 vaddr; u64 dst_id}</c> (32 bytes).
/// </summary>
public sealed record PageServerProtocol(int HeaderSize)
{
    public const int CommandBits = 16;

    /// <summary>The pagemap flag of pages that follow a header (PE_PRESENT).</summary>
    public const uint PresentFlag = 4;

    /// <summary>The protocol of CRIU 4.1.</summary>
    public static PageServerProtocol Narrow { get; } = new(24);

    /// <summary>The protocol of CRIU 4.2 and later.</summary>
    public static PageServerProtocol Wide { get; } = new(32);

    /// <summary>The protocol a CRIU version speaks.</summary>
    public static PageServerProtocol For(CriuVersion version) => version >= new CriuVersion(4, 2, 0) ? Wide : Narrow;

    public PageServerHeader Decode(ReadOnlySpan<byte> header)
    {
        if (header.Length < HeaderSize)
        {
            throw new ArgumentException($"a page-server header is {HeaderSize} bytes, got {header.Length}", nameof(header));
        }

        uint command = BinaryPrimitives.ReadUInt32LittleEndian(header);
        ulong pages = HeaderSize == 24 ? BinaryPrimitives.ReadUInt32LittleEndian(header[4..]) : BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        int rest = HeaderSize - 16;
        return new PageServerHeader(
            command & ((1u << CommandBits) - 1),
            command >> CommandBits,
            pages,
            BinaryPrimitives.ReadUInt64LittleEndian(header[rest..]),
            BinaryPrimitives.ReadUInt64LittleEndian(header[(rest + 8)..]));
    }

    public void Encode(PageServerHeader value, Span<byte> destination)
    {
        if (destination.Length < HeaderSize)
        {
            throw new ArgumentException($"a page-server header is {HeaderSize} bytes", nameof(destination));
        }

        destination[..HeaderSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(destination, (value.Flags << CommandBits) | value.Command);
        if (HeaderSize == 24)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], checked((uint)value.Pages));
        }
        else
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], value.Pages);
        }

        int rest = HeaderSize - 16;
        BinaryPrimitives.WriteUInt64LittleEndian(destination[rest..], value.Address);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[(rest + 8)..], value.TaskId);
    }
}

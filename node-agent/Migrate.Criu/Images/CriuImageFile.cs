using System.Buffers.Binary;
using Google.Protobuf;

namespace Migrate.Criu.Images;

/// <summary>
/// CRIU's protobuf image container: a 32-bit little-endian magic (two for most images: the common
/// or service magic, then the image's own), then records, each a 32-bit little-endian length and
/// that many bytes of one protobuf message.
/// </summary>
internal static class CriuImageFile
{
    public const uint CommonMagic = 0x54564319;
    public const uint ServiceMagic = 0x55105940;
    public const uint PagemapMagic = 0x56084025;
    public const uint StatsMagic = 0x57093306;

    /// <summary>Records larger than this are refused: no CRIU image record comes close.</summary>
    private const int MaxRecordBytes = 64 << 20;

    public static (uint Magic, List<byte[]> Records) Read(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        Span<byte> word = stackalloc byte[4];
        if (!TryReadExactly(stream, word))
        {
            throw new InvalidDataException($"{path}: empty image file");
        }

        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(word);
        if (magic is CommonMagic or ServiceMagic)
        {
            if (!TryReadExactly(stream, word))
            {
                throw new InvalidDataException($"{path}: truncated image header");
            }

            magic = BinaryPrimitives.ReadUInt32LittleEndian(word);
        }

        var records = new List<byte[]>();
        while (TryReadExactly(stream, word))
        {
            int length = BinaryPrimitives.ReadInt32LittleEndian(word);
            if (length < 0 || length > MaxRecordBytes)
            {
                throw new InvalidDataException($"{path}: record of {length} bytes at offset {stream.Position - 4} is out of range");
            }

            var record = new byte[length];
            if (!TryReadExactly(stream, record))
            {
                throw new InvalidDataException($"{path}: truncated record at offset {stream.Position}");
            }

            records.Add(record);
        }

        return (magic, records);
    }

    public static void Write(string path, uint outerMagic, uint magic, IEnumerable<IMessage> records)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(word, outerMagic);
        stream.Write(word);
        BinaryPrimitives.WriteUInt32LittleEndian(word, magic);
        stream.Write(word);
        foreach (var record in records)
        {
            var bytes = record.ToByteArray();
            BinaryPrimitives.WriteInt32LittleEndian(word, bytes.Length);
            stream.Write(word);
            stream.Write(bytes);
        }
    }

    private static bool TryReadExactly(Stream stream, Span<byte> buffer)
    {
        int read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        if (read == 0)
        {
            return false;
        }

        return read == buffer.Length ? true : throw new InvalidDataException("truncated CRIU image");
    }
}

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
        var (magic, data, records) = ReadWhole(path);
        return (magic, records.Select(r => data[r.Offset..(r.Offset + r.Length)]).ToList());
    }

    /// <summary>
    /// The file read whole, with where each record lies in it: no copy of each record, for images of
    /// hundreds of thousands of them (the pagemaps of a pod that wrote its memory a page here and there).
    /// </summary>
    public static (uint Magic, byte[] Data, List<(int Offset, int Length)> Records) ReadWhole(string path)
    {
        var data = File.ReadAllBytes(path);
        if (data.Length == 0)
        {
            throw new InvalidDataException($"{path}: empty image file");
        }

        int at = 0;
        uint magic = Word(data, ref at, path, "image header");
        if (magic is CommonMagic or ServiceMagic)
        {
            magic = Word(data, ref at, path, "image header");
        }

        var records = new List<(int, int)>();
        while (at < data.Length)
        {
            int length = (int)Word(data, ref at, path, "record length");
            if (length < 0 || length > MaxRecordBytes)
            {
                throw new InvalidDataException($"{path}: record of {length} bytes at offset {at - 4} is out of range");
            }

            if (length > data.Length - at)
            {
                throw new InvalidDataException($"{path}: truncated record at offset {at} ({length} bytes, {data.Length - at} left)");
            }

            records.Add((at, length));
            at += length;
        }

        return (magic, data, records);
    }

    private static uint Word(byte[] data, ref int at, string path, string what)
    {
        if (data.Length - at < 4)
        {
            throw new InvalidDataException($"{path}: truncated {what} at offset {at}");
        }

        uint word = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(at));
        at += 4;
        return word;
    }

    public static void Write(string path, uint outerMagic, uint magic, IEnumerable<IMessage> records)
    {
        using var stream = Create(path, outerMagic, magic);
        foreach (var record in records)
        {
            WriteRecord(stream, record.ToByteArray());
        }
    }

    /// <summary>A new image file with its magics written; the caller writes its records (<see cref="WriteRecord"/>).</summary>
    public static FileStream Create(string path, uint outerMagic, uint magic)
    {
        var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        Span<byte> words = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(words, outerMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(words[4..], magic);
        stream.Write(words);
        return stream;
    }

    /// <summary>One record: its length, then its bytes.</summary>
    public static void WriteRecord(Stream stream, ReadOnlySpan<byte> record)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(word, record.Length);
        stream.Write(word);
        stream.Write(record);
    }
}

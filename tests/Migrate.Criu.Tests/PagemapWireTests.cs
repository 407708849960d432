using System.Buffers.Binary;
using Google.Protobuf;
using Migrate.Criu.Images;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>Pagemap records decoded by hand read as the generated protobuf code writes them, and a malformed record is refused with where it is.</summary>
public sealed class PagemapWireTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("migrate-pagemap-wire-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    public static TheoryData<ulong, uint, bool?, uint?, ulong?, ulong, uint, PagemapFlags> Entries => new()
    {
        // vaddr, compat_nr_pages, in_parent, flags, nr_pages -> address, pages, flags
        { 0x1000, 1, null, null, null, 0x1000, 1, PagemapFlags.Present },                                      // CRIU before flags: present implied
        { 0x2000, 3, true, null, null, 0x2000, 3, PagemapFlags.Parent },                                       // ... and in_parent
        { 0x7ffd9b440000, 0, null, 4, 16, 0x7ffd9b440000, 16, PagemapFlags.Present },                         // CRIU 4.2: nr_pages, compat 0
        { 0x1a859000, 34, null, (uint)PagemapFlags.Lazy, null, 0x1a859000, 34, PagemapFlags.Lazy },            // CRIU 4.1: compat only
        { 0x4b7000, 6, false, (uint)(PagemapFlags.Lazy | PagemapFlags.Present), 6, 0x4b7000, 6, PagemapFlags.Lazy | PagemapFlags.Present },
        { ulong.MaxValue - 0xfff, 1, null, (uint)PagemapFlags.Parent, 1, ulong.MaxValue - 0xfff, 1, PagemapFlags.Parent }, // a 10-byte varint
        { 0, uint.MaxValue, null, null, null, 0, uint.MaxValue, PagemapFlags.Present },
        { 0x10000, 5, null, 0, null, 0x10000, 5, PagemapFlags.None },                                          // flags given as 0 win over the default
    };

    [Theory]
    [MemberData(nameof(Entries))]
    public void An_entry_reads_as_the_generated_code_wrote_it(ulong vaddr, uint compat, bool? inParent, uint? flags, ulong? nrPages,
        ulong address, uint pages, PagemapFlags expected)
    {
        var written = new Images.Proto.PagemapEntry { Vaddr = vaddr, CompatNrPages = compat };
        if (inParent is { } parent)
        {
            written.InParent = parent;
        }

        if (flags is { } f)
        {
            written.Flags = f;
        }

        if (nrPages is { } n)
        {
            written.NrPages = n;
        }

        Assert.Equal(new PagemapEntry(address, pages, expected), PagemapWire.Entry(written.ToByteArray(), "pagemap-1.img", 1));
    }

    [Theory]
    [InlineData(0x1000UL, 1u, PagemapFlags.Present)]
    [InlineData(0x7ffd9b440000UL, 16u, PagemapFlags.Parent)]
    [InlineData(0UL, 0u, PagemapFlags.None)]
    [InlineData(ulong.MaxValue, uint.MaxValue, PagemapFlags.Lazy | PagemapFlags.Present | PagemapFlags.Parent)]
    [InlineData(0x80UL, 0x80u, PagemapFlags.Lazy)]
    public void An_entry_is_encoded_byte_for_byte_as_the_generated_code_encodes_it(ulong address, uint pages, PagemapFlags flags)
    {
        var generated = new Images.Proto.PagemapEntry { Vaddr = address, CompatNrPages = pages, NrPages = pages, Flags = (uint)flags }.ToByteArray();
        var record = new byte[PagemapWire.MaxEntryBytes];

        int length = PagemapWire.EncodeEntry(new PagemapEntry(address, pages, flags), record);

        Assert.Equal(generated, record[..length]);
        Assert.Equal(new Images.Proto.PagemapHead { PagesId = uint.MaxValue }.ToByteArray(), record[..PagemapWire.EncodeHead(uint.MaxValue, record)]);
    }

    [Fact]
    public void A_pagemap_written_by_hand_is_the_file_the_generated_code_writes()
    {
        var entries = new[] { new PagemapEntry(0x1000, 3, PagemapFlags.Present), new PagemapEntry(0x4000, 1, PagemapFlags.Parent), new PagemapEntry(0x9000, 300, PagemapFlags.Lazy) };
        var generated = Path.Combine(_root, "generated.img");
        CriuImageFile.Write(generated, CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic,
            [new Images.Proto.PagemapHead { PagesId = 9 }, .. entries.Select(e => new Images.Proto.PagemapEntry { Vaddr = e.Address, CompatNrPages = e.PageCount, NrPages = e.PageCount, Flags = (uint)e.Flags })]);

        new CriuPagemap(5, 9, entries).Write(_root);

        Assert.Equal(File.ReadAllBytes(generated), File.ReadAllBytes(Path.Combine(_root, CriuPagemap.FileName(5))));
    }

    [Fact]
    public void Fields_it_does_not_know_of_any_wire_type_are_skipped()
    {
        var record = new List<byte>(new Images.Proto.PagemapEntry { Vaddr = 0x5000, CompatNrPages = 2, Flags = 4 }.ToByteArray());
        record.AddRange([(9 << 3) | 0, 0x96, 0x01]);                              // field 9, varint
        record.AddRange([(10 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);                 // field 10, 64-bit
        record.AddRange([(11 << 3) | 2, 3, 0xaa, 0xbb, 0xcc]);                    // field 11, 3 bytes
        record.AddRange([(12 << 3) | 5, 1, 2, 3, 4]);                             // field 12, 32-bit
        record.AddRange([(1 << 3) | 2, 1, 0xff]);                                 // vaddr's number with another wire type: not vaddr

        Assert.Equal(new PagemapEntry(0x5000, 2, PagemapFlags.Present), PagemapWire.Entry(record.ToArray(), "p", 1));
    }

    [Theory]
    [InlineData(new byte[] { 0x08, 0x80 }, "a varint cut short")]
    [InlineData(new byte[] { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 }, "longer than 10 bytes")]
    [InlineData(new byte[] { 0x5a, 0x05, 0x01 }, "running past its record")]
    [InlineData(new byte[] { 0x51, 0x01, 0x02 }, "running past its record")]
    [InlineData(new byte[] { 0x0b }, "wire type 3")]
    [InlineData(new byte[] { 0x0e, 0x00 }, "wire type 6")]
    [InlineData(new byte[] { 0x00, 0x01 }, "field number 0")]
    public void A_malformed_entry_is_refused_naming_its_file_and_record(byte[] record, string why)
    {
        var error = Assert.Throws<InvalidDataException>(() => PagemapWire.Entry(record, "/images/pagemap-7.img", 42));

        Assert.Contains("/images/pagemap-7.img: record 42", error.Message, StringComparison.Ordinal);
        Assert.Contains(why, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_pagemap_of_many_entries_reads_back_as_written_with_its_pages_file()
    {
        var entries = Enumerable.Range(0, 50_000)
            .Select(i => new PagemapEntry(0x7f0000000000UL + ((ulong)i * 2 * PagemapEntry.PageSize), (uint)(1 + (i % 7)), (i % 3) switch
            {
                0 => PagemapFlags.Present,
                1 => PagemapFlags.Parent,
                _ => PagemapFlags.Lazy,
            }))
            .ToArray();
        new CriuPagemap(3, 77, entries).Write(_root);

        var read = CriuPagemap.Read(_root, 3);

        Assert.Equal(77u, read.PagesId);
        Assert.Equal(entries, read.Entries);
        Assert.Equal([3], CriuPagemap.Ids(_root));
    }

    [Fact]
    public void An_image_file_read_whole_gives_each_record_where_it_lies_and_refuses_a_cut_length()
    {
        var path = Path.Combine(_root, "two.img");
        CriuImageFile.Write(path, CriuImageFile.CommonMagic, CriuImageFile.PagemapMagic,
            [new Images.Proto.PagemapHead { PagesId = 5 }, new Images.Proto.PagemapEntry { Vaddr = 0x1000, CompatNrPages = 1 }]);

        var (magic, data, records) = CriuImageFile.ReadWhole(path);

        Assert.Equal(CriuImageFile.PagemapMagic, magic);
        Assert.Equal([(12, 2), (18, 5)], records);
        Assert.Equal(5UL, PagemapWire.Field(data.AsSpan(12, 2), PagemapWire.PagesIdField, path, 0));
        File.WriteAllBytes(path, [.. data, 0x01, 0x00]);
        var error = Assert.Throws<InvalidDataException>(() => CriuImageFile.ReadWhole(path));
        Assert.Contains("truncated record length at offset 23", error.Message, StringComparison.Ordinal);
        Assert.Equal(CriuImageFile.CommonMagic, BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(0, 4)));
    }
}

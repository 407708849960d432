using System.Text;
using Migrate.Api;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Archives of the real tar, as the source agent makes them (<see cref="FilesystemArchive.Create"/>):
/// one that holds only directories and empty files is told apart from every other, and gives each
/// entry's owner, mode and times; a damaged or unexpected one is never taken for it (it is extracted
/// as always).
/// </summary>
public sealed class MetadataArchiveTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-archive-root-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    /// <summary>An empty directory owned by 1234:2345 with mode 2750 and a modification time to the nanosecond, archived.</summary>
    private (string Archive, string Root) EmptyRoot(Action<string>? add = null)
    {
        var root = Directory.CreateDirectory(Path.Combine(_directory, "layer-" + Guid.NewGuid().ToString("N"))).FullName;
        add?.Invoke(root);
        Prerequisites.Run("chown", "1234:2345", root);
        Prerequisites.Run("chmod", "2750", root);
        Prerequisites.Run("touch", "-m", "-d", "2026-03-04 05:06:07.123456789 UTC", root);
        var archive = Path.Combine(_directory, Path.GetFileName(root) + ".tar");
        FilesystemArchive.Create(root, archive);
        return (archive, root);
    }

    [Fact]
    public void An_archive_of_an_empty_directory_is_its_root_alone_with_owner_mode_and_time()
    {
        var (archive, root) = EmptyRoot();

        var entry = Assert.Single(MetadataArchive.Read(archive) ?? []);

        var status = FileStatus.Of(root)!.Value;
        Assert.Equal((".", true, 1234u, 2345u, 0x5E8u), (entry.Path, entry.IsDirectory, entry.Owner, entry.Group, entry.Mode)); // 02750
        Assert.Equal((status.ModifiedSeconds, (long)status.ModifiedNanoseconds), entry.Modified);
        Assert.Equal(123456789L, entry.Modified.Nanoseconds);
    }

    [Fact]
    public void The_mount_points_a_runtime_makes_are_directories_and_empty_files_in_the_archive_s_order()
    {
        var (archive, _) = EmptyRoot(root =>
        {
            Directory.CreateDirectory(Path.Combine(root, "etc"));
            File.WriteAllBytes(Path.Combine(root, "etc", "hosts"), []);
            Prerequisites.Run("chmod", "0640", Path.Combine(root, "etc", "hosts"));
            Prerequisites.Run("chown", "7:8", Path.Combine(root, "etc", "hosts"));
            Directory.CreateDirectory(Path.Combine(root, "tmp"));
        });

        var entries = MetadataArchive.Read(archive);

        Assert.NotNull(entries);
        Assert.Equal(".", entries[0].Path);
        Assert.True(entries.ToList().FindIndex(e => e.Path == "etc") < entries.ToList().FindIndex(e => e.Path == "etc/hosts"), "a directory before what it holds");
        Assert.Equal(["."  , "etc", "etc/hosts", "tmp"], entries.Select(e => e.Path).Order(StringComparer.Ordinal));
        var hosts = entries.Single(e => e.Path == "etc/hosts");
        Assert.Equal((false, 7u, 8u, 0x1A0u), (hosts.IsDirectory, hosts.Owner, hosts.Group, hosts.Mode));
    }

    public static TheoryData<string> Contents() => ["a file with content", "a symbolic link", "a hard link", "a whiteout", "an extended attribute on the root", "an opaque directory", "a long name"];

    [Theory]
    [MemberData(nameof(Contents))]
    public void An_archive_with_anything_more_is_not_metadata_only(string content)
    {
        var (archive, _) = EmptyRoot(root =>
        {
            switch (content)
            {
                case "a file with content":
                    File.WriteAllText(Path.Combine(root, "state"), "written");
                    break;
                case "a symbolic link":
                    File.CreateSymbolicLink(Path.Combine(root, "link"), "/etc/hostname");
                    break;
                case "a hard link":
                    File.WriteAllBytes(Path.Combine(root, "one"), []);
                    Prerequisites.Run("ln", Path.Combine(root, "one"), Path.Combine(root, "two"));
                    break;
                case "a whiteout":
                    Prerequisites.Run("mknod", Path.Combine(root, "deleted"), "c", "0", "0");
                    break;
                case "an extended attribute on the root":
                    ExtendedAttributes.Set(root, "user.note", "kept");
                    break;
                case "an opaque directory":
                    Directory.CreateDirectory(Path.Combine(root, "data"));
                    ExtendedAttributes.Set(Path.Combine(root, "data"), "trusted.overlay.opaque", "y");
                    break;
                case "a long name":
                    File.WriteAllBytes(Path.Combine(root, new string('n', 120)), []);
                    break;
            }
        });

        Assert.Null(MetadataArchive.Read(archive));
    }

    [Fact]
    public void A_damaged_truncated_or_foreign_archive_is_not_taken_for_a_root_alone()
    {
        var (archive, _) = EmptyRoot();
        var bytes = File.ReadAllBytes(archive);
        Assert.NotNull(MetadataArchive.Parse(bytes));

        var damaged = new List<(string Why, byte[] Bytes)>
        {
            ("empty", []),
            ("zeros", new byte[10_240]),
            ("garbage", Encoding.ASCII.GetBytes(new string('7', 10_240))),
            ("cut after the root's header", bytes.AsSpan(0, RootHeaderEnd(bytes)).ToArray()),
            ("a header byte flipped", Flipped(bytes, 20)),
            ("a byte after the end", Flipped(bytes, bytes.Length - 1)),
        };

        Assert.All(damaged, d => Assert.True(MetadataArchive.Parse(d.Bytes) is null, d.Why));
        var longer = Path.Combine(_directory, "longer.tar");
        File.WriteAllBytes(longer, [.. bytes, .. new byte[MetadataArchive.MostBytesRead]]);
        Assert.Null(MetadataArchive.Read(longer)); // (not read at all)
        Assert.Null(MetadataArchive.Read(Path.Combine(_directory, "absent.tar")));
    }

    [Theory]
    [InlineData("path=./other", false)]
    [InlineData("SCHILY.xattr.user.note=kept", false)]
    [InlineData("SCHILY.xattr.trusted.overlay.opaque=y", false)]
    [InlineData("SCHILY.xattr.trusted.overlay.redirect=/a", false)]
    [InlineData("SCHILY.acl.access=user::rwx", false)]
    [InlineData("mtime=1700000000.5", true)]
    [InlineData("mtime=-5", false)]
    [InlineData("atime=12x", false)]
    public void An_extended_header_may_hold_times_only(string record, bool taken)
    {
        var archive = Ustar(("./", "x", PaxRecord(record)), ("./", "5", null));

        var entries = MetadataArchive.Parse(archive);

        Assert.Equal(taken, entries is not null);
        if (taken)
        {
            Assert.Equal((1_700_000_000L, 500_000_000L), Assert.Single(entries!).Modified);
        }
    }

    [Theory]
    [InlineData("./etc/", "5", true)]
    [InlineData("./etc/hosts", "0", true)]
    [InlineData("./etc/hosts", "2", false)] // a symbolic link
    [InlineData("./etc/hosts", "3", false)] // a device
    [InlineData("./etc/../../escape", "0", false)]
    [InlineData("./a//b", "0", false)]
    [InlineData("./a/./b", "0", false)]
    [InlineData("/etc/hosts", "0", false)]
    [InlineData("etc/hosts", "0", false)]
    public void Only_directories_and_empty_files_under_plain_relative_names_are_taken(string name, string type, bool taken)
    {
        var archive = Ustar(("./", "5", null), (name, type, null));

        Assert.Equal(taken, MetadataArchive.Parse(archive) is not null);
    }

    [Theory]
    [InlineData("uuid")]
    [InlineData("impure")]
    [InlineData("origin")]
    public void The_overlay_s_own_bookkeeping_beside_the_times_is_passed_over(string attribute)
    {
        var archive = Ustar(("./", "x", [.. PaxRecord("SCHILY.xattr.trusted.overlay." + attribute + "=\u00f9\u0001|"), .. PaxRecord("mtime=1700000000.25")]), ("./", "5", null));

        Assert.Equal((1_700_000_000L, 250_000_000L), Assert.Single(MetadataArchive.Parse(archive) ?? []).Modified);
    }

    [Fact]
    public void An_empty_file_s_content_or_a_dangling_extended_header_is_not_taken()
    {
        Assert.NotNull(MetadataArchive.Parse(Ustar(("./", "5", null))));
        Assert.Null(MetadataArchive.Parse(Ustar(("./", "5", null), ("./state", "0", [1, 2, 3]))));
        Assert.Null(MetadataArchive.Parse(Ustar(("./", "5", null), ("./", "x", PaxRecord("mtime=1")))));
        Assert.Null(MetadataArchive.Parse(new byte[1024])); // the end alone: nothing to put back is not "metadata only"
    }

    /// <summary>Where the root's own header ends in a real archive (after any extended header).</summary>
    private static int RootHeaderEnd(byte[] archive)
    {
        int at = 0;
        while (archive[at + 156] == (byte)'x')
        {
            long size = Convert.ToInt64(Encoding.ASCII.GetString(archive, at + 124, 11).Trim('\0', ' '), 8);
            at += 512 + (int)((size + 511) / 512 * 512);
        }

        return at + 512;
    }

    private static byte[] Flipped(byte[] bytes, int at)
    {
        var copy = (byte[])bytes.Clone();
        copy[at] ^= 0x01;
        return copy;
    }

    private static byte[] PaxRecord(string record)
    {
        // the length, in bytes, counts itself, the space, the record and the newline
        int body = Encoding.UTF8.GetByteCount(record) + 2;
        int length = body + 1;
        while (length.ToString(System.Globalization.CultureInfo.InvariantCulture).Length + body != length)
        {
            length++;
        }

        return Encoding.UTF8.GetBytes(length.ToString(System.Globalization.CultureInfo.InvariantCulture) + " " + record + "\n");
    }

    /// <summary>A ustar archive of entries (name, type, data), ending with two zero blocks.</summary>
    private static byte[] Ustar(params (string Name, string Type, byte[]? Data)[] entries)
    {
        var archive = new List<byte>();
        foreach (var (name, type, data) in entries)
        {
            archive.AddRange(Header(name, type, data?.Length ?? 0));
            if (data is not null)
            {
                archive.AddRange(data);
                archive.AddRange(new byte[(512 - data.Length % 512) % 512]);
            }
        }

        archive.AddRange(new byte[1024]);
        return [.. archive];
    }

    private static byte[] Header(string name, string type, int size)
    {
        var header = new byte[512];
        void Put(int at, string text) => Encoding.ASCII.GetBytes(text).CopyTo(header, at);
        Put(0, name);
        Put(100, "0000755\0");
        Put(108, "0000000\0");
        Put(116, "0000000\0");
        Put(124, Convert.ToString(size, 8).PadLeft(11, '0') + "\0");
        Put(136, "14600000000\0");
        Put(156, type);
        Put(257, "ustar\0" + "00");
        Put(148, "        ");
        int sum = header.Sum(b => b);
        Put(148, Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ");
        return header;
    }
}

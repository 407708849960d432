using System.IO.Hashing;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The read back kept behind an upload's writes, on real files: what it hashes is what the file holds, and it counts only while the file is unchanged.</summary>
public sealed class ReadBackFollowerTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-readback-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static byte[] Content(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Writes <paramref name="content"/> in pieces of <paramref name="piece"/> bytes, telling the follower after each, then leaves the file.</summary>
    private async Task<string> WriteAsync(ReadBackFollower follower, int index, byte[] content, int piece, Action<FileStream, int>? afterPiece = null)
    {
        var path = Path.Combine(_directory, $"pages-{index}.img");
        using var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 });
        for (int at = 0, n = 0; at < content.Length; at += piece, n++)
        {
            int length = Math.Min(piece, content.Length - at);
            await stream.WriteAsync(content.AsMemory(at, length));
            afterPiece?.Invoke(stream, n);
            follower.Wrote(index, stream.SafeFileHandle, at + length);
        }

        await follower.DoneWithAsync(index, stream.SafeFileHandle, content.Length, () => StagedFileStamp.Of(path, $"pages-{index}.img"));
        return path;
    }

    private static StagedFileStamp? StampOf(string path) => StagedFileStamp.Of(path, Path.GetFileName(path));

    [Theory]
    [InlineData(4096, 1000)] // read back many times while it is written
    [InlineData(1 << 20, 65536)] // read back once the writer is done with it: all of it then
    [InlineData(8192, 8192)] // a step per piece
    public async Task The_digest_is_the_files_once_every_byte_was_read_back(long step, int piece)
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, step);
        var content = Content(300_001, 1);
        var path = await WriteAsync(follower, 0, content, piece);

        var digest = follower.DigestOf(0, content.Length, StampOf(path));

        Assert.NotNull(digest);
        Assert.Equal(XxHash128.Hash(content), digest);
    }

    [Fact]
    public async Task What_it_hashes_is_read_from_the_file_not_the_bytes_written()
    {
        // another writer flips a byte on the disk between the upload's writes: the digest is of the file
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 1 << 20);
        var content = Content(100_000, 2);
        var path = await WriteAsync(follower, 0, content, 10_000, (stream, n) =>
        {
            if (n == 3)
            {
                RandomAccess.Write(stream.SafeFileHandle, new byte[] { (byte)~content[5], }, 5);
            }
        });

        var digest = follower.DigestOf(0, content.Length, StampOf(path));

        var onDisk = File.ReadAllBytes(path);
        Assert.NotEqual(content[5], onDisk[5]);
        Assert.Equal(XxHash128.Hash(onDisk), digest);
        Assert.NotEqual(XxHash128.Hash(content), digest);
    }

    [Fact]
    public async Task A_file_changed_after_its_read_back_has_no_digest_from_it()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var content = Content(50_000, 3);
        var path = await WriteAsync(follower, 0, content, 5000);
        var before = StampOf(path);

        using (var other = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            other.Position = 40_000;
            other.WriteByte((byte)~content[40_000]);
        }

        Assert.NotEqual(before, StampOf(path));
        Assert.Null(follower.DigestOf(0, content.Length, StampOf(path)));
    }

    [Fact]
    public async Task A_file_not_wholly_read_back_has_no_digest_from_it()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var content = Content(20_000, 4);
        var path = await WriteAsync(follower, 0, content, 5000);

        // a size the manifest gives that the writes did not reach; a file the follower never saw
        Assert.Null(follower.DigestOf(0, content.Length + 1, StampOf(path)));
        Assert.Null(follower.DigestOf(1, content.Length, StampOf(path)));
        Assert.Null(follower.DigestOf(0, content.Length, null));
    }

    [Fact]
    public async Task A_file_written_again_after_the_writer_left_it_needs_leaving_again()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var first = Content(30_000, 5);
        var path = await WriteAsync(follower, 0, first, 3000);

        // the writer comes back to it (files may interleave): appended, not left yet
        var more = Content(10_000, 6);
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Open, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 }))
        {
            stream.Position = first.Length;
            await stream.WriteAsync(more);
            follower.Wrote(0, stream.SafeFileHandle, first.Length + more.Length);
            Assert.Null(follower.DigestOf(0, first.Length + more.Length, StampOf(path)));

            await follower.DoneWithAsync(0, stream.SafeFileHandle, first.Length + more.Length, () => StampOf(path));
        }

        Assert.Equal(XxHash128.Hash([.. first, .. more]), follower.DigestOf(0, first.Length + more.Length, StampOf(path)));
    }

    [Fact]
    public async Task A_read_back_that_fails_leaves_the_file_to_the_full_read()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var path = Path.Combine(_directory, "pages-1.img");
        var content = Content(40_000, 7);
        var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 });
        await stream.WriteAsync(content);
        var handle = stream.SafeFileHandle;
        await stream.DisposeAsync();

        // its handle closed under it (never so in the receiver, which leaves a file before closing it)
        follower.Wrote(1, handle, content.Length);
        await follower.DoneWithAsync(1, handle, content.Length, () => StampOf(path));

        Assert.Null(follower.DigestOf(1, content.Length, StampOf(path)));
    }

    [Fact]
    public async Task Sha256_uploads_are_followed_too()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Sha256, 4096);
        var content = Content(70_000, 8);
        var path = await WriteAsync(follower, 0, content, 7000);

        Assert.Equal(System.Security.Cryptography.SHA256.HashData(content), follower.DigestOf(0, content.Length, StampOf(path)));
    }
}

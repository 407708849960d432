using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;
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

    private static StagedFileStamp? StampOf(string path) => StagedFileStamp.Of(path, Path.GetFileName(path));

    /// <summary>Starts a real dd that writes one byte, the inverse of <paramref name="was"/>, at <paramref name="offset"/> of <paramref name="path"/>, as another process on the node would.</summary>
    private System.Diagnostics.Process FlipWithDd(string path, long offset, byte was)
    {
        var one = Path.Combine(_directory, "one-byte");
        File.WriteAllBytes(one, [(byte)~was]);
        var start = new System.Diagnostics.ProcessStartInfo("dd") { RedirectStandardError = true };
        foreach (var argument in (string[])[$"if={one}", $"of={path}", "bs=1", "count=1", $"seek={offset}", "conv=notrunc", "status=none"])
        {
            start.ArgumentList.Add(argument);
        }

        return System.Diagnostics.Process.Start(start) ?? throw new InvalidOperationException("dd did not start");
    }

    /// <summary>Waits for dd to end (well within the kernel's 45 s lease-break-time: an opener let go of by the follower, not by the kernel), and stops it by its PID if it does not.</summary>
    private static async Task AssertEndsSoonAsync(System.Diagnostics.Process dd, string what)
    {
        using (dd)
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            try
            {
                await dd.WaitForExitAsync(limit.Token);
            }
            catch (OperationCanceledException)
            {
                dd.Kill();
                Assert.Fail($"dd was still waiting to open the file after 20 s: {what}");
            }

            Assert.True(dd.ExitCode == 0, $"dd failed ({dd.ExitCode}): {await dd.StandardError.ReadToEndAsync()}");
        }
    }

    /// <summary>Until another process's open of the file waits on the lease's break (F_GETLEASE no longer says F_WRLCK).</summary>
    private static async Task WaitForBreakAsync(SafeFileHandle handle)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (WriteLease.Held(handle))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), "dd's open did not break the write lease within 20 s");
            await Task.Delay(5);
        }
    }

    /// <summary>Writes <paramref name="content"/> in pieces of <paramref name="piece"/> bytes, telling the follower after each, then leaves the file.</summary>
    private async Task<string> WriteAsync(ReadBackFollower follower, int index, byte[] content, int piece, Action<FileStream, int>? afterPiece = null)
    {
        var path = Path.Combine(_directory, $"pages-{index}.img");
        using var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 });
        follower.Opened(index, stream.SafeFileHandle, () => StampOf(path));
        for (int at = 0, n = 0; at < content.Length; at += piece, n++)
        {
            int length = Math.Min(piece, content.Length - at);
            await stream.WriteAsync(content.AsMemory(at, length));
            afterPiece?.Invoke(stream, n);
            await follower.WroteAsync(index, stream.SafeFileHandle, at + length);
        }

        await follower.DoneWithAsync(index, stream.SafeFileHandle, content.Length, () => StagedFileStamp.Of(path, $"pages-{index}.img"));
        return path;
    }

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
    public async Task A_read_back_that_falls_behind_holds_the_writes_so_little_is_left_after_the_last_byte()
    {
        // every read back in the background takes 20 ms longer, as on busy cores: without waiting for
        // them, the writes would be done long before, and nearly the whole file read after the last byte
        const int Step = 4096, Piece = 1000;
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, Step, beforeRead: () => Thread.Sleep(20));
        var content = Content(200_001, 11);
        var path = await WriteAsync(follower, 0, content, Piece);

        Assert.InRange(follower.MostLeftAtEnd, 0, (ReadBackFollower.LagSteps * Step) + Piece);
        Assert.Equal(XxHash128.Hash(content), follower.DigestOf(0, content.Length, StampOf(path)));
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
            follower.Opened(0, stream.SafeFileHandle, () => StampOf(path));
            stream.Position = first.Length;
            await stream.WriteAsync(more);
            await follower.WroteAsync(0, stream.SafeFileHandle, first.Length + more.Length);
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
        await follower.WroteAsync(1, handle, content.Length);
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

    [Theory]
    [InlineData(true)] // the writes stall: the watch lets the opener go on
    [InlineData(false)] // the next write lets it go on
    public async Task Another_process_that_opens_the_file_mid_upload_voids_what_was_read_back_and_waits_only_briefly(bool watch)
    {
        // what FaultInjectionTests does to node-b's disk: a byte already read back is flipped while later ones still arrive
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096, watch ? TimeSpan.FromMilliseconds(20) : Timeout.InfiniteTimeSpan);
        var content = Content(60_000, 9);
        var path = Path.Combine(_directory, "pages-2.img");
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 }))
        {
            follower.Opened(2, stream.SafeFileHandle, () => StampOf(path));
            await stream.WriteAsync(content.AsMemory(0, 20_000));
            await follower.WroteAsync(2, stream.SafeFileHandle, 20_000);
            await follower.SettleAsync();
            Assert.True(WriteLease.Held(stream.SafeFileHandle), "the write lease was not taken on a file only this process has open");

            var dd = FlipWithDd(path, 5, content[5]);
            await WaitForBreakAsync(stream.SafeFileHandle);
            if (!watch)
            {
                await stream.WriteAsync(content.AsMemory(20_000, 20_000));
                await follower.WroteAsync(2, stream.SafeFileHandle, 40_000);
            }

            await AssertEndsSoonAsync(dd, watch ? "the watch did not let go of the lease" : "the next write did not let go of the lease");
            stream.Position = watch ? 20_000 : 40_000;
            await stream.WriteAsync(content.AsMemory((int)stream.Position));
            await follower.WroteAsync(2, stream.SafeFileHandle, content.Length);
            await follower.DoneWithAsync(2, stream.SafeFileHandle, content.Length, () => StampOf(path));
        }

        var onDisk = File.ReadAllBytes(path);
        Assert.Equal((byte)~content[5], onDisk[5]);
        Assert.Null(follower.DigestOf(2, content.Length, StampOf(path)));
        Assert.Equal(1, follower.Unfollowed);
    }

    [Fact]
    public async Task A_file_another_descriptor_holds_open_is_not_followed()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var content = Content(30_000, 10);
        var path = Path.Combine(_directory, "pages-3.img");
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.ReadWrite, Share = FileShare.ReadWrite, BufferSize = 0 }))
        using (var other = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            follower.Opened(3, stream.SafeFileHandle, () => StampOf(path));
            Assert.False(WriteLease.Held(stream.SafeFileHandle));
            await stream.WriteAsync(content);
            await follower.WroteAsync(3, stream.SafeFileHandle, content.Length);
            await follower.DoneWithAsync(3, stream.SafeFileHandle, content.Length, () => StampOf(path));
        }

        Assert.Null(follower.DigestOf(3, content.Length, StampOf(path)));
        Assert.Equal(1, follower.Unfollowed);
    }

    [Fact]
    public async Task A_file_changed_while_the_writer_had_left_it_is_not_followed_when_it_comes_back()
    {
        using var follower = new ReadBackFollower(StagedDigestKind.Xxh128, 4096);
        var first = Content(30_000, 11);
        var path = await WriteAsync(follower, 0, first, 3000);
        var dd = FlipWithDd(path, 100, first[100]);
        await AssertEndsSoonAsync(dd, "nothing held a lease");

        var more = Content(10_000, 12);
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.Open, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 }))
        {
            follower.Opened(0, stream.SafeFileHandle, () => StampOf(path));
            stream.Position = first.Length;
            await stream.WriteAsync(more);
            await follower.WroteAsync(0, stream.SafeFileHandle, first.Length + more.Length);
            await follower.DoneWithAsync(0, stream.SafeFileHandle, first.Length + more.Length, () => StampOf(path));
        }

        Assert.Null(follower.DigestOf(0, first.Length + more.Length, StampOf(path)));
    }
}

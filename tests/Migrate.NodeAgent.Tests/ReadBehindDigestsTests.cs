using System.Security.Cryptography;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

public sealed class ReadBehindDigestsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("read-behind-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Files_written_in_pieces_get_the_digest_of_what_the_disk_holds()
    {
        var contents = new[] { RandomNumberGenerator.GetBytes(3_500_000), RandomNumberGenerator.GetBytes(10), Array.Empty<byte>() };
        var paths = contents.Select((_, i) => Path.Combine(_directory, $"f{i}")).ToArray();
        var written = new long[contents.Length];
        using var digests = new ReadBehindDigests(paths, [.. contents.Select(c => (long)c.Length)], [false, false, false], i => Volatile.Read(ref written[i]));
        for (int i = 0; i < contents.Length; i++)
        {
            await using var stream = new FileStream(paths[i], new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, Share = FileShare.Read, BufferSize = 0 });
            for (int at = 0; at < contents[i].Length; at += 300_000)
            {
                int length = Math.Min(300_000, contents[i].Length - at);
                await stream.WriteAsync(contents[i].AsMemory(at, length));
                Volatile.Write(ref written[i], at + length);
                digests.Advanced();
                await Task.Yield();
            }
        }

        var result = await digests.FinishAsync();

        for (int i = 0; i < contents.Length; i++)
        {
            Assert.Equal(SHA256.HashData(contents[i]), result[i]);
        }
    }

    [Fact]
    public async Task A_byte_changed_on_the_disk_after_it_was_written_changes_the_digest()
    {
        var content = RandomNumberGenerator.GetBytes(2_000_000);
        var path = Path.Combine(_directory, "pages.img");
        long written = 0;
        using var digests = new ReadBehindDigests([path], [content.Length], [false], _ => Volatile.Read(ref written));
        await File.WriteAllBytesAsync(path, content);
        await using (var other = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            other.Position = 1_999_000;
            other.WriteByte((byte)(content[1_999_000] ^ 0x10));
        }

        Volatile.Write(ref written, content.Length);
        var result = await digests.FinishAsync();

        Assert.NotEqual(SHA256.HashData(content), result[0]);
    }

    [Fact]
    public async Task A_skipped_file_is_not_read_and_has_no_digest()
    {
        var path = Path.Combine(_directory, "absent.img");
        using var digests = new ReadBehindDigests([path], [4096], [true], _ => 0);

        var result = await digests.FinishAsync();

        Assert.Null(result[0]);
    }

    [Fact]
    public async Task A_file_short_of_its_size_at_the_finish_is_an_error_naming_it()
    {
        var path = Path.Combine(_directory, "short.img");
        await File.WriteAllBytesAsync(path, new byte[1000]);
        using var digests = new ReadBehindDigests([path], [5000], [false], _ => 1000);

        var error = await Assert.ThrowsAsync<IOException>(digests.FinishAsync);

        Assert.Contains("short.img holds 1000 of its 5000 bytes", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Disposed_while_waiting_for_bytes_it_stops_and_closes_the_file()
    {
        var path = Path.Combine(_directory, "partial.img");
        await File.WriteAllBytesAsync(path, new byte[100]);
        var digests = new ReadBehindDigests([path], [1 << 20], [false], _ => 100);
        digests.Advanced();
        await WaitForAsync(() => IsOpenHere(path), "the file to be opened");

        digests.Dispose();
        digests.Dispose();

        await WaitForAsync(() => !IsOpenHere(path), "the file to be closed");
    }

    private static bool IsOpenHere(string path) =>
        new DirectoryInfo("/proc/self/fd").EnumerateFileSystemInfos().Any(fd =>
        {
            try
            {
                return fd.LinkTarget == path;
            }
            catch (IOException)
            {
                return false;
            }
        });

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        for (int i = 0; i < 200 && !condition(); i++)
        {
            await Task.Delay(10);
        }

        Assert.True(condition(), $"gave up waiting for {what}");
    }
}

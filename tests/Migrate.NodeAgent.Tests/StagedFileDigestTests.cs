using System.IO.Hashing;
using System.Security.Cryptography;
using Migrate.Api;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>A staged file's digest read from the disk (<see cref="StagedFileDigest.OfFile"/>): the buffer it reads with, and the digest across the buffer's edges.</summary>
public sealed class StagedFileDigestTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("staged-digest-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Theory]
    // length, position, count, buffer: no more than what is left past the position (plus one, to see the end), never above 1 MiB, never 0
    [InlineData(0, 0, long.MaxValue, 1)]
    [InlineData(85, 0, long.MaxValue, 86)]
    [InlineData(85, 80, long.MaxValue, 6)]
    [InlineData(85, 85, long.MaxValue, 1)]
    [InlineData(85, 0, 10, 10)]
    [InlineData(3_000_000, 0, long.MaxValue, 1 << 20)]
    [InlineData(3_000_000, 0, 5000, 5000)]
    [InlineData(3_000_000, 2_999_000, long.MaxValue, 1001)]
    public void The_buffer_fits_what_is_left_to_read(int length, int position, long count, int expected)
    {
        using var stream = new MemoryStream(new byte[length]) { Position = position };
        Assert.Equal(expected, StagedFileDigest.ReadSize(stream, count));
    }

    [Fact]
    public void A_stream_without_a_length_is_read_with_up_to_1_MiB()
    {
        using var stream = new UnseekableStream();
        Assert.Equal(1 << 20, StagedFileDigest.ReadSize(stream, long.MaxValue));
        Assert.Equal(300, StagedFileDigest.ReadSize(stream, 300));
    }

    [Theory]
    [InlineData(StagedDigestKind.Xxh128, 0)]
    [InlineData(StagedDigestKind.Xxh128, 85)]
    [InlineData(StagedDigestKind.Xxh128, (1 << 20) - 1)]
    [InlineData(StagedDigestKind.Xxh128, 1 << 20)]
    [InlineData(StagedDigestKind.Xxh128, (1 << 20) + 1)]
    [InlineData(StagedDigestKind.Xxh128, 3_000_017)]
    [InlineData(StagedDigestKind.Sha256, 85)]
    [InlineData(StagedDigestKind.Sha256, 3_000_017)]
    public void A_file_of_any_length_has_the_digest_of_its_bytes(StagedDigestKind kind, int length)
    {
        var content = RandomNumberGenerator.GetBytes(length);
        var path = Path.Combine(_directory, $"pages-{length}.img");
        File.WriteAllBytes(path, content);

        var expected = kind == StagedDigestKind.Sha256 ? SHA256.HashData(content) : XxHash128.Hash(content);
        Assert.Equal(expected, StagedFileDigest.OfFile(kind, path));
        // again: the pooled buffer a first read returned holds its bytes, which must not leak into the next digest
        Assert.Equal(expected, StagedFileDigest.OfFile(kind, path));
    }

    [Fact]
    public void A_count_stops_the_read_where_it_says()
    {
        var content = RandomNumberGenerator.GetBytes(2_500_000);
        using var stream = new MemoryStream(content);
        using var digest = new StagedFileDigest(StagedDigestKind.Xxh128);

        Assert.Equal(1_234_567, digest.AppendFrom(stream, 1_234_567));
        Assert.Equal(XxHash128.Hash(content.AsSpan(0, 1_234_567)), digest.Finish());
        Assert.Equal(1_234_567, stream.Position);
    }

    /// <summary>A stream that cannot say its length (a pipe, a socket).</summary>
    private sealed class UnseekableStream : Stream
    {
        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => 0;

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

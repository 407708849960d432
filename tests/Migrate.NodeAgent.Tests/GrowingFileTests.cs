using System.Security.Cryptography;
using Migrate.Api;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A first pre-copy round sent while it is read (<see cref="MemorySnapshot.WriteStreamed"/>): the file
/// announced at its final size, a reader that waits for the writer, the sender's listing and its
/// remembered checksum, and a real process's round read while a reader follows it.
/// </summary>
public sealed class GrowingFileTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(60);
    private readonly string _directory = Directory.CreateTempSubdirectory("growing-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task A_reader_waits_for_the_bytes_it_needs_and_learns_why_a_writer_gave_up()
    {
        var path = Path.Combine(_directory, "pages-1.img");
        using (var announced = GrowingFiles.Begin(path, 3 * 4096))
        {
            Assert.Same(announced.File, GrowingFiles.Find(path));
            Assert.Throws<InvalidOperationException>(() => GrowingFiles.Begin(path, 1));
            var waiting = announced.File.WaitForAsync(2 * 4096, CancellationToken.None);
            announced.File.Advance(4096);
            await Task.Delay(50);
            Assert.False(waiting.IsCompleted);
            announced.File.Advance(2 * 4096);
            Assert.True(await waiting.WaitAsync(TickTimeout));
            Assert.True(await announced.File.WaitForAsync(4096, CancellationToken.None));

            var beyond = announced.File.WaitForAsync(3 * 4096, CancellationToken.None);
            announced.File.Fail("the process ended");
            Assert.False(await beyond.WaitAsync(TickTimeout));
            Assert.Equal("the process ended", announced.File.Failure);
        }

        Assert.Null(GrowingFiles.Find(path));

        // a writer that stops short without saying why: its readers are told where it stopped
        using var second = GrowingFiles.Begin(path, 4096);
        var file = second.File;
        second.Dispose();
        Assert.False(await file.WaitForAsync(4096, CancellationToken.None));
        Assert.Contains("left at 0 of its 4096 bytes", file.Failure, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(StagedDigestKind.Xxh128)]
    [InlineData(StagedDigestKind.Sha256)]
    public async Task A_growing_file_is_listed_at_its_final_size_and_its_checksum_is_remembered_for_the_finished_file(StagedDigestKind kind)
    {
        var content = RandomNumberGenerator.GetBytes(5 * 4096);
        var path = Path.Combine(_directory, "pages-1.img");
        File.WriteAllBytes(path, content[..4096]);
        File.WriteAllBytes(Path.Combine(_directory, "pagemap-1.img"), [1, 2, 3]);
        using var announced = GrowingFiles.Begin(path, content.Length);
        announced.File.Advance(4096);

        // listed while one page of five is written: its final size, its checksum to follow
        var manifest = ImageSender.BuildManifest(_directory, digestsFollow: true, kind: kind);
        var listed = manifest.Files.Single(f => f.Path == "pages-1.img");
        Assert.Equal((ulong)content.Length, listed.Size);
        Assert.True(listed.DigestOf(kind).IsEmpty);

        // read as it grows, as the send does, and finished
        using var owed = new OwedDigests(_directory, manifest, kind);
        int index = manifest.Files.IndexOf(listed);
        owed.Start(index, 0);
        owed.Append(index, content.AsSpan(0, 4096));
        await using (var stream = new FileStream(path, FileMode.Append))
        {
            stream.Write(content.AsSpan(4096));
        }

        announced.File.Advance(content.Length);
        owed.Append(index, content.AsSpan(4096));
        owed.End(index);
        announced.Dispose();

        // the next round's listing finds the checksum of the finished file: nothing is sent again
        var next = ImageSender.BuildManifest(_directory, digestsFollow: true, kind: kind);
        Assert.Equal(StagedFileDigest.OfFile(kind, path), next.Files.Single(f => f.Path == "pages-1.img").DigestOf(kind).ToByteArray());
    }

    [Fact]
    public void A_file_the_directory_walk_saw_half_written_is_listed_as_it_is_once_its_writer_is_done()
    {
        // the walk's view is taken while the writer is one page into three; the writer ends before the file is listed
        var content = RandomNumberGenerator.GetBytes(3 * 4096);
        var path = Path.Combine(_directory, "pages-1.img");
        File.WriteAllBytes(path, content[..4096]);
        var announced = GrowingFiles.Begin(path, content.Length);
        announced.File.Advance(4096);
        var walked = new FileInfo(path);
        var walkedAgain = new FileInfo(path);
        Assert.Equal(4096, walked.Length); // a FileInfo keeps what it read first
        Assert.Equal(4096, walkedAgain.Length);
        File.WriteAllBytes(path, content);
        announced.File.Advance(content.Length);

        // still announced, though complete
        var listed = ImageSender.Listed(walked, "pages-1.img", digestsFollow: true, StagedDigestKind.Xxh128);
        Assert.Equal((ulong)content.Length, listed.Size);

        // no longer announced
        announced.Dispose();
        listed = ImageSender.Listed(walkedAgain, "pages-1.img", digestsFollow: false, StagedDigestKind.Xxh128);
        Assert.Equal((ulong)content.Length, listed.Size);
        Assert.Equal(StagedFileDigest.OfFile(StagedDigestKind.Xxh128, path), listed.Xxh128.ToByteArray());
    }

    [Fact]
    public void A_checksum_of_fewer_bytes_than_the_file_holds_is_not_remembered_for_the_file()
    {
        // a listing that named a prefix of the file (the file grew since): its checksum is of that prefix only
        var content = RandomNumberGenerator.GetBytes(3 * 4096);
        var path = Path.Combine(_directory, "pages-1.img");
        File.WriteAllBytes(path, content);
        var manifest = new Agent.V1.Manifest();
        var entry = new Agent.V1.ManifestFile { Path = "pages-1.img", Size = 4096 };
        entry.SetDigest(StagedDigestKind.Xxh128, Google.Protobuf.ByteString.Empty);
        manifest.Files.Add(entry);
        using (var owed = new OwedDigests(_directory, manifest, StagedDigestKind.Xxh128))
        {
            owed.Start(0, 0);
            owed.Append(0, content.AsSpan(0, 4096));
            owed.End(0);
            Assert.Equal(StagedFileDigest.Of(StagedDigestKind.Xxh128, new MemoryStream(content, 0, 4096)), owed.Done().Digests.Single().Xxh128.ToByteArray());
        }

        // so the next listing owes the whole file's checksum rather than vouching for the prefix's
        Assert.Null(FileDigests.Remembered(new FileInfo(path), StagedDigestKind.Xxh128));
        var next = ImageSender.BuildManifest(_directory, digestsFollow: true, kind: StagedDigestKind.Xxh128);
        Assert.Equal((ulong)content.Length, next.Files.Single().Size);
        Assert.True(next.Files.Single().Xxh128.IsEmpty);
    }

    [Fact]
    public async Task Without_checksums_that_follow_a_growing_file_is_listed_once_written()
    {
        var content = RandomNumberGenerator.GetBytes(2 * 4096);
        var path = Path.Combine(_directory, "pages-1.img");
        File.WriteAllBytes(path, []);
        using var announced = GrowingFiles.Begin(path, content.Length);
        var writer = Task.Run(async () =>
        {
            await Task.Delay(200);
            File.WriteAllBytes(path, content);
            announced.File.Advance(content.Length);
        });

        var manifest = ImageSender.BuildManifest(_directory, digestsFollow: false, kind: StagedDigestKind.Sha256);
        await writer;
        var listed = Assert.Single(manifest.Files);
        Assert.Equal((ulong)content.Length, listed.Size);
        Assert.Equal(SHA256.HashData(content), listed.Sha256.ToByteArray());
    }

    [Fact]
    public async Task A_first_round_read_while_a_reader_follows_it_gives_the_reader_every_byte_and_the_next_round_reads_only_what_was_written()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, 5, dirtyPercentPerSecond: 0));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");
        using var tracker = WriteTracker.Arm(tree.RootPid, beforeRound: 1);
        var round1 = Path.Combine(tree.Directory, "round-1");

        // readers start when the round is laid out, one per pages file, and read as the sender does
        var reading = new Dictionary<string, Task<byte[]>>();
        var first = MemorySnapshot.WriteStreamed(tree.RootPid, round1, () =>
        {
            foreach (var map in CriuPagemap.ReadAll(round1))
            {
                var pages = Path.Combine(round1, CriuPagemap.PagesFileName(map.PagesId));
                var growing = GrowingFiles.Find(pages) ?? throw new InvalidOperationException($"{pages} is not announced");
                Assert.Equal((long)map.PresentPages * PagemapEntry.PageSize, growing.Size);
                reading[pages] = Task.Run(() => GrowingFileReader.FollowAsync(growing));
            }
        });

        Assert.NotEmpty(reading);
        long followed = 0;
        foreach (var (pages, read) in reading)
        {
            var bytes = await read.WaitAsync(TickTimeout);
            Assert.Null(GrowingFiles.Find(pages));
            Assert.True(File.ReadAllBytes(pages).AsSpan().SequenceEqual(bytes), $"the reader of {pages} saw the bytes the file holds");
            followed += bytes.Length;
        }

        output.WriteLine($"round 1: {first.PagesWritten} pages listed, {first.PagesRead} read in {first.Elapsed.TotalMilliseconds:0} ms; the readers took {followed} bytes");
        Assert.Equal((long)first.PagesWritten * PagemapEntry.PageSize, followed);
        Assert.True(first.PagesWritten >= mib * 256UL, $"round 1 lists the {mib} MiB buffer: {first.PagesWritten} pages");
        Assert.Equal(first.PagesWritten, first.PagesRead);
        Assert.Empty(first.Unread);

        long afterFirst = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= afterFirst + 3, TickTimeout, "ticks after round 1");
        var second = MemorySnapshot.Write(tree.RootPid, Path.Combine(tree.Directory, "round-2"), round1, tracker.Scan());
        Assert.True(second.PagesRead * 20 < first.PagesRead, $"round 2 reads only what was written: {second.PagesRead} pages");
        Assert.Equal(second.PagesScanned, second.PagesWritten + second.PagesUnchanged);
        Assert.True(tree.RequestVerification(TickTimeout).VerifiedOk, "the buffer checks out");
    }

    [Fact]
    public void Stretches_a_round_could_not_read_count_as_written_in_the_next_scan()
    {
        const ulong page = 4096;
        var scan = new MemoryChanges(new Dictionary<int, TrackedPages>
        {
            [10] = new TrackedPages([new PageRange(0x1000, 0x1000 + (16 * page))], [new PageRange(0x1000, 0x1000 + page)]),
        });
        var unread = new Dictionary<int, IReadOnlyList<PageRange>> { [10] = [new PageRange(0x1000 + (4 * page), 0x1000 + (6 * page))], [11] = [new PageRange(0, page)] };

        var merged = scan.WithWritten(unread);

        Assert.True(scan.For(10)!.IsUnchanged(0x1000 + (4 * page)));
        Assert.False(merged.For(10)!.IsUnchanged(0x1000 + (4 * page)));
        Assert.False(merged.For(10)!.IsUnchanged(0x1000 + (5 * page)));
        Assert.True(merged.For(10)!.IsUnchanged(0x1000 + (6 * page)));
        Assert.False(merged.For(10)!.IsUnchanged(0x1000));
        Assert.Null(merged.For(11)); // untracked: every page of it is read anyway
        Assert.Same(scan, scan.WithWritten(new Dictionary<int, IReadOnlyList<PageRange>>()));
    }
}

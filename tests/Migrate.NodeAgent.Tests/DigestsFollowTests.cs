using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Digests that follow the bytes (<c>UploadHeader.digests_follow</c>): the source's bookkeeping
/// (<see cref="OwedDigests"/>) and a real target agent's checks of a raw upload.
/// </summary>
public sealed class DigestsFollowTests : IAsyncLifetime
{
    private readonly string _directory = Directory.CreateTempSubdirectory("owed-digests-").FullName;
    private TransferAgents _agents = null!;

    public async Task InitializeAsync() => _agents = await TransferAgents.StartAsync();

    public async Task DisposeAsync()
    {
        await _agents.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Theory]
    [InlineData(StagedDigestKind.Sha256)]
    [InlineData(StagedDigestKind.Xxh128)]
    public void A_file_read_to_be_sent_is_hashed_on_the_way_and_remembered_for_the_next_manifest(StagedDigestKind kind)
    {
        var content = RandomNumberGenerator.GetBytes(3_000_000);
        File.WriteAllBytes(Path.Combine(_directory, "core-1.img"), [1, 2, 3]);
        var known = ImageSender.BuildManifest(_directory, kind: kind);
        File.WriteAllBytes(Path.Combine(_directory, "pages-1.img"), content);
        File.WriteAllBytes(Path.Combine(_directory, "fresh.img"), content[..1000]);

        var manifest = ImageSender.BuildManifest(_directory, digestsFollow: true, kind: kind);
        using var owed = new OwedDigests(_directory, manifest, kind);
        int core = Index(manifest, "core-1.img"), pages = Index(manifest, "pages-1.img"), fresh = Index(manifest, "fresh.img");
        owed.Start(pages, 0);
        for (int at = 0; at < content.Length; at += 1 << 20)
        {
            owed.Append(pages, content.AsSpan(at, Math.Min(1 << 20, content.Length - at)));
        }

        owed.End(pages);
        var done = owed.Done();

        // hashed before (by the first manifest): listed with its digest, owed nothing
        Assert.Equal(known.Files.Single().DigestOf(kind), manifest.Files[core].DigestOf(kind));
        Assert.Equal(StagedFileDigest.LengthOf(kind), manifest.Files[core].DigestOf(kind).Length);
        // never hashed: listed without, owed; the one read on its way, the other from the disk at the end
        Assert.True(manifest.Files[pages].DigestOf(kind).IsEmpty);
        Assert.True(manifest.Files[fresh].DigestOf(kind).IsEmpty);
        Assert.True(owed.Any);
        byte[] Hash(byte[] bytes) => StagedFileDigest.Of(kind, new MemoryStream(bytes));
        Assert.Equal(
            new[] { (pages, Convert.ToHexString(Hash(content))), (fresh, Convert.ToHexString(Hash(content[..1000]))) }.OrderBy(d => d.Item1),
            done.Digests.Select(d => ((int)d.File, Convert.ToHexString(d.DigestOf(kind).Span))).OrderBy(d => d.Item1));
        // remembered: the next manifest lists them
        var next = ImageSender.BuildManifest(_directory, digestsFollow: true, kind: kind);
        Assert.Equal(Hash(content), next.Files[pages].DigestOf(kind).ToByteArray());
        using var nothing = new OwedDigests(_directory, next, kind);
        Assert.False(nothing.Any);
    }

    [Fact]
    public void An_attempt_that_resumes_inside_a_file_hashes_what_the_target_holds_from_the_disk()
    {
        var content = RandomNumberGenerator.GetBytes(2_500_000);
        File.WriteAllBytes(Path.Combine(_directory, "resumed.img"), content);
        var manifest = ImageSender.BuildManifest(_directory, digestsFollow: true);
        using var owed = new OwedDigests(_directory, manifest);

        // a first attempt broken after 1 MB, the next one starting at 1.5 MB
        owed.Start(0, 0);
        owed.Append(0, content.AsSpan(0, 1_000_000));
        owed.Start(0, 1_500_000);
        owed.Append(0, content.AsSpan(1_500_000));
        owed.End(0);

        Assert.Equal(SHA256.HashData(content), Assert.Single(owed.Done().Digests).Sha256.ToByteArray());
    }

    [Fact]
    public async Task A_target_takes_digests_at_the_end_and_stages_the_manifest_with_them()
    {
        var content = RandomNumberGenerator.GetBytes(300_000);
        var (replies, error) = await UploadAsync("m-follow", content, done: Done((0, SHA256.HashData(content))));

        Assert.Null(error);
        Assert.Contains(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        Assert.Equal(content, File.ReadAllBytes(_agents.Received("m-follow", "pages-1.img")));
        var staged = Manifest.Parser.ParseJson(File.ReadAllText(Path.Combine(_agents.Target.Incoming, "m-follow", ImageReceiver.StagedFile)));
        Assert.Equal(SHA256.HashData(content), staged.Files[0].Sha256.ToByteArray());
    }

    [Fact]
    public async Task An_xxh128_upload_is_checked_and_staged_with_its_checksums()
    {
        var content = RandomNumberGenerator.GetBytes(300_000);
        var (replies, error) = await UploadAsync("m-xxh", content, done: Done(StagedDigestKind.Xxh128, (0, System.IO.Hashing.XxHash128.Hash(content))), kind: StagedDigestKind.Xxh128);

        Assert.Null(error);
        Assert.Contains(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        var staged = Manifest.Parser.ParseJson(File.ReadAllText(Path.Combine(_agents.Target.Incoming, "m-xxh", ImageReceiver.StagedFile)));
        Assert.Equal(System.IO.Hashing.XxHash128.Hash(content), staged.Files[0].Xxh128.ToByteArray());
        Assert.True(staged.Files[0].Sha256.IsEmpty);
    }

    [Fact]
    public void The_xxh128_checksum_is_XXH3_128_as_its_reference_gives_it()
    {
        // XXH3_128bits of no bytes (seed 0), from xxHash's own test vectors
        Assert.Equal("99AA06D3014798D86001C324468D497F", Convert.ToHexString(StagedFileDigest.Of(StagedDigestKind.Xxh128, new MemoryStream())));
        Assert.Equal(16, StagedFileDigest.LengthOf(StagedDigestKind.Xxh128));
        Assert.Equal(SHA256.HashData(new byte[5000]), StagedFileDigest.Of(StagedDigestKind.Sha256, new MemoryStream(new byte[5000])));
    }

    [Theory]
    [InlineData(StagedDigestKind.Xxh128, true)]
    [InlineData(StagedDigestKind.Sha256, false)]
    public async Task A_source_set_for_either_checksum_stages_identical_files_and_a_repeat_sends_nothing(StagedDigestKind kind, bool follow)
    {
        await using var agents = await TransferAgents.StartAsync([$"--Agent:TransferChecksum={kind}", $"--Agent:DigestsFollow={follow}"], []);
        var migration = kind == StagedDigestKind.Sha256 ? "m-sha256" : "m-xxh128";
        var files = TransferAgents.Stage(agents.Source, migration);

        var progress = await agents.SendAsync(migration);
        var again = await agents.SendAsync(migration);

        Assert.True(progress.Staged);
        Assert.True(again.Staged);
        Assert.Equal(0ul, again.BytesSent);
        foreach (var (path, content) in files)
        {
            Assert.Equal(content, File.ReadAllBytes(agents.Received(migration, path)));
        }

        var staged = Manifest.Parser.ParseJson(File.ReadAllText(Path.Combine(agents.Target.Incoming, migration, ImageReceiver.StagedFile)));
        Assert.All(staged.Files, f =>
        {
            Assert.Equal(StagedFileDigest.LengthOf(kind), f.DigestOf(kind).Length);
            Assert.True(f.DigestOf(FileDigests.Other(kind)).IsEmpty);
            Assert.Equal(f.DigestOf(kind).ToByteArray(), StagedFileDigest.OfFile(kind, agents.Received(migration, f.Path)));
        });
    }

    [Fact]
    public async Task A_round_given_back_once_its_target_staged_it_is_listed_as_it_was_never_sent_again_and_never_resent_if_lost()
    {
        const string migration = "m-released";
        const string pagesPath = "containers/main/round-1/pages-1.img";
        var files = TransferAgents.Stage(_agents.Source, migration);
        var first = await _agents.SendAsync(migration);
        var round = Path.Combine(_agents.Source.Staging, migration, "containers/main/round-1");
        var manifest = ImageSender.BuildManifest(Path.Combine(_agents.Source.Staging, migration), kind: StagedDigestKind.Xxh128);

        long released = ReleasedPages.Release(round, f => FileDigests.ToKeep(f, StagedDigestKind.Xxh128));

        Assert.True(first.Staged);
        Assert.Equal(files[pagesPath].Length, released);
        Assert.True(File.ReadAllBytes(Path.Combine(round, "pages-1.img")).All(b => b == 0), "the source's copy is a hole now");
        // listed as before, from the list kept beside it (which is not listed itself)
        Assert.Equal(manifest, ImageSender.BuildManifest(Path.Combine(_agents.Source.Staging, migration), kind: StagedDigestKind.Xxh128));
        var again = await _agents.SendAsync(migration);
        Assert.True(again.Staged);
        Assert.Equal(0ul, again.BytesSent);
        Assert.Equal(files[pagesPath], File.ReadAllBytes(_agents.Received(migration, pagesPath)));
        Assert.False(File.Exists(_agents.Received(migration, "containers/main/round-1/" + ReleasedPages.FileName)));

        // the target lost it: the send says why, never sends the hole's zeros for it
        File.Delete(_agents.Received(migration, pagesPath));
        var error = await Assert.ThrowsAsync<RpcException>(() => _agents.SendAsync(migration));
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains($"{pagesPath} was released on {_agents.Source.Name} once {_agents.Target.Name} had staged it", error.Status.Detail);
        Assert.False(File.Exists(_agents.Received(migration, pagesPath)));

        // a damaged list: the send is refused, saying so
        File.WriteAllText(Path.Combine(round, ReleasedPages.FileName), "pages-1.img\tnot-a-length\n");
        var damaged = await Assert.ThrowsAsync<RpcException>(() => _agents.SendAsync(migration));
        Assert.Equal(StatusCode.FailedPrecondition, damaged.StatusCode);
        Assert.Contains("the images cannot be listed", damaged.Status.Detail);
        Assert.Contains("malformed line", damaged.Status.Detail);
        File.Delete(Path.Combine(round, ReleasedPages.FileName));
        ReleasedPages.Release(round, f => new Dictionary<string, string> { ["Xxh128"] = "00" });

        // a list that kept another kind of digest cannot be listed as this agent's kind
        Assert.Contains("only its digests of kind Xxh128 were kept, not Sha256",
            Assert.Throws<InvalidOperationException>(() => ImageSender.BuildManifest(Path.Combine(_agents.Source.Staging, migration), kind: StagedDigestKind.Sha256)).Message);
    }

    public static TheoryData<string, StatusCode, string> BadEnds => new()
    {
        { "missing", StatusCode.InvalidArgument, "the upload ended without the SHA-256 of pages-1.img" },
        { "wrong", StatusCode.DataLoss, "pages-1.img does not match its SHA-256" },
        { "twice", StatusCode.InvalidArgument, "gives a digest for file 0 that the manifest does not leave to it, twice, or not a SHA-256" },
        { "short", StatusCode.InvalidArgument, "gives a digest for file 0 that the manifest does not leave to it, twice, or not a SHA-256" },
        { "other-kind", StatusCode.InvalidArgument, "gives a digest for file 0 that the manifest does not leave to it, twice, or not a SHA-256" },
        { "xxh128-wrong", StatusCode.DataLoss, "pages-1.img does not match its XXH3-128 (read back from this node's disk)" },
        { "xxh128-as-sha256", StatusCode.InvalidArgument, "the manifest lists pages-1.img twice or without a XXH3-128 (and only that)" },
        { "no-such-file", StatusCode.InvalidArgument, "gives a digest for file 7" },
        { "not-announced", StatusCode.InvalidArgument, "the manifest lists pages-1.img twice or without a SHA-256" },
    };

    [Theory]
    [MemberData(nameof(BadEnds))]
    public async Task An_upload_whose_digests_do_not_add_up_is_refused_and_nothing_is_staged(string kind, StatusCode code, string reason)
    {
        var content = RandomNumberGenerator.GetBytes(200_000);
        var right = SHA256.HashData(content);
        var done = kind switch
        {
            "missing" => Done(),
            "wrong" => Done((0, SHA256.HashData(content[1..]))),
            "twice" => Done((0, right), (0, right)),
            "short" => Done((0, right[..16])),
            "no-such-file" => Done((0, right), (7, right)),
            "other-kind" => new UploadDone { Digests = { new FileDigest { File = 0, Sha256 = ByteString.CopyFrom(right), Xxh128 = ByteString.CopyFrom(right[..16]) } } },
            "xxh128-wrong" => Done(StagedDigestKind.Xxh128, (0, System.IO.Hashing.XxHash128.Hash(content[1..]))),
            _ => Done((0, right)),
        };
        string migration = "m-bad-" + kind;

        var (replies, error) = await UploadAsync(migration, content, done, announce: kind != "not-announced",
            kind: kind.StartsWith("xxh128", StringComparison.Ordinal) ? StagedDigestKind.Xxh128 : StagedDigestKind.Sha256,
            listed: kind == "xxh128-as-sha256" ? right : null);

        Assert.NotNull(error);
        Assert.Equal(code, error.StatusCode);
        Assert.Contains(reason, error.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        Assert.False(File.Exists(Path.Combine(_agents.Target.Incoming, migration, ImageReceiver.StagedFile)), "nothing may be staged");
        Assert.False(File.Exists(_agents.Received(migration, "pages-1.img")), "the file must be removed");
    }

    private async Task<(List<UploadReply> Replies, RpcException? Error)> UploadAsync(string migration, byte[] content, UploadDone done, bool announce = true,
        StagedDigestKind kind = StagedDigestKind.Sha256, byte[]? listed = null)
    {
        var token = _agents.Pki.Token(migration, "node-a", "node-b");
        await _agents.Operator(_agents.Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = migration, Token = token });
        var header = RawUpload.Header(migration, token, "node-a",
            new Manifest { Files = { new ManifestFile { Path = "pages-1.img", Size = (ulong)content.Length, Sha256 = ByteString.CopyFrom(listed ?? []) } } });
        header.Header.DigestsFollow = announce;
        header.Header.Xxh128 = kind == StagedDigestKind.Xxh128;
        return await RawUpload.RunAsync(_agents.Peer(_agents.Target, _agents.Pki.Issue("node-a")),
            header, RawUpload.Chunk(0, 0, content[..100_000]), RawUpload.Chunk(0, 100_000, content[100_000..]), new UploadMessage { Done = done });
    }

    private static UploadDone Done(params (uint File, byte[] Digest)[] digests) => Done(StagedDigestKind.Sha256, digests);

    private static UploadDone Done(StagedDigestKind kind, params (uint File, byte[] Digest)[] digests)
    {
        var done = new UploadDone();
        done.Digests.AddRange(digests.Select(d => kind == StagedDigestKind.Sha256
            ? new FileDigest { File = d.File, Sha256 = ByteString.CopyFrom(d.Digest) }
            : new FileDigest { File = d.File, Xxh128 = ByteString.CopyFrom(d.Digest) }));
        return done;
    }

    private static int Index(Manifest manifest, string path) => manifest.Files.IndexOf(manifest.Files.Single(f => f.Path == path));
}

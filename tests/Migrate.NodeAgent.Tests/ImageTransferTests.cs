using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Migrate.Agent.Contracts.Security;
using Migrate.Api;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Criu.Lazy;
using Migrate.Agent.V1;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>Images between two real agents over real gRPC with mutual TLS on loopback.</summary>
public sealed class ImageTransferTests : IAsyncLifetime
{
    private TransferAgents _agents = null!;

    public async Task InitializeAsync() => _agents = await TransferAgents.StartAsync("--Agent:MaxStreamBytes=67108864");

    public async Task DisposeAsync() => await _agents.DisposeAsync();

    private TlsAgent Source => _agents.Source;

    private TlsAgent Target => _agents.Target;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Staged_images_arrive_identical_with_their_parent_links_and_a_repeat_sends_nothing(bool compress)
    {
        var files = TransferAgents.Stage(Source, "m-ok");

        var progress = await _agents.SendAsync("m-ok", compress: compress);
        var incoming = Path.Combine(Target.Incoming, "m-ok");
        var first = File.ReadAllText(Path.Combine(incoming, StagingLayout.StagedFile));
        Assert.False(Directory.Exists(Path.Combine(incoming, StagingLayout.RetiredDirectory)), "the first upload had no records to move aside");
        var again = await _agents.SendAsync("m-ok", compress: compress);

        Assert.True(progress.Staged);
        Assert.Equal("bulk", progress.Lane);
        Assert.Equal((ulong)files.Values.Sum(f => f.Length), progress.TotalBytes);
        Assert.Equal(progress.TotalBytes, progress.BytesSent);
        foreach (var (path, content) in files)
        {
            Assert.Equal(content, File.ReadAllBytes(_agents.Received("m-ok", path)));
        }

        var link = new FileInfo(_agents.Received("m-ok", "containers/main/final/parent"));
        Assert.Equal("../round-1", link.LinkTarget);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.Combine(Target.Incoming, "m-ok")));
        Assert.True(again.Staged);
        Assert.Equal(0UL, again.BytesSent);
        Assert.Equal(progress.TotalBytes, again.BytesSkipped);
        // the repeat's opening moved the first upload's records aside (not deleted) and staged anew
        var retired = Directory.GetFiles(Path.Combine(incoming, StagingLayout.RetiredDirectory)).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Collection(retired,
            r => Assert.StartsWith(StagingLayout.ProgressFile + ".", r, StringComparison.Ordinal),
            r => Assert.StartsWith(StagingLayout.StagedFile + ".", r, StringComparison.Ordinal));
        Assert.Equal(first, File.ReadAllText(Path.Combine(incoming, StagingLayout.RetiredDirectory, retired[1]!)));
        Assert.True(File.Exists(Path.Combine(incoming, StagingLayout.StagedFile)));
        if (compress)
        {
            // a quarter of every image is zero pages
            Assert.True(progress.WireBytes < progress.BytesSent * 9 / 10, $"{progress.WireBytes} bytes on the wire for {progress.BytesSent}");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Pages_a_forked_process_shares_with_its_parent_travel_once_and_arrive_identical(bool compress)
    {
        // a parent and its forked child dumped by CRIU: the child's page image repeats the parent's
        // 4 MiB (a quarter of it zero pages) but for 64 KiB it wrote itself, and ends on a partial page
        var parent = CheckpointData.Create(4 << 20, 21);
        var child = parent.ToArray();
        CheckpointData.Create(64 << 10, 22).CopyTo(child, 1 << 20);
        var directory = Path.Combine(Source.Staging, "m-fork");
        var files = new Dictionary<string, byte[]>
        {
            ["containers/main/final/pages-1.img"] = parent,
            ["containers/main/final/pages-2.img"] = [.. child, .. CheckpointData.Create(1000, 23)],
            ["containers/main/final/core-1.img"] = CheckpointData.Create(3000, 24),
            // two processes in one image set: every page is worth indexing
            ["containers/main/final/pagemap-1.img"] = CheckpointData.Create(200, 25),
            ["containers/main/final/pagemap-2.img"] = CheckpointData.Create(200, 26),
        };
        foreach (var (path, content) in files)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(directory, path))!);
            File.WriteAllBytes(Path.Combine(directory, path), content);
        }

        Source.RecordFrozenMigration("m-fork", directory);

        var progress = await _agents.SendAsync("m-fork", compress: compress);

        foreach (var (path, content) in files)
        {
            Assert.Equal(content, File.ReadAllBytes(_agents.Received("m-fork", path)));
        }

        ulong total = (ulong)files.Values.Sum(f => f.Length);
        Assert.Equal(total, progress.BytesSent);
        // the child's copy, and all zero pages after the first, went as references
        ulong shared = (4UL << 20) - (64UL << 10);
        Assert.True(progress.BytesReferenced >= shared, $"{progress.BytesReferenced} bytes went as references; the child shares {shared} with its parent");
        Assert.True(progress.WireBytes <= total - progress.BytesReferenced, $"{progress.WireBytes} bytes on the wire for {total} of which {progress.BytesReferenced} were references");
        Assert.True(progress.WireBytes < total / 2, $"{progress.WireBytes} bytes on the wire for {total}");
    }

    [Theory]
    [InlineData("bulk")]
    [InlineData("grpc")]
    public async Task A_transfer_cut_mid_stream_resumes_without_resending_what_arrived(string lane)
    {
        // the gRPC lane only where the target does not offer the bulk one
        await using var grpcOnly = lane == "grpc" ? await TransferAgents.StartAsync("--Agent:BulkTransfer=false") : null;
        var agents = grpcOnly ?? _agents;
        var files = TransferAgents.Stage(agents.Source, "m-resume", mib: 40);
        await using var proxy = new TcpProxy(RawUpload.Endpoint(agents.Target));
        // the connection that carries the bytes (the bulk lane's, or the gRPC one's past its 16 MiB
        // HTTP/2 stream window): at least 24 - 16 - 1 MiB must have been written on the target
        proxy.CutFirstConnectionPassing(24 << 20);

        var progress = await agents.SendAsync("m-resume", targetAddress: proxy.Address);

        Assert.True(progress.Staged);
        Assert.Equal(lane, progress.Lane);
        Assert.Equal(1, proxy.ConnectionsCut);
        Assert.True(progress.Retries >= 1, "the cut was not retried");
        Assert.True(progress.BytesSkipped >= 2 << 20, $"only {progress.BytesSkipped} bytes that arrived before the cut were kept");
        Assert.True(progress.BytesSent < progress.TotalBytes + (24 << 20), $"{progress.BytesSent} bytes sent for {progress.TotalBytes}");
        foreach (var (path, content) in files)
        {
            Assert.Equal(content, File.ReadAllBytes(agents.Received("m-resume", path)));
        }
    }

    [Fact]
    public async Task One_flipped_byte_is_rejected_and_nothing_is_staged()
    {
        var content = CheckpointData.Create(300_000, 9);
        var manifest = new Manifest { Files = { TransferAgents.Entry("containers/main/final/pages-1.img", content) } };
        var tampered = (byte[])content.Clone();
        tampered[123_456] ^= 0x01;
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-flip", Token = _agents.Pki.Token("m-flip", "node-a", "node-b") });

        var (replies, error) = await RawUpload.RunAsync(_agents.Peer(Target, _agents.Pki.Issue("node-a")),
            RawUpload.Header("m-flip", _agents.Pki.Token("m-flip", "node-a", "node-b"), "node-a", manifest),
            RawUpload.Chunk(0, 0, tampered[..200_000]),
            RawUpload.Chunk(0, 200_000, tampered[200_000..]),
            RawUpload.Done());

        Assert.NotNull(error);
        Assert.Equal(StatusCode.DataLoss, error.StatusCode);
        Assert.Contains("does not match its SHA-256", error.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-flip", StagingLayout.FilesDirectory)), "no image file may be written");
    }

    [Fact]
    public async Task Bad_tokens_and_unexpected_migrations_are_denied_before_anything_is_written()
    {
        var rejections = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var meters = new System.Diagnostics.Metrics.MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Name == "podmig.agent.transfer.rejections")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        meters.SetMeasurementEventCallback<long>((_, _, tags, _) =>
        {
            foreach (var tag in tags)
            {
                rejections.Enqueue((string)tag.Value!);
            }
        });
        meters.Start();
        var content = CheckpointData.Create(10_000, 1);
        var manifest = new Manifest { Files = { TransferAgents.Entry("rootfs/main.tar", content) } };
        var pki = _agents.Pki;
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-token", Token = pki.Token("m-token", "node-a", "node-b") });
        var honest = _agents.Peer(Target, pki.Issue("node-a"));
        var cases = new (string Name, ImageTransfer.ImageTransferClient Client, UploadMessage Header, string Says)[]
        {
            ("foreign key", honest, RawUpload.Header("m-token", TestPki.ForeignToken("m-token", "node-a", "node-b"), "node-a", manifest), "signature"),
            ("expired", honest, RawUpload.Header("m-token", pki.Token("m-token", "node-a", "node-b", lifetime: TimeSpan.FromSeconds(-5)), "node-a", manifest), "expired"),
            ("other migration", honest, RawUpload.Header("m-token", pki.Token("m-other", "node-a", "node-b"), "node-a", manifest), "for migration m-other"),
            ("other target", honest, RawUpload.Header("m-token", pki.Token("m-token", "node-a", "node-c"), "node-a", manifest), "for node node-c"),
            ("not expected", honest, RawUpload.Header("m-surprise", pki.Token("m-surprise", "node-a", "node-b"), "node-a", manifest), "was not told to expect"),
            ("other sender", _agents.Peer(Target, pki.Issue("node-c")), RawUpload.Header("m-token", pki.Token("m-token", "node-a", "node-b"), "node-a", manifest), "comes from node-c"),
            ("no token", honest, RawUpload.Header("m-token", "", "node-a", manifest), "no transfer token"),
        };

        foreach (var (name, client, header, says) in cases)
        {
            var (_, error) = await RawUpload.RunAsync(client, header, RawUpload.Chunk(0, 0, content), RawUpload.Done());

            Assert.True(error is not null, name);
            Assert.True(error.StatusCode == StatusCode.PermissionDenied, $"{name}: {error.StatusCode} {error.Status.Detail}");
            Assert.True(error.Status.Detail.Contains(says, StringComparison.Ordinal), $"{name}: {error.Status.Detail}");
        }

        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-token", StagingLayout.FilesDirectory)), "no image file may be written");
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-surprise", StagingLayout.FilesDirectory)), "no image file may be written");
        Assert.Equal(5, rejections.Count(r => r == "token"));
        Assert.Contains("unexpected", rejections);
        Assert.Contains("wrong-source", rejections);
    }

    [Fact]
    public async Task Page_fetches_are_refused_to_anyone_but_the_tokens_target_and_for_migrations_that_left_no_pages()
    {
        var pki = _agents.Pki;
        var honest = _agents.Peer(Source, pki.Issue("node-b"));
        var good = pki.Token("m-pages", "node-a", "node-b");
        var cases = new (string Name, ImageTransfer.ImageTransferClient Client, PageFetch First, StatusCode Code, string Says)[]
        {
            ("another node", _agents.Peer(Source, pki.Issue("node-c")), Fetch("m-pages", good), StatusCode.PermissionDenied, "this call comes from node-c"),
            ("foreign key", honest, Fetch("m-pages", TestPki.ForeignToken("m-pages", "node-a", "node-b")), StatusCode.PermissionDenied, "signature"),
            ("expired", honest, Fetch("m-pages", pki.Token("m-pages", "node-a", "node-b", lifetime: TimeSpan.FromSeconds(-5))), StatusCode.PermissionDenied, "expired"),
            ("other migration", honest, Fetch("m-pages", pki.Token("m-other", "node-a", "node-b")), StatusCode.PermissionDenied, "for migration m-other"),
            ("other source", honest, Fetch("m-pages", pki.Token("m-pages", "node-c", "node-b")), StatusCode.PermissionDenied, "for pages from node node-c"),
            ("no token", honest, Fetch("m-pages", ""), StatusCode.PermissionDenied, "no transfer token"),
            ("bad id", honest, Fetch("M/../x", good), StatusCode.InvalidArgument, "is not a migration id"),
            ("unknown migration", honest, Fetch("m-pages", good), StatusCode.NotFound, "not known on this node"),
        };

        foreach (var (name, client, first, code, says) in cases)
        {
            using var call = client.FetchPages();
            await call.RequestStream.WriteAsync(first);
            await call.RequestStream.CompleteAsync();
            var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
            Assert.True(error.StatusCode == code, $"{name}: {error.StatusCode} {error.Status.Detail}");
            Assert.True(error.Status.Detail.Contains(says, StringComparison.Ordinal), $"{name}: {error.Status.Detail}");
        }
    }

    [Fact]
    public async Task The_pages_lane_is_refused_as_page_fetches_are_with_the_reason_and_no_page()
    {
        var pki = _agents.Pki;
        var good = pki.Token("m-pages", "node-a", "node-b");
        var cases = new (string Name, string Node, string Migration, string Token, HttpStatusCode Code, string Says)[]
        {
            ("another node", "node-c", "m-pages", good, HttpStatusCode.Forbidden, "this call comes from node-c"),
            ("foreign key", "node-b", "m-pages", TestPki.ForeignToken("m-pages", "node-a", "node-b"), HttpStatusCode.Forbidden, "signature"),
            ("other source", "node-b", "m-pages", pki.Token("m-pages", "node-c", "node-b"), HttpStatusCode.Forbidden, "for pages from node node-c"),
            ("no token", "node-b", "m-pages", "", HttpStatusCode.Forbidden, "no transfer token"),
            ("bad id", "node-b", "M/../x", good, HttpStatusCode.BadRequest, "is not a migration id"),
            ("unknown migration", "node-b", "m-pages", good, HttpStatusCode.NotFound, "not known on this node"),
        };

        var body = new byte[PagesLane.RequestSize];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(body, 1);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4), 1);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(8), 0x10000);
        foreach (var (name, node, migration, token, code, says) in cases)
        {
            var identity = pki.Issue(node);
            using var tls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, pki.AuthorityFile);
            using var client = new HttpClient(tls.CreateHandler(Source.Name));
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"https://{Source.Address}{PagesLane.Path}"))
            {
                Version = HttpVersion.Version11,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                Content = new ByteArrayContent(body),
            };
            request.Headers.Add(PagesLane.MigrationHeader, migration);
            request.Headers.Add(PagesLane.TokenHeader, token);
            request.Headers.Add(PagesLane.ContainerHeader, "main");
            using var response = await client.SendAsync(request);
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == code, $"{name}: {(int)response.StatusCode} {text}");
            Assert.True(text.Contains(says, StringComparison.Ordinal), $"{name}: {text}");
        }
    }

    private static PageFetch Fetch(string migration, string token) =>
        new() { MigrationId = migration, Token = token, Container = "main", TaskId = 1, Address = 0x10000, Pages = 1 };

    [Fact]
    public async Task Expecting_images_says_beside_them_whether_the_source_leaves_memory_lazy_and_a_repeat_can_take_it_back()
    {
        var token = _agents.Pki.Token("m-lazy", "node-a", "node-b");
        var hint = Path.Combine(Target.Incoming, "m-lazy", StagingLayout.LazyMemoryExpectedFile);

        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-lazy", Token = token, LazyMemory = true });
        bool saidLazy = File.Exists(hint);
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-lazy", Token = token });

        Assert.True(saidLazy, "the replacement's runtime reads what to begin runc for from " + hint);
        Assert.False(File.Exists(hint));
    }

    [Fact]
    public async Task A_peer_whose_certificate_is_not_from_the_cluster_CA_cannot_connect()
    {
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-cert", Token = _agents.Pki.Token("m-cert", "node-a", "node-b") });
        var stranger = _agents.Peer(Target, _agents.Pki.Issue("node-a", selfSigned: true));

        var (_, error) = await RawUpload.RunAsync(stranger,
            RawUpload.Header("m-cert", _agents.Pki.Token("m-cert", "node-a", "node-b"), "node-a", new Manifest()), RawUpload.Done());

        Assert.NotNull(error);
        // refused in the TLS handshake, never by the service: with TLS 1.3 the client may finish its half of
        // the handshake before the server checks its certificate, and then sees the refusal as a broken
        // connection (Internal) instead of one that could not be made (Unavailable)
        Assert.True(error.StatusCode is StatusCode.Unavailable or StatusCode.Internal, $"{error.StatusCode}: {error.Status.Detail}");
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-cert", StagingLayout.FilesDirectory)), "no image file may be written");
    }

    [Theory]
    [InlineData("../escape")]
    [InlineData("/etc/podmig-escape")]
    [InlineData("containers/../../escape")]
    [InlineData("containers/./x")]
    [InlineData("containers//x")]
    [InlineData("a\\..\\b")]
    public async Task Names_that_leave_the_staging_directory_are_rejected_and_nothing_is_written(string name)
    {
        var content = Encoding.ASCII.GetBytes("escaped");
        var manifest = new Manifest { Files = { TransferAgents.Entry("ok/first", content), TransferAgents.Entry(name, content) } };
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-path", Token = _agents.Pki.Token("m-path", "node-a", "node-b") });

        var (_, error) = await RawUpload.RunAsync(_agents.Peer(Target, _agents.Pki.Issue("node-a")),
            RawUpload.Header("m-path", _agents.Pki.Token("m-path", "node-a", "node-b"), "node-a", manifest),
            RawUpload.Chunk(0, 0, content), RawUpload.Chunk(1, 0, content), RawUpload.Done());

        Assert.NotNull(error);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("path", error.Status.Detail, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-path", StagingLayout.FilesDirectory)), "no image file may be written");
        Assert.False(File.Exists(Path.Combine(Target.Root, "escape")));
        Assert.False(File.Exists(Path.Combine(Target.Incoming, "escape")));
        Assert.False(File.Exists("/etc/podmig-escape"));
    }

    [Fact]
    public async Task Oversize_manifests_and_chunks_beyond_a_file_are_refused()
    {
        var small = CheckpointData.Create(4096, 1);
        var pki = _agents.Pki;
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "m-big", Token = pki.Token("m-big", "node-a", "node-b", maxBytes: 1 << 20) });
        var peer = _agents.Peer(Target, pki.Issue("node-a"));
        var huge = new Manifest { Files = { new ManifestFile { Path = "pages-1.img", Size = 2 << 20, Sha256 = Google.Protobuf.ByteString.CopyFrom(new byte[32]) } } };
        var beyondStream = new Manifest { Files = { new ManifestFile { Path = "pages-1.img", Size = 128UL << 20, Sha256 = Google.Protobuf.ByteString.CopyFrom(new byte[32]) } } };

        var (_, overToken) = await RawUpload.RunAsync(peer, RawUpload.Header("m-big", pki.Token("m-big", "node-a", "node-b", maxBytes: 1 << 20), "node-a", huge));
        var (_, overStream) = await RawUpload.RunAsync(peer, RawUpload.Header("m-big", pki.Token("m-big", "node-a", "node-b"), "node-a", beyondStream));
        var (_, overFile) = await RawUpload.RunAsync(peer,
            RawUpload.Header("m-big", pki.Token("m-big", "node-a", "node-b"), "node-a", new Manifest { Files = { TransferAgents.Entry("x", small) } }),
            RawUpload.Chunk(0, 0, small), RawUpload.Chunk(0, 4096, small));

        Assert.Equal(StatusCode.ResourceExhausted, overToken!.StatusCode);
        Assert.Contains("the token allows 1048576", overToken.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.ResourceExhausted, overStream!.StatusCode);
        Assert.Contains("one stream may bring", overStream.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.InvalidArgument, overFile!.StatusCode);
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-big", StagingLayout.FilesDirectory)), "no image file may be written");
    }

    [Fact]
    public async Task Garbage_and_plain_HTTP_on_the_port_are_dropped_while_real_transfers_go_on()
    {
        var files = TransferAgents.Stage(Source, "m-amid");
        using (var garbage = new TcpClient())
        {
            await garbage.ConnectAsync(RawUpload.Endpoint(Target));
            var stream = garbage.GetStream();
            await stream.WriteAsync(RandomNumberGenerator.GetBytes(64 << 10));
            var buffer = new byte[1024];
            int read;
            try
            {
                read = await stream.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (IOException)
            {
                read = 0;
            }

            Assert.True(read == 0 || buffer[0] == 0x15, "the agent answered garbage with something other than a TLS alert or a close");
        }

        using var http = new HttpClient();
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => http.GetAsync(new Uri($"http://{Target.Address}/healthz")));

        var progress = await _agents.SendAsync("m-amid");
        Assert.True(progress.Staged);
        Assert.Equal(files["rootfs/main.tar"], File.ReadAllBytes(_agents.Received("m-amid", "rootfs/main.tar")));
    }

    [Fact]
    public async Task Eight_concurrent_transfers_within_the_limits_all_succeed()
    {
        var migrations = Enumerable.Range(1, 8).Select(i => $"m-many-{i}").ToList();
        var contents = migrations.ToDictionary(m => m, m => TransferAgents.Stage(Source, m, mib: 2));

        var results = await Task.WhenAll(migrations.Select(m => _agents.SendAsync(m)));

        Assert.All(results, r => Assert.True(r.Staged));
        foreach (var migration in migrations)
        {
            Assert.Equal(contents[migration]["containers/main/round-1/pages-1.img"], File.ReadAllBytes(_agents.Received(migration, "containers/main/round-1/pages-1.img")));
        }
    }

    [Fact]
    public async Task A_node_refuses_streams_beyond_its_stream_cap_byte_budget_and_free_disk()
    {
        var pki = _agents.Pki;
        await using var small = await TlsAgent.StartAsync(pki, "node-small", Path.Combine(_agents.Root, "small"),
            "--Agent:MaxIncomingStreams=1", "--Agent:MaxIncomingBytes=1048576");
        await using var full = await TlsAgent.StartAsync(pki, "node-full", Path.Combine(_agents.Root, "full"), "--Agent:MinFreeDiskBytes=1000000000000000");
        var content = CheckpointData.Create(600_000, 3);
        var manifest = new Manifest { Files = { TransferAgents.Entry("pages-1.img", content) } };
        foreach (var (agent, migration) in new[] { (small, "m-one"), (small, "m-two"), (full, "m-full") })
        {
            await _agents.Operator(agent).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = migration, Token = pki.Token(migration, "node-a", agent.Name) });
        }

        var peer = _agents.Peer(small, pki.Issue("node-a"));
        // the first stream sends its header and waits: it holds the node's only stream slot
        using var holding = peer.Upload();
        await holding.RequestStream.WriteAsync(RawUpload.Header("m-one", pki.Token("m-one", "node-a", "node-small"), "node-a", manifest));
        Assert.True(await holding.ResponseStream.MoveNext(CancellationToken.None));
        var (_, busy) = await RawUpload.RunAsync(peer, RawUpload.Header("m-two", pki.Token("m-two", "node-a", "node-small"), "node-a", manifest));
        await holding.RequestStream.WriteAsync(RawUpload.Chunk(0, 0, content));
        await holding.RequestStream.WriteAsync(RawUpload.Done());
        await holding.RequestStream.CompleteAsync();
        while (await holding.ResponseStream.MoveNext(CancellationToken.None))
        {
        }

        // m-one is staged (600 000 bytes); another 600 000 would pass the node's 1 MiB budget
        var (_, budget) = await RawUpload.RunAsync(peer, RawUpload.Header("m-two", pki.Token("m-two", "node-a", "node-small"), "node-a", manifest));
        var (_, disk) = await RawUpload.RunAsync(_agents.Peer(full, pki.Issue("node-a")), RawUpload.Header("m-full", pki.Token("m-full", "node-a", "node-full"), "node-a", manifest));

        Assert.Equal(StatusCode.ResourceExhausted, busy!.StatusCode);
        Assert.Contains("already receiving 1 streams", busy.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.ResourceExhausted, budget!.StatusCode);
        Assert.Contains("would pass its limit of 1048576", budget.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.ResourceExhausted, disk!.StatusCode);
        Assert.Contains("bytes free", disk.Status.Detail, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(small.Incoming, "m-one", "staged.json")));
        Assert.False(Directory.Exists(Path.Combine(small.Incoming, "m-two", StagingLayout.FilesDirectory)), "no image file may be written");
        Assert.False(Directory.Exists(Path.Combine(full.Incoming, "m-full", StagingLayout.FilesDirectory)), "no image file may be written");
    }

    [Fact]
    public async Task Cleanup_removes_what_a_node_received()
    {
        TransferAgents.Stage(Source, "m-clean");
        await _agents.SendAsync("m-clean");
        Assert.True(Directory.Exists(Path.Combine(Target.Incoming, "m-clean")));

        await _agents.Operator(Target).CleanupAsync(new MigrationRef { MigrationId = "m-clean" });

        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, "m-clean")));
    }

    [Fact]
    public async Task Images_nobody_came_back_for_are_removed_after_their_time_to_live_but_never_a_frozen_pods()
    {
        TransferAgents.Stage(Source, "m-stale");
        await _agents.SendAsync("m-stale");
        var received = Path.Combine(Target.Incoming, "m-stale");
        var frozen = Path.Combine(_agents.Source.Staging, "m-stale");
        foreach (var entry in new[] { received, frozen }.SelectMany(d => Directory.EnumerateFileSystemEntries(d, "*", SearchOption.AllDirectories).Append(d)))
        {
            if (!File.GetAttributes(entry).HasFlag(FileAttributes.ReparsePoint))
            {
                File.SetLastWriteTimeUtc(entry, DateTime.UtcNow.AddDays(-2));
            }
        }

        var removedOnTarget = await Target.Services.GetRequiredService<StagingGarbageCollector>().CollectAsync(CancellationToken.None);
        var removedOnSource = await _agents.Source.Services.GetRequiredService<StagingGarbageCollector>().CollectAsync(CancellationToken.None);

        Assert.Equal(["m-stale"], removedOnTarget);
        Assert.False(Directory.Exists(received));
        // the source's record says its pod is frozen: its checkpoint stays until the pod is thawed or ended
        Assert.Empty(removedOnSource);
        Assert.True(Directory.Exists(frozen));
    }
}

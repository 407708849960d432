using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Security.Cryptography;
using Grpc.Core;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The upload's bulk lane, driven by hand against a real agent over mutual TLS: tickets, peers and hostile frames.</summary>
public sealed class BulkLaneTests : IAsyncLifetime
{
    private TransferAgents _agents = null!;

    public async Task InitializeAsync() => _agents = await TransferAgents.StartAsync();

    public async Task DisposeAsync() => await _agents.DisposeAsync();

    private TlsAgent Target => _agents.Target;

    [Fact]
    public async Task The_lane_takes_only_the_ticket_its_upload_gave_and_only_from_the_same_node()
    {
        var content = CheckpointData.Create(300_000, 7);
        await using var upload = await OpenAsync("m-ticket", content);
        Assert.Equal(64, upload.Ticket.Length);

        var (guessed, guessedText) = await PostAsync("node-a", Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), Body((0, 0, content)));
        var (stolen, stolenText) = await PostAsync("node-c", upload.Ticket, Body((0, 0, content)));
        var (missing, _) = await PostAsync("node-a", null, Body((0, 0, content)));
        var (taken, takenText) = await PostAsync("node-a", upload.Ticket, Body((0, 0, content[..100_000]), (0, 100_000, content[100_000..])));
        var (again, _) = await PostAsync("node-a", upload.Ticket, Body((0, 0, content)));
        var (replies, error) = await upload.FinishAsync();

        Assert.Equal(HttpStatusCode.Forbidden, guessed);
        Assert.Contains("no upload from node-a is waiting for this bulk ticket", guessedText, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.Forbidden, stolen);
        Assert.Contains("no upload from node-c", stolenText, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.Forbidden, missing);
        Assert.Equal(HttpStatusCode.OK, taken);
        Assert.Equal("received", takenText);
        Assert.Equal(HttpStatusCode.Forbidden, again);
        Assert.Null(error);
        Assert.Contains(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        Assert.Equal(content, File.ReadAllBytes(_agents.Received("m-ticket", "pages-1.img")));
    }

    public static TheoryData<string, string> Hostile => new()
    {
        { "preamble", "does not begin with its preamble" },
        { "file", "a chunk names file 5; the manifest has 1" },
        { "offset", "a chunk of pages-1.img at offset 4096; the next expected is 0" },
        { "beyond", "does not fit pages-1.img" },
        { "huge", "a bulk frame of 4294967295 bytes" },
        { "length", "carries 4096 bytes but says 4000" },
    };

    [Theory]
    [MemberData(nameof(Hostile))]
    public async Task Malformed_frames_fail_the_upload_with_the_reason_and_leave_nothing_staged(string hostile, string reason)
    {
        var content = CheckpointData.Create(8192, 8);
        var page = content[..4096];
        byte[] body = hostile switch
        {
            "preamble" => [.. "PMB2"u8, .. Body((0, 0, content))[4..]],
            "file" => Body((5, 0, page)),
            "offset" => Body((0, 4096, page)),
            "beyond" => Body((0, 0, page), (0, 4096, page), (0, 8192, page)),
            "huge" => [.. BulkLane.Preamble, .. Header(new BulkFrame(0, 0, 4096, uint.MaxValue))],
            "length" => [.. BulkLane.Preamble, .. Header(new BulkFrame(0, 0, 4000, 4096)), .. page],
            _ => throw new ArgumentOutOfRangeException(nameof(hostile)),
        };
        var migration = "m-" + hostile;
        await using var upload = await OpenAsync(migration, content);

        var (status, text) = await PostAsync("node-a", upload.Ticket, body);
        var (_, error) = await upload.FinishAsync();

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains(reason, text, StringComparison.Ordinal);
        Assert.NotNull(error);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(reason, error.Status.Detail, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, migration, StagingLayout.FilesDirectory)), "no image file may stay");
    }

    [Fact]
    public async Task A_page_reference_is_filled_from_the_bytes_already_here()
    {
        // a page written twice, as a forked child's copy of its parent's memory is dumped
        var page = CheckpointData.Create(4096, 9);
        byte[] content = [.. page, .. page];
        await using var upload = await OpenAsync("m-reference", content, references: true);
        Assert.True(upload.References, "the target offers page references to a source that asks for them");

        var (status, text) = await PostAsync("node-a", upload.Ticket, [.. BulkLane.Preamble, .. Frame(0, 0, page), .. Reference(0, 4096, 4096, 0, 0), .. Header(BulkFrame.End)]);
        var (replies, error) = await upload.FinishAsync();

        Assert.Equal((HttpStatusCode.OK, "received"), (status, text));
        Assert.Null(error);
        Assert.Contains(replies, r => r.KindCase == UploadReply.KindOneofCase.Staged);
        Assert.Equal(content, File.ReadAllBytes(_agents.Received("m-reference", "pages-1.img")));
    }

    public static TheoryData<string, string> HostileReferences => new()
    {
        { "not offered", "a page reference on a bulk lane that was not offered them" },
        { "unknown file", "a page reference for pages-1.img names file 5; the manifest has 1" },
        { "ahead", "names 4096 bytes at 4096 of pages-1.img, which holds only 4096 bytes so far" },
        { "past the end", "names 4096 bytes at 18446744073709551615 of pages-1.img" },
        { "out of order", "a page reference of pages-1.img at offset 0; the next expected is 4096" },
    };

    [Theory]
    [MemberData(nameof(HostileReferences))]
    public async Task Page_references_to_bytes_not_here_or_not_offered_fail_the_upload_and_leave_nothing_staged(string hostile, string reason)
    {
        var page = CheckpointData.Create(4096, 10);
        byte[] content = [.. page, .. page];
        byte[] reference = hostile switch
        {
            "not offered" or "ahead" => Reference(0, 4096, 4096, 0, 4096),
            "unknown file" => Reference(0, 4096, 4096, 5, 0),
            "past the end" => Reference(0, 4096, 4096, 0, ulong.MaxValue),
            "out of order" => Reference(0, 0, 4096, 0, 0),
            _ => throw new ArgumentOutOfRangeException(nameof(hostile)),
        };
        var migration = "m-ref-" + hostile.Replace(' ', '-');
        await using var upload = await OpenAsync(migration, content, references: hostile != "not offered");

        var (status, text) = await PostAsync("node-a", upload.Ticket, [.. BulkLane.Preamble, .. Frame(0, 0, page), .. reference, .. Header(BulkFrame.End)]);
        var (_, error) = await upload.FinishAsync();

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains(reason, text, StringComparison.Ordinal);
        Assert.NotNull(error);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.False(Directory.Exists(Path.Combine(Target.Incoming, migration, StagingLayout.FilesDirectory)), "no image file may stay");
    }

    private static byte[] Frame(uint file, ulong offset, byte[] data) => [.. Header(new BulkFrame(file, offset, (uint)data.Length, (uint)data.Length)), .. data];

    private static byte[] Reference(uint file, ulong offset, uint length, uint fromFile, ulong fromOffset)
    {
        var copy = new byte[BulkCopy.Bytes];
        new BulkCopy(fromFile, fromOffset).Write(copy);
        return [.. Header(new BulkFrame(file, offset, length, 0)), .. copy];
    }

    [Fact]
    public async Task The_agent_chooses_AES_128_GCM_over_what_a_default_peer_prefers_and_still_serves_a_peer_offering_only_AES_256()
    {
        // OpenSSL's default client offers AES-256-GCM first: the agent's own order decides
        Assert.Equal(TlsCipherSuite.TLS_AES_128_GCM_SHA256, await HandshakeAsync(null));
        Assert.Equal(TlsCipherSuite.TLS_AES_256_GCM_SHA384, await HandshakeAsync(new CipherSuitesPolicy([TlsCipherSuite.TLS_AES_256_GCM_SHA384])));
        // and the agents' own clients (peer lanes, the operator's channel) offer AES-128-GCM first
        var identity = _agents.Pki.Issue("node-a");
        using var tls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, _agents.Pki.AuthorityFile);
        using var handler = tls.CreateHandler(Target.Name);
        Assert.Equal(TlsCipherSuite.TLS_AES_128_GCM_SHA256, handler.SslOptions.CipherSuitesPolicy?.AllowedCipherSuites.First());
    }

    private async Task<TlsCipherSuite> HandshakeAsync(CipherSuitesPolicy? offered)
    {
        var identity = _agents.Pki.Issue("node-a");
        using var tls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, _agents.Pki.AuthorityFile);
        using var client = new TcpClient();
        await client.ConnectAsync(RawUpload.Endpoint(Target));
        await using var ssl = new SslStream(client.GetStream(), false, (_, certificate, _, _) => certificate is X509Certificate2 peer && tls.IsTrusted(peer, Target.Name));
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = Target.Name,
            ClientCertificates = [tls.Certificate],
            CipherSuitesPolicy = offered,
            EnabledSslProtocols = SslProtocols.Tls13,
        });
        return ssl.NegotiatedCipherSuite;
    }

    [Fact]
    public void The_body_length_counts_the_preamble_a_header_per_chunk_and_the_end_frame()
    {
        Assert.Equal(24, BulkUpload.BodyLength([], 1024));
        Assert.Equal(24 + 0, BulkUpload.BodyLength([0], 1024));
        Assert.Equal(24 + 20 + 1, BulkUpload.BodyLength([1], 1024));
        Assert.Equal(24 + 20 + 1024, BulkUpload.BodyLength([1024], 1024));
        Assert.Equal(24 + 40 + 1025, BulkUpload.BodyLength([1025], 1024));
        Assert.Equal(24 + 60 + 2049 + 20 + 5, BulkUpload.BodyLength([2049, 5], 1024));
    }

    private static byte[] Header(BulkFrame frame)
    {
        var header = new byte[BulkFrame.HeaderBytes];
        frame.Write(header);
        return header;
    }

    private static byte[] Body(params (uint File, ulong Offset, byte[] Data)[] frames)
    {
        var body = new List<byte>(BulkLane.Preamble.ToArray());
        foreach (var (file, offset, data) in frames)
        {
            body.AddRange(Header(new BulkFrame(file, offset, (uint)data.Length, (uint)data.Length)));
            body.AddRange(data);
        }

        body.AddRange(Header(BulkFrame.End));
        return [.. body];
    }

    private async Task<(HttpStatusCode Status, string Text)> PostAsync(string node, string? ticket, byte[] body)
    {
        var identity = _agents.Pki.Issue(node);
        using var tls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, _agents.Pki.AuthorityFile);
        using var client = new HttpClient(tls.CreateHandler(Target.Name));
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"https://{Target.Address}{BulkLane.Path}"))
        {
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(body),
        };
        if (ticket is not null)
        {
            request.Headers.Add(BulkLane.TicketHeader, ticket);
        }

        using var response = await client.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    /// <summary>An upload from node-a of one file that asked for the bulk lane and was given its ticket.</summary>
    private async Task<OpenUpload> OpenAsync(string migration, byte[] content, bool references = false)
    {
        var token = _agents.Pki.Token(migration, "node-a", "node-b");
        await _agents.Operator(Target).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = migration, Token = token });
        var call = _agents.Peer(Target, _agents.Pki.Issue("node-a")).Upload();
        var header = RawUpload.Header(migration, token, "node-a", new Manifest { Files = { TransferAgents.Entry("pages-1.img", content) } });
        header.Header.Bulk = true;
        header.Header.PageReferences = references;
        await call.RequestStream.WriteAsync(header);
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        var accepted = call.ResponseStream.Current.Accepted;
        return new OpenUpload(call, accepted.BulkTicket, accepted.PageReferences);
    }

    private sealed class OpenUpload(AsyncDuplexStreamingCall<UploadMessage, UploadReply> call, string ticket, bool references) : IAsyncDisposable
    {
        public string Ticket { get; } = ticket;

        public bool References { get; } = references;

        /// <summary>Says done on the gRPC stream and reads it to its end.</summary>
        public async Task<(List<UploadReply> Replies, RpcException? Error)> FinishAsync()
        {
            var replies = new List<UploadReply>();
            try
            {
                try
                {
                    await call.RequestStream.WriteAsync(RawUpload.Done());
                    await call.RequestStream.CompleteAsync();
                }
                catch (Exception e) when (e is RpcException or InvalidOperationException)
                {
                    // the target ended the call already; its status comes from the reader
                }

                while (await call.ResponseStream.MoveNext(CancellationToken.None))
                {
                    replies.Add(call.ResponseStream.Current);
                }

                return (replies, null);
            }
            catch (RpcException e)
            {
                return (replies, e);
            }
        }

        public ValueTask DisposeAsync()
        {
            call.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}

using System.Net;
using System.Security.Cryptography;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Two agents (node-a sends, node-b receives) over mutual TLS on loopback, the operator's
/// credentials (a client certificate and the token signing key), and checkpoint-like staged images.
/// </summary>
public sealed class TransferAgents : IAsyncDisposable
{
    private readonly List<IDisposable> _disposables = [];

    private TransferAgents(TestPki pki, string root, TlsAgent source, TlsAgent target)
    {
        Pki = pki;
        Root = root;
        Source = source;
        Target = target;
    }

    public TestPki Pki { get; }

    public string Root { get; }

    public TlsAgent Source { get; }

    public TlsAgent Target { get; }

    public static Task<TransferAgents> StartAsync(params string[] targetSettings) => StartAsync([], targetSettings);

    /// <summary>Two agents, each with its own settings (<c>--Agent:Name=value</c>).</summary>
    public static async Task<TransferAgents> StartAsync(string[] sourceSettings, string[] targetSettings)
    {
        var pki = new TestPki();
        var root = Directory.CreateTempSubdirectory("podmig-transfer-").FullName;
        TlsAgent? source = null;
        try
        {
            source = await TlsAgent.StartAsync(pki, "node-a", Path.Combine(root, "a"), sourceSettings);
            var target = await TlsAgent.StartAsync(pki, "node-b", Path.Combine(root, "b"), targetSettings);
            return new TransferAgents(pki, root, source, target);
        }
        catch
        {
            if (source is not null)
            {
                await source.DisposeAsync();
            }

            pki.Dispose();
            Directory.Delete(root, recursive: true);
            throw;
        }
    }

    /// <summary>A client of an agent's API with the given identity (the operator's by default).</summary>
    public Agent.V1.NodeAgent.NodeAgentClient Operator(TlsAgent agent) => new(Channel(agent, Pki.Issue("operator")));

    /// <summary>A raw image-transfer client presenting <paramref name="identity"/>'s certificate (a peer agent, honest or not).</summary>
    public ImageTransfer.ImageTransferClient Peer(TlsAgent agent, IssuedCertificate identity) => new(Channel(agent, identity));

    private GrpcChannel Channel(TlsAgent agent, IssuedCertificate identity)
    {
        var tls = AgentTls.Load(identity.CertificateFile, identity.KeyFile, Pki.AuthorityFile);
        var channel = GrpcChannel.ForAddress("https://" + agent.Address, new GrpcChannelOptions { HttpHandler = tls.CreateHandler(agent.Name) });
        _disposables.Add(channel);
        _disposables.Add(tls);
        return channel;
    }

    /// <summary>Writes checkpoint-like images for a migration into the source's staging directory: two image sets (the final one's parent link to the first), a file system archive, an empty file.</summary>
    public static IReadOnlyDictionary<string, byte[]> Stage(TlsAgent agent, string migration, int mib = 4)
    {
        var directory = Path.Combine(agent.Staging, migration);
        var files = new Dictionary<string, byte[]>
        {
            ["containers/main/round-1/pages-1.img"] = CheckpointData.Create(mib * (1 << 20), 1),
            ["containers/main/round-1/pagemap-1.img"] = CheckpointData.Create(8192, 2),
            ["containers/main/final/pages-1.img"] = CheckpointData.Create(1 << 20, 3),
            ["containers/main/final/core-1.img"] = CheckpointData.Create(3000, 4),
            ["rootfs/main.tar"] = CheckpointData.Create(300_000, 5),
            ["volumes/empty.tar"] = [],
        };
        foreach (var (path, content) in files)
        {
            var full = Path.Combine(directory, path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllBytes(full, content);
        }

        File.CreateSymbolicLink(Path.Combine(directory, "containers/main/final/parent"), "../round-1");
        agent.RecordFrozenMigration(migration, directory);
        return files;
    }

    /// <summary>The manifest entry a honest source would send for content.</summary>
    public static ManifestFile Entry(string path, byte[] content) =>
        new() { Path = path, Size = (ulong)content.Length, Sha256 = Google.Protobuf.ByteString.CopyFrom(SHA256.HashData(content)) };

    /// <summary>Runs a send through the source agent and returns its last progress report.</summary>
    public async Task<TransferProgress> SendAsync(string migration, string? targetAddress = null, string? token = null, bool compress = false)
    {
        var expect = Operator(Target);
        await expect.ExpectImagesAsync(new ExpectImagesRequest { MigrationId = migration, Token = token ?? Pki.Token(migration, Source.Name, Target.Name) });
        using var call = Operator(Source).SendImages(new SendImagesRequest
        {
            MigrationId = migration,
            TargetAddress = targetAddress ?? Target.Address,
            TargetNode = Target.Name,
            Token = token ?? Pki.Token(migration, Source.Name, Target.Name),
            Compress = compress,
        });
        TransferProgress? last = null;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            last = call.ResponseStream.Current;
        }

        return last ?? throw new InvalidOperationException("no progress was reported");
    }

    public string Received(string migration, string path) => Path.Combine(Target.Incoming, migration, ImageReceiver.FilesDirectory, path);

    public async ValueTask DisposeAsync()
    {
        foreach (var disposable in _disposables)
        {
            disposable.Dispose();
        }

        await Source.DisposeAsync();
        await Target.DisposeAsync();
        Pki.Dispose();
        Directory.Delete(Root, recursive: true);
    }
}

/// <summary>Helpers for driving the raw upload protocol.</summary>
public static class RawUpload
{
    public static async Task<(List<UploadReply> Replies, RpcException? Error)> RunAsync(ImageTransfer.ImageTransferClient client, params UploadMessage[] messages)
    {
        var replies = new List<UploadReply>();
        try
        {
            using var call = client.Upload();
            var reading = Task.Run(async () =>
            {
                while (await call.ResponseStream.MoveNext(CancellationToken.None))
                {
                    replies.Add(call.ResponseStream.Current);
                }
            });
            try
            {
                foreach (var message in messages)
                {
                    await call.RequestStream.WriteAsync(message);
                }

                await call.RequestStream.CompleteAsync();
            }
            catch (RpcException)
            {
                // the server ended the call; its status comes from the reader
            }
            catch (InvalidOperationException)
            {
                // writing after the call completed
            }

            await reading;
            return (replies, null);
        }
        catch (RpcException e)
        {
            return (replies, e);
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            // the connection itself was refused (TLS): what a gRPC client reports as unavailable
            return (replies, new RpcException(new Status(StatusCode.Unavailable, e.Message)));
        }
    }

    public static UploadMessage Header(string migration, string token, string source, Manifest manifest, Compression compression = Compression.None) =>
        new() { Header = new UploadHeader { MigrationId = migration, Token = token, SourceNode = source, Manifest = manifest, Compression = compression } };

    public static UploadMessage Chunk(uint file, ulong offset, byte[] data) =>
        new() { Chunk = new Chunk { File = file, Offset = offset, Data = Google.Protobuf.ByteString.CopyFrom(data), Length = (uint)data.Length } };

    public static UploadMessage Done() => new() { Done = new UploadDone() };

    public static IPEndPoint Endpoint(TlsAgent agent) => new(IPAddress.Loopback, agent.Port);
}

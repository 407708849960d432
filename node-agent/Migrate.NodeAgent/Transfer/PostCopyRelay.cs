using System.IO.Hashing;
using System.Net.Sockets;
using Grpc.Core;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Agent.V1;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The target's side of post-copy: a Unix socket in each post-copy migration's directory, where the
/// restore's page server asks for the pages the final dump left on the source: its faults on one
/// connection, each request passed on a FetchPages stream to the source's agent, and all the pages
/// in order on another, fetched on one pages lane (both mutual TLS, the migration's token). A page
/// whose checksum does not match is refused: on the faults' connection the page server then ends,
/// the restore is judged failed, and the migration rolls back to the frozen source; on the stream's,
/// the stream stops and the faults fetch what it did not bring. A restarted agent listens again for
/// every migration still expected whose pages were left on its source, and a page server whose
/// connection broke reconnects for a while (RemotePageClient), so an agent's restart (a DaemonSet
/// rollout) does not end a post-copy move.
/// </summary>
public sealed partial class PostCopyRelay(ImageReceiver receiver, AgentIdentity identity, PeerConnections connections, ILogger<PostCopyRelay> logger)
    : IDisposable, IHostedService
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, Listener> _listeners = new(StringComparer.Ordinal);

    /// <summary>Pages relayed since the agent started, over all migrations.</summary>
    public long PagesRelayed => Interlocked.Read(ref _relayed);

    private long _relayed;

    /// <summary>
    /// Listens for migration <paramref name="migrationId"/>'s page servers (again after a restart: an
    /// existing socket file is replaced). Pages come from <paramref name="sourceAddress"/>, the agent
    /// of <paramref name="sourceNode"/>.
    /// </summary>
    public void Start(string migrationId, string token, string sourceAddress, string sourceNode)
    {
        lock (_gate)
        {
            if (_listeners.ContainsKey(migrationId))
            {
                return;
            }

            var path = Path.Combine(receiver.DirectoryOf(migrationId), RemotePagesProtocol.SocketName);
            File.Delete(path);
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                UnixSocketPath.Use(path, p => socket.Bind(new UnixDomainSocketEndPoint(p)));
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
                socket.Listen(16);
            }
            catch
            {
                socket.Dispose();
                throw;
            }

            var listener = new Listener(migrationId, token, sourceAddress, sourceNode, socket, path);
            _listeners[migrationId] = listener;
            _ = AcceptAsync(listener);
        }
    }

    /// <summary>At the agent's start: listens again for the post-copy migrations a previous run of it relayed.</summary>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var (migrationId, token, sourceAddress, sourceNode) in receiver.PostCopySources())
        {
            try
            {
                Start(migrationId, token, sourceAddress, sourceNode);
                LogResumed(migrationId, sourceNode);
            }
            catch (Exception e) when (e is IOException or SocketException or UnauthorizedAccessException)
            {
                LogResumeFailed(migrationId, e.Message);
            }
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Stops listening for a migration (its restore is over, aborted or cleaned up); open relays end too.</summary>
    public void Stop(string migrationId)
    {
        Listener? listener;
        lock (_gate)
        {
            if (!_listeners.Remove(migrationId, out listener))
            {
                return;
            }
        }

        listener.Dispose();
    }

    public void Dispose()
    {
        List<Listener> all;
        lock (_gate)
        {
            all = [.. _listeners.Values];
            _listeners.Clear();
        }

        all.ForEach(l => l.Dispose());
    }

    /// <summary>Why pages that came from the source cannot be handed on (null: they can).</summary>
    public static string? Check(ReadOnlySpan<byte> data, ulong checksum, int pagesAsked)
    {
        long expected = (long)pagesAsked * PagemapEntry.PageSize;
        if (data.Length != expected)
        {
            return $"the source sent {data.Length} bytes for {pagesAsked} pages ({expected} bytes)";
        }

        return XxHash64.HashToUInt64(data) != checksum ? $"{pagesAsked} pages from the source do not match their checksum: refused" : null;
    }

    private async Task AcceptAsync(Listener listener)
    {
        while (!listener.Stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.Socket.AcceptAsync(listener.Stopping.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            _ = RelayAsync(listener, client);
        }
    }

    /// <summary>
    /// One page server's connection: a <see cref="RemotePagesKind.Fetch"/> one as one FetchPages stream,
    /// each request passed on as it comes and answered before the next (the restored processes'
    /// faults); a <see cref="RemotePagesKind.Stream"/> one on the pages lane (<see cref="StreamAsync"/>).
    /// </summary>
    private async Task RelayAsync(Listener listener, Socket client)
    {
        var cancellationToken = listener.Stopping.Token;
        await using var stream = new NetworkStream(client, ownsSocket: true);
        string container = "";
        long pages = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            (container, var kind) = await RemotePagesProtocol.ReadHelloAsync(stream, cancellationToken);
            var tls = identity.Tls ?? throw new InvalidOperationException("this agent talks to its peers only over mutual TLS, and it has no certificate configured");
            if (kind == RemotePagesKind.Stream)
            {
                pages = await StreamAsync(listener, tls, container, stream, cancellationToken);
                LogStreamed(listener.MigrationId, container, pages, (long)clock.Elapsed.TotalMilliseconds);
                return;
            }

            var source = new ImageTransfer.ImageTransferClient(connections.Channel(tls, listener.SourceAddress, listener.SourceNode));
            using var call = source.FetchPages(cancellationToken: cancellationToken);
            var buffer = new byte[RemotePagesProtocol.RequestSize];
            bool first = true;
            while (await RemotePagesProtocol.ReadRequestAsync(stream, buffer, cancellationToken) is { } request)
            {
                var fetch = new PageFetch { TaskId = (uint)request.TaskId, Address = request.Address, Pages = (uint)request.Pages };
                if (first)
                {
                    fetch.MigrationId = listener.MigrationId;
                    fetch.Token = listener.Token;
                    fetch.Container = container;
                    first = false;
                }

                await call.RequestStream.WriteAsync(fetch, cancellationToken);
                if (!await call.ResponseStream.MoveNext(cancellationToken))
                {
                    throw new IOException("the source's agent ended the page stream before answering");
                }

                var data = call.ResponseStream.Current;
                if (Check(data.Data.Span, data.Checksum, request.Pages) is { } wrong)
                {
                    throw new InvalidDataException(wrong);
                }

                await RemotePagesProtocol.WriteAnswerAsync(stream, data.Data.Memory, cancellationToken);
                pages += request.Pages;
                Interlocked.Add(ref _relayed, request.Pages);
            }

            await call.RequestStream.CompleteAsync();
            LogRelayed(listener.MigrationId, container, pages, (long)clock.Elapsed.TotalMilliseconds);
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            var why = e is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : e.Message;
            LogRelayFailed(listener.MigrationId, container, pages, why);
            try
            {
                await RemotePagesProtocol.WriteRefusalAsync(stream, why, CancellationToken.None);
            }
            catch (Exception ignored) when (ignored is IOException or SocketException or ObjectDisposedException)
            {
                // the page server is gone already
            }
        }
    }

    /// <summary>
    /// A page server's stream of requests, all read before any is passed on (it ends its side when it
    /// has sent them), fetched on one pages lane; the answers handed back in order. Returns the pages relayed.
    /// </summary>
    private async Task<long> StreamAsync(Listener listener, AgentTls tls, string container, Stream stream, CancellationToken cancellationToken)
    {
        var body = new MemoryStream();
        var asked = new List<int>();
        var request = new byte[RemotePagesProtocol.RequestSize];
        while (await RemotePagesProtocol.ReadRequestAsync(stream, request, cancellationToken) is { } one)
        {
            if (asked.Count == PagesLane.MaxRequests)
            {
                throw new InvalidDataException($"the page server asked for more than {PagesLane.MaxRequests} pieces in one stream");
            }

            body.Write(request);
            asked.Add(one.Pages);
        }

        if (asked.Count == 0)
        {
            return 0;
        }

        using var client = connections.Client(tls, listener.SourceAddress, listener.SourceNode);
        using var message = new HttpRequestMessage(HttpMethod.Post, new Uri($"https://{listener.SourceAddress}{PagesLane.Path}"))
        {
            Version = System.Net.HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(body.GetBuffer(), 0, (int)body.Length),
        };
        message.Headers.TryAddWithoutValidation(PagesLane.MigrationHeader, listener.MigrationId);
        message.Headers.TryAddWithoutValidation(PagesLane.TokenHeader, listener.Token);
        message.Headers.TryAddWithoutValidation(PagesLane.ContainerHeader, container);
        using var response = await client.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        if (!response.IsSuccessStatusCode)
        {
            var why = await response.Content.ReadAsStringAsync(cancellationToken);
            throw new IOException($"the source's agent refused the pages lane: {(int)response.StatusCode} {(why.Length > 1000 ? why[..1000] : why)}");
        }

        await using var lane = await response.Content.ReadAsStreamAsync(cancellationToken);
        var buffer = new byte[PagesLane.MaxPages * PagemapEntry.PageSize];
        long relayed = 0;
        foreach (int wanted in asked)
        {
            var data = buffer.AsMemory(0, wanted * PagemapEntry.PageSize);
            ulong checksum = await PagesLane.ReadAnswerAsync(lane, wanted, data, cancellationToken);
            if (Check(data.Span, checksum, wanted) is { } wrong)
            {
                throw new InvalidDataException(wrong);
            }

            await RemotePagesProtocol.WriteAnswerAsync(stream, data, cancellationToken);
            relayed += wanted;
            Interlocked.Add(ref _relayed, wanted);
        }

        return relayed;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "migration {Migration}: listening again for the page server of a post-copy restore whose pages stay on node {Source}")]
    private partial void LogResumed(string migration, string source);

    [LoggerMessage(Level = LogLevel.Warning, Message = "migration {Migration}: could not listen again for its page server: {Why}")]
    private partial void LogResumeFailed(string migration, string why);

    [LoggerMessage(Level = LogLevel.Information, Message = "migration {Migration}: relayed {Pages} pages of container {Container} from the source in {Millis} ms")]
    private partial void LogRelayed(string migration, string container, long pages, long millis);

    [LoggerMessage(Level = LogLevel.Information, Message = "migration {Migration}: streamed {Pages} pages of container {Container} from the source on the pages lane in {Millis} ms")]
    private partial void LogStreamed(string migration, string container, long pages, long millis);

    [LoggerMessage(Level = LogLevel.Warning, Message = "migration {Migration}: fetching the pages of container {Container} left on the source failed after {Pages} pages: {Why}")]
    private partial void LogRelayFailed(string migration, string container, long pages, string why);

    private sealed class Listener(string migrationId, string token, string sourceAddress, string sourceNode, Socket socket, string path) : IDisposable
    {
        public string MigrationId { get; } = migrationId;

        public string Token { get; } = token;

        public string SourceAddress { get; } = sourceAddress;

        public string SourceNode { get; } = sourceNode;

        public Socket Socket { get; } = socket;

        public CancellationTokenSource Stopping { get; } = new();

        public void Dispose()
        {
            Stopping.Cancel();
            Socket.Dispose();
            File.Delete(path);
        }
    }
}

using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.NodeAgent.Transfer;

/// <summary>A stream was refused; <see cref="Reason"/> tags the rejection metric.</summary>
public sealed class TransferRejectedException(StatusCode code, string reason, string message) : Exception(message)
{
    public StatusCode Code { get; } = code;

    public string Reason { get; } = reason;
}

/// <summary>
/// The target side of image transfer. A stream is taken only over mutual TLS, from the node its
/// token names, for a migration this node was told to expect; its manifest is checked (confined
/// names, sizes within the token's, the stream's and the node's limits, free disk) before a byte
/// is written. Files go to <c>&lt;incoming&gt;/&lt;migration&gt;/files</c> (mode 0700) and count as
/// staged only once every file's SHA-256 matched. An interrupted stream keeps what arrived, so the
/// next attempt resumes; a refused or corrupt one removes the migration's files.
/// </summary>
public sealed partial class ImageReceiver : IDisposable
{
    public const string FilesDirectory = StagingLayout.FilesDirectory;
    public const string ProgressFile = StagingLayout.ProgressFile;
    public const string StagedFile = StagingLayout.StagedFile;
    private const int MaxFiles = 100_000;
    private const int AckEveryBytes = 4 << 20;
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private readonly AgentOptions _options;
    private readonly ILogger<ImageReceiver> _logger;
    private readonly TimeProvider _time;
    private readonly ECDsa? _tokenKey;
    private readonly SemaphoreSlim _streams;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, TransferClaims> _expected = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _reserved = new(StringComparer.Ordinal);
    private readonly HashSet<string> _active = new(StringComparer.Ordinal);
    private readonly Dictionary<string, BulkWaiter> _bulk = new(StringComparer.Ordinal);

    public ImageReceiver(IOptions<AgentOptions> options, ILogger<ImageReceiver> logger, TimeProvider? time = null, MigrationEvents? events = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Value;
        _logger = logger;
        _time = time ?? TimeProvider.System;
        _events = events;
        _tokenKey = _options.TokenPublicKeyFile is { } key ? TransferToken.LoadKey(key) : null;
        _streams = new SemaphoreSlim(_options.MaxIncomingStreams, _options.MaxIncomingStreams);
        LoadExpectations();
    }

    /// <summary>In a migration's incoming directory: the operator's token that announced it.</summary>
    public const string ExpectedFile = "expected.token";

    private readonly MigrationEvents? _events;

    /// <summary>Whether this node was told to expect the migration's images.</summary>
    public bool IsExpected(string migrationId)
    {
        lock (_gate)
        {
            return _expected.ContainsKey(migrationId);
        }
    }

    /// <summary>A peer's call about a migration (commit, abort): its token must be valid for this node and name the peer as the source.</summary>
    public TransferClaims AuthorizePeer(string token, string migrationId, string? peer)
    {
        if (peer is null)
        {
            throw Reject(StatusCode.PermissionDenied, "no-client-certificate", "the client presented no certificate from the cluster's CA");
        }

        var claims = VerifyToken(token, migrationId);
        if (claims.SourceNode != peer)
        {
            throw Reject(StatusCode.PermissionDenied, "wrong-source", $"the token is for images from node {claims.SourceNode}; this call comes from {peer}");
        }

        return claims;
    }

    /// <summary>Expectations a restarted agent finds on disk (those whose token still holds).</summary>
    private void LoadExpectations()
    {
        if (!Directory.Exists(IncomingRoot) || _tokenKey is null)
        {
            return;
        }

        foreach (var directory in Directory.EnumerateDirectories(IncomingRoot))
        {
            var file = Path.Combine(directory, ExpectedFile);
            if (!File.Exists(file))
            {
                continue;
            }

            try
            {
                var claims = TransferToken.Verify(_tokenKey, File.ReadAllText(file).Trim(), _time.GetUtcNow());
                if (claims.MigrationId == Path.GetFileName(directory) && claims.TargetNode == _options.NodeName)
                {
                    _expected[claims.MigrationId] = claims;
                }
            }
            catch (TransferTokenException)
            {
                // expired: the migration is long over; garbage collection removes the directory
            }
        }
    }

    public string IncomingRoot => _options.IncomingDirectory;

    public string DirectoryOf(string migrationId) => Path.Combine(IncomingRoot, migrationId);

    /// <summary>In a migration's incoming directory: the source agent's address its post-copy pages come from.</summary>
    public const string PostCopySourceFile = "post-copy-source";

    /// <summary>Keeps on disk where an expected migration's post-copy pages come from, so a restarted agent relays them again.</summary>
    public void RecordPostCopySource(string migrationId, string sourceAddress)
    {
        ArgumentException.ThrowIfNullOrEmpty(sourceAddress);
        if (!IsExpected(migrationId))
        {
            throw Reject(StatusCode.FailedPrecondition, "not-expected", $"node {_options.NodeName} was not told to expect migration {migrationId}");
        }

        File.WriteAllText(Path.Combine(DirectoryOf(migrationId), PostCopySourceFile), sourceAddress);
    }

    /// <summary>
    /// The expected migrations whose pages a post-copy dump left on their source (recorded by
    /// <see cref="RecordPostCopySource"/>): their token, the source agent's address and node.
    /// </summary>
    public IReadOnlyList<(string MigrationId, string Token, string SourceAddress, string SourceNode)> PostCopySources()
    {
        List<(string, TransferClaims)> expected;
        lock (_gate)
        {
            expected = [.. _expected.Select(e => (e.Key, e.Value))];
        }

        var found = new List<(string, string, string, string)>();
        foreach (var (id, claims) in expected)
        {
            var directory = DirectoryOf(id);
            try
            {
                var address = Path.Combine(directory, PostCopySourceFile);
                if (File.Exists(address))
                {
                    found.Add((id, File.ReadAllText(Path.Combine(directory, ExpectedFile)).Trim(), File.ReadAllText(address).Trim(), claims.SourceNode));
                }
            }
            catch (IOException)
            {
                // removed meanwhile: the migration was cleaned up
            }
        }

        return found;
    }

    /// <summary>The source node of an expected migration (null: not expected).</summary>
    public string? ExpectedSource(string migrationId)
    {
        lock (_gate)
        {
            return _expected.TryGetValue(migrationId, out var claims) ? claims.SourceNode : null;
        }
    }

    /// <summary>Registers a migration this node will receive (idempotent); the expectation is kept on disk, so a restarted agent still takes the images.</summary>
    public ExpectImagesResponse Expect(ExpectImagesRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var claims = VerifyToken(request.Token, request.MigrationId);
        var directory = DirectoryOf(claims.MigrationId);
        Directory.CreateDirectory(IncomingRoot, OwnerOnly);
        Directory.CreateDirectory(directory, OwnerOnly);
        File.WriteAllText(Path.Combine(directory, ExpectedFile), request.Token);
        // for the replacement's runtime, which begins runc's restore before the images are here
        var lazy = Path.Combine(directory, StagingLayout.LazyMemoryExpectedFile);
        if (request.LazyMemory)
        {
            File.WriteAllText(lazy, "the source leaves the memory to a lazy restore\n");
        }
        else
        {
            File.Delete(lazy);
        }

        lock (_gate)
        {
            _expected[claims.MigrationId] = claims;
        }

        _events?.Changed(claims.MigrationId);
        var files = Path.Combine(directory, FilesDirectory);
        long held = Directory.Exists(files) ? CheckpointEngine.DirectorySize(files) : 0;
        return new ExpectImagesResponse { Directory = directory, ReceivedBytes = (ulong)held, Staged = File.Exists(Path.Combine(directory, StagedFile)) };
    }

    /// <summary>
    /// Stages images that are already on this node (a kept checkpoint restored here) as hard links
    /// of its files instead of a stream through the network stack: each is read back and must match
    /// <paramref name="expected"/>, the manifest recorded when the checkpoint was kept, then stamped as
    /// an upload's would be. The migration must be expected (its token checked by <see cref="Expect"/>).
    /// An IOException (another file system: no hard links) leaves nothing staged; the caller streams.
    /// </summary>
    public UploadStaged StageLinked(string migrationId, string source, Manifest expected)
    {
        ArgumentNullException.ThrowIfNull(expected);
        if (!IsExpected(migrationId))
        {
            throw Reject(StatusCode.FailedPrecondition, "not-expected", $"node {_options.NodeName} was not told to expect migration {migrationId}");
        }

        var directory = DirectoryOf(migrationId);
        var files = Path.Combine(directory, FilesDirectory);
        if (Directory.Exists(files))
        {
            Directory.Delete(files, recursive: true);
        }

        try
        {
            // one process for the whole tree: regular files linked, the image sets' parent links copied as links
            var (code, error) = Run("cp", "-a", "--link", "--no-target-directory", source, files);
            if (code != 0)
            {
                throw new IOException($"cp --link {source} {files} failed ({code}): {error}");
            }

            var actual = ImageSender.BuildManifest(files);
            if (ManifestDifference(expected, actual) is { } difference)
            {
                throw Reject(StatusCode.DataLoss, "digest", $"the kept images are not those the checkpoint was taken with: {difference}");
            }

            StagedFileStamp.Write(Path.Combine(directory, StagingLayout.StampsFile),
                actual.Files.Select(f => StagedFileStamp.Of(Path.Combine(files, f.Path), f.Path) ?? throw new IOException($"{f.Path} cannot be examined (statx)")));
            File.WriteAllText(Path.Combine(directory, StagedFile), JsonFormatter.Default.Format(actual));
            File.Delete(Path.Combine(directory, ProgressFile));
            _events?.Changed(migrationId);
            return new UploadStaged { Bytes = (ulong)actual.Files.Sum(f => (long)f.Size), Files = (uint)actual.Files.Count };
        }
        catch
        {
            if (Directory.Exists(files))
            {
                Directory.Delete(files, recursive: true);
            }

            throw;
        }
    }

    /// <summary>How two manifests differ (the first file or link that does), or null when they hold the same files with the same sizes and digests.</summary>
    public static string? ManifestDifference(Manifest expected, Manifest actual)
    {
        ArgumentNullException.ThrowIfNull(expected);
        ArgumentNullException.ThrowIfNull(actual);
        var want = expected.Files.ToDictionary(f => f.Path, StringComparer.Ordinal);
        foreach (var file in actual.Files)
        {
            if (!want.Remove(file.Path, out var wanted))
            {
                return $"{file.Path} was not kept";
            }

            if (wanted.Size != file.Size || !wanted.Sha256.Span.SequenceEqual(file.Sha256.Span))
            {
                return $"{file.Path} differs from what was kept ({file.Size} bytes, kept {wanted.Size})";
            }
        }

        if (want.Count > 0)
        {
            return $"{want.Keys.Order(StringComparer.Ordinal).First()} is missing";
        }

        var links = expected.ParentLinks.Select(l => l.Directory + ">" + l.Parent).Order(StringComparer.Ordinal);
        return links.SequenceEqual(actual.ParentLinks.Select(l => l.Directory + ">" + l.Parent).Order(StringComparer.Ordinal), StringComparer.Ordinal)
            ? null : "the image sets' parent links differ";
    }

    private static (int ExitCode, string Error) Run(string program, params string[] arguments)
    {
        var start = new System.Diagnostics.ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = System.Diagnostics.Process.Start(start) ?? throw new IOException($"could not start {program}");
        var error = process.StandardError.ReadToEndAsync();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, error.Result.Trim());
    }

    /// <summary>Serves one upload stream.</summary>
    /// <param name="requests">The client's messages.</param>
    /// <param name="responses">The replies.</param>
    /// <param name="cancellationToken">The call's cancellation.</param>
    /// <param name="peer">The node the client's certificate names, or null when the client showed none the CA vouches for.</param>
    public async Task ReceiveAsync(IAsyncStreamReader<UploadMessage> requests, IServerStreamWriter<UploadReply> responses, string? peer, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ArgumentNullException.ThrowIfNull(responses);
        using var activity = AgentTelemetry.Source.StartActivity("transfer.receive");
        if (!_options.TlsEnabled)
        {
            throw Reject(StatusCode.PermissionDenied, "no-tls", "this agent takes images only over mutual TLS, and it has no certificate configured");
        }

        if (peer is null)
        {
            throw Reject(StatusCode.PermissionDenied, "no-client-certificate", "the client presented no certificate from the cluster's CA");
        }

        if (!await requests.MoveNext(cancellationToken))
        {
            throw Reject(StatusCode.InvalidArgument, "malformed", "the stream ended before its header");
        }

        if (requests.Current.KindCase != UploadMessage.KindOneofCase.Header)
        {
            throw Reject(StatusCode.InvalidArgument, "malformed", "a stream must start with its header");
        }

        var header = requests.Current.Header;
        activity?.SetTag("migration.id", header.MigrationId);
        var claims = VerifyToken(header.Token, header.MigrationId);
        if (claims.SourceNode != header.SourceNode || claims.SourceNode != peer)
        {
            throw Reject(StatusCode.PermissionDenied, "wrong-source",
                $"the token is for images from node {claims.SourceNode}; this stream comes from {peer} (says {header.SourceNode})");
        }

        lock (_gate)
        {
            if (!_expected.TryGetValue(claims.MigrationId, out var expected) || expected.SourceNode != claims.SourceNode)
            {
                throw Reject(StatusCode.PermissionDenied, "unexpected", $"node {_options.NodeName} was not told to expect images of migration {claims.MigrationId} from {claims.SourceNode}");
            }
        }

        if (!_streams.Wait(0, CancellationToken.None))
        {
            throw Reject(StatusCode.ResourceExhausted, "streams", $"node {_options.NodeName} is already receiving {_options.MaxIncomingStreams} streams; retry later");
        }

        bool failed = false;
        bool claimed = false;
        try
        {
            lock (_gate)
            {
                if (!_active.Add(claims.MigrationId))
                {
                    throw Reject(StatusCode.Aborted, "concurrent", $"another stream of migration {claims.MigrationId} is already running");
                }

                claimed = true;
            }

            var stopwatch = Stopwatch.StartNew();
            var session = Open(claims, header);
            long opened = stopwatch.ElapsedMilliseconds, arrived = opened;
            failed = true;
            string? ticket = null;
            BulkWaiter? waiter = null;
            try
            {
                if (header.Bulk && _options.BulkTransfer)
                {
                    (ticket, waiter) = OfferBulkLane(peer);
                    session.Accepted.BulkTicket = ticket;
                    session.Accepted.PageReferences = header.PageReferences && _options.PageReferences;
                }

                await responses.WriteAsync(new UploadReply { Accepted = session.Accepted }, cancellationToken);
                long sinceAck = 0;
                if (ticket is not null && waiter is not null)
                {
                    sinceAck = await ReceiveBulkAsync(ticket, waiter, session, responses, cancellationToken);
                }

                UploadDone? done = null;
                while (done is null && await requests.MoveNext(cancellationToken))
                {
                    var message = requests.Current;
                    switch (message.KindCase)
                    {
                        case UploadMessage.KindOneofCase.Chunk:
                            sinceAck += await session.WriteAsync(message.Chunk, cancellationToken);
                            if (sinceAck >= AckEveryBytes)
                            {
                                sinceAck = 0;
                                await responses.WriteAsync(new UploadReply { Ack = new UploadAck { ReceivedBytes = (ulong)session.Received } }, cancellationToken);
                            }

                            break;
                        case UploadMessage.KindOneofCase.Done:
                            done = message.Done;
                            break;
                        default:
                            throw Reject(StatusCode.InvalidArgument, "malformed", $"unexpected {message.KindCase} in the middle of a stream");
                    }
                }

                if (done is null)
                {
                    // the client closed its side without finishing: what arrived stays for a resume
                    failed = false;
                    throw new RpcException(new Status(StatusCode.Cancelled, $"the stream of migration {claims.MigrationId} ended before it was done; {session.Received} bytes are kept for a resume"));
                }

                arrived = stopwatch.ElapsedMilliseconds;
                var staged = await session.CompleteAsync(done);
                failed = false;
                AgentTelemetry.TransferBytes.Add(session.ReceivedThisStream, new KeyValuePair<string, object?>("direction", "in"));
                LogStaged(claims.MigrationId, staged.Bytes, stopwatch.ElapsedMilliseconds, session.ReceivedThisStream, session.ReferencedThisStream, opened, session.OpenSteps, arrived - opened, stopwatch.ElapsedMilliseconds - arrived, session.FollowedFiles, session.CheckedFiles, session.UnfollowedFiles, session.MostLeftToReadBack >> 10, session.CompleteSteps);
                _events?.Changed(claims.MigrationId);
                await responses.WriteAsync(new UploadReply { Staged = staged }, cancellationToken);
            }
            catch (Exception e) when (e is IOException or OperationCanceledException)
            {
                // the connection went away: keep what arrived, the source resumes
                failed = false;
                throw;
            }
            finally
            {
                if (ticket is not null)
                {
                    lock (_gate)
                    {
                        _bulk.Remove(ticket);
                    }
                }

                session.Dispose();
            }
        }
        catch (TransferRejectedException)
        {
            // a refusal before this stream owned the migration leaves another stream's files alone
            failed = claimed;
            throw;
        }
        finally
        {
            if (failed)
            {
                Discard(claims.MigrationId);
            }

            lock (_gate)
            {
                if (claimed)
                {
                    _active.Remove(claims.MigrationId);
                }
            }

            _streams.Release();
        }
    }

    /// <summary>How long an upload waits for its source to open the bulk lane it was offered.</summary>
    public TimeSpan BulkLaneWait { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The HTTP side of the bulk lane: hands the body to the upload that issued <paramref name="ticket"/>
    /// to <paramref name="peer"/>, and answers once that upload has read it (or refused it).
    /// </summary>
    public async Task<(int Status, string Message)> TakeBulkAsync(string? ticket, string? peer, PipeReader body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (peer is null)
        {
            return (StatusCodes.Status403Forbidden, "the client presented no certificate from the cluster's CA");
        }

        BulkWaiter? waiter;
        lock (_gate)
        {
            if (string.IsNullOrEmpty(ticket) || !_bulk.TryGetValue(ticket, out waiter) || waiter.Peer != peer)
            {
                AgentTelemetry.TransferRejections.Add(1, new KeyValuePair<string, object?>("reason", "bulk-ticket"));
                return (StatusCodes.Status403Forbidden, $"no upload from {peer} is waiting for this bulk ticket");
            }

            _bulk.Remove(ticket);
        }

        var lane = new BulkBody(body);
        if (!waiter.Body.TrySetResult(lane))
        {
            return (StatusCodes.Status410Gone, "the upload this ticket was for has ended");
        }

        // the upload reads the body and always gives its verdict, whatever happened
        return await lane.Verdict.Task;
    }

    private (string Ticket, BulkWaiter Waiter) OfferBulkLane(string peer)
    {
        var ticket = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var waiter = new BulkWaiter(peer);
        lock (_gate)
        {
            _bulk[ticket] = waiter;
        }

        return (ticket, waiter);
    }

    /// <summary>Waits for the source to open the bulk lane, then writes its frames into the session; returns the bytes not yet acknowledged.</summary>
    private async Task<long> ReceiveBulkAsync(string ticket, BulkWaiter waiter, IncomingSession session, IServerStreamWriter<UploadReply> responses,
        CancellationToken cancellationToken)
    {
        BulkBody lane;
        try
        {
            lane = await waiter.Body.Task.WaitAsync(BulkLaneWait, _time, cancellationToken);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            lock (_gate)
            {
                _bulk.Remove(ticket);
            }

            // a body handed over just now is answered, never left waiting
            if (!waiter.Body.TrySetCanceled(CancellationToken.None))
            {
                waiter.Body.Task.Result.Verdict.TrySetResult((StatusCodes.Status410Gone, "the upload this ticket was for has ended"));
            }

            if (e is TimeoutException)
            {
                // like a broken connection: what arrived stays, the source retries
                throw new IOException($"the source did not open the bulk lane within {BulkLaneWait.TotalSeconds:0} s");
            }

            throw;
        }

        try
        {
            long sinceAck = await ReadFramesAsync(lane.Reader, session, responses, cancellationToken);
            lane.Verdict.TrySetResult((StatusCodes.Status200OK, "received"));
            return sinceAck;
        }
        catch (TransferRejectedException e)
        {
            lane.Verdict.TrySetResult((StatusCodes.Status400BadRequest, e.Message));
            throw;
        }
        catch (Exception e)
        {
            lane.Verdict.TrySetResult((StatusCodes.Status500InternalServerError, e.Message));
            throw;
        }
    }

    private static async Task<long> ReadFramesAsync(PipeReader reader, IncomingSession session, IServerStreamWriter<UploadReply> responses, CancellationToken cancellationToken)
    {
        var preamble = await ReadExactlyAsync(reader, BulkLane.Preamble.Length, cancellationToken);
        if (!preamble.AsSpan().SequenceEqual(BulkLane.Preamble))
        {
            throw Reject(StatusCode.InvalidArgument, "malformed", "the bulk lane does not begin with its preamble");
        }

        var data = ArrayPool<byte>.Shared.Rent(session.MaxWireBytes);
        try
        {
            long sinceAck = 0;
            while (true)
            {
                var frame = BulkFrame.Read(await ReadExactlyAsync(reader, BulkFrame.HeaderBytes, cancellationToken));
                if (frame.IsEnd)
                {
                    return sinceAck;
                }

                if (frame.IsCopy)
                {
                    if (!session.Accepted.PageReferences)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", "a page reference on a bulk lane that was not offered them");
                    }

                    var copy = BulkCopy.Read(await ReadExactlyAsync(reader, BulkCopy.Bytes, cancellationToken));
                    sinceAck += await session.CopyAsync(frame.File, frame.Offset, frame.Length, copy, cancellationToken);
                }
                else
                {
                    if (frame.WireLength == 0 || frame.WireLength > session.MaxWireBytes)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", $"a bulk frame of {frame.WireLength} bytes (at most {session.MaxWireBytes})");
                    }

                    await ReadExactlyAsync(reader, data.AsMemory(0, (int)frame.WireLength), cancellationToken);
                    sinceAck += await session.WriteAsync(frame.File, frame.Offset, frame.Length, data.AsMemory(0, (int)frame.WireLength), cancellationToken);
                }

                if (sinceAck >= AckEveryBytes)
                {
                    sinceAck = 0;
                    await responses.WriteAsync(new UploadReply { Ack = new UploadAck { ReceivedBytes = (ulong)session.Received } }, cancellationToken);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(data);
        }
    }

    private static async Task<byte[]> ReadExactlyAsync(PipeReader reader, int count, CancellationToken cancellationToken)
    {
        var bytes = new byte[count];
        await ReadExactlyAsync(reader, bytes, cancellationToken);
        return bytes;
    }

    private static async Task ReadExactlyAsync(PipeReader reader, Memory<byte> into, CancellationToken cancellationToken)
    {
        var result = await reader.ReadAtLeastAsync(into.Length, cancellationToken);
        var buffer = result.Buffer;
        if (buffer.Length < into.Length)
        {
            reader.AdvanceTo(buffer.Start, buffer.End);
            throw new IOException("the bulk lane ended before its end frame");
        }

        buffer.Slice(0, into.Length).CopyTo(into.Span);
        reader.AdvanceTo(buffer.GetPosition(into.Length));
    }

    private sealed class BulkWaiter(string peer)
    {
        public string Peer { get; } = peer;

        public TaskCompletionSource<BulkBody> Body { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed class BulkBody(PipeReader reader)
    {
        public PipeReader Reader { get; } = reader;

        public TaskCompletionSource<(int Status, string Message)> Verdict { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>Removes everything this node received for a migration.</summary>
    public void Remove(string migrationId)
    {
        lock (_gate)
        {
            _expected.Remove(migrationId);
            _reserved.Remove(migrationId);
        }

        var directory = DirectoryOf(migrationId);
        if (Directory.Exists(directory))
        {
            StopLazyHelpers(directory);
            _ = DiscardedDirectories.Remove(directory);
        }

        _events?.Changed(migrationId);
    }

    /// <summary>
    /// The page servers and lazy-pages daemons of restores that did not succeed (a restore runtime
    /// killed mid-way leaves them waiting); those of a restored container fill its memory to the end
    /// and exit by themselves (their files stay readable after the images are removed).
    /// </summary>
    private static void StopLazyHelpers(string directory)
    {
        foreach (var work in Directory.EnumerateDirectories(directory, "restore-*"))
        {
            var container = Path.GetFileName(work)["restore-".Length..];
            if (!File.Exists(Path.Combine(directory, StagingLayout.RestoredFile(container))))
            {
                Migrate.Criu.Lazy.LazyRestoreHelpers.StopRecorded(work);
                // a runc begun ahead whose restore runtime died before the commit waits at its gate
                _ = GatedRunc.ReleaseLeftover(work);
            }
        }
    }

    public void Dispose()
    {
        _tokenKey?.Dispose();
        _streams.Dispose();
    }

    /// <summary>
    /// A target agent's call to this node as a migration's source (post-copy pages): the token must be
    /// the operator's for that migration from this node to the node the caller's certificate names.
    /// </summary>
    public TransferClaims AuthorizeTarget(string token, string migrationId, string? peer)
    {
        if (peer is null)
        {
            throw Reject(StatusCode.PermissionDenied, "no-client-certificate", "the client presented no certificate from the cluster's CA");
        }

        var claims = VerifySignature(token, migrationId);
        if (claims.SourceNode != _options.NodeName)
        {
            throw Reject(StatusCode.PermissionDenied, "token", $"the token is for pages from node {claims.SourceNode}, not {_options.NodeName}");
        }

        if (claims.TargetNode != peer)
        {
            throw Reject(StatusCode.PermissionDenied, "wrong-target", $"the token is for node {claims.TargetNode}; this call comes from {peer}");
        }

        return claims;
    }

    private TransferClaims VerifyToken(string token, string migrationId)
    {
        var claims = VerifySignature(token, migrationId);
        if (claims.TargetNode != _options.NodeName)
        {
            throw Reject(StatusCode.PermissionDenied, "token", $"the token is for node {claims.TargetNode}, not {_options.NodeName}");
        }

        return claims;
    }

    private TransferClaims VerifySignature(string token, string migrationId)
    {
        if (_tokenKey is null)
        {
            throw Reject(StatusCode.PermissionDenied, "no-token-key", "this agent has no operator key to check transfer tokens with");
        }

        TransferClaims claims;
        try
        {
            claims = TransferToken.Verify(_tokenKey, token, _time.GetUtcNow());
        }
        catch (TransferTokenException e)
        {
            throw Reject(StatusCode.PermissionDenied, "token", e.Message);
        }

        if (claims.MigrationId != migrationId)
        {
            throw Reject(StatusCode.PermissionDenied, "token", $"the token is for migration {claims.MigrationId}, not {migrationId}");
        }

        return claims;
    }

    private IncomingSession Open(TransferClaims claims, UploadHeader header)
    {
        var manifest = header.Manifest ?? throw Reject(StatusCode.InvalidArgument, "malformed", "the header has no manifest");
        var directory = DirectoryOf(claims.MigrationId);
        var filesRoot = Path.Combine(directory, FilesDirectory);
        if (manifest.Files.Count > MaxFiles || manifest.ParentLinks.Count > MaxFiles)
        {
            throw Reject(StatusCode.InvalidArgument, "malformed", $"the manifest lists more than {MaxFiles} entries");
        }

        var paths = new HashSet<string>(StringComparer.Ordinal);
        long total = 0;
        var kind = header.Xxh128 ? StagedDigestKind.Xxh128 : StagedDigestKind.Sha256;
        foreach (var file in manifest.Files)
        {
            _ = TransferPaths.Confine(filesRoot, file.Path, out var reason) ?? throw Reject(StatusCode.InvalidArgument, "path", $"the manifest names {reason}");
            var digest = file.DigestOf(kind);
            if (!paths.Add(file.Path) || !file.DigestOf(FileDigests.Other(kind)).IsEmpty
                || (digest.Length != StagedFileDigest.LengthOf(kind) && !(header.DigestsFollow && digest.IsEmpty)))
            {
                throw Reject(StatusCode.InvalidArgument, "malformed", $"the manifest lists {file.Path} twice or without a {StagedFileDigest.NameOf(kind)} (and only that)");
            }

            total = checked(total + (long)Math.Min(file.Size, long.MaxValue / 2));
        }

        foreach (var link in manifest.ParentLinks)
        {
            foreach (var path in new[] { link.Directory, link.Parent })
            {
                _ = TransferPaths.Confine(filesRoot, path, out var reason) ?? throw Reject(StatusCode.InvalidArgument, "path", $"the manifest names {reason}");
                if (!paths.Any(p => p.StartsWith(path + "/", StringComparison.Ordinal)))
                {
                    throw Reject(StatusCode.InvalidArgument, "path", $"the parent link {link.Directory} -> {link.Parent} names a directory without files");
                }
            }

            if (paths.Contains(link.Directory + "/parent") || paths.Any(p => p.StartsWith(link.Directory + "/parent/", StringComparison.Ordinal)))
            {
                throw Reject(StatusCode.InvalidArgument, "path", $"the manifest has files where the parent link of {link.Directory} goes");
            }
        }

        if (total > claims.MaxBytes)
        {
            throw Reject(StatusCode.ResourceExhausted, "size", $"the manifest holds {total} bytes; the token allows {claims.MaxBytes}");
        }

        if (total > _options.MaxStreamBytes)
        {
            throw Reject(StatusCode.ResourceExhausted, "size", $"the manifest holds {total} bytes; one stream may bring {_options.MaxStreamBytes}");
        }

        lock (_gate)
        {
            long others = _reserved.Where(r => r.Key != claims.MigrationId).Sum(r => r.Value);
            if (others + total > _options.MaxIncomingBytes)
            {
                throw Reject(StatusCode.ResourceExhausted, "node-limit", $"node {_options.NodeName} holds {others} bytes of incoming images; {total} more would pass its limit of {_options.MaxIncomingBytes}");
            }

            _reserved[claims.MigrationId] = total;
        }

        Directory.CreateDirectory(IncomingRoot, OwnerOnly);
        Directory.CreateDirectory(directory, OwnerOnly);
        Directory.CreateDirectory(filesRoot, OwnerOnly);
        var session = IncomingSession.Open(directory, filesRoot, manifest, Compression(header.Compression), _options.MaxChunkBytes, kind);
        long free = new DriveInfo(filesRoot).AvailableFreeSpace;
        if (free - (total - session.Received) < _options.MinFreeDiskBytes)
        {
            session.Dispose();
            throw Reject(StatusCode.ResourceExhausted, "disk", $"node {_options.NodeName} has {free} bytes free; {total - session.Received} more would leave less than {_options.MinFreeDiskBytes}");
        }

        return session;
    }

    private static Agent.V1.Compression Compression(Agent.V1.Compression requested) =>
        requested == Agent.V1.Compression.Zstd ? Agent.V1.Compression.Zstd : Agent.V1.Compression.None;

    /// <summary>A refused or corrupt upload: the migration's files go (what announced it, and any decision, stay).</summary>
    private void Discard(string migrationId)
    {
        lock (_gate)
        {
            _reserved.Remove(migrationId);
        }

        var directory = DirectoryOf(migrationId);
        if (Directory.Exists(Path.Combine(directory, FilesDirectory)))
        {
            Directory.Delete(Path.Combine(directory, FilesDirectory), recursive: true);
        }

        foreach (var file in new[] { ProgressFile, StagedFile })
        {
            File.Delete(Path.Combine(directory, file));
        }
    }

    private static TransferRejectedException Reject(StatusCode code, string reason, string message)
    {
        AgentTelemetry.TransferRejections.Add(1, new KeyValuePair<string, object?>("reason", reason));
        return new TransferRejectedException(code, reason, message);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: {Bytes} bytes of images staged in {Millis} ms ({Received} received, {Referenced} of them copied from pages already here; manifest matched in {Open} ms ({OpenSteps}), bytes {Data} ms, read back and staged in {Complete} ms; {Followed} of {Checked} files read back as they arrived ({Unfollowed} given up on, their lease refused or broken), at most {LeftKiB} KiB of one after its last byte; {Steps})")]
    private partial void LogStaged(string migration, ulong bytes, long millis, long received, long referenced, long open, string openSteps, long data, long complete, int followed, int @checked, int unfollowed,
        long leftKiB, string steps);

    /// <summary>One upload's files: resume offsets, the file being written; digests checked once at the end.</summary>
    private sealed class IncomingSession : IDisposable
    {
        private readonly string _directory;
        private readonly string _filesRoot;
        private readonly Manifest _manifest;
        private readonly Agent.V1.Compression _compression;
        private readonly int _maxChunk;
        private readonly long[] _received;
        private readonly bool[] _verified;
        private ZstdSharp.Decompressor? _decompressor;
        private FileStream? _open;
        private int _openIndex = -1;
        private Microsoft.Win32.SafeHandles.SafeFileHandle? _source;
        private int _sourceIndex = -1;
        private readonly StagedDigestKind _kind;
        private readonly ReadBackFollower _readBack;

        private IncomingSession(string directory, string filesRoot, Manifest manifest, Agent.V1.Compression compression, int maxChunk, StagedDigestKind kind)
        {
            _kind = kind;
            _readBack = new ReadBackFollower(kind);
            _directory = directory;
            _filesRoot = filesRoot;
            _manifest = manifest;
            _compression = compression;
            _maxChunk = maxChunk;
            _received = new long[manifest.Files.Count];
            _verified = new bool[manifest.Files.Count];
        }

        public UploadAccepted Accepted { get; } = new();

        public long Received => _received.Sum();

        public long ReceivedThisStream { get; private set; }

        /// <summary>Matches the files on disk against the manifest: what an earlier attempt (or an earlier, verified upload) left is kept; the rest goes.</summary>
        public static IncomingSession Open(string directory, string filesRoot, Manifest manifest, Agent.V1.Compression compression, int maxChunk, StagedDigestKind kind)
        {
            var clock = Stopwatch.StartNew();
            var session = new IncomingSession(directory, filesRoot, manifest, compression, maxChunk, kind);
            var previous = Read(Path.Combine(directory, ProgressFile));
            var staged = Read(Path.Combine(directory, StagedFile));
            long read = clock.ElapsedMilliseconds;
            var wanted = new HashSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < manifest.Files.Count; i++)
            {
                var file = manifest.Files[i];
                var path = Path.Combine(filesRoot, file.Path);
                wanted.Add(path);
                long onDisk = File.Exists(path) && !File.GetAttributes(path).HasFlag(FileAttributes.ReparsePoint) ? new FileInfo(path).Length : -1;
                if (staged?.Files.Contains(file) == true && onDisk == (long)file.Size)
                {
                    session._received[i] = onDisk;
                    session._verified[i] = true;
                }
                else if (previous?.Files.Contains(file) == true && onDisk >= 0 && onDisk <= (long)file.Size)
                {
                    session._received[i] = onDisk;
                }
                else if (onDisk >= 0 || File.Exists(path))
                {
                    File.Delete(path);
                }

                session.Accepted.ResumeFrom.Add(new FileOffset { File = (uint)i, Offset = (ulong)session._received[i] });
            }

            long matched = clock.ElapsedMilliseconds;
            // files of earlier uploads this manifest no longer lists, and stale links
            foreach (var entry in FileTree.Walk(filesRoot).ToList())
            {
                if (entry.LinkTarget is not null || (entry is FileInfo && !wanted.Contains(entry.FullName)))
                {
                    File.Delete(entry.FullName);
                }
            }

            long walked = clock.ElapsedMilliseconds;
            // nothing is staged while this upload runs (a commit now is refused), and its progress is
            // recorded anew: the records of the upload before are moved aside, not deleted
            Retire(directory, StagedFile);
            Retire(directory, ProgressFile);
            long retired = clock.ElapsedMilliseconds;
            File.WriteAllText(Path.Combine(directory, ProgressFile), JsonFormatter.Default.Format(manifest));
            session.OpenSteps = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"records read {read} ms, files matched {matched - read} ms, others removed {walked - matched} ms, the last records moved aside {retired - walked} ms, progress written {clock.ElapsedMilliseconds - retired} ms");
            session.Accepted.Compression = compression;
            session.Accepted.MaxChunkBytes = (uint)maxChunk;
            return session;
        }

        /// <summary>
        /// Moves the record <paramref name="name"/> of the migration's <paramref name="directory"/>, when
        /// there is one, into its <see cref="StagingLayout.RetiredDirectory"/> under a name of its own:
        /// one rename, where deleting it (or rewriting it in place) frees its blocks. Freeing a file
        /// the upload before wrote waited for its data to reach the disk whenever the waiting restore's
        /// syncfs passes (<c>FileSystemFlusher</c>) were writing back that upload's images: in scratch
        /// runs the staged manifest's unlink at the opening of the upload after a 64 or 256 MiB first
        /// round took 16-74 ms, every time, with that round's images and the handoff waiting on it.
        /// </summary>
        private static void Retire(string directory, string name)
        {
            var path = Path.Combine(directory, name);
            if (!File.Exists(path))
            {
                return;
            }

            var retired = Path.Combine(directory, StagingLayout.RetiredDirectory);
            Directory.CreateDirectory(retired, OwnerOnly);
            File.Move(path, Path.Combine(retired, $"{name}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}"), overwrite: true);
        }

        /// <summary>The most bytes one chunk may occupy on the wire (compressed data can be a little larger than its input).</summary>
        public int MaxWireBytes => _maxChunk + 65536;

        public Task<long> WriteAsync(Chunk chunk, CancellationToken cancellationToken) =>
            WriteAsync(chunk.File, chunk.Offset, chunk.Length, chunk.Data.Memory, cancellationToken);

        /// <summary>
        /// A page reference from the bulk lane: <paramref name="length"/> bytes of the file at
        /// <paramref name="offset"/> are those this node already holds in file <paramref name="from"/>.File
        /// at its offset; refused unless all of them arrived there (or were staged by an earlier upload).
        /// </summary>
        public async Task<long> CopyAsync(uint fileIndex, ulong offset, uint length, BulkCopy from, CancellationToken cancellationToken)
        {
            var file = Expect(fileIndex, offset, length, "a page reference");
            if (from.File >= _received.Length)
            {
                throw Reject(StatusCode.InvalidArgument, "malformed", $"a page reference for {file.Path} names file {from.File}; the manifest has {_received.Length}");
            }

            var source = _manifest.Files[(int)from.File];
            if (from.Offset > (ulong)_received[from.File] || length > (ulong)_received[from.File] - from.Offset)
            {
                throw Reject(StatusCode.InvalidArgument, "malformed",
                    $"a page reference for {file.Path} names {length} bytes at {from.Offset} of {source.Path}, which holds only {_received[from.File]} bytes so far");
            }

            var rented = ArrayPool<byte>.Shared.Rent((int)length);
            try
            {
                int read = await RandomAccess.ReadAsync(HandleOf((int)from.File), rented.AsMemory(0, (int)length), (long)from.Offset, cancellationToken);
                if (read != length)
                {
                    throw new IOException($"{source.Path} gave {read} of the {length} bytes at {from.Offset} a page reference names");
                }

                ReferencedThisStream += length;
                return await AppendAsync((int)fileIndex, rented.AsMemory(0, (int)length), cancellationToken);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }

        /// <summary>A handle to read file <paramref name="index"/>'s bytes through: the one being written, or one kept open for reading (files are written in order, a reference names earlier bytes).</summary>
        private Microsoft.Win32.SafeHandles.SafeFileHandle HandleOf(int index)
        {
            if (_openIndex == index && _open is not null)
            {
                return _open.SafeFileHandle;
            }

            if (_sourceIndex != index || _source is null)
            {
                CloseSource();
                var file = _manifest.Files[index];
                var path = Path.Combine(_filesRoot, file.Path);
                if (File.GetAttributes(path).HasFlag(FileAttributes.ReparsePoint))
                {
                    throw Reject(StatusCode.InvalidArgument, "path", $"{file.Path} is a link on this node");
                }

                _source = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
                _sourceIndex = index;
            }

            return _source;
        }

        private void CloseSource()
        {
            _source?.Dispose();
            _source = null;
            _sourceIndex = -1;
        }

        /// <summary>Bytes this stream took as page references rather than on the wire.</summary>
        public long ReferencedThisStream { get; private set; }

        /// <summary>The file a chunk (or reference) of <paramref name="length"/> bytes at <paramref name="offset"/> goes to, refused unless it is the next one that file expects and fits it.</summary>
        private ManifestFile Expect(uint fileIndex, ulong offset, uint length, string what)
        {
            if (fileIndex >= _received.Length)
            {
                throw Reject(StatusCode.InvalidArgument, "malformed", $"{what} names file {fileIndex}; the manifest has {_received.Length}");
            }

            int index = (int)fileIndex;
            var file = _manifest.Files[index];
            if (_verified[index] || (long)offset != _received[index])
            {
                throw Reject(StatusCode.InvalidArgument, "malformed", $"{what} of {file.Path} at offset {offset}; the next expected is {_received[index]}");
            }

            if (length == 0 || length > _maxChunk || offset + length > file.Size)
            {
                throw Reject(StatusCode.InvalidArgument, "malformed", $"{what} of {length} bytes at {offset} does not fit {file.Path} ({file.Size} bytes, chunks up to {_maxChunk})");
            }

            return file;
        }

        /// <summary>Files this upload checked against their digests, and how many of them were read back as they arrived (the rest after the last byte).</summary>
        public int CheckedFiles { get; private set; }

        public int FollowedFiles { get; private set; }

        /// <summary>Where the completion's time went (<see cref="CompleteAsync"/>), for the log.</summary>
        public string CompleteSteps { get; private set; } = "";

        /// <summary>For the staged line: where the upload's opening spent its time.</summary>
        public string OpenSteps { get; private set; } = "";

        /// <summary>The most bytes of a file read back after the writer was done with it (what its last byte waited for).</summary>
        public long MostLeftToReadBack => _readBack.MostLeftAtEnd;

        /// <summary>Files the read back gave up following (another writer, or a change while it was away): read in full after the last byte.</summary>
        public int UnfollowedFiles => _readBack.Unfollowed;

        /// <summary>Writes a file's next bytes.</summary>
        private async Task<long> AppendAsync(int index, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            if (_openIndex != index)
            {
                await DoneWithOpenAsync();
            }

            var stream = StreamFor(index);
            await stream.WriteAsync(data, cancellationToken);
            _received[index] += data.Length;
            ReceivedThisStream += data.Length;
            await _readBack.WroteAsync(index, stream.SafeFileHandle, _received[index]);
            return data.Length;
        }

        /// <summary>The file being written is left (for another, or the end): what of it is not read back yet is, before it is closed.</summary>
        private async Task DoneWithOpenAsync()
        {
            if (_open is not null)
            {
                var file = _manifest.Files[_openIndex];
                await _readBack.DoneWithAsync(_openIndex, _open.SafeFileHandle, _received[_openIndex], () => StagedFileStamp.Of(Path.Combine(_filesRoot, file.Path), file.Path));
            }
        }

        /// <summary>One chunk, from a gRPC message or a bulk frame: <paramref name="wire"/> holds <paramref name="length"/> bytes, compressed or not.</summary>
        public async Task<long> WriteAsync(uint fileIndex, ulong offset, uint length, ReadOnlyMemory<byte> wire, CancellationToken cancellationToken)
        {
            var file = Expect(fileIndex, offset, length, "a chunk");
            int index = (int)fileIndex;
            byte[]? rented = null;
            try
            {
                ReadOnlyMemory<byte> data;
                if (_compression == Agent.V1.Compression.Zstd)
                {
                    if (wire.Length > MaxWireBytes)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", "a compressed chunk is larger than any chunk may be");
                    }

                    rented = ArrayPool<byte>.Shared.Rent((int)length);
                    _decompressor ??= new ZstdSharp.Decompressor();
                    int unwrapped;
                    try
                    {
                        unwrapped = _decompressor.Unwrap(wire.Span, rented.AsSpan(0, (int)length));
                    }
                    catch (ZstdSharp.ZstdException e)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", $"a chunk of {file.Path} does not decompress: {e.Message}");
                    }

                    if (unwrapped != length)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", $"a chunk of {file.Path} decompresses to {unwrapped} bytes, not {length}");
                    }

                    data = rented.AsMemory(0, unwrapped);
                }
                else
                {
                    if (wire.Length != length)
                    {
                        throw Reject(StatusCode.InvalidArgument, "malformed", $"a chunk of {file.Path} carries {wire.Length} bytes but says {length}");
                    }

                    data = wire;
                }

                return await AppendAsync(index, data, cancellationToken);
            }
            finally
            {
                if (rented is not null)
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }
        }

        /// <summary>Checks every file's size and digest (the manifest's, or <paramref name="done"/>'s for a file listed without one), makes the parent links, and marks the images staged.</summary>
        public async Task<UploadStaged> CompleteAsync(UploadDone done)
        {
            var expected = ExpectedDigests(done);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await DoneWithOpenAsync();
            long tail = clock.ElapsedMilliseconds;
            CloseOpen();
            long closed = clock.ElapsedMilliseconds;
            for (int i = 0; i < _received.Length; i++)
            {
                var file = _manifest.Files[i];
                if (_verified[i])
                {
                    continue;
                }

                var path = Path.Combine(_filesRoot, file.Path);
                if (_received[i] != (long)file.Size)
                {
                    throw Reject(StatusCode.DataLoss, "incomplete", $"{file.Path} arrived with {_received[i]} of its {file.Size} bytes");
                }

                if (file.Size == 0 && !File.Exists(path))
                {
                    // an empty file: nothing was written
                    Directory.CreateDirectory(Path.GetDirectoryName(path)!, OwnerOnly);
                    File.WriteAllBytes(path, []);
                }
            }

            // the digests: every file this upload wrote, read back once from the disk (ReadBack; most of it while the bytes arrived)
            long checkedFrom = clock.ElapsedMilliseconds;
            ReadBack(expected);
            long digests = clock.ElapsedMilliseconds;

            foreach (var link in _manifest.ParentLinks)
            {
                var at = Path.Combine(_filesRoot, link.Directory, "parent");
                var target = Path.GetRelativePath(Path.Combine(_filesRoot, link.Directory), Path.Combine(_filesRoot, link.Parent));
                if (File.Exists(at) || Directory.Exists(at))
                {
                    File.Delete(at);
                }

                File.CreateSymbolicLink(at, target);
            }

            var staged = _manifest.Clone();
            for (int i = 0; i < staged.Files.Count; i++)
            {
                staged.Files[i].SetDigest(_kind, ByteString.CopyFrom(expected[i]));
            }

            File.WriteAllText(Path.Combine(_directory, StagedFile), JsonFormatter.Default.Format(staged));
            // progress.json stays: the next upload's Open reads the staged manifest first (a file it
            // lists is verified; progress.json only lets a file it also lists resume, and it lists only
            // the files staged here), and rewrites progress.json; Cleanup removes both. Deleting it
            // here put an unlink on every upload's last step, and on a target whose ext4 was freeing
            // an earlier migration's images such an unlink took 24-90 ms (359 ms for the slowest).
            CompleteSteps = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"the last file's tail {tail} ms, closed {closed - tail} ms, digests and stamps {digests - checkedFrom} ms, recorded {clock.ElapsedMilliseconds - digests} ms");
            return new UploadStaged { Bytes = (ulong)Received, Files = (uint)_received.Length };
        }

        /// <summary>
        /// Hashes every file this upload wrote as this node's disk holds it, once the last byte is in
        /// (what the network or the disk changed is caught alike: a digest taken as the bytes arrive
        /// would miss a change made on the disk after they were written), and stamps it then: the
        /// restore, while the pod is frozen, re-reads only a file whose stamp changed since. A file an
        /// earlier upload staged keeps the stamp it got then (a change since is the restore's to find).
        /// </summary>
        private void ReadBack(byte[][] expected)
        {
            CheckedFiles = 0;
            FollowedFiles = 0;
            var stampsFile = Path.Combine(_directory, StagingLayout.StampsFile);
            var known = StagedFileStamp.Load(stampsFile);
            var stamps = new List<StagedFileStamp>(_manifest.Files.Count);
            for (int i = 0; i < _manifest.Files.Count; i++)
            {
                var file = _manifest.Files[i];
                if (_verified[i] && known.TryGetValue(file.Path, out var earlier) && earlier.Size == (long)file.Size)
                {
                    stamps.Add(earlier);
                    continue;
                }

                var path = Path.Combine(_filesRoot, file.Path);
                var now = StagedFileStamp.Of(path, file.Path);
                var followed = _readBack.DigestOf(i, (long)file.Size, now);
                CheckedFiles++;
                FollowedFiles += followed is null ? 0 : 1;
                if (!(followed ?? StagedFileDigest.OfFile(_kind, path)).AsSpan().SequenceEqual(expected[i]))
                {
                    throw Reject(StatusCode.DataLoss, "digest", $"{file.Path} does not match its {StagedFileDigest.NameOf(_kind)} (read back from this node's disk): the images were corrupted on the way or on the disk");
                }

                // (read back while it arrived: unchanged since, as its stamp says; read back now: stamped after)
                stamps.Add((followed is not null ? now : StagedFileStamp.Of(path, file.Path)) ?? throw new IOException($"{path} cannot be examined (statx)"));
            }

            StagedFileStamp.Write(stampsFile, stamps);
        }

        /// <summary>Each file's digest: the manifest's, or for a file listed without one, the one the source sent at the end; refused unless every such file has exactly one, of the upload's kind.</summary>
        private byte[][] ExpectedDigests(UploadDone done)
        {
            var expected = _manifest.Files.Select(f => f.DigestOf(_kind).ToByteArray()).ToArray();
            var given = new bool[expected.Length];
            int length = StagedFileDigest.LengthOf(_kind);
            foreach (var digest in done.Digests)
            {
                var bytes = digest.DigestOf(_kind);
                if (digest.File >= expected.Length || given[digest.File] || !_manifest.Files[(int)digest.File].DigestOf(_kind).IsEmpty
                    || bytes.Length != length || !digest.DigestOf(FileDigests.Other(_kind)).IsEmpty)
                {
                    throw Reject(StatusCode.InvalidArgument, "malformed",
                        $"the upload's end gives a digest for file {digest.File} that the manifest does not leave to it, twice, or not a {StagedFileDigest.NameOf(_kind)}");
                }

                given[digest.File] = true;
                expected[digest.File] = bytes.ToByteArray();
            }

            for (int i = 0; i < expected.Length; i++)
            {
                if (expected[i].Length == 0)
                {
                    throw Reject(StatusCode.InvalidArgument, "malformed", $"the upload ended without the {StagedFileDigest.NameOf(_kind)} of {_manifest.Files[i].Path}");
                }
            }

            return expected;
        }

        public void Dispose()
        {
            // (a read back under way uses the open file's handle)
            _readBack.Dispose();
            CloseOpen();
            CloseSource();
            _decompressor?.Dispose();

        }

        private FileStream StreamFor(int index)
        {
            if (_openIndex == index && _open is not null)
            {
                return _open;
            }

            CloseOpen();
            if (_sourceIndex == index)
            {
                CloseSource();
            }

            var path = Path.Combine(_filesRoot, _manifest.Files[index].Path);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!, OwnerOnly);
            var options = new FileStreamOptions
            {
                Mode = FileMode.OpenOrCreate,
                // read too: a page reference may name bytes of the file being written
                Access = FileAccess.ReadWrite,
                Share = FileShare.None,
                BufferSize = 0,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            };
            if (File.Exists(path) && File.GetAttributes(path).HasFlag(FileAttributes.ReparsePoint))
            {
                throw Reject(StatusCode.InvalidArgument, "path", $"{_manifest.Files[index].Path} is a link on this node");
            }

            _open = new FileStream(path, options);
            var name = _manifest.Files[index].Path;
            _readBack.Opened(index, _open.SafeFileHandle, () => StagedFileStamp.Of(path, name));
            _open.SetLength(_received[index]);
            _open.Position = _received[index];
            _openIndex = index;
            return _open;
        }

        private void CloseOpen()
        {
            _open?.Dispose();
            _open = null;
            _openIndex = -1;
        }

        private static Manifest? Read(string path) =>
            File.Exists(path) ? Manifest.Parser.ParseJson(File.ReadAllText(path)) : null;
    }
}

using System.Buffers;
using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Agent.Contracts.Tracing;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Checkpointing;
using Polly;
using Polly.Retry;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The source side of image transfer: builds the manifest of a migration's staged directory
/// (digests cached per file version), streams it to the target agent over mutual TLS in chunks,
/// one in flight at a time (HTTP/2 flow control is the backpressure, so memory stays at two
/// chunk buffers whatever the image size), and on a broken connection retries with backoff,
/// starting each attempt where the target says it stands.
/// </summary>
public sealed class ImageSender(IOptions<AgentOptions> options, AgentIdentity identity, PeerConnections connections)
{
    private readonly AgentOptions _options = options.Value;

    /// <summary>Retries after a broken connection or a busy target; not after a refusal.</summary>
    public int MaxRetries { get; init; } = 6;

    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// The manifest of a staged directory: regular files, and image sets' parent links. Anything else
    /// is refused. Each file has its digest of <paramref name="kind"/>; with
    /// <paramref name="digestsFollow"/>, a file not hashed before is listed without one (see
    /// <see cref="OwedDigests"/>). A pages file released after the target staged it
    /// (<see cref="ReleasedPages"/>) is listed as it was then, from its set's list, never read.
    /// </summary>
    public static Manifest BuildManifest(string root, bool digestsFollow = false, StagedDigestKind kind = StagedDigestKind.Sha256)
    {
        root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        var manifest = new Manifest();
        var released = new Dictionary<string, IReadOnlyDictionary<string, ReleasedPages.Entry>>(StringComparer.Ordinal);
        foreach (var info in FileTree.Walk(root))
        {
            var entry = info.FullName;
            var relative = Path.GetRelativePath(root, entry);
            if (info.LinkTarget is { } link)
            {
                var resolved = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(entry)!, link));
                if (info.Name != "parent" || !resolved.StartsWith(root + "/", StringComparison.Ordinal) || !Directory.Exists(resolved))
                {
                    throw new InvalidOperationException($"{relative} is a link that is not an image set's parent link");
                }

                manifest.ParentLinks.Add(new ManifestParentLink { Directory = Path.GetDirectoryName(relative)!, Parent = Path.GetRelativePath(root, resolved) });
            }
            else if (info.Attributes.HasFlag(FileAttributes.Directory))
            {
                continue;
            }
            else if (relative == MigrationRecord.FileName || relative.EndsWith(WholeFile.Suffix, StringComparison.Ordinal)
                || info.Name.StartsWith(ReleasedPages.FileName, StringComparison.Ordinal))
            {
                continue;
            }
            else if (!info.Attributes.HasFlag(FileAttributes.Device))
            {
                var directory = Path.GetDirectoryName(entry)!;
                if (!released.TryGetValue(directory, out var set))
                {
                    try
                    {
                        released[directory] = set = ReleasedPages.Read(directory);
                    }
                    catch (InvalidDataException e)
                    {
                        throw new InvalidOperationException($"the images cannot be listed: {e.Message}", e);
                    }
                }

                manifest.Files.Add(set.TryGetValue(info.Name, out var gone) ? ListedReleased(gone, relative, kind) : Listed((FileInfo)info, relative, digestsFollow, kind));
            }
            else
            {
                throw new InvalidOperationException($"{relative} is not a regular file");
            }
        }

        return manifest;
    }

    /// <summary>
    /// One regular file's manifest entry. A file still being written (a first round's pages,
    /// <see cref="GrowingFiles"/>) is listed at the size it will have, its digest taken as it is sent
    /// (or, without digests that follow, once it is written). Any other file is listed as it is now,
    /// not as the directory walk saw it: a file whose writer finished since was shorter then, and
    /// listing that length would send, and vouch for, a prefix of it.
    /// </summary>
    internal static ManifestFile Listed(FileInfo file, string relative, bool digestsFollow, StagedDigestKind kind)
    {
        // the announcement first, then the length: a writer that is done by the look-up wrote every byte before it
        var growing = GrowingFiles.Find(file.FullName);
        if (growing is not null && growing.Written < growing.Size)
        {
            if (digestsFollow)
            {
                var announced = new ManifestFile { Path = relative, Size = (ulong)growing.Size };
                announced.SetDigest(kind, ByteString.Empty);
                return announced;
            }

            if (!growing.WaitForAsync(growing.Size, CancellationToken.None).GetAwaiter().GetResult())
            {
                throw new IOException($"{relative} could not be written: {growing.Failure}");
            }
        }

        file.Refresh();
        var listed = new ManifestFile { Path = relative, Size = (ulong)file.Length };
        listed.SetDigest(kind, digestsFollow ? FileDigests.Remembered(file, kind) ?? ByteString.Empty : FileDigests.Of(file, kind));
        return listed;
    }

    /// <summary>The manifest entry of a released file: as it was listed before its bytes were given back.</summary>
    internal static ManifestFile ListedReleased(ReleasedPages.Entry released, string relative, StagedDigestKind kind)
    {
        if (!released.Digests.TryGetValue(kind.ToString(), out var hex))
        {
            throw new InvalidOperationException($"{relative} was released after its target staged it, and only its digests of kind {string.Join(", ", released.Digests.Keys)} were kept, not {kind}: it cannot be listed again");
        }

        var listed = new ManifestFile { Path = relative, Size = (ulong)released.Size };
        listed.SetDigest(kind, ByteString.CopyFrom(Convert.FromHexString(hex)));
        return listed;
    }

    /// <summary>Streams the directory to the target until it is staged there, reporting progress as it goes.</summary>
    public Task<TransferProgress> SendAsync(string directory, SendImagesRequest request, Func<TransferProgress, Task> report, CancellationToken cancellationToken) =>
        SendAsync(directory, request, report, 0, cancellationToken);

    /// <summary>The same, at most <paramref name="maxBytesPerSecond"/> for this migration (0: only the agent's own limit).</summary>
    public async Task<TransferProgress> SendAsync(string directory, SendImagesRequest request, Func<TransferProgress, Task> report, long maxBytesPerSecond,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(report);
        var tls = identity.Tls ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, "this agent sends images only over mutual TLS, and it has no certificate configured"));
        using var activity = AgentTelemetry.Source.StartActivity("transfer.send");
        activity?.SetTag("migration.id", request.MigrationId);
        activity?.SetTag("podmig.target_node", request.TargetNode);
        var clock = Stopwatch.StartNew();
        var manifest = BuildManifest(directory, _options.DigestsFollow, _options.TransferChecksum);
        using var owed = new OwedDigests(directory, manifest, _options.TransferChecksum);
        var progress = new TransferProgress
        {
            TotalBytes = (ulong)manifest.Files.Sum(f => (long)f.Size),
            Files = (uint)manifest.Files.Count,
            ManifestMillis = (uint)clock.ElapsedMilliseconds,
        };
        var pipeline = new ResiliencePipelineBuilder().AddRetry(new RetryStrategyOptions
        {
            MaxRetryAttempts = MaxRetries,
            Delay = RetryDelay,
            BackoffType = DelayBackoffType.Exponential,
            ShouldHandle = new PredicateBuilder().Handle<RpcException>(IsTransient).Handle<IOException>().Handle<HttpRequestException>(),
            OnRetry = _ =>
            {
                progress.Retries++;
                AgentTelemetry.TransferRetries.Add(1);
                return ValueTask.CompletedTask;
            },
        }).Build();

        long limit = new[] { _options.TransferBytesPerSecond, maxBytesPerSecond }.Where(l => l > 0).DefaultIfEmpty(0).Min();
        await pipeline.ExecuteAsync(async token => await AttemptAsync(tls, directory, manifest, owed, request, progress, clock, report, limit, token), cancellationToken);
        progress.Staged = true;
        progress.ElapsedMillis = (uint)clock.ElapsedMilliseconds;
        AgentTelemetry.TransferThroughput.Record(progress.BytesSent / 1e6 / Math.Max(clock.Elapsed.TotalSeconds, 1e-3));
        await report(progress);
        return progress;
    }

    private async Task AttemptAsync(AgentTls tls, string directory, Manifest manifest, OwedDigests owed, SendImagesRequest request, TransferProgress progress,
        Stopwatch clock, Func<TransferProgress, Task> report, long bytesPerSecond, CancellationToken cancellationToken)
    {
        var channel = connections.Channel(tls, request.TargetAddress, request.TargetNode);
        // the target's receive span joins this migration's trace
        var client = new ImageTransfer.ImageTransferClient(channel.Intercept(new TraceContextClientInterceptor()));
        long began = clock.ElapsedMilliseconds;
        using var call = client.Upload(cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new UploadMessage
        {
            Header = new UploadHeader
            {
                MigrationId = request.MigrationId,
                Token = request.Token,
                SourceNode = _options.NodeName,
                Manifest = manifest,
                Compression = request.Compress ? Compression.Zstd : Compression.None,
                Bulk = _options.BulkTransfer,
                PageReferences = _options.BulkTransfer && _options.PageReferences,
                DigestsFollow = owed.Any,
                Xxh128 = _options.TransferChecksum == StagedDigestKind.Xxh128,
            },
        }, cancellationToken);
        if (!await call.ResponseStream.MoveNext(cancellationToken) || call.ResponseStream.Current.KindCase != UploadReply.KindOneofCase.Accepted)
        {
            throw new RpcException(new Status(StatusCode.Internal, "the target did not accept the stream"));
        }

        var accepted = call.ResponseStream.Current.Accepted;
        long acceptedAt = clock.ElapsedMilliseconds;
        progress.AcceptMillis = (uint)(acceptedAt - began);
        UploadStaged? staged = null;
        var replies = Task.Run(async () =>
        {
            while (await call.ResponseStream.MoveNext(cancellationToken))
            {
                if (call.ResponseStream.Current.KindCase == UploadReply.KindOneofCase.Staged)
                {
                    staged = call.ResponseStream.Current.Staged;
                }
            }
        }, cancellationToken);

        int chunkSize = (int)Math.Min(accepted.MaxChunkBytes == 0 ? (uint)_options.MaxChunkBytes : accepted.MaxChunkBytes, (uint)_options.MaxChunkBytes);
        long OffsetOf(int file) => (long)(accepted.ResumeFrom.FirstOrDefault(r => r.File == (uint)file)?.Offset ?? 0);
        // each buffer keeps room for a bulk frame's header in front of the chunk's bytes
        const int Head = BulkFrame.HeaderBytes;
        // pooled, and no longer than the largest file to send needs (a final upload's files are small):
        // a fresh megabyte's pages are faulted in while the pod is frozen
        long largest = manifest.Files.Select((f, i) => Math.Max(0, (long)f.Size - OffsetOf(i))).DefaultIfEmpty(0).Max();
        var buffer = ArrayPool<byte>.Shared.Rent(Head + (int)Math.Clamp(largest, 1, chunkSize));
        using var compressor = accepted.Compression == Compression.Zstd ? new ZstdSharp.Compressor(1) : null;
        var compressed = compressor is null ? null : new byte[Head + ZstdSharp.Compressor.GetCompressBound(chunkSize)];
        byte[]? framed = null; // a chunk's frames when it is more than one plain frame
        var lastReport = clock.Elapsed;
        var paced = Stopwatch.StartNew();
        long sentThisAttempt = 0;
        ulong skipped = 0;
        BulkUpload? lane = null;
        try
        {
            if (accepted.BulkTicket is { Length: > 0 } ticket)
            {
                lane = await BulkUpload.OpenAsync(connections.Client(tls, request.TargetAddress, request.TargetNode), request.TargetAddress, ticket,
                    compressor is null && !accepted.PageReferences ? BulkUpload.BodyLength(manifest.Files.Select((f, i) => Math.Max(0, (long)f.Size - OffsetOf(i))), chunkSize) : null,
                    cancellationToken);
            }

            progress.Lane = lane is null ? "grpc" : "bulk";
            // a new index for every attempt: a reference may name only bytes this attempt's lane carried
            // (sized for the pages this attempt sends, not those the target holds already)
            long sending = manifest.Files.Select((f, i) => Math.Max(0, (long)f.Size - OffsetOf(i))).Sum();
            var pages = lane is not null && accepted.PageReferences
                ? new SentPages(everyPage: SentPages.SeveralProcesses(manifest.Files.Select(f => f.Path)), expectedPages: (int)Math.Min(sending / SentPages.PageSize, SentPages.DefaultMaxPages))
                : null;
            for (int i = 0; i < manifest.Files.Count; i++)
            {
                var file = manifest.Files[i];
                long offset = OffsetOf(i);
                skipped += (ulong)Math.Min(offset, (long)file.Size);
                if (offset >= (long)file.Size)
                {
                    continue;
                }

                if (ReleasedPages.Find(Path.Combine(directory, file.Path)) is not null)
                {
                    throw new RpcException(new Status(StatusCode.FailedPrecondition,
                        $"{file.Path} was released on {_options.NodeName} once {request.TargetNode} had staged it, and {request.TargetNode} no longer holds it (from byte {offset} on): these images cannot be sent again"));
                }

                await using var stream = new FileStream(Path.Combine(directory, file.Path), FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
                stream.Position = offset;
                owed.Start(i, offset);
                var growing = GrowingFiles.Find(Path.Combine(directory, file.Path));
                while (offset < (long)file.Size)
                {
                    int want = (int)Math.Min(chunkSize, (long)file.Size - offset);
                    int length = await stream.ReadAtLeastAsync(buffer.AsMemory(Head, want), want, throwOnEndOfStream: false, cancellationToken);
                    while (length < want && growing is not null)
                    {
                        // the writer is not that far yet: wait for it (a writer that failed ends the send)
                        if (!await growing.WaitForAsync(offset + want, cancellationToken))
                        {
                            throw new IOException($"{file.Path} was not written in full: {growing.Failure}");
                        }

                        int more = await stream.ReadAtLeastAsync(buffer.AsMemory(Head + length, want - length), want - length, throwOnEndOfStream: false, cancellationToken);
                        if (more == 0)
                        {
                            break; // written that far, yet not there: changed under the send
                        }

                        length += more;
                    }

                    if (length < want)
                    {
                        throw new InvalidOperationException($"{file.Path} shrank while it was sent");
                    }

                    owed.Append(i, buffer.AsSpan(Head, length));

                    int wireLength;
                    if (lane is not null)
                    {
                        IReadOnlyList<ChunkPiece> pieces = pages?.Split(buffer.AsSpan(Head, length), (uint)i, (ulong)offset) ?? [new ChunkPiece(0, length)];
                        var frames = Frames(buffer, pieces, compressor, ref framed, (uint)i, (ulong)offset, out wireLength);
                        await lane.WriteAsync(frames, cancellationToken);
                        progress.BytesReferenced += (ulong)pieces.Where(p => p.IsReference).Sum(p => p.Length);
                    }
                    else
                    {
                        var frame = buffer;
                        wireLength = length;
                        if (compressor is not null)
                        {
                            frame = compressed!;
                            wireLength = compressor.Wrap(buffer.AsSpan(Head, length), frame.AsSpan(Head));
                        }

                        // one chunk in flight: the write completes once the message is serialized into the connection's window
                        var data = UnsafeByteOperations.UnsafeWrap(frame.AsMemory(Head, wireLength));
                        await call.RequestStream.WriteAsync(new UploadMessage { Chunk = new Chunk { File = (uint)i, Offset = (ulong)offset, Data = data, Length = (uint)length } }, cancellationToken);
                    }

                    offset += length;
                    sentThisAttempt += length;
                    if (bytesPerSecond > 0
                        && TimeSpan.FromSeconds((double)sentThisAttempt / bytesPerSecond) - paced.Elapsed is { } ahead && ahead > TimeSpan.Zero)
                    {
                        await Task.Delay(ahead, cancellationToken);
                    }

                    progress.BytesSent += (ulong)length;
                    progress.WireBytes += (ulong)wireLength;
                    AgentTelemetry.TransferBytes.Add(length, new KeyValuePair<string, object?>("direction", "out"));
                    if (clock.Elapsed - lastReport > TimeSpan.FromMilliseconds(250))
                    {
                        lastReport = clock.Elapsed;
                        progress.BytesSkipped = skipped;
                        progress.ElapsedMillis = (uint)clock.ElapsedMilliseconds;
                        await report(progress);
                    }
                }

                owed.End(i);
            }

            if (lane is not null)
            {
                await lane.FinishAsync(cancellationToken);
            }
        }
        catch (Exception e) when (accepted.BulkTicket.Length > 0 && e is IOException or HttpRequestException)
        {
            // a lane refused or cut by the target: the gRPC stream says why (a refusal is not retried)
            await ThrowTargetsReasonAsync(replies);
            throw;
        }
        finally
        {
            if (lane is not null)
            {
                await lane.DisposeAsync();
            }

            ArrayPool<byte>.Shared.Return(buffer);
        }

        // what the target already held when this (successful) attempt began, and was not sent again
        progress.BytesSkipped = skipped;
        long sentAt = clock.ElapsedMilliseconds;
        progress.DataMillis = (uint)(sentAt - acceptedAt);
        await call.RequestStream.WriteAsync(new UploadMessage { Done = owed.Done() }, cancellationToken);
        await call.RequestStream.CompleteAsync();
        await replies;
        progress.StageMillis = (uint)(clock.ElapsedMilliseconds - sentAt);
        if (staged is null)
        {
            throw new RpcException(new Status(StatusCode.Internal, "the target closed the stream without staging the images"));
        }
    }

    /// <summary>
    /// The bulk frames of a chunk read into <paramref name="buffer"/> (after room for a header), split
    /// into <paramref name="pieces"/>: a chunk sent whole and plain is framed in place; otherwise
    /// every piece's frame (its own bytes, compressed when the upload is, or a reference: header and
    /// <see cref="BulkCopy"/>) is laid out in <paramref name="framed"/>, so that the chunk still goes
    /// in one write. <paramref name="wireLength"/>: the bytes after the headers.
    /// </summary>
    private static ReadOnlyMemory<byte> Frames(byte[] buffer, IReadOnlyList<ChunkPiece> pieces, ZstdSharp.Compressor? compressor, ref byte[]? framed,
        uint file, ulong chunkOffset, out int wireLength)
    {
        const int Head = BulkFrame.HeaderBytes;
        if (pieces is [{ IsReference: false, Start: 0 } whole] && compressor is null)
        {
            new BulkFrame(file, chunkOffset, (uint)whole.Length, (uint)whole.Length).Write(buffer);
            wireLength = whole.Length;
            return buffer.AsMemory(0, Head + whole.Length);
        }

        int room = pieces.Sum(p => Head + (p.IsReference ? BulkCopy.Bytes : compressor is null ? p.Length : ZstdSharp.Compressor.GetCompressBound(p.Length)));
        if (framed is null || framed.Length < room)
        {
            framed = new byte[Math.Max(room, framed?.Length ?? 0)];
        }

        int at = 0;
        wireLength = 0;
        foreach (var piece in pieces)
        {
            var own = buffer.AsSpan(Head + piece.Start, piece.Length);
            int wire, payload;
            if (piece.FromFile is { } from)
            {
                new BulkCopy(from, piece.FromOffset).Write(framed.AsSpan(at + Head));
                wire = 0;
                payload = BulkCopy.Bytes;
            }
            else if (compressor is not null)
            {
                wire = payload = compressor.Wrap(own, framed.AsSpan(at + Head));
            }
            else
            {
                own.CopyTo(framed.AsSpan(at + Head));
                wire = payload = piece.Length;
            }

            new BulkFrame(file, chunkOffset + (ulong)piece.Start, (uint)piece.Length, (uint)wire).Write(framed.AsSpan(at));
            at += Head + payload;
            wireLength += wire;
        }

        return framed.AsMemory(0, at);
    }

    /// <summary>Rethrows the target's error from the gRPC stream if it ends with one within a few seconds.</summary>
    private static async Task ThrowTargetsReasonAsync(Task replies)
    {
        try
        {
            await replies.WaitAsync(TimeSpan.FromSeconds(5));
        }
        catch (RpcException)
        {
            await replies;
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException or IOException)
        {
            // no word from the target: the lane's own error stands
        }
    }

    private static bool IsTransient(RpcException e) =>
        e.StatusCode is StatusCode.Unavailable or StatusCode.Internal or StatusCode.Unknown or StatusCode.Aborted or StatusCode.Cancelled
        || (e.StatusCode == StatusCode.ResourceExhausted && e.Status.Detail.Contains("retry later", StringComparison.Ordinal));
}

/// <summary>This agent's mutual-TLS identity, when it has one.</summary>
public sealed record AgentIdentity(AgentTls? Tls)
{
    /// <summary>The node a caller's certificate names, if it chains to the cluster's CA.</summary>
    public string? PeerOf(System.Security.Cryptography.X509Certificates.X509Certificate2? certificate) =>
        certificate is not null && Tls?.IsTrusted(certificate) == true ? AgentTls.NameOf(certificate) : null;
}

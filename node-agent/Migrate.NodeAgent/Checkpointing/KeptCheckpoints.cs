using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Migrate.Agent.Contracts.Groups;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Checkpoints kept on this node: taken as one consistent cut of a running pod (every container
/// frozen, dumped, then thawed: the engine's final dump followed by its resume), then moved out of
/// the migrations' staging directory into the checkpoint root (<c>&lt;root&gt;/&lt;id&gt;/images</c>),
/// where no migration's clean-up or garbage collection touches them, with the manifest of every
/// file (size and SHA-256) and a description (<c>checkpoint.json</c>, written last: its presence
/// means the checkpoint is complete). Sent to other nodes for restores on request.
/// </summary>
public sealed partial class KeptCheckpoints(CheckpointEngine engine, ImageSender sender, PeerAgents peers, NodeCapabilities capabilities,
    IOptions<AgentOptions> options, ILogger<KeptCheckpoints> logger, ImageReceiver receiver, CheckpointGates gates) : IDisposable
{
    public const string TakeOperation = "Checkpoint";
    public const string ImportOperation = "Import";
    public const string SendOperation = "Send";
    public const string DescriptionFile = "checkpoint.json";
    public const string ManifestFile = "manifest.json";
    public const string ImagesDirectory = "images";

    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    private static readonly JsonFormatter Json = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));

    private readonly AgentOptions _options = options.Value;
    private readonly ConcurrentDictionary<string, Operation> _taking = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _held = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (string Checkpoint, CheckpointSend Send)> _sends = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();

    /// <summary>How long a failed take or import, and an ended send, stay reported (the operator reads them within seconds).</summary>
    public static readonly TimeSpan EndedKept = TimeSpan.FromHours(1);

    public string Root => _options.CheckpointRoot;

    public string DirectoryOf(string checkpointId) => Path.Combine(Root, checkpointId);

    /// <summary>Starts taking a checkpoint (or reports the one kept or under way).</summary>
    public KeptCheckpoint Take(TakeCheckpointRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        CheckpointEngine.ValidateMigrationId(request.CheckpointId);
        if (request.Pod is null || string.IsNullOrEmpty(request.Pod.Namespace) || string.IsNullOrEmpty(request.Pod.Name))
        {
            throw new CheckpointException(StatusCode.InvalidArgument, "the request names no pod (namespace and name are required)");
        }

        if (request.ExportPath.Length > 0)
        {
            ArchivePath(request.ExportPath);
        }

        if (request.ParentCheckpointId.Length > 0)
        {
            CheckpointEngine.ValidateMigrationId(request.ParentCheckpointId);
            if (request.ParentCheckpointId == request.CheckpointId)
            {
                throw new CheckpointException(StatusCode.InvalidArgument, $"checkpoint {request.CheckpointId} cannot be a delta on itself");
            }
        }

        if (Kept(request.CheckpointId) is { } kept)
        {
            return kept;
        }

        Prune();
        var running = new Operation { Kind = TakeOperation, State = OperationState.Running, StartedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() };
        var current = _taking.AddOrUpdate(request.CheckpointId, running, (_, old) => old.State == OperationState.Running ? old : running);
        if (ReferenceEquals(current, running))
        {
            _ = Task.Run(() => TakeAsync(request, _stopping.Token));
        }

        return Get(request.CheckpointId);
    }

    /// <summary>Starts importing a checkpoint from the archive storage (or reports the one kept or under way).</summary>
    public KeptCheckpoint Import(ImportCheckpointRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        CheckpointEngine.ValidateMigrationId(request.CheckpointId);
        var source = ArchivePath(request.Path);
        if (Kept(request.CheckpointId) is { } kept)
        {
            return kept;
        }

        Prune();
        var running = new Operation { Kind = ImportOperation, State = OperationState.Running, StartedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() };
        var current = _taking.AddOrUpdate(request.CheckpointId, running, (_, old) => old.State == OperationState.Running ? old : running);
        if (ReferenceEquals(current, running))
        {
            _ = Task.Run(() => ImportAsync(request, source));
        }

        return Get(request.CheckpointId);
    }

    /// <summary>Removes an export from the archive storage (refused when the path holds something else).</summary>
    public bool DeleteExport(string relative)
    {
        var path = ArchivePath(relative);
        if (!Directory.Exists(path))
        {
            return false;
        }

        if (!File.Exists(Path.Combine(path, CheckpointArchive.IndexFile)) || !File.Exists(Path.Combine(path, CheckpointArchive.LayoutFile)))
        {
            throw new CheckpointException(StatusCode.FailedPrecondition, $"archive path {relative} holds no checkpoint export (no {CheckpointArchive.LayoutFile} and {CheckpointArchive.IndexFile}); nothing removed");
        }

        Directory.Delete(path, recursive: true);
        LogExportDeleted("-", relative);
        return true;
    }

    /// <summary>Forgets failed takes and imports, and ended sends, older than <see cref="EndedKept"/>: a long-running agent's memory stays flat.</summary>
    private void Prune()
    {
        long before = DateTimeOffset.UtcNow.Add(-EndedKept).ToUnixTimeMilliseconds();
        foreach (var (id, operation) in _taking.Where(t => t.Value.State != OperationState.Running && t.Value.EndedUnixMillis < before).ToList())
        {
            _taking.TryRemove(new KeyValuePair<string, Operation>(id, operation));
        }

        foreach (var (id, send) in _sends.Where(s => s.Value.Send.Operation.State != OperationState.Running && s.Value.Send.Operation.EndedUnixMillis < before).ToList())
        {
            _sends.TryRemove(new KeyValuePair<string, (string, CheckpointSend)>(id, send));
        }
    }

    /// <summary>A path in the archive storage, confined to it; refused when this node has none or the path leaves it.</summary>
    private string ArchivePath(string relative)
    {
        if (_options.ArchiveDirectory is not { Length: > 0 } root)
        {
            throw new CheckpointException(StatusCode.FailedPrecondition, $"node {_options.NodeName} has no archive storage (Agent:ArchiveDirectory is not set)");
        }

        return TransferPaths.Confine(root, relative, out var why)
            ?? throw new CheckpointException(StatusCode.InvalidArgument, $"archive path '{(relative.Length <= 80 ? relative : relative[..80] + "...")}' is refused: {why?.Replace("the migration's directory", "the archive storage", StringComparison.Ordinal)}");
    }

    private async Task ImportAsync(ImportCheckpointRequest request, string source)
    {
        var id = request.CheckpointId;
        try
        {
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.import");
            activity?.SetTag("podmig.checkpoint.id", id);
            var clock = Stopwatch.StartNew();
            var directory = DirectoryOf(id);
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }

            Directory.CreateDirectory(Root, OwnerOnly);
            Directory.CreateDirectory(directory, OwnerOnly);
            var kept = await Task.Run(() => CheckpointArchive.Import(source, request.Path, request.Digest, directory, capabilities.Current.Criu?.Version ?? ""));
            kept.ImportedFrom.ExportMillis = (uint)clock.ElapsedMilliseconds;
            kept.CheckpointId = id;
            kept.NodeName = _options.NodeName;
            kept.Directory = directory;
            kept.Ready = true;
            kept.Operation = null;
            var manifest = ImageSender.BuildManifest(Path.Combine(directory, ImagesDirectory));
            WholeFile.WriteText(Path.Combine(directory, ManifestFile), Json.Format(manifest));
            WholeFile.WriteText(Path.Combine(directory, DescriptionFile), Json.Format(kept));
            _taking.TryRemove(id, out _);
            LogImported(id, request.Path, kept.SizeBytes, clock.ElapsedMilliseconds);
        }
        catch (Exception e) when (MigrationOperations.IsFailure(e) || e is OperationCanceledException or InvalidDataException or System.Text.Json.JsonException)
        {
            var refused = e is CheckpointException { Code: StatusCode.NotFound or StatusCode.FailedPrecondition or StatusCode.InvalidArgument };
            await FailAsync(id, ImportOperation, refused ? "ImportRefused" : "ImportFailed", e);
        }
    }

    /// <summary>The kept checkpoint, or the one being taken (or that failed); NOT_FOUND otherwise.</summary>
    public KeptCheckpoint Get(string checkpointId)
    {
        CheckpointEngine.ValidateMigrationId(checkpointId);
        var status = Kept(checkpointId) ?? (_taking.TryGetValue(checkpointId, out var operation)
            ? new KeptCheckpoint { CheckpointId = checkpointId, NodeName = _options.NodeName, Operation = operation.Clone(), Held = _held.GetValueOrDefault(checkpointId, "") }
            : throw new CheckpointException(StatusCode.NotFound, $"node {_options.NodeName} keeps no checkpoint {checkpointId}"));
        status.Sends.Add(_sends.Values.Where(s => s.Checkpoint == checkpointId).Select(s => s.Send.Clone()));
        return status;
    }

    /// <summary>
    /// The operator's decision for a group member's take (<see cref="CheckpointGates"/>): applied
    /// at its hold, now or when it gets there. Reports the checkpoint as <see cref="Get"/> does, or
    /// only its id while this node knows nothing else of it yet.
    /// </summary>
    public KeptCheckpoint Continue(ContinueCheckpointRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        CheckpointEngine.ValidateMigrationId(request.CheckpointId);
        var decision = gates.Decide(request.CheckpointId, request.Decision);
        LogDecided(request.CheckpointId, request.Decision, decision);
        try
        {
            return Get(request.CheckpointId);
        }
        catch (CheckpointException e) when (e.Code == StatusCode.NotFound)
        {
            return new KeptCheckpoint { CheckpointId = request.CheckpointId, NodeName = _options.NodeName };
        }
    }

    /// <summary>Every checkpoint directory held and not being taken (incomplete ones dated by their last change).</summary>
    public IReadOnlyList<KeptCheckpoint> List()
    {
        if (!Directory.Exists(Root))
        {
            return [];
        }

        var result = new List<KeptCheckpoint>();
        foreach (var directory in Directory.EnumerateDirectories(Root))
        {
            var id = Path.GetFileName(directory);
            if (!IsValidId(id) || _taking.TryGetValue(id, out var taking) && taking.State == OperationState.Running)
            {
                continue;
            }

            try
            {
                result.Add(Kept(id) ?? new KeptCheckpoint
                {
                    CheckpointId = id,
                    NodeName = _options.NodeName,
                    Directory = directory,
                    FrozenUnixMillis = new DateTimeOffset(Directory.GetLastWriteTimeUtc(directory)).ToUnixTimeMilliseconds(),
                });
            }
            catch (CheckpointException)
            {
                result.Add(new KeptCheckpoint { CheckpointId = id, NodeName = _options.NodeName, Directory = directory });
            }
        }

        return result;
    }

    private static bool IsValidId(string id)
    {
        try
        {
            CheckpointEngine.ValidateMigrationId(id);
            return true;
        }
        catch (CheckpointException)
        {
            return false;
        }
    }

    /// <summary>Removes a kept checkpoint's files.</summary>
    public KeptCheckpoint Delete(string checkpointId, bool deleteExport = false)
    {
        CheckpointEngine.ValidateMigrationId(checkpointId);
        if (_taking.TryGetValue(checkpointId, out var operation) && operation.State == OperationState.Running)
        {
            throw new CheckpointException(StatusCode.FailedPrecondition, $"checkpoint {checkpointId} is still being taken");
        }

        if (_sends.Values.Any(s => s.Checkpoint == checkpointId && s.Send.Operation.State == OperationState.Running))
        {
            throw new CheckpointException(StatusCode.FailedPrecondition, $"checkpoint {checkpointId} is being sent to another node");
        }

        var directory = DirectoryOf(checkpointId);
        if (deleteExport && Kept(checkpointId)?.Export is { Path.Length: > 0 } export)
        {
            var exported = ArchivePath(export.Path);
            if (Directory.Exists(exported))
            {
                Directory.Delete(exported, recursive: true);
                LogExportDeleted(checkpointId, export.Path);
            }
        }

        if (Directory.Exists(directory))
        {
            Directory.Delete(directory, recursive: true);
            LogDeleted(checkpointId);
        }

        _taking.TryRemove(checkpointId, out _);
        foreach (var key in _sends.Where(s => s.Value.Checkpoint == checkpointId).Select(s => s.Key).ToList())
        {
            _sends.TryRemove(key, out _);
        }

        return new KeptCheckpoint { CheckpointId = checkpointId, NodeName = _options.NodeName, Deleted = true };
    }

    /// <summary>Starts sending a kept checkpoint to a node as a restore's images (or reports the send under way or done).</summary>
    public KeptCheckpoint Send(SendCheckpointRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        CheckpointEngine.ValidateMigrationId(request.CheckpointId);
        CheckpointEngine.ValidateMigrationId(request.RestoreId);
        if (request.Target is null || string.IsNullOrEmpty(request.Target.Address) || string.IsNullOrEmpty(request.Target.Node) || string.IsNullOrEmpty(request.Target.Token))
        {
            throw new CheckpointException(StatusCode.InvalidArgument, $"restore {request.RestoreId}: the request names no target (address, node and token are required)");
        }

        if (Kept(request.CheckpointId) is null)
        {
            throw new CheckpointException(StatusCode.FailedPrecondition, $"node {_options.NodeName} keeps no complete checkpoint {request.CheckpointId} to send");
        }

        Prune();
        var send = new CheckpointSend
        {
            RestoreId = request.RestoreId,
            TargetNode = request.Target.Node,
            Operation = new Operation { Kind = SendOperation, State = OperationState.Running, StartedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() },
        };
        var current = _sends.AddOrUpdate(request.RestoreId, (request.CheckpointId, send),
            (_, old) => old.Send.Operation.State == OperationState.Failed ? (request.CheckpointId, send) : old);
        if (ReferenceEquals(current.Send, send))
        {
            _ = Task.Run(() => SendAsync(request, send, _stopping.Token));
        }

        return Get(request.CheckpointId);
    }

    public void Dispose()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }

    private async Task TakeAsync(TakeCheckpointRequest request, CancellationToken cancellationToken)
    {
        var id = request.CheckpointId;
        try
        {
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.keep");
            activity?.SetTag("podmig.checkpoint.id", id);
            if (engine.Find(id) is not null)
            {
                // an earlier attempt's leftovers (the engine thaws a pod it left frozen before it removes them)
                await engine.CleanupAsync(id, cancellationToken);
            }

            // kept: on disk, where the checkpoint's directory is (its images move there by a rename)
            var begun = await engine.BeginAsync(new BeginCheckpointRequest { MigrationId = id, Pod = request.Pod, NodeName = request.NodeName }, cancellationToken, transient: false);
            var (parentId, chainLength, chainNote) = LinkChain(request, begun.Pod, engine.Find(id) ?? throw new InvalidOperationException($"the engine lost checkpoint {id}"));
            // an export holds one full dump per container, no chain
            bool fast = _options.FastCheckpoints && capabilities.Current.Criu?.LazyPages == true && request.ExportPath.Length == 0;
            if (fast)
            {
                // the memory, copied while the pod runs: the freeze then takes only what changed since
                await engine.PreDumpAsync(new PreDumpRequest { MigrationId = id, Round = 1 }, cancellationToken);
            }

            if (request.GroupHold && gates.Decision(id) == CheckpointHolds.Abort)
            {
                throw new CheckpointException(StatusCode.Aborted, "the group checkpoint was rolled back (another member failed) before this pod was frozen; it runs on");
            }

            var dump = await engine.FinalDumpAsync(id, cancellationToken, lazyMemory: fast);
            var dumped = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var thawing = Stopwatch.StartNew();
            if (request.GroupHold)
            {
                // a group's cut: this pod stays frozen until every member is (or one failed)
                _held[id] = CheckpointHolds.Dumped;
                LogHeld(id, dump.FrozenMillis);
                try
                {
                    await gates.WaitAsync(id, request.HoldTimeoutSeconds > 0 ? TimeSpan.FromSeconds(request.HoldTimeoutSeconds) : CheckpointHolds.DefaultTimeout, cancellationToken);
                }
                finally
                {
                    _held.TryRemove(id, out _);
                }
            }

            await engine.ResumeAsync(id, cancellationToken);
            uint frozen = dump.FrozenMillis + (uint)thawing.ElapsedMilliseconds;
            var record = engine.Find(id) ?? throw new InvalidOperationException($"the engine lost checkpoint {id}");

            var directory = DirectoryOf(id);
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }

            Directory.CreateDirectory(Root, OwnerOnly);
            Directory.CreateDirectory(directory, OwnerOnly);
            var images = Path.Combine(directory, ImagesDirectory);
            Directory.Move(record.StagingDirectory, images);
            File.Delete(Path.Combine(images, MigrationRecord.FileName));
            await engine.CleanupAsync(id, CancellationToken.None);

            var manifest = ImageSender.BuildManifest(images);
            var kept = new KeptCheckpoint
            {
                CheckpointId = id,
                Pod = begun.Pod,
                NodeName = _options.NodeName,
                Ready = true,
                Directory = directory,
                FrozenUnixMillis = dumped - dump.FrozenMillis,
                FrozenMillis = frozen,
                SizeBytes = (ulong)manifest.Files.Sum(f => (long)f.Size),
                Node = capabilities.Current,
                Dump = dump,
                LazyMemory = dump.Containers.Any(c => c.LazyMemory),
                SavedPodJson = request.SavedPodJson,
                ParentCheckpointId = parentId,
                ChainLength = chainLength,
                OwnBytes = (ulong)manifest.Files.Where(f => !ChainRules.IsLinkedFromChain(f.Path)).Sum(f => (long)f.Size),
                ChainNote = chainNote,
            };
            kept.Containers.Add(record.Containers.Select(c => Describe(c.Name, c.Image, manifest)));
            WholeFile.WriteText(Path.Combine(directory, ManifestFile), Json.Format(manifest));
            if (request.ExportPath.Length > 0)
            {
                using var exporting = AgentTelemetry.Source.StartActivity("checkpoint.export");
                kept.Export = await Task.Run(() => CheckpointArchive.Export(directory, kept, ArchivePath(request.ExportPath), request.ExportPath), cancellationToken);
                LogExported(id, request.ExportPath, kept.Export.SizeBytes, kept.Export.ExportMillis);
            }

            WholeFile.WriteText(Path.Combine(directory, DescriptionFile), Json.Format(kept));
            _taking.TryRemove(id, out _);
            AgentTelemetry.FrozenDuration.Record(frozen);
            LogKept(id, kept.Pod.Namespace, kept.Pod.Name, kept.SizeBytes, frozen);
        }
        catch (Exception e) when (MigrationOperations.IsFailure(e) || e is OperationCanceledException)
        {
            var refused = e is CheckpointException { Code: StatusCode.NotFound or StatusCode.FailedPrecondition or StatusCode.InvalidArgument };
            var reason = e is CheckpointException { Code: StatusCode.Aborted } && gates.Decision(id) == CheckpointHolds.Abort ? "GroupRolledBack"
                : e is CheckpointException { Code: StatusCode.DeadlineExceeded } && request.GroupHold ? "GroupHoldTimedOut"
                : e is CheckpointException { Code: StatusCode.Aborted } || refused ? "CheckpointRefused" : "CheckpointFailed";
            await FailAsync(id, TakeOperation, reason, e);
        }
        finally
        {
            if (request.GroupHold)
            {
                gates.Forget(id);
            }
        }
    }

    /// <summary>
    /// When a parent is asked for and can be used: links its chain into every container's staged
    /// images, so the dump keeps only what changed since it. Otherwise (or when linking fails) the
    /// checkpoint is a full one, and the note says why.
    /// </summary>
    private (string ParentId, uint ChainLength, string Note) LinkChain(TakeCheckpointRequest request, PodRef pod, MigrationRecord record)
    {
        var parentId = request.ParentCheckpointId;
        if (parentId.Length == 0)
        {
            return ("", 1, "");
        }

        KeptCheckpoint? parent;
        try
        {
            parent = Kept(parentId);
        }
        catch (CheckpointException e)
        {
            LogFullCheckpoint(request.CheckpointId, parentId, e.Message);
            return ("", 1, e.Message);
        }

        var containers = record.Containers.Select(c => c.Name).ToList();
        var why = ChainRules.WhyFull(parent, parentId, pod, containers, request.ExportPath.Length > 0,
            record.PreCopyMethod == Criu.Incremental.PreCopyMethod.ContentComparison, _options.MaxCheckpointChain);
        if (why is null)
        {
            var parentImages = Path.Combine(DirectoryOf(parentId), ImagesDirectory);
            try
            {
                foreach (var container in containers)
                {
                    AncestorChain.Link(ChainRules.TipOf(parentImages, container), Path.Combine(record.StagingDirectory, StagingLayout.AncestorImages(container)), maxSets: 64);
                }

                return (parentId, Math.Max(parent!.ChainLength, 1u) + 1, "");
            }
            catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
            {
                foreach (var container in containers)
                {
                    var linked = Path.Combine(record.StagingDirectory, StagingLayout.AncestorImages(container));
                    if (Directory.Exists(linked))
                    {
                        Directory.Delete(linked, recursive: true);
                    }
                }

                why = $"the images of checkpoint {parentId} cannot be linked: {e.Message}";
            }
        }

        LogFullCheckpoint(request.CheckpointId, parentId, why);
        return ("", 1, why);
    }

    /// <summary>A take or import that failed: logged, its files gone (the pod thawed), and the failure reported by <see cref="Get"/>.</summary>
    private async Task FailAsync(string id, string kind, string reason, Exception e)
    {
        var message = MigrationOperations.Describe(e);
        LogFailed(id, reason, message);
        await DiscardAsync(id);
        _taking[id] = new Operation
        {
            Kind = kind,
            State = OperationState.Failed,
            Reason = reason,
            Message = message,
            StartedUnixMillis = _taking.TryGetValue(id, out var started) ? started.StartedUnixMillis : 0,
            EndedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
        };
    }

    /// <summary>After a failure: the pod thawed (the engine's dump thaws on its own failures), the staged and kept files gone.</summary>
    private async Task DiscardAsync(string id)
    {
        try
        {
            if (engine.Find(id) is not null)
            {
                await engine.CleanupAsync(id, CancellationToken.None);
            }

            if (Directory.Exists(DirectoryOf(id)))
            {
                Directory.Delete(DirectoryOf(id), recursive: true);
            }
        }
        catch (Exception e) when (e is CheckpointException or IOException or UnauthorizedAccessException)
        {
            LogFailed(id, "CleanupFailed", e.Message);
        }
    }

    private async Task SendAsync(SendCheckpointRequest request, CheckpointSend send, CancellationToken cancellationToken)
    {
        var target = TransferTargetRecord.From(request.Target);
        try
        {
            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.send");
            activity?.SetTag("podmig.checkpoint.id", request.CheckpointId);
            activity?.SetTag("podmig.restore.id", request.RestoreId);
            var images = Path.Combine(DirectoryOf(request.CheckpointId), ImagesDirectory);
            string how = "sent to";
            if (target.Node == _options.NodeName && await LinkHereAsync(request, images, send))
            {
                how = "linked on";
            }
            else
            {
                await sender.SendAsync(images, target.ToSendRequest(request.RestoreId), report =>
                {
                    send.BytesSent = report.BytesSent;
                    send.BytesTotal = report.TotalBytes;
                    return Task.CompletedTask;
                }, (long)target.MaxBytesPerSecond, cancellationToken);
            }

            await peers.CommitAsync(request.RestoreId, target, cancellationToken);
            send.Operation = Ended(send.Operation, OperationState.Succeeded, "", $"{how} {target.Node} and committed there");
        }
        catch (Exception e) when (MigrationOperations.IsFailure(e) || e is OperationCanceledException)
        {
            var message = MigrationOperations.Describe(e);
            LogFailed(request.RestoreId, "TransferFailed", message);
            send.Operation = Ended(send.Operation, OperationState.Failed, "TransferFailed", message);
        }
    }

    /// <summary>
    /// A restore on this very node: its images staged as hard links of the kept files (checked
    /// against the kept manifest) rather than streamed to ourselves. False when they cannot be
    /// linked (another file system): the caller streams them.
    /// </summary>
    private async Task<bool> LinkHereAsync(SendCheckpointRequest request, string images, CheckpointSend send)
    {
        var kept = Path.Combine(DirectoryOf(request.CheckpointId), ManifestFile);
        if (!receiver.IsExpected(request.RestoreId) || !File.Exists(kept))
        {
            return false;
        }

        try
        {
            var clock = Stopwatch.StartNew();
            var manifest = Manifest.Parser.ParseJson(await File.ReadAllTextAsync(kept));
            var staged = await Task.Run(() => receiver.StageLinked(request.RestoreId, images, manifest));
            LogLinked(request.RestoreId, request.CheckpointId, staged.Bytes, staged.Files, clock.ElapsedMilliseconds);
            send.BytesSent = staged.Bytes;
            send.BytesTotal = staged.Bytes;
            return true;
        }
        catch (IOException e)
        {
            LogFailed(request.RestoreId, "LinkFailed", $"{e.Message}; streaming the images instead");
            return false;
        }
    }

    private static Operation Ended(Operation started, OperationState state, string reason, string message) => new()
    {
        Kind = started.Kind,
        State = state,
        Reason = reason,
        Message = message,
        StartedUnixMillis = started.StartedUnixMillis,
        EndedUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(),
    };

    /// <summary>A kept checkpoint's description; null when it is not complete on this node.</summary>
    private KeptCheckpoint? Kept(string checkpointId)
    {
        var file = Path.Combine(DirectoryOf(checkpointId), DescriptionFile);
        try
        {
            return File.Exists(file) ? KeptCheckpoint.Parser.ParseJson(File.ReadAllText(file)) : null;
        }
        catch (Exception e) when (e is IOException or InvalidProtocolBufferException or InvalidJsonException)
        {
            throw new CheckpointException(StatusCode.DataLoss, $"checkpoint {checkpointId}'s description on node {_options.NodeName} cannot be read: {e.Message}");
        }
    }

    /// <summary>A container's part of the checkpoint: its image sets and writable layer, with one digest over them.</summary>
    public static KeptContainer Describe(string container, string image, Manifest manifest)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        var prefix = "containers/" + container + "/";
        var layer = "rootfs/" + container + ".tar";
        var files = manifest.Files.Where(f => f.Path.StartsWith(prefix, StringComparison.Ordinal) || f.Path == layer)
            .OrderBy(f => f.Path, StringComparer.Ordinal).ToList();
        var lines = string.Concat(files.Select(f => string.Create(CultureInfo.InvariantCulture, $"{f.Path} {f.Size} {Convert.ToHexStringLower(f.Sha256.Span)}\n")));
        return new KeptContainer
        {
            Name = container,
            Image = image ?? "",
            Digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(lines))),
            SizeBytes = (ulong)files.Sum(f => (long)f.Size),
        };
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint}: dumped after {FrozenMillis} ms frozen; held frozen until its group decides")]
    private partial void LogHeld(string checkpoint, uint frozenMillis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint}: the group said {Said}; the decision that counts is {Decision}")]
    private partial void LogDecided(string checkpoint, string said, string decision);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint} of pod {Namespace}/{Pod} kept: {Bytes} bytes, frozen for {FrozenMillis} ms")]
    private partial void LogKept(string checkpoint, string @namespace, string pod, ulong bytes, uint frozenMillis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint} exported to {Path}: {Bytes} bytes in {Millis} ms")]
    private partial void LogExported(string checkpoint, string path, ulong bytes, uint millis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint} imported from {Path}: {Bytes} bytes in {Millis} ms")]
    private partial void LogImported(string checkpoint, string path, ulong bytes, long millis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint}'s export {Path} deleted")]
    private partial void LogExportDeleted(string checkpoint, string path);

    [LoggerMessage(Level = LogLevel.Information, Message = "Restore {Restore}: checkpoint {Checkpoint}'s images linked on this node ({Bytes} bytes, {Files} files, each read back) in {Millis} ms")]
    private partial void LogLinked(string restore, string checkpoint, ulong bytes, uint files, long millis);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint} is a full one, not a delta on {Parent}: {Reason}")]
    private partial void LogFullCheckpoint(string checkpoint, string parent, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Checkpoint {Checkpoint} deleted")]
    private partial void LogDeleted(string checkpoint);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Checkpoint {Checkpoint}: {Reason}: {Message}")]
    private partial void LogFailed(string checkpoint, string reason, string message);
}

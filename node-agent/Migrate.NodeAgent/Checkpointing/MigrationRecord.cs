using System.Text.Json;
using System.Text.Json.Serialization;
using Migrate.Agent.V1;
using Migrate.Criu.Incremental;
using CriuPreCopyMethod = Migrate.Criu.Incremental.PreCopyMethod;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>A container of a migration, with everything its dumps need, recorded once at the start.</summary>
public sealed record ContainerRecord(
    string Name,
    string ContainerId,
    string Image,
    int Pid,
    string FreezerDirectory,
    string RootPath,
    string? UpperDirectory,
    ulong NetworkNamespace,
    ulong? SharedPidNamespace,
    IReadOnlyList<string> ExternalMounts,
    IReadOnlyList<ClassifiedMount> Volumes);

/// <summary>A container's CRI checkpoint published as a checkpoint image: where (Registry base, Repository, Digest) and its figures.</summary>
public sealed record CheckpointImageRecord(string Container, string Image, string Registry, string Repository, string Digest, ulong Bytes, uint CheckpointMillis, uint PublishMillis);

/// <summary>A pre-copy round of one container.</summary>
public sealed record RoundRecord(string Container, int Number, CriuPreCopyMethod Method, string Directory, ulong PagesWritten, ulong PagesUnchanged, double ElapsedMillis, bool Tracked = false)
{
    public PreCopyRound ToRound() => new(Number, Directory, Method, PagesWritten, PagesUnchanged, TimeSpan.FromMilliseconds(ElapsedMillis), Tracked);
}

/// <summary>Where a migration's images go: the target agent, and the operator's token for them.</summary>
public sealed record TransferTargetRecord(string Address, string Node, string Token, bool Compress, ulong MaxBytesPerSecond)
{
    public static TransferTargetRecord From(TransferTarget target) =>
        new(target?.Address ?? "", target?.Node ?? "", target?.Token ?? "", target?.Compress ?? false, target?.MaxBytesPerSecond ?? 0);

    public SendImagesRequest ToSendRequest(string migrationId) =>
        new() { MigrationId = migrationId, TargetAddress = Address, TargetNode = Node, Token = Token, Compress = Compress };
}

/// <summary>The background work of a migration (the last one started).</summary>
public sealed class OperationRecord
{
    public string Kind { get; set; } = "";

    public OperationState State { get; set; }

    public string Reason { get; set; } = "";

    public string Message { get; set; } = "";

    public long StartedUnixMillis { get; set; }

    public long EndedUnixMillis { get; set; }

    public Operation ToProto() => new()
    {
        Kind = Kind,
        State = State,
        Reason = Reason,
        Message = Message,
        StartedUnixMillis = StartedUnixMillis,
        EndedUnixMillis = EndedUnixMillis,
    };
}

/// <summary>How far pre-copy got.</summary>
public sealed class PreCopyRecord
{
    public int Rounds { get; set; }

    public ulong LastRoundPages { get; set; }

    public bool Converged { get; set; }

    public ulong BytesSent { get; set; }

    public ulong BytesTotal { get; set; }

    /// <summary>How long round 1 took, pre-dump and transfer (0 until it is staged on the target).</summary>
    public uint FirstRoundMillis { get; set; }

    /// <summary>How long all rounds so far took, pre-dumps and transfers.</summary>
    public uint RoundsMillis { get; set; }

    /// <summary>How long the round under way has run so far (the last one's length once it ended).</summary>
    public uint RoundMillis { get; set; }

    /// <summary>The tree's anonymous memory when pre-copy began (0 if unread).</summary>
    public ulong MemoryBytes { get; set; }
}

/// <summary>How far the handoff got: the freeze, the final images' transfer, and the commit on the target (after which only the target can release the source).</summary>
public sealed class HandoffRecord
{
    public HandoffStep Step { get; set; }

    public long FrozenUnixMillis { get; set; }

    public ulong BytesSent { get; set; }

    public ulong BytesTotal { get; set; }

    /// <summary>The commit was sent to the target: from here the target may restore, so the pod is thawed only when the target confirms it will not.</summary>
    public bool CommitAttempted { get; set; }

    /// <summary>The target confirmed that no restore of this migration will begin.</summary>
    public bool AbortConfirmed { get; set; }

    /// <summary>A group member's handoff waiting for ContinueHandoff (GroupHolds.Frozen or Staged), or empty.</summary>
    public string Held { get; set; } = "";

    /// <summary>How far ContinueHandoff let the handoff go (GroupHolds.Dump or Commit), or empty.</summary>
    public string ContinuedThrough { get; set; } = "";
}

/// <summary>A migration that keeps its pod's address: the address, the pod's network namespace, and how far the source's part of the handover went.</summary>
public sealed class AddressMoveRecord
{
    public string Interface { get; set; } = "";

    public string Cidr { get; set; } = "";

    public string? Mac { get; set; }

    /// <summary>The pod's network namespace as a path (/proc/PID/ns/net of its first container).</summary>
    public string NamespacePath { get; set; } = "";

    /// <summary>The pod's network is locked (nothing in or out but loopback).</summary>
    public bool Locked { get; set; }

    /// <summary>The address was taken off the pod's interface for the target to claim.</summary>
    public bool Released { get; set; }

    /// <summary>The pod's routes through the interface (they go when its link goes down, and come back with the address).</summary>
    public List<Networking.MovedRoute> Routes { get; set; } = [];

    public Networking.PodAddress ToAddress() => new(Interface, Cidr, Mac);

    public IReadOnlyList<Networking.PodRoute> ToRoutes() => [.. Routes.Select(r => new Networking.PodRoute(r.Destination, r.Gateway))];
}

/// <summary>What the agent keeps about one migration, in the migration's staging directory (state.json).</summary>
public sealed class MigrationRecord
{
    public required string MigrationId { get; init; }

    public required string Namespace { get; init; }

    public required string PodName { get; init; }

    public required string PodUid { get; init; }

    public required string NodeName { get; init; }

    public required string SandboxId { get; init; }

    public required string StagingDirectory { get; init; }

    /// <summary>What staging in memory was reckoned to need, when the images are staged in memory (0: on disk).</summary>
    public long MemoryStagedBytes { get; init; }

    public required CriuPreCopyMethod PreCopyMethod { get; init; }

    /// <summary>Bytes of sent rounds' pages given back on this node (<see cref="RoundRelease"/>).</summary>
    public long ReleasedBytes { get; set; }

    public required IReadOnlyList<ContainerRecord> Containers { get; init; }

    public MigrationPhase Phase { get; set; } = MigrationPhase.Prepared;

    public List<RoundRecord> Rounds { get; init; } = [];

    /// <summary>Round responses by number, as protobuf JSON, for repeated calls.</summary>
    public Dictionary<int, string> RoundResponses { get; init; } = [];

    /// <summary>
    /// The final dump left pages on the source (post-copy): while the pod stays frozen, the target
    /// fetches them from its processes (<see cref="Transfer.PostCopySource"/>).
    /// </summary>
    public bool PostCopy { get; set; }

    /// <summary>The final dump's response as protobuf JSON, once taken.</summary>
    public string? FinalDump { get; set; }

    public string Message { get; set; } = "";

    /// <summary>Where pre-copy rounds and the handoff send the images (and whom a rollback asks).</summary>
    public TransferTargetRecord? Target { get; set; }

    public OperationRecord? Operation { get; set; }

    public PreCopyRecord PreCopy { get; set; } = new();

    public HandoffRecord Handoff { get; set; } = new();

    /// <summary>Set when the migration keeps the pod's address (and its TCP connections).</summary>
    public AddressMoveRecord? AddressMove { get; set; }

    /// <summary>Why the pod's address does not move although keeping it was asked for, as optional.</summary>
    public string? AddressNote { get; set; }

    /// <summary>Bytes its sends carried as references to pages they had sent before.</summary>
    public ulong BytesReferenced { get; set; }

    /// <summary>The migration takes the CRI path: its pod is frozen (and thawed) through containerd's task service, not the cgroup freezer alone.</summary>
    public bool CriPath { get; set; }

    /// <summary>A handoff through the runtime's CRI checkpoint: the checkpoint images published, container by container.</summary>
    public List<CheckpointImageRecord> CheckpointImages { get; set; } = [];

    /// <summary>When its staged files were removed (in memory only: a cleaned record has no directory to be saved in).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public long CleanedUnixMillis { get; set; }

    /// <summary>
    /// The cleaned migrations an agent may forget: cleaned at least <paramref name="keep"/> ago.
    /// Until then a repeated Cleanup or status call still finds what happened; afterwards they
    /// are answered as for an unknown migration ("nothing staged"), and a long-running agent's
    /// memory does not grow with every migration and checkpoint it ever served.
    /// </summary>
    public static IReadOnlyList<string> Forgettable(IEnumerable<MigrationRecord> records, long nowUnixMillis, TimeSpan keep) =>
        [.. records.Where(r => r.Phase == MigrationPhase.Cleaned && r.CleanedUnixMillis > 0 && nowUnixMillis - r.CleanedUnixMillis >= (long)keep.TotalMilliseconds)
            .Select(r => r.MigrationId)];

    public int RoundCount => RoundResponses.Count;

    public bool HoldsPod => Phase is MigrationPhase.Prepared or MigrationPhase.PreCopying or MigrationPhase.Frozen;

    public const string FileName = StagingLayout.RecordFile;

    public void Save()
    {
        var path = Path.Combine(StagingDirectory, FileName);
        WholeFile.WriteText(path, JsonSerializer.Serialize(this, MigrationRecordJson.Default.MigrationRecord));
    }

    public static MigrationRecord? Load(string stagingDirectory)
    {
        var path = Path.Combine(stagingDirectory, FileName);
        return File.Exists(path) ? JsonSerializer.Deserialize(File.ReadAllText(path), MigrationRecordJson.Default.MigrationRecord) : null;
    }

    public MigrationStatus ToStatus()
    {
        var status = new MigrationStatus
        {
            MigrationId = MigrationId,
            Pod = new PodRef { Namespace = Namespace, Name = PodName, Uid = PodUid },
            NodeName = NodeName,
            Phase = Phase,
            StagingDirectory = StagingDirectory,
            PreCopyRounds = RoundCount,
            PreCopyMethod = PreCopyMethod == CriuPreCopyMethod.KernelTracking
                ? Agent.V1.PreCopyMethod.KernelTracking
                : Agent.V1.PreCopyMethod.ContentComparison,
            Message = Message,
            KeepsAddress = AddressMove is not null,
            AddressNote = AddressNote ?? "",
            BytesReferenced = BytesReferenced,
            StagedInMemory = MemoryStagedBytes > 0,
        };
        status.Containers.Add(Containers.Select(c => new ContainerInfo { Name = c.Name, ContainerId = c.ContainerId, Image = c.Image, Pid = c.Pid }));
        status.CheckpointImages.Add(CheckpointImages.Select(i => new CheckpointImage
        {
            Container = i.Container,
            Image = i.Image,
            Bytes = i.Bytes,
            CheckpointMillis = i.CheckpointMillis,
            PublishMillis = i.PublishMillis,
        }));
        if (FinalDump is not null)
        {
            status.FinalDump = FinalDumpResponse.Parser.ParseJson(FinalDump);
        }

        status.Operation = Operation?.ToProto();
        status.PreCopy = new PreCopyProgress
        {
            Rounds = PreCopy.Rounds,
            LastRoundPages = PreCopy.LastRoundPages,
            Converged = PreCopy.Converged,
            BytesSent = PreCopy.BytesSent,
            BytesTotal = PreCopy.BytesTotal,
            FirstRoundMillis = PreCopy.FirstRoundMillis,
            RoundsMillis = PreCopy.RoundsMillis,
            RoundMillis = PreCopy.RoundMillis,
            MemoryBytes = PreCopy.MemoryBytes,
            ReleasedBytes = (ulong)ReleasedBytes,
            Method = Rounds.Count == 0 ? Agent.V1.PreCopyMethod.Unspecified
                : Rounds.Any(r => r.Tracked) ? Agent.V1.PreCopyMethod.WriteTracking
                : PreCopyMethod == CriuPreCopyMethod.KernelTracking ? Agent.V1.PreCopyMethod.KernelTracking
                : Agent.V1.PreCopyMethod.ContentComparison,
        };
        status.Handoff = new HandoffProgress
        {
            Step = Handoff.Step,
            FrozenUnixMillis = Handoff.FrozenUnixMillis,
            BytesSent = Handoff.BytesSent,
            BytesTotal = Handoff.BytesTotal,
            Held = Handoff.Held,
            ContinuedThrough = Handoff.ContinuedThrough,
        };
        return status;
    }
}

[JsonSourceGenerationOptions(WriteIndented = true, UseStringEnumConverter = true)]
[JsonSerializable(typeof(MigrationRecord))]
internal sealed partial class MigrationRecordJson : JsonSerializerContext;

namespace Migrate.Api;

/// <summary>
/// Where checkpoint images live on a node, shared by the agent (which writes them), the restore
/// runtime (which restores from them) and the tests. A migration's images form one tree, the same
/// on both nodes: on the source under <see cref="Staging"/>, on the target under
/// <see cref="IncomingFiles"/>:
/// <code>
/// containers/&lt;container&gt;/round-1 ...  pre-copy rounds (CRIU image sets, each the parent of the next)
/// containers/&lt;container&gt;/final       the final dump (its "parent" link leads to the last round)
/// containers/&lt;container&gt;/memory      with lazy memory: the private memory the final dump left out,
///                                   a child of the last round; served to a lazy restore
/// rootfs/&lt;container&gt;.tar            the container's writable layer
/// volumes/&lt;volume&gt;.tar              an emptyDir's contents
/// </code>
/// Every directory is 0700 (the images hold the pod's memory, secrets included).
/// </summary>
public sealed record StagingLayout(string StagingRoot, string IncomingRoot)
{
    public const string DefaultStagingRoot = "/var/lib/podmig/migrations";
    public const string DefaultIncomingRoot = "/var/lib/podmig/incoming";

    /// <summary>Set for the restore runtime (which containerd starts) when the incoming root is not the default.</summary>
    public const string IncomingRootVariable = "PODMIG_INCOMING_DIRECTORY";

    /// <summary>The source agent's record of a migration, in its staging directory.</summary>
    public const string RecordFile = "state.json";

    /// <summary>On the target: the received files, under the migration's incoming directory.</summary>
    public const string FilesDirectory = "files";

    /// <summary>On the target: the manifest of an unfinished transfer (what has arrived so far).</summary>
    public const string ProgressFile = "progress.json";

    /// <summary>On the target: the manifest of the files received and verified (size and digest of each).</summary>
    public const string StagedFile = "staged.json";

    /// <summary>
    /// On the target: where an upload's opening moves the records of the one before (the staged
    /// manifest, the progress record) instead of deleting them; they go with the migration.
    /// </summary>
    public const string RetiredDirectory = "retired";

    /// <summary>On the target: the stamps of the staged files when their digests were verified (<see cref="StagedFileStamp"/>).</summary>
    public const string StampsFile = "staged.stamps";

    /// <summary>On the target: the migration was committed: the images are final and a waiting restore may begin.</summary>
    public const string CommittedFile = "committed";

    /// <summary>On the target: what was decided for the migration, once and for good (<see cref="RestoreMarkers"/>).</summary>
    public const string DecisionFile = "decision";

    /// <summary>On the target: the source leaves the pod's memory to a lazy restore (ExpectImages said so).</summary>
    public const string LazyMemoryExpectedFile = "lazy-memory.expected";

    /// <summary>On the target: a group member's replacement keeps its network locked once restored, until the agent's ReleaseNetwork.</summary>
    public const string HoldNetworkFile = "hold-network";

    /// <summary>On the target: every container is restored and the network stays locked; holds the pod's network namespace path.</summary>
    public const string NetworkHeldFile = "network.held";

    /// <summary>On the target: the held network was unlocked and the address announced.</summary>
    public const string NetworkReleasedFile = "network.released";

    /// <summary>The layout of a node with the default roots.</summary>
    public static StagingLayout Default { get; } = new(DefaultStagingRoot, DefaultIncomingRoot);

    /// <summary>The layout the restore runtime sees: the default, or the incoming root from <see cref="IncomingRootVariable"/>.</summary>
    public static StagingLayout FromEnvironment() =>
        Environment.GetEnvironmentVariable(IncomingRootVariable) is { Length: > 0 } incoming ? Default with { IncomingRoot = incoming } : Default;

    /// <summary>A migration's directory on its source node.</summary>
    public string Staging(string migrationId) => Path.Combine(StagingRoot, migrationId);

    /// <summary>A migration's directory on its target node.</summary>
    public string Incoming(string migrationId) => Path.Combine(IncomingRoot, migrationId);

    /// <summary>The received image tree of a migration on its target node.</summary>
    public string IncomingFiles(string migrationId) => Path.Combine(Incoming(migrationId), FilesDirectory);

    /// <summary>A container's images, relative to the image tree.</summary>
    public static string ContainerImages(string container) => "containers/" + container;

    /// <summary>A container's final image set, relative to the image tree.</summary>
    public static string FinalImages(string container) => ContainerImages(container) + "/final";

    /// <summary>A container's memory left out of a lazy final dump (a child of the last round), relative to the image tree.</summary>
    public static string LazyMemoryImages(string container) => ContainerImages(container) + "/memory";

    /// <summary>A container's pre-copy round, relative to the image tree.</summary>
    public static string RoundImages(string container, int round) => ContainerImages(container) + "/round-" + round.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>
    /// A container's image sets of an earlier checkpoint, linked in (1: its last set, each the parent of the one
    /// before), when a checkpoint is a delta on that one; relative to the image tree.
    /// </summary>
    public static string AncestorImages(string container) => ContainerImages(container) + "/ancestors";

    /// <summary>The <paramref name="depth"/>-th set of <see cref="AncestorImages(string)"/> (1: the earlier checkpoint's last set).</summary>
    public static string AncestorImages(string container, int depth) =>
        AncestorImages(container) + "/" + depth.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>A container's writable layer, relative to the image tree.</summary>
    public static string RootfsArchive(string container) => "rootfs/" + container + ".tar";

    /// <summary>An emptyDir volume's contents, relative to the image tree.</summary>
    public static string VolumeArchive(string volume) => "volumes/" + volume + ".tar";

    /// <summary>On the target: the restore runtime waits for the images of this container (its pod's sandbox is ready).</summary>
    public static string RestoreWaitingFile(string container) => "restore-" + container + ".waiting";

    /// <summary>On the target: the restore runtime restored this container (a <see cref="RestoreReport"/>).</summary>
    public static string RestoredFile(string container) => "restore-" + container + ".done";

    /// <summary>On the target: the restore of this container failed; the file holds why.</summary>
    public static string RestoreFailedFile(string container) => "restore-" + container + ".failed";

    /// <summary>On the target: CRIU's work directory for restoring this container (logs, the lazy-pages socket).</summary>
    public static string RestoreWorkDirectory(string container) => "restore-" + container;
}

/// <summary>What the restore runtime writes when it restored a container.</summary>
/// <param name="RestoredUnixMillis">When the restored processes ran (Unix milliseconds).</param>
/// <param name="RestoreMillis">How long the restore took.</param>
/// <param name="LazyMemory">The processes ran before their memory was in place (a lazy restore: a page server fills it).</param>
/// <param name="Steps">Where the restore's time went (files, address claim, runc restore, unlock), for people reading it.</param>
public sealed record RestoreReport(long RestoredUnixMillis, long RestoreMillis, bool LazyMemory = false, string? Steps = null);

[System.Text.Json.Serialization.JsonSerializable(typeof(RestoreReport))]
public sealed partial class RestoreReportJson : System.Text.Json.Serialization.JsonSerializerContext;

/// <summary>
/// The once-and-for-all decision on a target node between restoring a migration (the restore
/// runtime, when it begins) and aborting it (the agent, when the source is to be thawed): the
/// decision file is created exclusively, so of two deciding at once exactly one wins, and the
/// loser reads what the winner decided. A source pod is thawed only after "abort" was decided.
/// </summary>
public static class RestoreMarkers
{
    public const string Restore = "restore";
    public const string Abort = "abort";

    /// <summary>Writes <paramref name="wanted"/> unless a decision exists; returns the decision.</summary>
    public static string Claim(string path, string wanted)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(wanted);
        try
        {
            using var stream = new FileStream(path, new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            });
            stream.Write(System.Text.Encoding.ASCII.GetBytes(wanted));
            stream.Flush(flushToDisk: true);
            return wanted;
        }
        catch (IOException) when (File.Exists(path))
        {
            return Read(path) ?? "";
        }
    }

    /// <summary>The decision, or null when none was made.</summary>
    public static string? Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        // the writer creates and fills it at once; a reader racing the write sees it complete a moment later
        for (int attempt = 0; attempt < 200; attempt++)
        {
            if (!File.Exists(path))
            {
                return null;
            }

            var text = File.ReadAllText(path).Trim();
            if (text.Length > 0)
            {
                return text;
            }

            Thread.Sleep(1);
        }

        return "";
    }
}

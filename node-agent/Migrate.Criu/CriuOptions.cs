using System.Collections.Immutable;

namespace Migrate.Criu;

/// <summary>How much CRIU writes to its log file.</summary>
public enum CriuLogLevel
{
    Error = 1,
    Warning = 2,
    Info = 3,
    Debug = 4,
}

/// <summary>How CRIU treats the cgroups of the dumped tree (CRIU's --manage-cgroups modes).</summary>
public enum CriuCgroupMode
{
    Ignore,
    None,
    Props,
    Soft,
    Full,
    Strict,
}

/// <summary>How CRIU blocks a network namespace's traffic while it dumps it.</summary>
public enum CriuNetworkLock
{
    Iptables,
    Nftables,
    Skip,
}

/// <summary>A file descriptor of the caller handed to the restored tree in place of an external resource.</summary>
/// <param name="Descriptor">The caller's descriptor (must stay open during the call; it is made inheritable, as CRIU runs in a child process).</param>
/// <param name="Key">The resource it replaces, as CRIU names it, e.g. <c>pipe:[12345]</c>.</param>
public sealed record CriuInheritedDescriptor(int Descriptor, string Key);

/// <summary>An external bind mount: inside the dump it is named by <paramref name="Key"/>; on restore it is mounted from <paramref name="Value"/>.</summary>
public sealed record CriuExternalMount(string Key, string Value);

/// <summary>A namespace the restored tree joins instead of creating (CRIU's --join-ns).</summary>
public sealed record CriuJoinedNamespace(string Namespace, string NamespaceFile, string? ExtraOption = null);

/// <summary>A notification CRIU sends at a point of a dump or restore (CRIU's action-script hooks).</summary>
/// <param name="Action">The hook name, e.g. <c>pre-dump</c>, <c>post-dump</c>, <c>setup-namespaces</c>, <c>post-restore</c>.</param>
/// <param name="Pid">The root task's PID when CRIU reports one, otherwise 0.</param>
public sealed record CriuNotification(string Action, int Pid)
{
    /// <summary>Both handlers, <paramref name="first"/> first; the second only when the first lets the operation go on.</summary>
    public static Func<CriuNotification, bool> Then(Func<CriuNotification, bool> first, Func<CriuNotification, bool>? second) =>
        second is null ? first : n => first(n) && second(n);
}

/// <summary>
/// Everything one CRIU operation needs: an immutable description, turned into a libcriu options
/// object per call. Only what is set is sent; CRIU's defaults apply to the rest.
/// </summary>
/// <remarks>
/// libcriu does not expose every option of CRIU's RPC protocol. Not reachable through it:
/// <c>leave_stopped</c> (leave the dumped tree SIGSTOPped), <c>rst_sibling</c> except through
/// <see cref="CriuClient.Restore"/> with <c>asChild</c>, <c>display_stats</c>, <c>lazy_pages</c> (see
/// <see cref="LazyPages"/>),
/// <c>status_fd</c>, <c>config_file</c>, TLS page-server settings, and the timeout (libcriu's
/// setter never marks it present). Keeping a dumped tree frozen is done with the cgroup freezer
/// instead: freeze the tree's cgroup, dump with <see cref="LeaveRunning"/> and
/// <see cref="FreezeCgroup"/> naming it, and CRIU puts the freezer back to its original (frozen)
/// state when it finishes. A rollback is then a thaw.
/// </remarks>
public sealed record CriuOptions
{
    /// <summary>The CRIU executable libcriu starts in "swrk" mode; null means <c>criu</c> on PATH.</summary>
    public string? ServiceBinary { get; init; }

    /// <summary>
    /// A CRIU process started ahead for this call (<see cref="CriuService"/>): a dump of the same kind
    /// (lazy or not) sends its request there instead of having libcriu start CRIU. Used once; a call
    /// that finds it used, exited or of the other kind starts CRIU as usual.
    /// </summary>
    public CriuService? Service { get; init; }

    /// <summary>The directory images are written to (dump) or read from (restore).</summary>
    public string? ImagesDirectory { get; init; }

    /// <summary>Where CRIU writes its log and other work files; defaults to <see cref="ImagesDirectory"/>.</summary>
    public string? WorkDirectory { get; init; }

    /// <summary>Log file name relative to the work directory; defaults to the operation's name (<c>dump.log</c>, ...).</summary>
    public string? LogFile { get; init; }

    public CriuLogLevel LogLevel { get; init; } = CriuLogLevel.Info;

    /// <summary>Root of the tree to dump (a host PID).</summary>
    public int? Pid { get; init; }

    /// <summary>A previous image set this dump is incremental to, relative to <see cref="ImagesDirectory"/> (e.g. <c>../1</c>).</summary>
    public string? ParentImages { get; init; }

    /// <summary>Leave the tree running after a dump instead of killing it.</summary>
    public bool? LeaveRunning { get; init; }

    /// <summary>
    /// Lazy memory (CRIU's --lazy-pages). A dump writes no private anonymous page: its pagemaps mark
    /// them lazy, and the caller captures them itself while the tree stays frozen (the tree must be
    /// left running or frozen). A restore runs the tree before those pages are in place; CRIU's
    /// lazy-pages daemon, listening in the work directory, fills them as they are touched. libcriu
    /// has no setter for this: it is passed in a CRIU configuration file for this call only.
    /// </summary>
    public bool? LazyPages { get; init; }

    /// <summary>Use kernel memory tracking (soft-dirty bits) so later dumps write only changed pages.</summary>
    public bool? TrackMemory { get; init; }

    public bool? ShellJob { get; init; }

    public bool? TcpEstablished { get; init; }

    public bool? TcpClose { get; init; }

    public bool? TcpSkipInFlight { get; init; }

    public bool? ExternalUnixSockets { get; init; }

    public bool? FileLocks { get; init; }

    public bool? LinkRemap { get; init; }

    public bool? EvasiveDevices { get; init; }

    public bool? WeakSysctls { get; init; }

    public bool? OrphanPtsMaster { get; init; }

    public bool? AutoExternalMounts { get; init; }

    public bool? ExternalSharing { get; init; }

    public bool? ExternalMasters { get; init; }

    public bool? ManageCgroups { get; init; }

    public CriuCgroupMode? CgroupMode { get; init; }

    /// <summary>A freezer cgroup (path under the freezer hierarchy) CRIU uses to freeze the tree.</summary>
    public string? FreezeCgroup { get; init; }

    /// <summary>Root directory of the restored tree's mount namespace.</summary>
    public string? Root { get; init; }

    public uint? GhostLimit { get; init; }

    public CriuNetworkLock? NetworkLock { get; init; }

    /// <summary>Namespaces (CLONE_NEW* flags) restored empty instead of from the images.</summary>
    public int? EmptyNamespaces { get; init; }

    public string? LsmProfile { get; init; }

    public ImmutableArray<CriuExternalMount> ExternalMounts { get; init; } = [];

    /// <summary>External resources, CRIU's --external (e.g. <c>mnt[path]:key</c>, <c>net[inode]:key</c>).</summary>
    public ImmutableArray<string> External { get; init; } = [];

    public ImmutableArray<CriuInheritedDescriptor> InheritedDescriptors { get; init; } = [];

    public ImmutableArray<string> SkipMounts { get; init; } = [];

    public ImmutableArray<string> EnableFilesystems { get; init; } = [];

    public ImmutableArray<CriuJoinedNamespace> JoinNamespaces { get; init; } = [];

    /// <summary>Cgroup roots, CRIU's --cgroup-root (controller may be null for all).</summary>
    public ImmutableArray<KeyValuePair<string?, string>> CgroupRoots { get; init; } = [];

    /// <summary>Called on the calling thread for each CRIU notification; returning false aborts the operation.</summary>
    public Func<CriuNotification, bool>? Notify { get; init; }
}

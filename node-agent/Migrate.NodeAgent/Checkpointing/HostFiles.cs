using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Paths the container runtime names (a container's overlay upper directory, a volume's source,
/// a root file system's mount point) are paths of the node's mount namespace, the runtime's. An
/// agent run as a process on the node opens them as they are; an agent run in a container (the
/// DaemonSet's pod, in the node's PID namespace) has mounts of its own, where such a path may be
/// missing or another file, and opens them through a process of the runtime's instead: the
/// container's parent (its shim), as <c>/proc/SHIM/root/PATH</c>. Not PID 1: a node's init may
/// refuse to be looked into, and the runtime may not share its mount namespace.
/// </summary>
public sealed class HostFiles
{
    private readonly string _procRoot;

    private HostFiles(string procRoot, int runtimePid, bool separate)
    {
        _procRoot = procRoot;
        RuntimePid = runtimePid;
        Separate = separate;
    }

    /// <summary>The process of the runtime's whose view is the node's (the container's parent).</summary>
    public int RuntimePid { get; }

    /// <summary>Whether the agent's mount namespace is not the runtime's (the agent runs in a container).</summary>
    public bool Separate { get; }

    /// <summary>The node's view for the container whose init process is <paramref name="containerPid"/>.</summary>
    public static HostFiles ForContainer(int containerPid, string procRoot = "/proc")
    {
        var pid = containerPid.ToString(CultureInfo.InvariantCulture);
        int parent = ParentPid(File.ReadAllText(Path.Combine(procRoot, pid, "status")))
            ?? throw new InvalidOperationException($"process {containerPid} names no parent");
        return new HostFiles(procRoot, parent, SeparateMountNamespace(procRoot, parent));
    }

    /// <summary>Where the agent opens the node's <paramref name="hostPath"/>.</summary>
    public string Open(string hostPath) => Resolve(hostPath, Separate ? RuntimePid : null, _procRoot);

    /// <summary>The runtime's mount table.</summary>
    public IReadOnlyList<MountInfoEntry> Mounts() =>
        MountInfoEntry.Read(Path.Combine(_procRoot, RuntimePid.ToString(CultureInfo.InvariantCulture), "mountinfo"));

    /// <summary>The node's <paramref name="hostPath"/> as the agent opens it: as it is, or through the process <paramref name="through"/>.</summary>
    public static string Resolve(string hostPath, int? through, string procRoot = "/proc")
    {
        ArgumentException.ThrowIfNullOrEmpty(hostPath);
        if (!hostPath.StartsWith('/'))
        {
            throw new ArgumentException($"not an absolute path of the node: {hostPath}", nameof(hostPath));
        }

        return through is { } pid
            ? string.Create(CultureInfo.InvariantCulture, $"{procRoot}/{pid}/root{hostPath.TrimEnd('/')}")
            : hostPath;
    }

    /// <summary>The PPid line of <c>/proc/PID/status</c>.</summary>
    public static int? ParentPid(string status)
    {
        ArgumentNullException.ThrowIfNull(status);
        foreach (var line in status.Split('\n'))
        {
            if (line.StartsWith("PPid:", StringComparison.Ordinal)
                && int.TryParse(line.AsSpan(5).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int parent) && parent > 0)
            {
                return parent;
            }
        }

        return null;
    }

    /// <summary>Whether <c>PROC/self/ns/mnt</c> and <c>PROC/PID/ns/mnt</c> differ.</summary>
    public static bool SeparateMountNamespace(string procRoot, int pid)
    {
        var own = new FileInfo(Path.Combine(procRoot, "self", "ns", "mnt")).LinkTarget;
        var other = new FileInfo(Path.Combine(procRoot, pid.ToString(CultureInfo.InvariantCulture), "ns", "mnt")).LinkTarget;
        return own is not null && other is not null && !string.Equals(own, other, StringComparison.Ordinal);
    }

    /// <summary>
    /// Among <paramref name="nodeMounts"/>, the mount point of the mount that is <paramref name="mount"/>
    /// (same file system, source, root, device and super-block options); null when there is none.
    /// </summary>
    public static string? MountPointOf(MountInfoEntry mount, IEnumerable<MountInfoEntry> nodeMounts)
    {
        ArgumentNullException.ThrowIfNull(mount);
        return nodeMounts.LastOrDefault(m => m.FileSystemType == mount.FileSystemType && m.Source == mount.Source && m.Root == mount.Root
            && m.SuperOptions == mount.SuperOptions && m.Device == mount.Device)?.MountPoint;
    }
}

using System.Collections.Immutable;
using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>An established TCP connection of a container's process tree.</summary>
public sealed record TcpConnection(string Local, string Remote, ulong Inode);

/// <summary>
/// What the host knows of a container's init process, read from <c>/proc</c>: where its root
/// file system is mounted on the host, its writable layer, namespaces, stdio and sockets.
/// </summary>
public sealed class ContainerProcess
{
    private readonly string _proc;

    public ContainerProcess(int pid, string procRoot = "/proc")
    {
        Pid = pid;
        _proc = Path.Combine(procRoot, pid.ToString(CultureInfo.InvariantCulture));
        ProcRoot = procRoot;
        if (!Directory.Exists(_proc))
        {
            throw new InvalidOperationException($"process {pid} is gone");
        }
    }

    public int Pid { get; }

    public string ProcRoot { get; }

    /// <summary>The container's own mount table.</summary>
    public ImmutableArray<MountInfoEntry> Mounts() => MountInfoEntry.Read(Path.Combine(_proc, "mountinfo"));

    /// <summary>The container's root mount as the container sees it.</summary>
    public MountInfoEntry RootMount() =>
        Mounts().LastOrDefault(m => m.MountPoint == "/") ?? throw new InvalidOperationException($"process {Pid} has no root mount");

    /// <summary>
    /// Where the container's root file system is mounted in the agent's mount namespace (CRIU's
    /// root): the mount with the same file system, source, root and super-block options.
    /// </summary>
    public string HostRootPath()
    {
        var root = RootMount();
        if (HostFiles.MountPointOf(root, MountInfoEntry.Read(Path.Combine(ProcRoot, "self", "mountinfo"))) is { } own)
        {
            return own;
        }

        // an agent in a container of its own does not see the mounts the runtime made after it started: the runtime's view has them
        var node = HostFiles.ForContainer(Pid, ProcRoot);
        return (node.Separate && HostFiles.MountPointOf(root, node.Mounts()) is { } mountPoint ? node.Open(mountPoint) : null)
            ?? throw new InvalidOperationException($"the root file system of process {Pid} ({root.FileSystemType} {root.Source}) is not mounted in the agent's mount namespace"
                + (node.Separate ? $" nor in the runtime's (process {node.RuntimePid})" : ""));
    }

    /// <summary>The overlay upper directory (the container's writable layer), or null when the root is not overlayfs.</summary>
    public string? UpperDirectory()
    {
        var root = RootMount();
        return root.FileSystemType == "overlay" ? root.SuperOption("upperdir") : null;
    }

    /// <summary>The inode of one of the process's namespaces, e.g. "net".</summary>
    public ulong NamespaceInode(string type)
    {
        var link = new FileInfo(Path.Combine(_proc, "ns", type)).LinkTarget
            ?? throw new InvalidOperationException($"process {Pid} has no {type} namespace link");
        int open = link.IndexOf('[', StringComparison.Ordinal);
        return ulong.Parse(link[(open + 1)..^1], CultureInfo.InvariantCulture);
    }

    /// <summary>What descriptors 0, 1 and 2 point to, in the form <c>runc restore</c> expects in descriptors.json.</summary>
    public IReadOnlyList<string> StandardDescriptors()
    {
        var result = new List<string>(3);
        for (int fd = 0; fd < 3; fd++)
        {
            var path = Path.Combine(_proc, "fd", fd.ToString(CultureInfo.InvariantCulture));
            string target;
            try
            {
                target = new FileInfo(path).LinkTarget ?? "/dev/null";
            }
            catch (IOException)
            {
                target = "/dev/null";
            }

            result.Add(target);
        }

        return result;
    }

    /// <summary>The process IDs of the tree, this process first.</summary>
    public IReadOnlyList<int> Tree()
    {
        var result = new List<int> { Pid };
        for (int i = 0; i < result.Count; i++)
        {
            var task = Path.Combine(ProcRoot, result[i].ToString(CultureInfo.InvariantCulture), "task");
            if (!Directory.Exists(task))
            {
                continue;
            }

            foreach (var thread in Directory.EnumerateDirectories(task))
            {
                var children = Path.Combine(thread, "children");
                if (!File.Exists(children))
                {
                    continue;
                }

                foreach (var child in File.ReadAllText(children).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                {
                    result.Add(int.Parse(child, CultureInfo.InvariantCulture));
                }
            }
        }

        return result;
    }

    /// <summary>Established TCP connections (IPv4 and IPv6) owned by any process of the tree.</summary>
    public IReadOnlyList<TcpConnection> EstablishedTcpConnections()
    {
        var sockets = new HashSet<ulong>();
        foreach (var pid in Tree())
        {
            var fds = Path.Combine(ProcRoot, pid.ToString(CultureInfo.InvariantCulture), "fd");
            try
            {
                foreach (var fd in Directory.EnumerateFileSystemEntries(fds))
                {
                    var target = new FileInfo(fd).LinkTarget;
                    if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal))
                    {
                        sockets.Add(ulong.Parse(target[8..^1], CultureInfo.InvariantCulture));
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the process exited meanwhile
            }
        }

        var result = new List<TcpConnection>();
        foreach (var table in new[] { "tcp", "tcp6" })
        {
            var path = Path.Combine(_proc, "net", table);
            if (!File.Exists(path))
            {
                continue;
            }

            foreach (var line in File.ReadLines(path).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
                if (f.Length < 10 || f[3] != "01" || !ulong.TryParse(f[9], CultureInfo.InvariantCulture, out var inode) || !sockets.Contains(inode))
                {
                    continue;
                }

                result.Add(new TcpConnection(DecodeAddress(f[1]), DecodeAddress(f[2]), inode));
            }
        }

        return result;
    }

    /// <summary>Decodes /proc/net/tcp's hex "address:port" (address in host byte order per 32-bit word).</summary>
    internal static string DecodeAddress(string value)
    {
        var parts = value.Split(':');
        int port = int.Parse(parts[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var hex = parts[0];
        var bytes = new byte[hex.Length / 2];
        for (int word = 0; word < bytes.Length / 4; word++)
        {
            uint v = uint.Parse(hex.AsSpan(word * 8, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            BitConverter.TryWriteBytes(bytes.AsSpan(word * 4, 4), v);
        }

        var address = new System.Net.IPAddress(bytes);
        return bytes.Length == 16 ? $"[{address}]:{port}" : $"{address}:{port}";
    }
}

using System.Runtime.InteropServices;
using Migrate.Api;
using Migrate.Criu;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Lists a tmpfs as <see cref="CarriedEntry"/> items (on the source, the pod frozen), and builds one
/// again from them (on the target, in a tmpfs mounted for it). Only what GNU tar would carry for CRIU
/// is carried: types, permission bits, numeric owners, modification times, links, device numbers and
/// file contents; a mount point below the root (another mount) becomes an empty directory or file.
/// </summary>
public static class TmpfsListing
{
    /// <summary>
    /// The tmpfs mounts of process <paramref name="pid"/>'s container to carry (see
    /// <see cref="CarriedMounts.Candidates"/>), listed through its root; a mount that cannot be
    /// carried is passed to <paramref name="refused"/> with the reason, and left to CRIU.
    /// </summary>
    public static CarriedMountSet Capture(int pid, IEnumerable<string> boundFromNode, CarryLimits limits, Action<string, string> refused)
    {
        ArgumentNullException.ThrowIfNull(refused);
        var mounts = new List<CarriedMount>();
        foreach (var mount in CarriedMounts.Candidates(MountInfoEntry.Read($"/proc/{pid}/mountinfo"), boundFromNode))
        {
            var (entries, refusal) = List($"/proc/{pid}/root{mount.MountPoint}", limits, (ulong)mount.Id);
            if (entries is null)
            {
                refused(mount.MountPoint, refusal!);
                continue;
            }

            mounts.Add(new CarriedMount(mount.MountPoint, CarriedMounts.Key(mounts.Count), CarriedMounts.MountOptions(mount.SuperOptions)!, entries));
        }

        return new CarriedMountSet(mounts);
    }

    /// <summary>
    /// The entries of the mount at <paramref name="root"/>, or why it is not carried; with
    /// <paramref name="mountId"/>, a path that reaches another mount (one stacked on it, or over a
    /// directory above it) is refused.
    /// </summary>
    public static (IReadOnlyList<CarriedEntry>? Entries, string? Refusal) List(string root, CarryLimits limits, ulong? mountId = null)
    {
        ArgumentNullException.ThrowIfNull(root);
        ArgumentNullException.ThrowIfNull(limits);
        if (FileStatus.Of(root) is not { Type: FileStatus.Directory } top)
        {
            return (null, $"{root} is not a directory");
        }

        if (mountId is { } expected && top.MountId != expected)
        {
            return (null, $"its path reaches mount {top.MountId}, another mount hides it");
        }

        var entries = new List<CarriedEntry> { Entry(".", top, CarriedMounts.Directory) };
        long content = 0;
        var pending = new Stack<string>();
        pending.Push("");
        while (pending.Count > 0)
        {
            var relative = pending.Pop();
            var names = System.IO.Directory.EnumerateFileSystemEntries(relative.Length == 0 ? root : Path.Combine(root, relative))
                .Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            foreach (var name in names)
            {
                var path = relative.Length == 0 ? name! : relative + "/" + name;
                var full = Path.Combine(root, path);
                if (FileStatus.Of(full) is not { } status)
                {
                    return (null, $"{path} cannot be examined");
                }

                if (entries.Count >= limits.Entries)
                {
                    return (null, $"it holds more than {limits.Entries} entries");
                }

                if (status.MountId != top.MountId)
                {
                    // another mount's root: CRIU mounts it again, on an empty mount point of the same kind
                    entries.Add(new CarriedEntry(path, status.Type == FileStatus.Directory ? CarriedMounts.Directory : CarriedMounts.File,
                        status.Type == FileStatus.Directory ? 0x1EDu : 0x1A4u, 0, 0, top.ModifiedSeconds, top.ModifiedNanoseconds));
                    continue;
                }

                switch (status.Type)
                {
                    case FileStatus.Directory:
                        entries.Add(Entry(path, status, CarriedMounts.Directory));
                        pending.Push(path);
                        break;
                    case FileStatus.SymbolicLink:
                        entries.Add(Entry(path, status, CarriedMounts.SymbolicLink) with { Target = new FileInfo(full).LinkTarget ?? "" });
                        break;
                    case FileStatus.CharacterDevice:
                        entries.Add(Entry(path, status, CarriedMounts.CharacterDevice) with { NodeMajor = status.NodeMajor, NodeMinor = status.NodeMinor });
                        break;
                    case FileStatus.BlockDevice:
                        entries.Add(Entry(path, status, CarriedMounts.BlockDevice) with { NodeMajor = status.NodeMajor, NodeMinor = status.NodeMinor });
                        break;
                    case FileStatus.Fifo:
                        entries.Add(Entry(path, status, CarriedMounts.Fifo));
                        break;
                    case FileStatus.Regular when status.Links > 1:
                        return (null, $"{path} is one of {status.Links} hard links");
                    case FileStatus.Regular:
                        content += status.Size;
                        if (content > limits.ContentBytes)
                        {
                            return (null, $"its files hold more than {limits.ContentBytes} bytes");
                        }

                        var bytes = status.Size == 0 ? [] : System.IO.File.ReadAllBytes(full);
                        entries.Add(Entry(path, status, CarriedMounts.File) with { Content = bytes.Length == 0 ? null : Convert.ToBase64String(bytes) });
                        break;
                    default:
                        return (null, $"{path} is a {(status.Type == FileStatus.Socket ? "socket" : "file of another kind")}, which only CRIU restores");
                }
            }
        }

        return (entries, null);
    }

    /// <summary>
    /// Makes <paramref name="entries"/> (checked by <see cref="CarriedMounts.Problem"/>) under
    /// <paramref name="directory"/>, the root of an empty tmpfs, with their owners, modes and
    /// times; every directory's time is set once its entries are in.
    /// </summary>
    public static void Build(string directory, IReadOnlyList<CarriedEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(entries);
        foreach (var entry in entries)
        {
            var path = entry.Path == "." ? directory : Path.Combine(directory, entry.Path);
            switch (entry.Kind)
            {
                case CarriedMounts.Directory when entry.Path != ".":
                    Check(Posix.Mkdir(path, 0x1C0), "mkdir", path);
                    break;
                case CarriedMounts.File:
                    using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
                    {
                        if (entry.Content is { Length: > 0 } content)
                        {
                            file.Write(Convert.FromBase64String(content));
                        }
                    }

                    break;
                case CarriedMounts.SymbolicLink:
                    System.IO.File.CreateSymbolicLink(path, entry.Target!);
                    break;
                case CarriedMounts.CharacterDevice:
                    Check(Posix.Mknod(path, FileStatus.CharacterDevice | 0x180, DeviceNumber(entry.NodeMajor, entry.NodeMinor)), "mknod", path);
                    break;
                case CarriedMounts.BlockDevice:
                    Check(Posix.Mknod(path, FileStatus.BlockDevice | 0x180, DeviceNumber(entry.NodeMajor, entry.NodeMinor)), "mknod", path);
                    break;
                case CarriedMounts.Fifo:
                    Check(Posix.Mknod(path, FileStatus.Fifo | 0x180, 0), "mkfifo", path);
                    break;
            }

            Check(Posix.Lchown(path, entry.Owner, entry.Group), "lchown", path);
            if (entry.Kind != CarriedMounts.SymbolicLink)
            {
                // after the owner: chown clears set-user-ID and set-group-ID
                Check(Posix.Chmod(path, entry.Mode), "chmod", path);
            }
        }

        // deepest first, so making an entry does not move its directory's time again
        foreach (var entry in entries.OrderByDescending(e => e.Path == "." ? 0 : e.Path.Count(c => c == '/') + 1))
        {
            var path = entry.Path == "." ? directory : Path.Combine(directory, entry.Path);
            var times = new Posix.Timespec[] { new(entry.ModifiedSeconds, entry.ModifiedNanoseconds), new(entry.ModifiedSeconds, entry.ModifiedNanoseconds) };
            Check(Posix.Utimensat(Posix.AtFdCwd, path, times, Posix.AtSymlinkNoFollow), "utimensat", path);
        }
    }

    private static CarriedEntry Entry(string path, FileStatus status, string kind) =>
        new(path, kind, status.Permissions, status.Owner, status.Group, status.ModifiedSeconds, status.ModifiedNanoseconds);

    /// <summary>glibc's <c>makedev</c>.</summary>
    private static ulong DeviceNumber(uint major, uint minor) =>
        ((ulong)(major & 0xFFFFF000) << 32) | ((ulong)(major & 0xFFF) << 8) | ((ulong)(minor & 0xFFFFFF00) << 12) | (minor & 0xFF);

    private static void Check(int result, string call, string path)
    {
        if (result != 0)
        {
            throw new IOException($"{call} {path} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }
}

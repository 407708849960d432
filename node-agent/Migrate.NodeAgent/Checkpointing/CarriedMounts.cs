using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Migrate.Api;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>One file of a carried tmpfs, relative to its root ("." is the root itself).</summary>
/// <param name="Path">The path under the mount's root, "/"-separated.</param>
/// <param name="Kind">One of <see cref="CarriedMounts.Kinds"/>.</param>
/// <param name="Mode">Permission bits (with set-user-ID, set-group-ID and sticky).</param>
/// <param name="Owner">The numeric owner.</param>
/// <param name="Group">The numeric group.</param>
/// <param name="ModifiedSeconds">The modification time, seconds since the epoch.</param>
/// <param name="ModifiedNanoseconds">Its nanoseconds.</param>
/// <param name="NodeMajor">A device node's major number.</param>
/// <param name="NodeMinor">A device node's minor number.</param>
/// <param name="Content">A regular file's bytes, in base64.</param>
/// <param name="Target">A symbolic link's target.</param>
public sealed record CarriedEntry(string Path, string Kind, uint Mode, uint Owner, uint Group, long ModifiedSeconds, uint ModifiedNanoseconds,
    uint NodeMajor = 0, uint NodeMinor = 0, string? Content = null, string? Target = null);

/// <summary>A tmpfs of the container the agent carries instead of CRIU: where it is mounted, CRIU's key for it, its super-block options and its files.</summary>
public sealed record CarriedMount(string MountPoint, string Key, string Options, IReadOnlyList<CarriedEntry> Entries);

/// <summary>The tmpfs mounts of a container carried beside its images (<see cref="CarriedMounts.FileName"/>).</summary>
public sealed record CarriedMountSet(IReadOnlyList<CarriedMount> Mounts);

/// <summary>How much a tmpfs may hold for the agent to carry it; a larger one is left to CRIU's own archive.</summary>
public sealed record CarryLimits(int Entries, long ContentBytes)
{
    public static CarryLimits Default { get; } = new(1024, 1 << 20);
}

/// <summary>
/// The small tmpfs mounts runc makes in every container (<c>/dev</c>, and <c>/sys/fs/cgroup</c> on a
/// cgroup v1 node), carried by the agent instead of CRIU. CRIU archives each tmpfs of a dump with a
/// <c>tar --gzip</c> process and unpacks it with another on restore: four process pairs per
/// container inside the downtime (24-100 ms each measured here) for a few device nodes, directories
/// and links. The agent lists such a mount while the pod is frozen (a few system calls), names it to
/// CRIU as an external mount so CRIU leaves its contents alone, and the target builds it again in a
/// tmpfs of its own that CRIU binds in its place. A mount holding what a listing cannot carry
/// faithfully (a socket, a hard link, more than <see cref="CarryLimits"/>) is left to CRIU.
/// </summary>
public static class CarriedMounts
{
    /// <summary>The file beside a container's final images.</summary>
    public const string FileName = "carried-mounts.json";

    public const string Directory = "dir";
    public const string File = "file";
    public const string SymbolicLink = "symlink";
    public const string CharacterDevice = "char";
    public const string BlockDevice = "block";
    public const string Fifo = "fifo";

    public static readonly ImmutableHashSet<string> Kinds = [Directory, File, SymbolicLink, CharacterDevice, BlockDevice, Fifo];

    /// <summary>The super-block options of a tmpfs the target may mount with (tmpfs(5)); others make the mount not carried.</summary>
    private static readonly ImmutableHashSet<string> TmpfsOptions = ["size", "nr_blocks", "nr_inodes", "mode", "uid", "gid", "inode32", "inode64", "huge", "noswap"];

    private const int MaxPath = 4096;

    /// <summary>
    /// The mounts of a container that may be carried: tmpfs mounted at its root (not a bind of a
    /// part of one), below the container's root, and not bound in from the node (those are CRIU's
    /// external mounts already: /dev/shm, the kubelet's files).
    /// </summary>
    public static IReadOnlyList<MountInfoEntry> Candidates(IEnumerable<MountInfoEntry> mounts, IEnumerable<string> boundFromNode)
    {
        ArgumentNullException.ThrowIfNull(mounts);
        var bound = boundFromNode.ToHashSet(StringComparer.Ordinal);
        return [.. mounts.Where(m => m.FileSystemType == "tmpfs" && m.Root == "/" && m.MountPoint.StartsWith('/') && m.MountPoint != "/"
            && !bound.Contains(m.MountPoint) && MountOptions(m.SuperOptions) is not null)];
    }

    /// <summary>The tmpfs options to mount a carried mount with: its super-block options less rw/ro (the mount's own flags are CRIU's); null when one is not known.</summary>
    public static string? MountOptions(string superOptions)
    {
        ArgumentNullException.ThrowIfNull(superOptions);
        var kept = new List<string>();
        foreach (var option in superOptions.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            if (option is "rw" or "ro" or "seclabel")
            {
                continue;
            }

            int equals = option.IndexOf('=', StringComparison.Ordinal);
            var name = equals < 0 ? option : option[..equals];
            var value = equals < 0 ? "" : option[(equals + 1)..];
            if (!TmpfsOptions.Contains(name) || value.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is ':' or '.' or '-' or '_')))
            {
                return null;
            }

            kept.Add(option);
        }

        return string.Join(',', kept);
    }

    /// <summary>CRIU's key for the <paramref name="index"/>th carried mount of a container.</summary>
    public static string Key(int index) => string.Create(CultureInfo.InvariantCulture, $"podmig-carried-{index}");

    /// <summary>A CRIU configuration file mapping each carried mount's key to the tmpfs built for it (one <c>external</c> option a line).</summary>
    public static string CriuConfiguration(IEnumerable<(string Key, string Path)> built)
    {
        ArgumentNullException.ThrowIfNull(built);
        return string.Concat(built.Select(b =>
        {
            if (b.Path.Any(char.IsWhiteSpace) || b.Key.Any(c => !(char.IsAsciiLetterOrDigit(c) || c == '-')))
            {
                throw new ArgumentException($"'{b.Key}' at '{b.Path}' cannot be written to CRIU's configuration");
            }

            return $"external mnt[{b.Key}]:{b.Path}\n";
        }));
    }

    /// <summary>
    /// Why <paramref name="set"/> cannot be built as it is (it came over the wire: paths must stay
    /// under their mount, each below a directory listed before it, kinds, modes and sizes in bounds);
    /// null when it can.
    /// </summary>
    public static string? Problem(CarriedMountSet set, CarryLimits limits)
    {
        ArgumentNullException.ThrowIfNull(set);
        ArgumentNullException.ThrowIfNull(limits);
        var keys = new HashSet<string>(StringComparer.Ordinal);
        var points = new HashSet<string>(StringComparer.Ordinal);
        foreach (var mount in set.Mounts ?? [])
        {
            if (mount is null)
            {
                return "a carried mount is empty";
            }

            if (string.IsNullOrEmpty(mount.Key) || mount.Key.Length > 64 || mount.Key.Any(c => !(char.IsAsciiLetterOrDigit(c) || c == '-')) || !keys.Add(mount.Key))
            {
                return $"carried mount key '{mount.Key}' is not a plain unique name";
            }

            if (string.IsNullOrEmpty(mount.MountPoint) || !mount.MountPoint.StartsWith('/') || mount.MountPoint.Length > MaxPath || !points.Add(mount.MountPoint))
            {
                return $"carried mount point '{mount.MountPoint}' is not an absolute unique path";
            }

            if (mount.Options is null || MountOptions(mount.Options) != mount.Options)
            {
                return $"carried mount {mount.MountPoint} has tmpfs options '{mount.Options}' this node does not mount with";
            }

            if (EntriesProblem(mount.Entries ?? [], limits) is { } problem)
            {
                return $"carried mount {mount.MountPoint}: {problem}";
            }
        }

        return null;
    }

    private static string? EntriesProblem(IReadOnlyList<CarriedEntry> entries, CarryLimits limits)
    {
        if (entries.Count == 0 || entries[0] is not { Path: ".", Kind: Directory })
        {
            return "the first entry is not its root directory";
        }

        if (entries.Count > limits.Entries)
        {
            return $"{entries.Count} entries, more than {limits.Entries}";
        }

        var directories = new HashSet<string>(StringComparer.Ordinal) { "." };
        var seen = new HashSet<string>(StringComparer.Ordinal) { "." };
        long content = 0;
        foreach (var entry in entries.Skip(1))
        {
            if (entry is null)
            {
                return "an entry is empty";
            }

            var path = entry.Path ?? "";
            var segments = path.Split('/');
            if (path.Length == 0 || path.Length > MaxPath || path.Contains('\0', StringComparison.Ordinal) || segments.Any(s => s is "" or "." or ".."))
            {
                return $"entry '{path}' is not a plain relative path";
            }

            if (!seen.Add(path))
            {
                return $"entry '{path}' is listed twice";
            }

            var parent = segments.Length == 1 ? "." : string.Join('/', segments[..^1]);
            if (!directories.Contains(parent))
            {
                // (so nothing is ever made through a link, or before its directory)
                return $"entry '{path}' does not follow its directory '{parent}'";
            }

            if (!Kinds.Contains(entry.Kind ?? ""))
            {
                return $"entry '{path}' is of kind '{entry.Kind}', which is not carried";
            }

            if (entry.Mode > 0xFFF)
            {
                return $"entry '{path}' has mode {entry.Mode}, more than permission bits";
            }

            if (entry.Content is { Length: > 0 } && entry.Kind != File)
            {
                return $"entry '{path}' is a {entry.Kind} with content";
            }

            if ((entry.Kind == SymbolicLink) != (entry.Target is not null) || entry.Target is { } target && (target.Length == 0 || target.Length > MaxPath || target.Contains('\0', StringComparison.Ordinal)))
            {
                return $"entry '{path}' has no fitting link target";
            }

            if (entry.Content is { Length: > 0 } text)
            {
                if (!Convert.TryFromBase64String(text, new byte[text.Length], out int bytes))
                {
                    return $"entry '{path}' has content that is not base64";
                }

                content += bytes;
                if (content > limits.ContentBytes)
                {
                    return $"more than {limits.ContentBytes} bytes of content";
                }
            }

            if (entry.Kind == Directory)
            {
                directories.Add(path);
            }
        }

        return null;
    }

    /// <summary>The set in a log line: each mount point with its number of entries.</summary>
    public static string Describe(CarriedMountSet set)
    {
        ArgumentNullException.ThrowIfNull(set);
        return set.Mounts.Count == 0 ? "none" : string.Join(", ", set.Mounts.Select(m => string.Create(CultureInfo.InvariantCulture, $"{m.MountPoint} ({m.Entries.Count} entries)")));
    }

    /// <summary>Reads the set beside a container's final images; null when there is none.</summary>
    public static CarriedMountSet? Read(string imagesDirectory)
    {
        var path = Path.Combine(imagesDirectory, FileName);
        if (!System.IO.File.Exists(path))
        {
            return null;
        }

        try
        {
            return JsonSerializer.Deserialize(System.IO.File.ReadAllBytes(path), CarriedMountJson.Default.CarriedMountSet)
                ?? throw new InvalidDataException($"{FileName} is empty");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{FileName} is unreadable: {e.Message}", e);
        }
    }

    /// <summary>Writes <paramref name="set"/> beside a container's final images (nothing when it carries no mount).</summary>
    public static void Write(string imagesDirectory, CarriedMountSet set)
    {
        ArgumentNullException.ThrowIfNull(set);
        if (set.Mounts.Count > 0)
        {
            WholeFile.WriteText(Path.Combine(imagesDirectory, FileName), JsonSerializer.Serialize(set, CarriedMountJson.Default.CarriedMountSet));
        }
    }
}

[JsonSerializable(typeof(CarriedMountSet))]
[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
public sealed partial class CarriedMountJson : JsonSerializerContext;

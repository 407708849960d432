using System.Globalization;
using System.Text;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>A directory or an empty regular file of an archive that holds no file content: what extracting it would make and set.</summary>
/// <param name="Path">Relative to the archive's root, without a leading "./"; "." is the root itself.</param>
/// <param name="IsDirectory">A directory; else an empty regular file.</param>
/// <param name="Mode">The permission bits, with set-user-ID, set-group-ID and sticky (07777).</param>
/// <param name="Owner">The numeric owner.</param>
/// <param name="Group">The numeric group.</param>
/// <param name="Modified">Seconds and nanoseconds since the epoch.</param>
/// <param name="Accessed">The same, when the archive recorded it.</param>
public sealed record MetadataEntry(string Path, bool IsDirectory, uint Mode, uint Owner, uint Group, (long Seconds, long Nanoseconds) Modified, (long Seconds, long Nanoseconds)? Accessed);

/// <summary>
/// Whether a tar archive of <see cref="FilesystemArchive.Create"/> holds nothing but directories and
/// empty regular files with their owners, modes and times (a container that wrote no file: its
/// writable layer holds the root and the mount points the runtime made, such as an empty
/// <c>etc/hosts</c>), read from its headers (POSIX ustar, with pax extended headers). Such an archive
/// needs no <c>tar</c> process, and a writable layer needs no unmount, to be put back. Anything else
/// (file content, a link, a device or whiteout, an extended attribute or ACL other than the overlay's
/// bookkeeping, a long or unusual name,
/// a header that does not add up) is "not metadata only", and the caller extracts the archive as always.
/// </summary>
public static class MetadataArchive
{
    private const int Block = 512;

    /// <summary>Archives longer than this are not read: a handful of entries, each with its extended header, are a few blocks (10,240 bytes as GNU tar pads them).</summary>
    public const int MostBytesRead = 64 * 1024;

    /// <summary>The entries of the archive at <paramref name="path"/> when it holds metadata only; null otherwise, or when it cannot be read.</summary>
    public static IReadOnlyList<MetadataEntry>? Read(string path)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
            if (file.Length > MostBytesRead)
            {
                return null;
            }

            var bytes = new byte[file.Length];
            file.ReadExactly(bytes);
            return Parse(bytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // (the extraction that follows says what is wrong)
        }
    }

    /// <summary>The entries, in the archive's order (a directory before what it holds), when the archive in <paramref name="archive"/> holds metadata only; null otherwise.</summary>
    public static IReadOnlyList<MetadataEntry>? Parse(ReadOnlySpan<byte> archive)
    {
        var entries = new List<MetadataEntry>();
        (long, long)? modified = null, accessed = null;
        int at = 0;
        while (at + Block <= archive.Length)
        {
            var header = archive.Slice(at, Block);
            if (!header.ContainsAnyExcept((byte)0))
            {
                // the end: zero blocks only, after at least one entry and no dangling extended header
                return entries.Count > 0 && modified is null && accessed is null && !archive[at..].ContainsAnyExcept((byte)0) ? entries : null;
            }

            if (!ChecksumHolds(header) || Text(header[257..262]) != "ustar")
            {
                return null;
            }

            long size = Octal(header[124..136]);
            char type = (char)header[156];
            at += Block;
            if (type == 'x')
            {
                // the next entry's extended header: only times (and the overlay's bookkeeping) may be in it
                if (size < 0 || at + size > archive.Length || !PaxTimes(archive.Slice(at, (int)size), ref modified, ref accessed))
                {
                    return null;
                }

                at += (int)((size + Block - 1) / Block * Block);
                continue;
            }

            bool directory = type == '5';
            if (!directory && type is not ('0' or '\0') || size != 0 || Text(header[345..500]).Length != 0 || RelativePath(Text(header[..100])) is not { } path)
            {
                return null;
            }

            long mode = Octal(header[100..108]), owner = Octal(header[108..116]), group = Octal(header[116..124]), mtime = Octal(header[136..148]);
            if (mode < 0 || owner is < 0 or > uint.MaxValue || group is < 0 or > uint.MaxValue || mtime < 0)
            {
                return null;
            }

            entries.Add(new MetadataEntry(path, directory, (uint)mode & 0xFFF, (uint)owner, (uint)group, modified ?? (mtime, 0), accessed));
            modified = accessed = null;
        }

        return null; // no end
    }

    /// <summary>"./a/b" (or "./a/b/", "./", ".") as "a/b" ("."); null for anything else: absolute, without "./", with "." or ".." or an empty part.</summary>
    private static string? RelativePath(string name)
    {
        if (name is "." or "./")
        {
            return ".";
        }

        if (!name.StartsWith("./", StringComparison.Ordinal))
        {
            return null;
        }

        var path = name[2..].TrimEnd('/');
        return path.Length > 0 && path.Split('/').All(part => part.Length > 0 && part is not ("." or "..")) ? path : null;
    }

    private static bool ChecksumHolds(ReadOnlySpan<byte> header)
    {
        long stored = Octal(header[148..156]);
        long sum = 0;
        for (int i = 0; i < Block; i++)
        {
            sum += i is >= 148 and < 156 ? ' ' : header[i];
        }

        return stored >= 0 && sum == stored;
    }

    /// <summary>A NUL- or space-terminated octal number; -1 when it is not one (base-256 numbers included: these entries need none).</summary>
    private static long Octal(ReadOnlySpan<byte> field)
    {
        var text = Text(field).Trim(' ');
        if (text.Length == 0 || text.Length > 21)
        {
            return -1;
        }

        long value = 0;
        foreach (char c in text)
        {
            if (c is < '0' or > '7')
            {
                return -1;
            }

            value = value * 8 + (c - '0');
        }

        return value;
    }

    private static string Text(ReadOnlySpan<byte> field)
    {
        int end = field.IndexOf((byte)0);
        return Encoding.ASCII.GetString(end < 0 ? field : field[..end]);
    }

    /// <summary>
    /// The extended attributes the source's overlay keeps for itself on its upper layer: its identity
    /// (<c>uuid</c>), a directory holding copied-up entries (<c>impure</c>), a copied-up entry's lower
    /// original (<c>origin</c>, a handle valid on the source only). Entries made through the target's
    /// overlay get the target's own; none of them changes what the container sees. Any other
    /// (<c>opaque</c>, <c>redirect</c>, <c>metacopy</c>, a user's attribute) does, and the archive is extracted.
    /// </summary>
    private static readonly HashSet<string> OverlayBookkeeping = new(StringComparer.Ordinal)
    {
        "SCHILY.xattr.trusted.overlay.uuid", "SCHILY.xattr.trusted.overlay.impure", "SCHILY.xattr.trusted.overlay.origin",
    };

    /// <summary>Reads pax records ("LENGTH KEY=VALUE\n"): true when each is a time (mtime, atime, ctime), with mtime and atime taken, or the overlay's own bookkeeping.</summary>
    private static bool PaxTimes(ReadOnlySpan<byte> data, ref (long, long)? modified, ref (long, long)? accessed)
    {
        while (data.Length > 0)
        {
            int space = data.IndexOf((byte)' ');
            if (space <= 0 || !int.TryParse(Encoding.ASCII.GetString(data[..space]), NumberStyles.None, CultureInfo.InvariantCulture, out int length)
                || length <= space + 1 || length > data.Length || data[length - 1] != (byte)'\n')
            {
                return false;
            }

            var record = data[(space + 1)..(length - 1)];
            int equals = record.IndexOf((byte)'=');
            var key = equals <= 0 ? "" : Encoding.UTF8.GetString(record[..equals]);
            if (OverlayBookkeeping.Contains(key))
            {
                data = data[length..];
                continue; // (the value is binary: not read)
            }

            if (Time(Encoding.UTF8.GetString(record[(equals + 1)..])) is not { } time)
            {
                return false;
            }

            switch (key)
            {
                case "mtime":
                    modified = time;
                    break;
                case "atime":
                    accessed = time;
                    break;
                case "ctime":
                    break; // (not settable)
                default:
                    return false;
            }

            data = data[length..];
        }

        return true;
    }

    /// <summary>A pax time, "SECONDS[.FRACTION]", as seconds and nanoseconds; null for a negative or malformed one.</summary>
    private static (long, long)? Time(string value)
    {
        int dot = value.IndexOf('.', StringComparison.Ordinal);
        var whole = dot < 0 ? value : value[..dot];
        var fraction = dot < 0 ? "" : value[(dot + 1)..];
        if (!long.TryParse(whole, NumberStyles.None, CultureInfo.InvariantCulture, out long seconds)
            || fraction.Length > 0 && !fraction.All(char.IsAsciiDigit))
        {
            return null;
        }

        var nanoseconds = fraction.Length == 0 ? 0 : long.Parse(fraction.PadRight(9, '0')[..9], CultureInfo.InvariantCulture);
        return (seconds, nanoseconds);
    }
}

using System.Globalization;
using System.Text;

namespace Migrate.Criu.Incremental;

/// <summary>
/// The pages files of an image set whose bytes this node gave back once another node held them: a
/// pre-copy round, on its source, after the target staged it. Such a file keeps its name and length
/// but its bytes become a hole (on a tmpfs, memory given back; on a disk, dirty pages never written).
/// What an upload's manifest lists of it (its length and digests) is kept beside it in
/// <see cref="FileName"/>, which is never sent, so later uploads of the same directory still name it
/// without reading it. <see cref="ImageChain"/> still counts the pages such a set holds (a write-tracked
/// round lists them "in parent") but never reads them: a comparison of contents finds nothing there,
/// and the page is written again instead of matched against zeros.
/// </summary>
public static class ReleasedPages
{
    /// <summary>The list of a set's released files, one per line: name, length, then kind=hex digests, tab-separated.</summary>
    public const string FileName = "released-pages.list";

    private const string PagesPrefix = "pages-";
    private const string PagesSuffix = ".img";

    /// <summary>What a manifest lists of a released file.</summary>
    /// <param name="Name">Its name in the set's directory.</param>
    /// <param name="Size">Its length in bytes.</param>
    /// <param name="Digests">Its digests taken before its bytes were given back, by kind (hex).</param>
    public sealed record Entry(string Name, long Size, IReadOnlyDictionary<string, string> Digests);

    /// <summary>The released files of the set in <paramref name="directory"/>, by name (empty when none).</summary>
    public static IReadOnlyDictionary<string, Entry> Read(string directory)
    {
        var path = Path.Combine(directory, FileName);
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        if (!File.Exists(path))
        {
            return entries;
        }

        foreach (var line in File.ReadAllLines(path))
        {
            var fields = line.Split('\t');
            if (fields.Length < 2 || fields[0].Length == 0 || fields[0].Contains('/', StringComparison.Ordinal)
                || !long.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out long size))
            {
                throw new InvalidDataException($"{path} has a malformed line: {line}");
            }

            var digests = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var field in fields.Skip(2))
            {
                int equals = field.IndexOf('=', StringComparison.Ordinal);
                if (equals <= 0)
                {
                    throw new InvalidDataException($"{path} has a malformed digest: {field}");
                }

                digests[field[..equals]] = field[(equals + 1)..];
            }

            entries[fields[0]] = new Entry(fields[0], size, digests);
        }

        return entries;
    }

    /// <summary>The entry of the file at <paramref name="path"/> if its set released it, else null.</summary>
    public static Entry? Find(string path) =>
        Read(Path.GetDirectoryName(Path.GetFullPath(path))!).GetValueOrDefault(Path.GetFileName(path));

    /// <summary>
    /// Gives back the bytes of every pages file of the set in <paramref name="directory"/> not released
    /// yet, and returns how many. <paramref name="digests"/> gives each file's digests (by kind, hex)
    /// before its bytes go; they are recorded first, so a failure between leaves a file listed as
    /// released with its bytes intact, never the other way round. A file with another hard link (a
    /// name elsewhere that still needs its bytes) is left as it is.
    /// </summary>
    public static long Release(string directory, Func<FileInfo, IReadOnlyDictionary<string, string>> digests) =>
        GiveBack(List(directory, digests));

    /// <summary>
    /// The first half of <see cref="Release"/>: records the files it would release as released, and
    /// returns them, their bytes still intact; <see cref="GiveBack"/> is the second. Between the two,
    /// readers already go by the list and never read those files, so the bytes may go later, on
    /// another thread (giving back 1 GiB of a memory file system took 100-150 ms here).
    /// </summary>
    public static IReadOnlyList<FileInfo> List(string directory, Func<FileInfo, IReadOnlyDictionary<string, string>> digests)
    {
        ArgumentNullException.ThrowIfNull(digests);
        var released = new Dictionary<string, Entry>(Read(directory), StringComparer.Ordinal);
        var fresh = new List<FileInfo>();
        foreach (var file in new DirectoryInfo(directory).EnumerateFiles(PagesPrefix + "*" + PagesSuffix))
        {
            if (released.ContainsKey(file.Name) || file.LinkTarget is not null || file.Length == 0 || Posix.LinksAndAllocation(file.FullName).Links != 1)
            {
                continue;
            }

            released[file.Name] = new Entry(file.Name, file.Length, digests(file));
            fresh.Add(file);
        }

        if (fresh.Count > 0)
        {
            Write(directory, released.Values);
        }

        return fresh;
    }

    /// <summary>Makes the bytes of <paramref name="files"/> (listed by <see cref="List"/>) a hole, keeping their lengths; returns how many bytes that gave back.</summary>
    public static long GiveBack(IReadOnlyList<FileInfo> files)
    {
        ArgumentNullException.ThrowIfNull(files);
        foreach (var file in files)
        {
            using var stream = new FileStream(file.FullName, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
            long length = stream.Length;
            stream.SetLength(0);
            stream.SetLength(length);
        }

        return files.Sum(f => f.Length);
    }

    private static void Write(string directory, IEnumerable<Entry> entries)
    {
        var text = new StringBuilder();
        foreach (var entry in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            text.Append(entry.Name).Append('\t').Append(entry.Size.ToString(CultureInfo.InvariantCulture));
            foreach (var (kind, digest) in entry.Digests.OrderBy(d => d.Key, StringComparer.Ordinal))
            {
                text.Append('\t').Append(kind).Append('=').Append(digest);
            }

            text.Append('\n');
        }

        var path = Path.Combine(directory, FileName);
        var temporary = path + ".new";
        File.WriteAllText(temporary, text.ToString());
        File.Move(temporary, path, overwrite: true);
    }
}

using System.Text.Json;
using System.Text.Json.Serialization;

namespace Migrate.Api;

/// <summary>
/// What a staged file was when the target agent verified its digest: size, inode and change time
/// (the kernel moves the change time on every write, and nothing can set it back). The restore
/// runtime re-reads (and re-hashes) only a file whose stamp differs, so the digests are not
/// computed a second time while the pod is frozen, and a file changed since is still caught.
/// </summary>
public sealed record StagedFileStamp(string Path, long Size, ulong Device, ulong Inode, long ChangeSeconds, uint ChangeNanoseconds)
{
    /// <summary>The stamp of <paramref name="fullPath"/>, recorded under <paramref name="path"/>; null if it cannot be read.</summary>
    public static StagedFileStamp? Of(string fullPath, string path)
    {
        ArgumentNullException.ThrowIfNull(fullPath);
        return FileStatus.Of(fullPath) is { } stat
            ? new StagedFileStamp(path, stat.Size, stat.Device, stat.Inode, stat.ChangeSeconds, stat.ChangeNanoseconds)
            : null;
    }

    /// <summary>Whether <paramref name="fullPath"/> is still exactly the file this stamp describes.</summary>
    public bool Matches(string fullPath) => Of(fullPath, Path) == this;

    /// <summary>Writes <paramref name="stamps"/> to <paramref name="stampsFile"/> (replacing what it held).</summary>
    public static void Write(string stampsFile, IEnumerable<StagedFileStamp> stamps)
    {
        ArgumentNullException.ThrowIfNull(stamps);
        WholeFile.WriteText(stampsFile, JsonSerializer.Serialize(stamps.ToList(), StagedFileStampJson.Default.ListStagedFileStamp));
    }

    /// <summary>The recorded stamps by path (empty when none were recorded or the file is unreadable).</summary>
    public static IReadOnlyDictionary<string, StagedFileStamp> Load(string stampsFile)
    {
        try
        {
            var stamps = JsonSerializer.Deserialize(File.ReadAllText(stampsFile), StagedFileStampJson.Default.ListStagedFileStamp) ?? [];
            return stamps.GroupBy(s => s.Path, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.First(), StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
        {
            return new Dictionary<string, StagedFileStamp>(StringComparer.Ordinal);
        }
    }
}

[JsonSerializable(typeof(List<StagedFileStamp>))]
public sealed partial class StagedFileStampJson : JsonSerializerContext;

using System.Collections.Concurrent;
using Google.Protobuf;
using Migrate.Agent.V1;
using Migrate.Api;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The digests of staged image files, remembered per kind and file version (path, size,
/// modification time) for the agent's life: a pre-copy round's images are hashed once, however
/// often they are listed.
/// </summary>
public static class FileDigests
{
    private static readonly ConcurrentDictionary<(StagedDigestKind Kind, (string Path, long Size, DateTime Modified) Version), ByteString> Known = new();

    /// <summary>The file's digest, read now unless this version of it was hashed before.</summary>
    public static ByteString Of(FileInfo file, StagedDigestKind kind = StagedDigestKind.Sha256)
    {
        ArgumentNullException.ThrowIfNull(file);
        return Known.GetOrAdd((kind, KeyOf(file)), _ => ByteString.CopyFrom(StagedFileDigest.OfFile(kind, file.FullName)));
    }

    /// <summary>What a released file's list keeps of it (<see cref="Criu.Incremental.ReleasedPages"/>): its digest of <paramref name="kind"/>, by kind, in hex.</summary>
    public static IReadOnlyDictionary<string, string> ToKeep(FileInfo file, StagedDigestKind kind) =>
        new Dictionary<string, string>(StringComparer.Ordinal) { [kind.ToString()] = Convert.ToHexString(Of(file, kind).Span) };

    /// <summary>The file's digest if this version of it was hashed before, else null.</summary>
    public static ByteString? Remembered(FileInfo file, StagedDigestKind kind)
    {
        ArgumentNullException.ThrowIfNull(file);
        return Known.TryGetValue((kind, KeyOf(file)), out var digest) ? digest : null;
    }

    /// <summary>Remembers a digest taken of the bytes of a file at <paramref name="version"/> (as it was when listed).</summary>
    internal static void Remember((string Path, long Size, DateTime Modified) version, StagedDigestKind kind, ByteString digest) => Known[(kind, version)] = digest;

    internal static (string Path, long Size, DateTime Modified) KeyOf(FileInfo file) => (file.FullName, file.Length, file.LastWriteTimeUtc);

    /// <summary>A manifest entry's digest of <paramref name="kind"/> (empty when it has none).</summary>
    public static ByteString DigestOf(this ManifestFile file, StagedDigestKind kind)
    {
        ArgumentNullException.ThrowIfNull(file);
        return kind == StagedDigestKind.Sha256 ? file.Sha256 : file.Xxh128;
    }

    /// <summary>A digest given at an upload's end, of <paramref name="kind"/> (empty when it has none).</summary>
    public static ByteString DigestOf(this FileDigest digest, StagedDigestKind kind)
    {
        ArgumentNullException.ThrowIfNull(digest);
        return kind == StagedDigestKind.Sha256 ? digest.Sha256 : digest.Xxh128;
    }

    /// <summary>The kind that is not <paramref name="kind"/>: an upload's entries must leave it empty.</summary>
    public static StagedDigestKind Other(StagedDigestKind kind) => kind == StagedDigestKind.Sha256 ? StagedDigestKind.Xxh128 : StagedDigestKind.Sha256;

    /// <summary>Sets a manifest entry's digest of <paramref name="kind"/>.</summary>
    public static void SetDigest(this ManifestFile file, StagedDigestKind kind, ByteString digest)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (kind == StagedDigestKind.Sha256)
        {
            file.Sha256 = digest;
        }
        else
        {
            file.Xxh128 = digest;
        }
    }
}

/// <summary>
/// The digests one send owes its target (<see cref="UploadHeader.DigestsFollow"/>): each file the
/// manifest lists without a digest is hashed from the bytes read to be sent. An attempt that
/// resumes inside such a file first hashes the part the target already holds, from this node's
/// disk; a digest taken by one attempt serves the next. <see cref="Done"/> hashes from the disk
/// whatever no attempt read (a file the target held whole from an earlier attempt).
/// </summary>
public sealed class OwedDigests : IDisposable
{
    private readonly string _directory;
    private readonly Manifest _manifest;
    private readonly StagedDigestKind _kind;
    private readonly Dictionary<int, (string Path, long Size, DateTime Modified)> _owed = [];
    private readonly Dictionary<int, byte[]> _taken = [];
    private readonly StagedFileDigest _digest;
    private int _file = -1;

    public OwedDigests(string directory, Manifest manifest, StagedDigestKind kind = StagedDigestKind.Sha256)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        _directory = directory;
        _manifest = manifest;
        _kind = kind;
        _digest = new StagedFileDigest(kind);
        for (int i = 0; i < manifest.Files.Count; i++)
        {
            if (manifest.Files[i].DigestOf(kind).IsEmpty)
            {
                _owed[i] = FileDigests.KeyOf(new FileInfo(Path.Combine(directory, manifest.Files[i].Path)));
            }
        }
    }

    /// <summary>Whether the manifest leaves any digest to the end of the upload.</summary>
    public bool Any => _owed.Count > 0;

    /// <summary>File <paramref name="file"/>'s bytes are about to be read from <paramref name="offset"/> on.</summary>
    public void Start(int file, long offset)
    {
        _file = -1;
        if (!_owed.ContainsKey(file) || _taken.ContainsKey(file))
        {
            return;
        }

        _digest.Finish();
        _file = file;
        if (offset > 0)
        {
            using var stream = new FileStream(PathOf(file), FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
            if (_digest.AppendFrom(stream, offset) < offset)
            {
                throw new InvalidOperationException($"{_manifest.Files[file].Path} shrank while it was sent");
            }
        }
    }

    /// <summary>The next bytes read of the file last started.</summary>
    public void Append(int file, ReadOnlySpan<byte> bytes)
    {
        if (file == _file)
        {
            _digest.Append(bytes);
        }
    }

    /// <summary>The file last started was read to its end.</summary>
    public void End(int file)
    {
        if (file != _file)
        {
            return;
        }

        var digest = _digest.Finish();
        _taken[file] = digest;
        Remember(file, digest);
        _file = -1;
    }

    /// <summary>The end of an upload: every owed digest, those no attempt read hashed now.</summary>
    public UploadDone Done()
    {
        var done = new UploadDone();
        foreach (var file in _owed.Keys.Order())
        {
            if (!_taken.TryGetValue(file, out var digest))
            {
                digest = StagedFileDigest.OfFile(_kind, PathOf(file));
                _taken[file] = digest;
                Remember(file, digest);
            }

            done.Digests.Add(_kind == StagedDigestKind.Sha256
                ? new FileDigest { File = (uint)file, Sha256 = ByteString.CopyFrom(digest) }
                : new FileDigest { File = (uint)file, Xxh128 = ByteString.CopyFrom(digest) });
        }

        return done;
    }

    public void Dispose() => _digest.Dispose();

    /// <summary>
    /// Remembers the digest of a file's listed bytes under the version of the file that holds
    /// exactly those bytes: as it was when listed, or, for a file listed while still being written
    /// (<see cref="Criu.Incremental.GrowingFiles"/>), as it is now that it is complete at its listed
    /// size (its last write came before the last byte read). A file of another size now holds other
    /// bytes than those hashed: nothing is remembered of it, and its next listing hashes it anew.
    /// </summary>
    private void Remember(int file, byte[] digest)
    {
        long size = (long)_manifest.Files[file].Size;
        var listed = _owed[file];
        var version = listed.Size == size ? listed : FileDigests.KeyOf(new FileInfo(PathOf(file)));
        if (version.Size == size)
        {
            FileDigests.Remember(version, _kind, ByteString.CopyFrom(digest));
        }
    }

    private string PathOf(int file) => Path.Combine(_directory, _manifest.Files[file].Path);
}

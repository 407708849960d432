using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The read back of an upload's files, kept a little behind the writes. Every byte an upload wrote
/// is read again from this node's file and hashed, as <see cref="ImageReceiver"/> requires; done all
/// at the end, that read back of a 1 GiB round came after its last byte (160-200 ms of it). Here a
/// file's bytes are read back in order, a step at a time on the thread pool, while the next ones
/// arrive, and what is left once the writer is done with the file is its tail. The digest counts only
/// while the file is exactly as it was after that tail was read (its stamp: the kernel moves the
/// change time on every write), so a change made to it afterwards is still caught: the caller then
/// reads the whole file again. A read that fails leaves the file to that full read too; the follower
/// never fails an upload itself.
/// </summary>
internal sealed class ReadBackFollower(StagedDigestKind kind, long step = ReadBackFollower.DefaultStep) : IDisposable
{
    /// <summary>How far the writes may run ahead before the next piece is read back.</summary>
    public const long DefaultStep = 8 << 20;

    private readonly Dictionary<int, FileProgress> _files = [];
    private Task _pending = Task.CompletedTask;

    /// <summary>
    /// The writer appended to file <paramref name="index"/> (through <paramref name="handle"/>), which
    /// now holds <paramref name="written"/> bytes: once <see cref="DefaultStep"/> of them are not read
    /// back yet, and no read back is under way, they are read back in the background. Never waits.
    /// </summary>
    public void Wrote(int index, SafeFileHandle handle, long written)
    {
        var file = Of(index);
        file.Stamp = null;
        if (!_pending.IsCompleted || file.Broken || written - file.Scheduled < step)
        {
            return;
        }

        long from = file.Scheduled;
        file.Scheduled = written;
        _pending = Task.Run(() => Read(handle, file, from, written));
    }

    /// <summary>
    /// The writer is done with file <paramref name="index"/> for now and closes
    /// <paramref name="handle"/> next: the read back under way ends, the rest up to
    /// <paramref name="written"/> is read, and the file's stamp (<paramref name="stamp"/>) is taken.
    /// </summary>
    public async Task DoneWithAsync(int index, SafeFileHandle handle, long written, Func<StagedFileStamp?> stamp)
    {
        ArgumentNullException.ThrowIfNull(stamp);
        await SettleAsync();
        if (!_files.TryGetValue(index, out var file) || file.Broken)
        {
            return;
        }

        long from = file.Scheduled;
        file.Scheduled = written;
        Read(handle, file, from, written);
        file.Stamp = file.Broken ? null : stamp();
    }

    /// <summary>
    /// The digest of file <paramref name="index"/>, read back here, when all
    /// <paramref name="size"/> of its bytes were and it is still as it was then
    /// (<paramref name="current"/>, its stamp now, equals the one taken after the last read); null otherwise.
    /// </summary>
    public byte[]? DigestOf(int index, long size, StagedFileStamp? current)
    {
        if (!_files.TryGetValue(index, out var file) || file.Broken || file.Stamp is null || current is null || file.Hashed != size || file.Stamp != current)
        {
            return null;
        }

        return file.Digest.Finish();
    }

    /// <summary>Waits for the read back under way (its failure only leaves its file to the full read).</summary>
    public async Task SettleAsync()
    {
        try
        {
            await _pending;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or UnauthorizedAccessException)
        {
        }
    }

    private FileProgress Of(int index)
    {
        if (!_files.TryGetValue(index, out var file))
        {
            file = new FileProgress(kind);
            _files[index] = file;
        }

        return file;
    }

    private static void Read(SafeFileHandle handle, FileProgress file, long from, long to)
    {
        if (file.Broken || from >= to)
        {
            return;
        }

        if (from != file.Hashed)
        {
            // (never: pieces are scheduled in order, one at a time)
            file.Broken = true;
            return;
        }

        var buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(to - from, 1 << 20));
        try
        {
            while (file.Hashed < to)
            {
                int read = RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(buffer.Length, to - file.Hashed)), file.Hashed);
                if (read <= 0)
                {
                    file.Broken = true;
                    return;
                }

                file.Digest.Append(buffer.AsSpan(0, read));
                file.Hashed += read;
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or UnauthorizedAccessException)
        {
            file.Broken = true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public void Dispose()
    {
        try
        {
            _pending.Wait();
        }
        catch (AggregateException)
        {
        }

        foreach (var file in _files.Values)
        {
            file.Digest.Dispose();
        }
    }

    private sealed class FileProgress(StagedDigestKind kind)
    {
        public StagedFileDigest Digest { get; } = new(kind);

        /// <summary>Bytes read back and hashed, from the file's start.</summary>
        public long Hashed { get; set; }

        /// <summary>Bytes handed to a read back (Hashed once it ends).</summary>
        public long Scheduled { get; set; }

        public bool Broken { get; set; }

        /// <summary>The file's stamp after its last byte was read back; null while the writer may still change it.</summary>
        public StagedFileStamp? Stamp { get; set; }
    }
}

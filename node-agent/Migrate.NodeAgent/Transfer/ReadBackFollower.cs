using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The read back of an upload's files, kept a little behind the writes. Every byte an upload wrote
/// is read again from this node's file and hashed, as <see cref="ImageReceiver"/> requires; done all
/// at the end, that read back of a 1 GiB round came after its last byte (160-200 ms of it). Here a
/// file's bytes are read back in order, a step at a time on the thread pool, while the next ones
/// arrive, and what is left once the writer is done with the file is its tail.
/// A byte read back early could still be changed by another process before the last one arrives, and
/// a file's stamp cannot tell that change from the writer's own later writes. So a file is followed
/// only under a write lease (<see cref="WriteLease"/>), taken when the writer opens it: the lease
/// still held after the tail was read proves nobody else opened the file meanwhile. A lease refused,
/// or broken by another opener (seen at the next write, or by a watch every
/// <see cref="DefaultWatch"/> while the writes stall, and let go of at once so the opener goes on),
/// leaves the file to the caller's full read after the last byte. After the writer closed the file,
/// the digest counts only while the file's stamp is the one taken before it was closed.
/// A read that fails leaves the file to that full read too; the follower never fails an upload itself.
/// When the cores are busy the read back can fall behind (on the 2-core test machine a 1 GiB round
/// once had 90-174 ms of it left after the last byte, one core reading while the other waited):
/// the writes then wait for it (<see cref="WroteAsync"/>), so that what is left after the last byte
/// stays within a few steps.
/// </summary>
internal sealed class ReadBackFollower : IDisposable
{
    /// <summary>How far the writes may run ahead before the next piece is read back.</summary>
    public const long DefaultStep = 8 << 20;

    /// <summary>How often the lease of the file being written is looked at besides at each write, so that an opener waits no longer than this while the writes stall.</summary>
    public static readonly TimeSpan DefaultWatch = TimeSpan.FromMilliseconds(50);

    /// <summary>How many steps the writes may run ahead of a read back still under way before they wait for it.</summary>
    public const int LagSteps = 2;

    private readonly StagedDigestKind _kind;
    private readonly long _step;
    private readonly TimeSpan _watchEvery;
    private readonly Dictionary<int, FileProgress> _files = [];
    private Task _pending = Task.CompletedTask;
    private readonly Timer _watch;
    private readonly Lock _watchLock = new();
    private (SafeFileHandle Handle, FileProgress File)? _watched;

    private readonly Action? _beforeRead;

    /// <param name="kind">The digest to take.</param>
    /// <param name="step">How far the writes may run ahead before the next piece is read back.</param>
    /// <param name="watch">How often the lease is looked at while the writes stall.</param>
    /// <param name="beforeRead">For tests: run before each read back in the background (to make it slow).</param>
    public ReadBackFollower(StagedDigestKind kind, long step = DefaultStep, TimeSpan? watch = null, Action? beforeRead = null)
    {
        _kind = kind;
        _step = step;
        _watchEvery = watch ?? DefaultWatch;
        _beforeRead = beforeRead;
        _watch = new Timer(_ => Watch(), null, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The most bytes of a file that were left to read back when the writer was done with it (what the last byte waited for).</summary>
    public long MostLeftAtEnd { get; private set; }

    /// <summary>Files whose lease was refused or broken: they are read in full after the last byte.</summary>
    public int Unfollowed => _files.Values.Count(f => f.Broken);

    /// <summary>
    /// The writer opened file <paramref name="index"/> (<paramref name="handle"/>, read and write),
    /// before writing to it or resizing it: the lease is taken. Coming back to a file it left before,
    /// what was read back of it still counts only if the file's stamp now (<paramref name="stamp"/>,
    /// asked after the lease was taken) is the one taken when it was left.
    /// </summary>
    public void Opened(int index, SafeFileHandle handle, Func<StagedFileStamp?> stamp)
    {
        ArgumentNullException.ThrowIfNull(stamp);
        var file = Of(index);
        if (file.Broken)
        {
            return;
        }

        if (!WriteLease.TryTake(handle))
        {
            file.Broken = true;
            return;
        }

        if (file.Scheduled > 0 && (file.Stamp is null || file.Stamp != stamp()))
        {
            Lost(handle, file);
            return;
        }

        lock (_watchLock)
        {
            _watched = (handle, file);
            _watch.Change(_watchEvery, _watchEvery);
        }
    }

    /// <summary>
    /// The writer appended to file <paramref name="index"/> (through <paramref name="handle"/>), which
    /// now holds <paramref name="written"/> bytes: once a step of them is not read back yet, and no
    /// read back is under way, they are read back in the background. Waits only when a read back
    /// under way has fallen <see cref="LagSteps"/> steps behind: for it to end, then the next begins.
    /// </summary>
    public async ValueTask WroteAsync(int index, SafeFileHandle handle, long written)
    {
        var file = Of(index);
        file.Stamp = null;
        if (file.Broken)
        {
            return;
        }

        if (!WriteLease.Held(handle))
        {
            Lost(handle, file);
            return;
        }

        if (written - file.Scheduled < _step)
        {
            return;
        }

        if (!_pending.IsCompleted)
        {
            if (written - file.Scheduled < _step * LagSteps)
            {
                return;
            }

            // the read back does not keep up (the cores are busy): the writes wait, or all of it would be left after the last byte
            await SettleAsync();
            if (file.Broken)
            {
                return;
            }
        }

        long from = file.Scheduled;
        file.Scheduled = written;
        _pending = Task.Run(() =>
        {
            _beforeRead?.Invoke();
            Read(handle, file, from, written);
        });
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
        try
        {
            if (!_files.TryGetValue(index, out var file) || file.Broken)
            {
                return;
            }

            long from = file.Scheduled;
            file.Scheduled = written;
            MostLeftAtEnd = Math.Max(MostLeftAtEnd, written - file.Hashed);
            Read(handle, file, from, written);
            if (!file.Broken && !WriteLease.Held(handle))
            {
                Lost(handle, file);
            }

            // (taken while the lease holds: a change after the close moves the stamp)
            file.Stamp = file.Broken ? null : stamp();
        }
        finally
        {
            lock (_watchLock)
            {
                _watched = null;
                _watch.Change(Timeout.Infinite, Timeout.Infinite);
            }
        }
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

    /// <summary>Another process asked for the file: what was read back of it cannot count, and the opener goes on at once.</summary>
    private static void Lost(SafeFileHandle handle, FileProgress file)
    {
        file.Broken = true;
        WriteLease.Release(handle);
    }

    private void Watch()
    {
        lock (_watchLock)
        {
            if (_watched is { } watched && !watched.File.Broken && !WriteLease.Held(watched.Handle))
            {
                Lost(watched.Handle, watched.File);
            }
        }
    }

    private FileProgress Of(int index)
    {
        if (!_files.TryGetValue(index, out var file))
        {
            file = new FileProgress(_kind);
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
        lock (_watchLock)
        {
            _watched = null;
        }

        _watch.Dispose();
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

        /// <summary>Not followed: no lease, a lease broken, or a read that failed (set from the watch's thread too).</summary>
        public bool Broken
        {
            get => _broken;
            set => _broken = value;
        }

        private volatile bool _broken;

        /// <summary>The file's stamp after its last byte was read back; null while the writer may still change it.</summary>
        public StagedFileStamp? Stamp { get; set; }
    }
}

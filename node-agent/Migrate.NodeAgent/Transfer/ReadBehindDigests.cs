using System.Security.Cryptography;
using System.Threading.Channels;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// Hashes an upload's files as this node's disk holds them, reading each one just behind the
/// bytes written so far, on a task of its own: the SHA-256 of a file is ready moments after its
/// last byte arrived instead of in a second pass once the whole upload is in, and it uses the
/// core the receiving loop leaves idle. Files are hashed in manifest order, whole (a file an
/// interrupted attempt began is read from its start); files marked done are skipped.
/// </summary>
public sealed class ReadBehindDigests : IDisposable
{
    private const int BufferBytes = 1 << 20;
    private readonly string[] _paths;
    private readonly long[] _sizes;
    private readonly bool[] _skip;
    private readonly Func<int, long> _written;
    private readonly Channel<bool> _pulse = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly CancellationTokenSource _stop = new();
    private readonly Task<byte[]?[]> _work;
    private volatile bool _finishing;
    private int _disposed;

    /// <param name="paths">Each file's path on this node.</param>
    /// <param name="sizes">Each file's size once complete.</param>
    /// <param name="skip">Files not to hash (already verified).</param>
    /// <param name="written">How many bytes of a file are written so far (read from another thread).</param>
    public ReadBehindDigests(IReadOnlyList<string> paths, IReadOnlyList<long> sizes, IReadOnlyList<bool> skip, Func<int, long> written)
    {
        ArgumentNullException.ThrowIfNull(paths);
        ArgumentNullException.ThrowIfNull(sizes);
        ArgumentNullException.ThrowIfNull(skip);
        if (sizes.Count != paths.Count || skip.Count != paths.Count)
        {
            throw new ArgumentException("paths, sizes and skip must have one entry per file");
        }

        _paths = [.. paths];
        _sizes = [.. sizes];
        _skip = [.. skip];
        _written = written;
        _work = Task.Run(RunAsync);
    }

    /// <summary>More bytes were written: the reader may go on.</summary>
    public void Advanced() => _pulse.Writer.TryWrite(true);

    /// <summary>
    /// Every file is complete on the disk (the caller checked their sizes): reads what is left and
    /// returns each file's SHA-256 (null for a skipped file). An I/O error is thrown here.
    /// </summary>
    public async Task<byte[]?[]> FinishAsync()
    {
        _finishing = true;
        Advanced();
        return await _work;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stop.Cancel();
        // the task ends at its next wait or read; an error it met then is of no interest
        _work.ContinueWith(t =>
        {
            _ = t.Exception;
            _stop.Dispose();
        }, TaskScheduler.Default);
    }

    private async Task<byte[]?[]> RunAsync()
    {
        var token = _stop.Token;
        var digests = new byte[]?[_paths.Length];
        var buffer = new byte[BufferBytes];
        for (int i = 0; i < _paths.Length; i++)
        {
            if (_skip[i])
            {
                continue;
            }

            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            Microsoft.Win32.SafeHandles.SafeFileHandle? handle = null;
            try
            {
                long done = 0;
                while (done < _sizes[i])
                {
                    token.ThrowIfCancellationRequested();
                    long available = Math.Min(_written(i), _sizes[i]);
                    if (available > done)
                    {
                        handle ??= File.OpenHandle(_paths[i], FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                        int read = RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(BufferBytes, available - done)), done);
                        if (read <= 0)
                        {
                            throw new IOException($"{_paths[i]} ends at {done} bytes, {available} were written");
                        }

                        hash.AppendData(buffer, 0, read);
                        done += read;
                    }
                    else if (_finishing)
                    {
                        throw new IOException($"{_paths[i]} holds {available} of its {_sizes[i]} bytes");
                    }
                    else
                    {
                        await _pulse.Reader.WaitToReadAsync(token);
                        _pulse.Reader.TryRead(out _);
                    }
                }

                digests[i] = hash.GetHashAndReset();
            }
            finally
            {
                handle?.Dispose();
            }
        }

        return digests;
    }
}

using System.Collections.Concurrent;

namespace Migrate.Criu.Incremental;

/// <summary>
/// A file being written whose final size is known before its bytes are: a first pre-copy round's
/// pages, which the agent sends while they are still read from the process. The writer says how far
/// it got (or that it failed); a reader that reaches the end of what is written waits for more.
/// </summary>
public sealed class GrowingFile
{
    private readonly object _gate = new();
    private TaskCompletionSource _moved = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _written;

    internal GrowingFile(string path, long size)
    {
        Path = path;
        Size = size;
    }

    public string Path { get; }

    /// <summary>The size the file will have once written.</summary>
    public long Size { get; }

    /// <summary>Bytes written from the start on.</summary>
    public long Written => Interlocked.Read(ref _written);

    /// <summary>Why the writer gave up, or null.</summary>
    public string? Failure { get; private set; }

    /// <summary>The writer wrote the bytes up to <paramref name="written"/>.</summary>
    public void Advance(long written)
    {
        Interlocked.Exchange(ref _written, Math.Min(written, Size));
        Signal();
    }

    /// <summary>The writer gave up: readers waiting for more bytes are told why.</summary>
    public void Fail(string why)
    {
        Failure = why;
        Signal();
    }

    /// <summary>
    /// Waits until the bytes up to <paramref name="end"/> are written: true then, false if the
    /// writer failed first (<see cref="Failure"/> says why).
    /// </summary>
    public async Task<bool> WaitForAsync(long end, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task moved;
            lock (_gate)
            {
                moved = _moved.Task;
            }

            if (Failure is not null)
            {
                return false;
            }

            if (Written >= Math.Min(end, Size))
            {
                return true;
            }

            await moved.WaitAsync(cancellationToken);
        }
    }

    private void Signal()
    {
        TaskCompletionSource moved;
        lock (_gate)
        {
            moved = _moved;
            _moved = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        moved.TrySetResult();
    }
}

/// <summary>The files of this process now being written by a <see cref="GrowingFile"/> writer, by full path.</summary>
public static class GrowingFiles
{
    private static readonly ConcurrentDictionary<string, GrowingFile> Files = new(StringComparer.Ordinal);

    /// <summary>Announces that <paramref name="path"/> is being written and will hold <paramref name="size"/> bytes; dispose the result once it is (or failed).</summary>
    public static Registration Begin(string path, long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        var file = new GrowingFile(System.IO.Path.GetFullPath(path), size);
        if (!Files.TryAdd(file.Path, file))
        {
            throw new InvalidOperationException($"{file.Path} is already being written");
        }

        return new Registration(file);
    }

    /// <summary>The file at <paramref name="path"/> if it is still being written, else null (it is as it stays).</summary>
    public static GrowingFile? Find(string path) => Files.TryGetValue(System.IO.Path.GetFullPath(path), out var file) ? file : null;

    /// <summary>Ends a writer's announcement; a failure not yet said is said then.</summary>
    public sealed class Registration(GrowingFile file) : IDisposable
    {
        public GrowingFile File => file;

        public void Dispose()
        {
            if (file.Written < file.Size && file.Failure is null)
            {
                file.Fail($"{file.Path} was left at {file.Written} of its {file.Size} bytes");
            }

            Files.TryRemove(new KeyValuePair<string, GrowingFile>(file.Path, file));
        }
    }
}

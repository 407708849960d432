using System.Globalization;
using System.Text;

namespace Migrate.Api;

/// <summary>
/// Files replaced whole: written beside their final name, then renamed over it, so whoever reads
/// the name (another process, an inotify watch, an agent started after a crash) finds the old
/// content or the new one, never part of one. The file written beside ends in <see cref="Suffix"/>
/// (the image sender leaves such files out of a manifest) and carries this process's id and a
/// count, so two writers of the same name never share it.
/// </summary>
public static class WholeFile
{
    /// <summary>How the name of a file still being written ends.</summary>
    public const string Suffix = ".tmp";

    private static long _written;

    /// <summary>
    /// Replaces <paramref name="path"/> with <paramref name="bytes"/>. <paramref name="mode"/>, when
    /// given, is set before the rename, so the name never shows a wider mode; with
    /// <paramref name="durable"/> the bytes reach the disk before the rename, so after a power loss
    /// the name holds the old content or the new one, not an empty file.
    /// </summary>
    public static void Write(string path, ReadOnlySpan<byte> bytes, UnixFileMode? mode = null, bool durable = false)
    {
        var beside = Beside(path);
        try
        {
            using (var stream = new FileStream(beside, new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                Share = FileShare.None,
                UnixCreateMode = mode,
            }))
            {
                stream.Write(bytes);
                stream.Flush(flushToDisk: durable);
            }

            if (mode is { } wanted)
            {
                // the process's umask narrows a mode given at creation; the mode asked for is exact
                File.SetUnixFileMode(beside, wanted);
            }

            File.Move(beside, path, overwrite: true);
        }
        catch
        {
            Forget(beside);
            throw;
        }
    }

    /// <summary>Replaces <paramref name="path"/> with <paramref name="text"/> in UTF-8 (no byte-order mark).</summary>
    public static void WriteText(string path, string text, UnixFileMode? mode = null, bool durable = false) =>
        Write(path, Encoding.UTF8.GetBytes(text), mode, durable);

    private static void Forget(string beside)
    {
        try
        {
            File.Delete(beside);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // the failure that brought us here is the one to report
        }
    }

    /// <summary>The name a new content of <paramref name="path"/> is written under before it takes the name.</summary>
    public static string Beside(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var count = Interlocked.Increment(ref _written);
        return string.Create(CultureInfo.InvariantCulture, $"{path}.{Environment.ProcessId}-{count}{Suffix}");
    }
}

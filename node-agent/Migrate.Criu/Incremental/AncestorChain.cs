using System.Globalization;
using System.Runtime.InteropServices;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>
/// The ancestry of an image set, carried into another directory as hard links. A checkpoint taken
/// as a delta on an earlier one holds its own links to every image set it depends on (the same
/// files: no byte is copied), so it is restored, sent and deleted on its own, and deleting the
/// earlier checkpoint removes only names: nothing the later one needs. Linked files are never
/// written to again; a set of the chain may only gain files (<see cref="ParentDeduplication.EnsureTaskInChain"/>).
/// </summary>
public static class AncestorChain
{
    /// <summary>The image sets of the chain that ends at <paramref name="tipDirectory"/>, the tip first, following parent links.</summary>
    public static IReadOnlyList<string> Sets(string tipDirectory, int maxDepth = 64)
    {
        var sets = new List<string>();
        var directory = Path.GetFullPath(tipDirectory);
        while (true)
        {
            if (!Directory.Exists(directory) || !Directory.EnumerateFiles(directory, CriuPagemap.FilePrefix + "*" + CriuPagemap.FileSuffix).Any())
            {
                throw new InvalidDataException($"{directory} is not an image set with memory (no pagemap)");
            }

            if (sets.Contains(directory, StringComparer.Ordinal) || sets.Count >= maxDepth)
            {
                throw new InvalidDataException($"the image set chain at {tipDirectory} is deeper than {maxDepth} sets or loops");
            }

            sets.Add(directory);
            var link = Path.Combine(directory, ImageChain.ParentLinkName);
            if (!Path.Exists(link) && new FileInfo(link).LinkTarget is null)
            {
                return sets;
            }

            directory = Path.GetFullPath(Path.Combine(directory, ImageChain.ResolveLink(link)));
        }
    }

    /// <summary>The directory of the <paramref name="depth"/>-th linked set (1: the tip's) under <paramref name="destination"/>.</summary>
    public static string SetDirectory(string destination, int depth) => Path.Combine(destination, depth.ToString(CultureInfo.InvariantCulture));

    /// <summary>
    /// Links the chain ending at <paramref name="tipDirectory"/> under <paramref name="destination"/>
    /// (which must not exist): <c>1</c> holds links to the tip's files, <c>2</c> to its parent's, and so
    /// on, each set's parent link leading to the next. Returns the number of sets. Refuses a chain
    /// longer than <paramref name="maxSets"/>, a set holding anything but regular files and its parent
    /// link, and a destination on another file system; on failure nothing is left under the destination.
    /// </summary>
    public static int Link(string tipDirectory, string destination, int maxSets)
    {
        destination = Path.GetFullPath(destination);
        if (Path.Exists(destination))
        {
            throw new IOException($"{destination} already exists");
        }

        var sets = Sets(tipDirectory, maxSets);
        try
        {
            for (int i = 0; i < sets.Count; i++)
            {
                var target = SetDirectory(destination, i + 1);
                Directory.CreateDirectory(target, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                foreach (var entry in new DirectoryInfo(sets[i]).EnumerateFileSystemInfos())
                {
                    if (entry.Name == ImageChain.ParentLinkName && entry.LinkTarget is not null)
                    {
                        continue;
                    }

                    if (entry is not FileInfo file || file.LinkTarget is not null)
                    {
                        throw new InvalidDataException($"{entry.FullName} is not a regular file: an image set holds only files and its parent link");
                    }

                    HardLink(file.FullName, Path.Combine(target, file.Name));
                }

                if (i + 1 < sets.Count)
                {
                    File.CreateSymbolicLink(Path.Combine(target, ImageChain.ParentLinkName), Path.Combine("..", (i + 2).ToString(CultureInfo.InvariantCulture)));
                }
            }
        }
        catch
        {
            if (Directory.Exists(destination))
            {
                Directory.Delete(destination, recursive: true);
            }

            throw;
        }

        return sets.Count;
    }

    private static void HardLink(string existing, string created)
    {
        if (Posix.Link(existing, created) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot link {created} to {existing}: {Marshal.GetPInvokeErrorMessage(errno)}" + (errno == 18 ? " (another file system: the checkpoints must share one)" : ""));
        }
    }
}

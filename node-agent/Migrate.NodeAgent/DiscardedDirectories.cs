namespace Migrate.NodeAgent;

/// <summary>
/// Removes a migration's directory of images without making its caller wait for the file system to
/// free a gigabyte: the directory is renamed at once out of its root (to a sibling of the root,
/// <c>&lt;root&gt;.discarded.&lt;name&gt;.&lt;random&gt;</c>, on the same file system) and deleted in the
/// background. From the rename on, nothing of the agent sees it: the root holds migrations only. A
/// directory that cannot be renamed (another file system, no right to write beside the root) is
/// deleted at once, as before. What an agent that ended left behind is deleted by <see cref="Sweep"/>
/// when it starts again.
/// </summary>
public static class DiscardedDirectories
{
    private const string Marker = ".discarded.";

    /// <summary>Takes <paramref name="directory"/> (a child of its root) away now and deletes it soon; returns the deletion under way (done when it was deleted at once).</summary>
    public static Task Remove(string directory)
    {
        directory = Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory));
        if (!Directory.Exists(directory))
        {
            return Task.CompletedTask;
        }

        var root = Path.GetDirectoryName(directory);
        var parent = root is null ? null : Path.GetDirectoryName(root);
        string? moved = null;
        if (root is not null && parent is not null)
        {
            moved = Path.Combine(parent, $"{Path.GetFileName(root)}{Marker}{Path.GetFileName(directory)}.{Guid.NewGuid():N}");
            try
            {
                Directory.Move(directory, moved);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                moved = null;
            }
        }

        if (moved is null)
        {
            Directory.Delete(directory, recursive: true);
            return Task.CompletedTask;
        }

        return Task.Run(() => DeleteQuietly(moved));
    }

    /// <summary>Deletes what earlier removals beside <paramref name="root"/> left (an agent that ended before it was done); returns how many.</summary>
    public static int Sweep(string root)
    {
        root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        var parent = Path.GetDirectoryName(root);
        if (parent is null || !Directory.Exists(parent))
        {
            return 0;
        }

        int swept = 0;
        foreach (var left in Directory.EnumerateDirectories(parent, Path.GetFileName(root) + Marker + "*"))
        {
            DeleteQuietly(left);
            swept++;
        }

        return swept;
    }

    private static void DeleteQuietly(string directory)
    {
        try
        {
            Directory.Delete(directory, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // left for the next sweep
        }
    }
}

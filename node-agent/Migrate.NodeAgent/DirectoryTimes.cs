namespace Migrate.NodeAgent;

/// <summary>When a directory tree was last written to (for removing what was abandoned).</summary>
public static class DirectoryTimes
{
    /// <summary>The newest modification time of the directory or anything in it, links not followed.</summary>
    public static DateTime LastChange(string directory)
    {
        var newest = Directory.GetLastWriteTimeUtc(directory);
        foreach (var entry in new DirectoryInfo(directory).EnumerateFileSystemInfos("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }))
        {
            if (entry.LastWriteTimeUtc > newest)
            {
                newest = entry.LastWriteTimeUtc;
            }
        }

        return newest;
    }
}

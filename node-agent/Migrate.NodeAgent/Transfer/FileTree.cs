namespace Migrate.NodeAgent.Transfer;

/// <summary>Walks a directory tree without following links (a link is listed, never entered).</summary>
public static class FileTree
{
    /// <summary>Every entry below <paramref name="root"/>, parents before children, siblings in ordinal order.</summary>
    public static IEnumerable<FileSystemInfo> Walk(string root)
    {
        var pending = new Stack<DirectoryInfo>();
        pending.Push(new DirectoryInfo(root));
        while (pending.Count > 0)
        {
            var directory = pending.Pop();
            var entries = directory.EnumerateFileSystemInfos().OrderBy(e => e.Name, StringComparer.Ordinal).ToList();
            foreach (var entry in entries)
            {
                yield return entry;
            }

            foreach (var child in entries.OfType<DirectoryInfo>().Where(d => d.LinkTarget is null).Reverse())
            {
                pending.Push(child);
            }
        }
    }
}

using System.Globalization;

namespace Migrate.Criu.Incremental;

/// <summary>A task of a running tree: its host PID and the id CRIU gives its images (its PID in the
/// root task's PID namespace).</summary>
internal readonly record struct LiveTask(int HostPid, int ImageId);

/// <summary>A mapping from <c>/proc/&lt;pid&gt;/maps</c>.</summary>
internal readonly record struct MemoryRegion(ulong Start, ulong End, string Permissions, string Name)
{
    public bool IsReadable => Permissions.Length > 0 && Permissions[0] == 'r';

    public bool IsPrivate => Permissions.Length > 3 && Permissions[3] == 'p';

    /// <summary>Kernel-provided areas whose pages CRIU never takes from the images.</summary>
    public bool IsSpecial => Name is "[vvar]" or "[vvar_vclock]" or "[vsyscall]";
}

/// <summary>Reads a running process tree from /proc.</summary>
internal static class LiveProcessTree
{
    /// <summary>The root and all its descendants, root first, parents before children.</summary>
    public static IReadOnlyList<LiveTask> Enumerate(int rootPid)
    {
        var rootLevels = ReadNamespacePids(rootPid)
            ?? throw new ArgumentException($"process {rootPid} does not exist", nameof(rootPid));
        int level = rootLevels.Length - 1;
        var result = new List<LiveTask>();
        var queue = new Queue<int>();
        queue.Enqueue(rootPid);
        var seen = new HashSet<int>();
        while (queue.Count > 0)
        {
            int pid = queue.Dequeue();
            if (!seen.Add(pid) || ReadNamespacePids(pid) is not { } nsPids || nsPids.Length <= level)
            {
                continue; // exited meanwhile, or (impossibly) outside the root's namespace
            }

            result.Add(new LiveTask(pid, nsPids[level]));
            foreach (var child in ReadChildren(pid))
            {
                queue.Enqueue(child);
            }
        }

        return result;
    }

    public static IReadOnlyList<MemoryRegion> ReadMaps(int pid)
    {
        var regions = new List<MemoryRegion>();
        foreach (var line in File.ReadLines($"/proc/{pid}/maps"))
        {
            // start-end perms offset dev inode [name]
            var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 5)
            {
                continue;
            }

            var range = fields[0].Split('-');
            regions.Add(new MemoryRegion(
                ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                fields[1],
                fields.Length > 5 ? fields[5].Trim() : string.Empty));
        }

        return regions;
    }

    private static int[]? ReadNamespacePids(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("NSpid:", StringComparison.Ordinal))
                {
                    return line["NSpid:".Length..]
                        .Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)
                        .Select(p => int.Parse(p, CultureInfo.InvariantCulture))
                        .ToArray();
                }
            }

            return null;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException)
        {
            return null;
        }
    }

    private static List<int> ReadChildren(int pid)
    {
        var children = new List<int>();
        try
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
            {
                var text = File.ReadAllText(Path.Combine(task, "children"));
                foreach (var part in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                {
                    children.Add(int.Parse(part, CultureInfo.InvariantCulture));
                }
            }
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException)
        {
            // the process exited while we looked
        }

        return children;
    }
}

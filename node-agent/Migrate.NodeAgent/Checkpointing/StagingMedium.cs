using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// What decides where a migration's images are staged on its source node, read when the migration
/// begins. A migration's images live only until the target has them, so when they fit they go to a
/// memory file system (<see cref="AgentOptions.MemoryStagingDirectory"/>): written to disk they
/// would be dirty pages the kernel throttles their writer on once a gigabyte or two is waiting for
/// the disk, and a pod's memory is written there whole in a final dump.
/// </summary>
/// <param name="Configured">A memory staging directory is set.</param>
/// <param name="Transient">A migration's images (sent, then discarded), not a checkpoint kept on this node.</param>
/// <param name="ExpectedBytes">What a dump writes: the pod's memory, as its processes' resident private and shared memory adds up, and its writable layers and emptyDir volumes (0: not measured).</param>
/// <param name="MemoryFileSystemFree">Free bytes of the memory directory's file system.</param>
/// <param name="NodeAvailable">The node's available memory (MemAvailable).</param>
/// <param name="AgentHeadroom">What the agent's own memory cgroup allows beyond its use less its reclaimable file pages (pages of a memory file system are charged to whoever writes them, and cannot be reclaimed); null: no limit.</param>
/// <param name="BudgetLeft">What <see cref="AgentOptions.MemoryStagingMaxBytes"/> leaves beside the migrations staged in memory now (<see cref="long.MaxValue"/>: no cap).</param>
public sealed record StagingMediumFacts(bool Configured, bool Transient, long ExpectedBytes, long MemoryFileSystemFree, long NodeAvailable, long? AgentHeadroom, long BudgetLeft);

/// <summary>Where a migration's images are staged, and why.</summary>
/// <param name="InMemory">On the memory file system; otherwise in the staging directory on disk.</param>
/// <param name="NeededBytes">What staging in memory was reckoned to need (0 when not considered).</param>
/// <param name="Reason">Why, in words for the agent's log and the migration's record.</param>
public readonly record struct StagingMedium(bool InMemory, long NeededBytes, string Reason);

/// <summary>The choice of a migration's staging medium, a pure function of <see cref="StagingMediumFacts"/>.</summary>
public static class StagingMediumDecision
{
    /// <summary>Room kept for the agent's own memory beside staged images, under its cgroup's limit.</summary>
    public const long AgentReserveBytes = 256L << 20;

    /// <summary>
    /// What staging a pod of <paramref name="expectedBytes"/> in memory needs: its memory once, half again
    /// for pre-copy rounds that send pages written meanwhile a second time (a pod dirtying 5%/s wrote
    /// 1.25x its memory), and 64 MiB for its other files.
    /// </summary>
    public static long Needed(long expectedBytes) => expectedBytes + expectedBytes / 2 + (64L << 20);

    public static StagingMedium Choose(StagingMediumFacts facts)
    {
        ArgumentNullException.ThrowIfNull(facts);
        if (!facts.Configured)
        {
            return new(false, 0, "no memory staging directory is configured (Agent:MemoryStagingDirectory)");
        }

        if (!facts.Transient)
        {
            return new(false, 0, "a checkpoint kept on this node stays on disk");
        }

        if (facts.ExpectedBytes <= 0)
        {
            return new(false, 0, "the pod's memory could not be measured");
        }

        long need = Needed(facts.ExpectedBytes);
        string needs = $"needs about {Mib(need)}";
        if (need > facts.MemoryFileSystemFree)
        {
            return new(false, need, $"{needs}, and the memory file system has {Mib(facts.MemoryFileSystemFree)} free");
        }

        if (need > facts.NodeAvailable / 2)
        {
            return new(false, need, $"{needs}, over half of the node's available memory ({Mib(facts.NodeAvailable)})");
        }

        if (facts.AgentHeadroom is { } headroom && need > headroom - AgentReserveBytes)
        {
            return new(false, need, $"{needs}, and the agent's memory limit leaves {Mib(Math.Max(0, headroom))} (raise it to stage such pods in memory)");
        }

        if (need > facts.BudgetLeft)
        {
            return new(false, need, $"{needs}, and the memory staging budget (Agent:MemoryStagingMaxBytes) has {Mib(Math.Max(0, facts.BudgetLeft))} left");
        }

        return new(true, need, $"{needs}: staged in memory ({Mib(facts.MemoryFileSystemFree)} free there)");
    }

    private static string Mib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes >> 20} MiB");
}

/// <summary>Reads the node's facts for <see cref="StagingMediumDecision"/>: /proc and the agent's own memory cgroup.</summary>
public static class StagingMediumProbe
{
    /// <summary>The resident private and shared memory of a process, from its /proc status (RssAnon + RssShmem, in bytes); 0 when absent.</summary>
    public static long ProcessMemoryBytes(string statusText)
    {
        ArgumentNullException.ThrowIfNull(statusText);
        return (KilobytesOf(statusText, "RssAnon:") + KilobytesOf(statusText, "RssShmem:")) * 1024;
    }

    /// <summary>MemAvailable from /proc/meminfo text, in bytes; 0 when absent.</summary>
    public static long AvailableBytes(string meminfoText)
    {
        ArgumentNullException.ThrowIfNull(meminfoText);
        return KilobytesOf(meminfoText, "MemAvailable:") * 1024;
    }

    /// <summary>
    /// What a memory cgroup allows beyond its working set, from its limit file's text (cgroup v2 memory.max:
    /// a number or "max"; v1 memory.limit_in_bytes: a number, near 2^63 when unlimited), its usage, and its
    /// memory.stat, whose inactive file pages (v2 <c>inactive_file</c>, v1 <c>total_inactive_file</c>) the
    /// kernel reclaims before it runs out (as the kubelet reckons a working set); null: no limit.
    /// </summary>
    public static long? Headroom(string limitText, string usageText, string statText)
    {
        ArgumentNullException.ThrowIfNull(limitText);
        ArgumentNullException.ThrowIfNull(usageText);
        ArgumentNullException.ThrowIfNull(statText);
        if (!long.TryParse(limitText.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long limit) || limit >= long.MaxValue / 2)
        {
            return null;
        }

        if (!long.TryParse(usageText.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long usage))
        {
            return null;
        }

        long inactive = ValueOf(statText, "total_inactive_file ") is { } v1 ? v1 : ValueOf(statText, "inactive_file ") ?? 0;
        return limit - Math.Max(0, usage - inactive);
    }

    /// <summary>The memory a tree of processes holds (see <see cref="ProcessMemoryBytes"/>); processes that ended meanwhile count nothing.</summary>
    public static long TreeMemoryBytes(IEnumerable<int> pids, string procRoot = "/proc")
    {
        ArgumentNullException.ThrowIfNull(pids);
        long sum = 0;
        foreach (int pid in pids)
        {
            try
            {
                sum += ProcessMemoryBytes(File.ReadAllText(Path.Combine(procRoot, pid.ToString(CultureInfo.InvariantCulture), "status")));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // it ended
            }
        }

        return sum;
    }

    /// <summary>The node's available memory.</summary>
    public static long NodeAvailableBytes() => AvailableBytes(File.ReadAllText("/proc/meminfo"));

    /// <summary>This process's memory cgroup headroom (v2, else v1), null when unlimited or unknown.</summary>
    public static long? AgentHeadroomBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/cgroup"))
        {
            var parts = line.Split(':', 3);
            if (parts.Length != 3)
            {
                continue;
            }

            var directory = parts[0] == "0" && parts[1].Length == 0 ? "/sys/fs/cgroup" + parts[2]
                : parts[1].Split(',').Contains("memory") ? "/sys/fs/cgroup/memory" + parts[2] : null;
            var (limit, usage) = parts[0] == "0" ? ("memory.max", "memory.current") : ("memory.limit_in_bytes", "memory.usage_in_bytes");
            if (directory is not null && File.Exists(Path.Combine(directory, limit)) && File.Exists(Path.Combine(directory, usage)))
            {
                var stat = Path.Combine(directory, "memory.stat");
                return Headroom(File.ReadAllText(Path.Combine(directory, limit)), File.ReadAllText(Path.Combine(directory, usage)), File.Exists(stat) ? File.ReadAllText(stat) : "");
            }
        }

        return null;
    }

    /// <summary>Free bytes of the file system <paramref name="directory"/> is on (statvfs, through DriveInfo).</summary>
    public static long FreeBytes(string directory) => new DriveInfo(directory).AvailableFreeSpace;

    private static long KilobytesOf(string text, string key) => ValueOf(text, key, "kB") ?? 0;

    /// <summary>The number after <paramref name="key"/> at the start of a line (a unit after it dropped), or null.</summary>
    private static long? ValueOf(string text, string key, string unit = "")
    {
        foreach (var line in text.AsSpan().EnumerateLines())
        {
            if (!line.StartsWith(key, StringComparison.Ordinal))
            {
                continue;
            }

            var value = line[key.Length..].Trim();
            if (unit.Length > 0 && value.EndsWith(unit, StringComparison.Ordinal))
            {
                value = value[..^unit.Length].Trim();
            }

            return long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long number) ? number : null;
        }

        return null;
    }
}

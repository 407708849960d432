using System.Diagnostics;
using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The freezer of one container's cgroup: cgroup v1's <c>freezer.state</c> or cgroup v2's
/// <c>cgroup.freeze</c>. Freezing a whole cgroup stops every process in it at once, including
/// ones forked a moment ago, which is what makes a multi-container checkpoint consistent.
/// </summary>
public sealed class CgroupFreezer
{
    private static readonly TimeSpan FreezeTimeout = TimeSpan.FromSeconds(10);

    private CgroupFreezer(string directory, bool unified)
    {
        Directory = directory;
        IsUnified = unified;
    }

    /// <summary>The cgroup directory (for CRIU's freeze-cgroup option).</summary>
    public string Directory { get; }

    /// <summary>cgroup v2 (cgroup.freeze) rather than the v1 freezer controller.</summary>
    public bool IsUnified { get; }

    public static CgroupFreezer FromPath(string directory) =>
        new(directory, !File.Exists(Path.Combine(directory, "freezer.state")));

    /// <summary>The freezer cgroup of a process, from <c>/proc/PID/cgroup</c> and the mounted hierarchies.</summary>
    public static CgroupFreezer ForProcess(int pid, string procRoot = "/proc")
    {
        string? v1 = null;
        string? v2 = null;
        foreach (var line in File.ReadLines(Path.Combine(procRoot, pid.ToString(CultureInfo.InvariantCulture), "cgroup")))
        {
            var parts = line.Split(':', 3);
            if (parts.Length != 3)
            {
                continue;
            }

            if (parts[1].Split(',').Contains("freezer"))
            {
                v1 = parts[2];
            }
            else if (parts[0] == "0" && parts[1].Length == 0)
            {
                v2 = parts[2];
            }
        }

        var mounts = MountInfoEntry.Read(Path.Combine(procRoot, "self", "mountinfo"));
        if (v1 is not null)
        {
            var hierarchy = mounts.FirstOrDefault(m => m.FileSystemType == "cgroup" && m.SuperOptions.Split(',').Contains("freezer"))
                ?? throw new InvalidOperationException("the cgroup v1 freezer hierarchy is not mounted in the agent's mount namespace");
            return new CgroupFreezer(Join(hierarchy.MountPoint, v1), unified: false);
        }

        if (v2 is not null)
        {
            var hierarchy = mounts.FirstOrDefault(m => m.FileSystemType == "cgroup2")
                ?? throw new InvalidOperationException("no cgroup2 hierarchy is mounted in the agent's mount namespace");
            return new CgroupFreezer(Join(hierarchy.MountPoint, v2), unified: true);
        }

        throw new InvalidOperationException($"process {pid} is in no freezer cgroup");
    }

    public bool IsFrozen => IsUnified
        ? File.ReadLines(Path.Combine(Directory, "cgroup.events")).Contains("frozen 1")
        : File.ReadAllText(Path.Combine(Directory, "freezer.state")).Trim() == "FROZEN";

    /// <summary>Freezes the cgroup and waits until every process in it is frozen; thaws again and throws if that takes too long.</summary>
    public void Freeze()
    {
        Write(frozen: true);
        var clock = Stopwatch.StartNew();
        while (!IsFrozen)
        {
            if (clock.Elapsed > FreezeTimeout)
            {
                Write(frozen: false);
                throw new TimeoutException($"cgroup {Directory} did not freeze within {FreezeTimeout.TotalSeconds} s (a task stuck in the kernel?); it was thawed again");
            }

            // v1 reports FREEZING until every task stopped; asking again retries the stragglers
            if (!IsUnified)
            {
                Write(frozen: true);
            }

            Thread.Sleep(1);
        }
    }

    public void Thaw() => Write(frozen: false);

    /// <summary>The processes in the cgroup.</summary>
    public IReadOnlyList<int> Processes() =>
        [.. File.ReadLines(Path.Combine(Directory, "cgroup.procs")).Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture))];

    private void Write(bool frozen)
    {
        if (IsUnified)
        {
            File.WriteAllText(Path.Combine(Directory, "cgroup.freeze"), frozen ? "1" : "0");
        }
        else
        {
            File.WriteAllText(Path.Combine(Directory, "freezer.state"), frozen ? "FROZEN" : "THAWED");
        }
    }

    private static string Join(string mountPoint, string cgroupPath) => mountPoint.TrimEnd('/') + cgroupPath;
}

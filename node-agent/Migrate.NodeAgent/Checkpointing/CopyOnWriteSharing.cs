using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// How much anonymous memory a container's processes share copy-on-write (a forking server's
/// workers and their parent), read from each process's /proc/PID/smaps_rollup while it runs. CRIU's
/// full restore keeps such pages shared (it compares a child's pages with those it inherits and
/// writes only those that differ); its lazy restore fills every process on its own, so that memory
/// would be there once per process on the target, more than the pod had and possibly more than its
/// limit. A container whose processes share more than <see cref="Threshold"/> is therefore dumped
/// for a full restore.
/// </summary>
public static class CopyOnWriteSharing
{
    /// <summary>Memory a lazy restore may duplicate before a container is restored in full instead: 16 MiB.</summary>
    public const long Threshold = 16L << 20;

    /// <summary>One process's anonymous memory and its proportional share of it, in bytes (smaps_rollup's Anonymous and Pss_Anon).</summary>
    public readonly record struct AnonymousMemory(long Anonymous, long ProportionalAnonymous);

    /// <summary>The figures of one smaps_rollup, or null when it has neither line (an older kernel has no Pss_Anon).</summary>
    public static AnonymousMemory? Parse(string smapsRollup)
    {
        ArgumentNullException.ThrowIfNull(smapsRollup);
        long? anonymous = null, proportional = null;
        foreach (var line in smapsRollup.Split('\n'))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 3 && fields[2] == "kB" && long.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out long kib))
            {
                switch (fields[0])
                {
                    case "Anonymous:":
                        anonymous = kib * 1024;
                        break;
                    case "Pss_Anon:":
                        proportional = kib * 1024;
                        break;
                }
            }
        }

        return anonymous is { } a && proportional is { } p ? new AnonymousMemory(a, p) : null;
    }

    /// <summary>
    /// The bytes a restore that gives every process its own copy would add: each process's
    /// anonymous memory less its proportional share, summed (two processes sharing 256 MiB: 256 MiB).
    /// </summary>
    public static long Duplicated(IEnumerable<AnonymousMemory> processes)
    {
        ArgumentNullException.ThrowIfNull(processes);
        return processes.Sum(p => Math.Max(0, p.Anonymous - p.ProportionalAnonymous));
    }

    /// <summary>Whether a container whose processes would duplicate <paramref name="duplicated"/> bytes keeps a full restore.</summary>
    public static bool KeepsSharing(long duplicated) => duplicated > Threshold;

    /// <summary>
    /// <see cref="Duplicated"/> for the processes of a cgroup (0 with fewer than two, without reading
    /// any smaps: a single process shares nothing with itself). A process that ended meanwhile, or a
    /// kernel without the figures, counts as sharing nothing.
    /// </summary>
    public static long Measure(IReadOnlyList<int> processes)
    {
        ArgumentNullException.ThrowIfNull(processes);
        if (processes.Count < 2)
        {
            return 0;
        }

        return Duplicated(Read(processes));
    }

    /// <summary>
    /// The anonymous memory of <paramref name="processes"/> with each page shared copy-on-write
    /// counted once (their proportional shares summed): about what a first pre-copy round copies. A
    /// process that ended meanwhile counts nothing.
    /// </summary>
    public static long Once(IReadOnlyList<int> processes)
    {
        ArgumentNullException.ThrowIfNull(processes);
        return Read(processes).Sum(p => p.ProportionalAnonymous);
    }

    private static List<AnonymousMemory> Read(IReadOnlyList<int> processes)
    {
        var figures = new List<AnonymousMemory>();
        foreach (int pid in processes)
        {
            try
            {
                if (Parse(File.ReadAllText(string.Create(CultureInfo.InvariantCulture, $"/proc/{pid}/smaps_rollup"))) is { } memory)
                {
                    figures.Add(memory);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // gone, or not ours to read
            }
        }

        return figures;
    }
}

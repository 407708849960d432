using System.Globalization;
using System.Text.RegularExpressions;

namespace Migrate.TestSupport;

/// <summary>One line memcounter prints per tick; <paramref name="AtMicros"/>: when the tick began, by the process's own clock (microseconds since the epoch).</summary>
public sealed record MemcounterTick(long Tick, int Pid, int ParentPid, int Mib, ulong Checksum, string Verified, long Dirtied, long AtMicros = 0)
{
    public bool VerifiedOk => Verified == "ok";

    /// <summary>
    /// The pause the process itself saw across a move, in milliseconds: from its last tick before
    /// (<paramref name="before"/>'s last) to its first tick after. When the freeze caught a tick after
    /// it took its time but before it printed, that first tick after carries a time from before the
    /// freeze, one ordinary interval after the last (under 3 times the median of the last gaps
    /// before); the pause is then the gap to the tick after it (which did not check its memory: it
    /// had not seen the pause). Null when the ticks are not consecutive or have no times.
    /// </summary>
    public static double? PauseMillis(IReadOnlyList<MemcounterTick> before, IReadOnlyList<MemcounterTick> after)
    {
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(after);
        if (before.Count == 0 || after.Count == 0 || Gap(before[^1], after[0]) is not { } first)
        {
            return null;
        }

        var usual = before.Skip(Math.Max(0, before.Count - 6)).Zip(before.Skip(Math.Max(1, before.Count - 5)))
            .Select(p => Gap(p.First, p.Second)).OfType<double>().Order().ToList();
        if (usual.Count > 0 && first < 3 * usual[usual.Count / 2] && after.Count > 1 && Gap(after[0], after[1]) is { } next)
        {
            return next;
        }

        return first;
    }

    /// <summary>Milliseconds between two consecutive ticks, or null.</summary>
    private static double? Gap(MemcounterTick earlier, MemcounterTick later) =>
        earlier.AtMicros > 0 && later.AtMicros > 0 && later.Tick == earlier.Tick + 1 ? (later.AtMicros - earlier.AtMicros) / 1000.0 : null;
}

/// <summary>
/// The test workload (tests/workloads/memcounter.c): built on demand as a static binary, its output
/// parsed, and its buffer contents reproduced here so tests know the checksum to expect.
/// </summary>
public static partial class Memcounter
{
    /// <summary>Builds (once per source version) and returns the path of the static binary.</summary>
    public static string BinaryPath() => Workloads.Build("memcounter");

    /// <summary>The command line that runs the workload inside a test root file system.</summary>
    public static string Command(int mib, ulong seed, int intervalMs = 100, double dirtyPercentPerSecond = 0) =>
        string.Create(CultureInfo.InvariantCulture,
            $"/bin/memcounter --mib {mib} --seed {seed} --interval-ms {intervalMs} --dirty-percent-per-second {dirtyPercentPerSecond} --verify-every 0");

    /// <summary>The tick lines of the main process, or with <paramref name="children"/> those its forked children (--children) print after "child ".</summary>
    public static IReadOnlyList<MemcounterTick> Parse(IEnumerable<string> lines, bool children = false)
    {
        var ticks = new List<MemcounterTick>();
        foreach (var line in lines)
        {
            if (children != line.StartsWith(ChildPrefix, StringComparison.Ordinal))
            {
                continue;
            }

            var m = TickLine().Match(children ? line[ChildPrefix.Length..] : line);
            if (m.Success)
            {
                ticks.Add(new MemcounterTick(
                    long.Parse(m.Groups["tick"].Value, CultureInfo.InvariantCulture),
                    int.Parse(m.Groups["pid"].Value, CultureInfo.InvariantCulture),
                    int.Parse(m.Groups["ppid"].Value, CultureInfo.InvariantCulture),
                    int.Parse(m.Groups["mib"].Value, CultureInfo.InvariantCulture),
                    ulong.Parse(m.Groups["sum"].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    m.Groups["verified"].Value,
                    long.Parse(m.Groups["dirtied"].Value, CultureInfo.InvariantCulture),
                    m.Groups["at"].Success ? long.Parse(m.Groups["at"].Value, CultureInfo.InvariantCulture) : 0));
            }
        }

        return ticks;
    }

    /// <summary>
    /// Asks every running memcounter started with <c>--verify-file <paramref name="verifyFile"/></c>
    /// to verify its whole buffer on its next tick, by creating that file in the process's own root
    /// (through /proc, so it reaches a process in any container on this machine). Returns how many
    /// processes were asked; none is an error, since the check would then never come.
    /// </summary>
    public static int RequestVerification(string verifyFile)
    {
        ArgumentException.ThrowIfNullOrEmpty(verifyFile);
        if (!verifyFile.StartsWith('/') || verifyFile.Contains("/..", StringComparison.Ordinal))
        {
            throw new ArgumentException($"the verify file must be an absolute path without '..', not '{verifyFile}'", nameof(verifyFile));
        }

        int asked = 0;
        foreach (var entry in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(entry), out int pid) || ReadCommandLine(pid) is not { } args
                || !args[0].EndsWith("memcounter", StringComparison.Ordinal)
                || !args.Zip(args.Skip(1)).Any(p => p.First == "--verify-file" && p.Second == verifyFile))
            {
                continue;
            }

            try
            {
                File.WriteAllText($"/proc/{pid}/root{verifyFile}", string.Empty);
                asked++;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the process ended (or its root went) between the listing and the write
            }
        }

        return asked > 0 ? asked : throw new InvalidOperationException($"no running memcounter has --verify-file {verifyFile}: nothing to ask for a memory check");
    }

    private static string[]? ReadCommandLine(int pid)
    {
        try
        {
            var args = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);
            return args.Length > 0 ? args : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>What a forked child's tick lines begin with.</summary>
    public const string ChildPrefix = "child ";

    /// <summary>The checksum of a freshly filled buffer (no page rewritten), computed the way the workload does.</summary>
    public static ulong InitialChecksum(int mib, ulong seed)
    {
        ulong words = (ulong)mib * 1024 * 1024 / 8;
        ulong sum = 0;
        for (ulong i = 0; i < words; i++)
        {
            sum += Mix(seed ^ i) * ((2 * i) + 1);
        }

        return sum;
    }

    private static ulong Mix(ulong x)
    {
        x += 0x9e3779b97f4a7c15UL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9UL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebUL;
        return x ^ (x >> 31);
    }

    [GeneratedRegex(@"^tick=(?<tick>\d+) pid=(?<pid>\d+) ppid=(?<ppid>\d+) mib=(?<mib>\d+) checksum=(?<sum>[0-9a-f]+) verified=(?<verified>\S+) dirtied=(?<dirtied>\d+)( at=(?<at>\d+))?$")]
    private static partial Regex TickLine();
}

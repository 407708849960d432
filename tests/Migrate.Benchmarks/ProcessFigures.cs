using System.Globalization;

namespace Migrate.Benchmarks;

/// <summary>What /proc says a process costs: its CPU time and its memory.</summary>
internal static class ProcessFigures
{
    /// <summary>User plus system CPU time of a process, in seconds (/proc/PID/stat, clock ticks of 1/100 s).</summary>
    public static double CpuSeconds(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        // after "(command) ": state is field 3 of the line, so utime (14) and stime (15) are the 12th and 13th here
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
    }

    /// <summary>A memory figure of /proc/PID/status (VmRSS: resident now, VmHWM: the most it was resident), in MiB.</summary>
    public static double Memory(int pid, string field)
    {
        var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith(field, StringComparison.Ordinal));
        return line is null ? double.NaN : double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024;
    }
}

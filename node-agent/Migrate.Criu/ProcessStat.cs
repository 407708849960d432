namespace Migrate.Criu;

/// <summary>The fields of <c>/proc/PID/stat</c> after the command name (which may itself hold spaces and parentheses).</summary>
internal static class ProcessStat
{
    /// <summary>Fields 3 onwards (the state first, the start time at index 19); null when the process is not there.</summary>
    public static string[]? Fields(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            int end = stat.LastIndexOf(')');
            return end > 0 && end + 2 < stat.Length ? stat[(end + 2)..].Split(' ') : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}

namespace Migrate.NodeAgent.Transfer;

/// <summary>Paths a peer names, confined to one directory: relative, no empty, "." or ".." parts, no NUL or backslash.</summary>
public static class TransferPaths
{
    public const int MaxPathLength = 1024;

    /// <summary>The full path of <paramref name="relative"/> under <paramref name="root"/>, or null with the reason when it is not a safe name.</summary>
    public static string? Confine(string root, string relative, out string? reason)
    {
        ArgumentNullException.ThrowIfNull(root);
        reason = null;
        if (string.IsNullOrEmpty(relative))
        {
            reason = "an empty path";
        }
        else if (relative.Length > MaxPathLength)
        {
            reason = $"a path longer than {MaxPathLength} characters";
        }
        else if (relative[0] == '/')
        {
            reason = $"an absolute path ({Shorten(relative)})";
        }
        else if (relative.Contains('\0', StringComparison.Ordinal) || relative.Contains('\\', StringComparison.Ordinal))
        {
            reason = $"a path with NUL or backslash ({Shorten(relative)})";
        }
        else if (relative.Split('/').Any(part => part is "" or "." or ".."))
        {
            reason = $"a path with empty, '.' or '..' parts ({Shorten(relative)})";
        }

        if (reason is not null)
        {
            return null;
        }

        var full = Path.GetFullPath(Path.Combine(root, relative));
        if (!full.StartsWith(Path.TrimEndingDirectorySeparator(root) + "/", StringComparison.Ordinal))
        {
            reason = $"a path outside the migration's directory ({Shorten(relative)})";
            return null;
        }

        return full;
    }

    private static string Shorten(string value) => value.Length <= 80 ? value.Replace('\0', '?') : value[..80].Replace('\0', '?') + "...";
}

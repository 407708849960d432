using System.Collections.Immutable;
using System.Globalization;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>One line of <c>/proc/PID/mountinfo</c> (proc(5)).</summary>
public sealed record MountInfoEntry(int Id, int ParentId, string Device, string Root, string MountPoint, string MountOptions,
    string FileSystemType, string Source, string SuperOptions)
{
    /// <summary>A super-block option's value, e.g. <c>upperdir</c> of an overlay mount.</summary>
    public string? SuperOption(string name)
    {
        foreach (var option in SuperOptions.Split(','))
        {
            if (option.StartsWith(name + "=", StringComparison.Ordinal))
            {
                return option[(name.Length + 1)..];
            }
        }

        return null;
    }

    public static ImmutableArray<MountInfoEntry> Read(string path) => [.. File.ReadLines(path).Select(Parse)];

    public static MountInfoEntry Parse(string line)
    {
        var fields = line.Split(' ');
        int separator = fields.Length > 6 ? Array.IndexOf(fields, "-", 6) : -1;
        if (separator < 6 || separator + 2 >= fields.Length)
        {
            throw new FormatException($"not a mountinfo line: {line}");
        }

        return new MountInfoEntry(
            int.Parse(fields[0], CultureInfo.InvariantCulture),
            int.Parse(fields[1], CultureInfo.InvariantCulture),
            fields[2],
            Unescape(fields[3]),
            Unescape(fields[4]),
            fields[5],
            fields[separator + 1],
            Unescape(fields[separator + 2]),
            separator + 3 < fields.Length ? Unescape(fields[separator + 3]) : "");
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as octal.</summary>
    private static string Unescape(string value) =>
        value.Contains('\\', StringComparison.Ordinal)
            ? value.Replace("\\040", " ", StringComparison.Ordinal).Replace("\\011", "\t", StringComparison.Ordinal)
                .Replace("\\012", "\n", StringComparison.Ordinal).Replace("\\134", "\\", StringComparison.Ordinal)
            : value;
}

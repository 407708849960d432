namespace Migrate.RestoreRuntime;

/// <summary>
/// A runc command line as containerd's runc shim writes it: global options, the command, its
/// options, the container id last. Only what the restore path needs is picked out; the rest is
/// kept verbatim for runc.
/// </summary>
public sealed class RuncCommandLine
{
    private static readonly HashSet<string> GlobalWithValue = ["--root", "--log", "--log-format", "--criu", "--rootless"];

    private RuncCommandLine(IReadOnlyList<string> arguments, IReadOnlyList<string> global, string? command, IReadOnlyList<string> rest)
    {
        Arguments = arguments;
        Global = global;
        Command = command;
        Rest = rest;
    }

    public IReadOnlyList<string> Arguments { get; }

    /// <summary>Options before the command (--root, --log, ...).</summary>
    public IReadOnlyList<string> Global { get; }

    public string? Command { get; }

    /// <summary>The command's options and arguments.</summary>
    public IReadOnlyList<string> Rest { get; }

    /// <summary>The container id (the command's last argument).</summary>
    public string? ContainerId => Rest.Count > 0 && !Rest[^1].StartsWith('-') ? Rest[^1] : null;

    public string? GlobalOption(string name) => Option(Global, name);

    public string? CommandOption(params string[] names) => names.Select(n => Option(Rest, n)).FirstOrDefault(v => v is not null);

    public bool HasCommandFlag(string name) => Rest.Contains(name);

    public static RuncCommandLine Parse(IReadOnlyList<string> arguments)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var global = new List<string>();
        int i = 0;
        while (i < arguments.Count && arguments[i].StartsWith('-'))
        {
            global.Add(arguments[i]);
            if (GlobalWithValue.Contains(arguments[i]) && i + 1 < arguments.Count)
            {
                global.Add(arguments[++i]);
            }

            i++;
        }

        string? command = i < arguments.Count ? arguments[i++] : null;
        return new RuncCommandLine(arguments, global, command, [.. arguments.Skip(i)]);
    }

    private static string? Option(IReadOnlyList<string> list, string name)
    {
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] == name && i + 1 < list.Count)
            {
                return list[i + 1];
            }

            if (list[i].StartsWith(name + "=", StringComparison.Ordinal))
            {
                return list[i][(name.Length + 1)..];
            }
        }

        return null;
    }
}

using System.Diagnostics;

namespace Migrate.TestSupport;

/// <summary>
/// Tests that need real CRIU, runc, containerd or root call these first. A missing piece is a
/// failure that names it, never a skip: CI installs everything with hack/install-prereqs.sh.
/// </summary>
public static class Prerequisites
{
    private const string Hint = "run 'sudo hack/install-prereqs.sh' (make test does)";

    /// <summary>Where hack/install-prereqs.sh unpacks what bookworm lacks (CRIU, containerd 1.7 and 2.1, Prometheus): $PODMIG_PREFIX, or /opt/pod-migration.</summary>
    public static string InstallPrefix(params string[] parts) =>
        Path.Combine([Environment.GetEnvironmentVariable("PODMIG_PREFIX") is { Length: > 0 } prefix ? prefix : "/opt/pod-migration", .. parts]);

    public static void RequireRoot()
    {
        if (Environment.UserName != "root" && !IsEffectiveRoot())
        {
            throw new InvalidOperationException($"this test needs root (CRIU, namespaces, mounts); {Hint} and run the tests as root");
        }
    }

    /// <summary>Fails unless every named program is on PATH; returns their full paths.</summary>
    public static IReadOnlyList<string> RequirePrograms(params string[] programs)
    {
        var found = new List<string>();
        var missing = new List<string>();
        foreach (var program in programs)
        {
            if (FindOnPath(program) is { } path)
            {
                found.Add(path);
            }
            else
            {
                missing.Add(program);
            }
        }

        if (missing.Count > 0)
        {
            throw new InvalidOperationException($"missing prerequisite program(s): {string.Join(", ", missing)}; {Hint}");
        }

        return found;
    }

    public static string? FindOnPath(string program)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, program);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Runs a program to completion and returns its standard output; throws with its output on failure.</summary>
    public static string Run(string program, params string[] arguments)
    {
        var (exitCode, stdout, stderr) = Capture(program, arguments);
        return exitCode == 0 ? stdout
            : throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} exited with {exitCode}: {stderr}{stdout}");
    }

    /// <summary>Runs a program to completion (in <paramref name="directory"/>, with extra environment) and returns its exit code and output, whatever they are.</summary>
    public static (int ExitCode, string Stdout, string Stderr) Capture(string program, IEnumerable<string> arguments, string? directory = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = directory ?? "",
        };
        foreach (var a in arguments)
        {
            start.ArgumentList.Add(a);
        }

        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {program}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    private static bool IsEffectiveRoot()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("Uid:", StringComparison.Ordinal))
            {
                var fields = line.Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
                return fields.Length > 2 && fields[2] == "0";
            }
        }

        return false;
    }
}

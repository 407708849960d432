using System.Diagnostics;

namespace Migrate.TestSupport;

/// <summary>
/// A containerd release a sandbox node runs: bookworm's 1.6 (the system's, the default), or
/// trixie's 1.7 or sid's 2.1, which hack/install-prereqs.sh unpacks into their own prefixes. Each
/// node runs its release's containerd, shim and ctr; runc and CRIU are the machine's.
/// </summary>
public sealed record ContainerdRelease
{
    /// <summary>The releases the sandbox runs.</summary>
    public static IReadOnlyList<string> Names { get; } = ["1.6", "1.7", "2.1"];

    private ContainerdRelease(string name, string binDirectory, bool prefixed)
    {
        Name = name;
        BinDirectory = binDirectory;
        Prefixed = prefixed;
    }

    /// <summary>"1.6", "1.7" or "2.1".</summary>
    public string Name { get; }

    /// <summary>Where its containerd, containerd-shim-runc-v2 and ctr are.</summary>
    public string BinDirectory { get; }

    /// <summary>Installed into a private prefix (not the system's): its directory goes first on containerd's PATH so that its own shim runs.</summary>
    public bool Prefixed { get; }

    /// <summary>containerd 2.x reads configuration version 3 (the CRI plugin split into cri.v1.runtime and cri.v1.images); 1.x version 2.</summary>
    public int ConfigVersion => Name.StartsWith("2.", StringComparison.Ordinal) ? 3 : 2;

    public string Containerd => Path.Combine(BinDirectory, "containerd");

    public string Ctr => Path.Combine(BinDirectory, "ctr");

    public string Shim => Path.Combine(BinDirectory, "containerd-shim-runc-v2");

    public static ContainerdRelease Default => Get("1.6");

    /// <summary>The release of that name; an unknown name or a release not installed is refused, naming the fix.</summary>
    public static ContainerdRelease Get(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (!Names.Contains(name, StringComparer.Ordinal))
        {
            throw new ArgumentException($"containerd '{name}' is not a release the sandbox runs (it runs {string.Join(", ", Names)})", nameof(name));
        }

        if (name == "1.6")
        {
            Prerequisites.RequirePrograms("containerd", "containerd-shim-runc-v2", "ctr");
            return new ContainerdRelease(name, "/usr/bin", prefixed: false);
        }

        var bin = Prerequisites.InstallPrefix("containerd-" + name, "usr", "bin");
        var release = new ContainerdRelease(name, bin, prefixed: true);
        foreach (var program in new[] { release.Containerd, release.Shim, release.Ctr })
        {
            if (!File.Exists(program))
            {
                throw new InvalidOperationException($"containerd {name} is not installed ({program} is missing); run 'sudo hack/install-prereqs.sh'");
            }
        }

        return release;
    }

    /// <summary>Several nodes' releases from "1.7" (every node) or "1.6,2.1" (node by node, the last repeated).</summary>
    public static IReadOnlyList<ContainerdRelease> ForNodes(string? list, int nodes)
    {
        var names = string.IsNullOrWhiteSpace(list) ? ["1.6"] : list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (names.Length > nodes)
        {
            throw new ArgumentException($"{names.Length} containerd releases ({list}) for {nodes} node(s)");
        }

        var releases = names.Select(Get).ToList();
        return [.. Enumerable.Range(0, nodes).Select(i => releases[Math.Min(i, releases.Count - 1)])];
    }

    /// <summary>The version containerd reports (e.g. 1.7.24~ds1).</summary>
    public string Version()
    {
        using var process = Process.Start(new ProcessStartInfo(Containerd, ["--version"]) { RedirectStandardOutput = true, UseShellExecute = false })
            ?? throw new InvalidOperationException($"cannot run {Containerd}");
        var text = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        var fields = text.Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return fields.Length >= 3 ? fields[2] : throw new InvalidOperationException($"{Containerd} --version said '{text.Trim()}'");
    }
}

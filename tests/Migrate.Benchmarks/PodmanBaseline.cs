using System.Diagnostics;
using System.Globalization;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// Podman's own pipeline, side by side with ours: the same memcounter image run by podman 5.4 (the
/// one hack/install-prereqs.sh unpacks, with bookworm's runc and the same CRIU) in one storage root
/// (the source "node"), <c>podman container checkpoint --export</c>, the archive copied over TCP
/// to the target's directory as the manual pipeline copies its images, and
/// <c>podman container restore --import</c> in a second storage root (the target "node").
/// Stop-and-copy: the container is stopped from the checkpoint's start, so its downtime is the
/// total. podman's <c>--pre-checkpoint</c> flow needs soft-dirty tracking, which this kernel lacks.
/// Everything podman is given lives in one directory (its configuration written here, never the
/// system's), and is removed with <c>podman system reset</c>.
/// </summary>
public sealed class PodmanBaseline : IDisposable
{
    /// <summary>Directories podman makes whatever it is told (its blob cache, netavark's state): removed afterwards if they were not there before.</summary>
    private static readonly string[] SystemDirectories = ["/var/lib/containers", "/run/containers"];

    private readonly string _directory;
    private readonly string _podman;
    private readonly string _targetAddress;
    private readonly string[] _made;

    private PodmanBaseline(string podman, string directory, string targetAddress)
    {
        _podman = podman;
        _directory = directory;
        _targetAddress = targetAddress;
        _made = [.. SystemDirectories.Where(d => !Directory.Exists(d))];
    }

    /// <summary>podman from hack/install-prereqs.sh's prefix, or null when it is not there.</summary>
    public static string? Program() => File.Exists(Prerequisites.InstallPrefix("buildah", "bin", "podman")) ? Prerequisites.InstallPrefix("buildah", "bin", "podman") : null;

    /// <summary>Two storage roots with the memcounter image loaded into each.</summary>
    public static PodmanBaseline Start(string podman, string targetAddress)
    {
        var directory = Directory.CreateTempSubdirectory("podmig-podman-").FullName;
        var baseline = new PodmanBaseline(podman, directory, targetAddress);
        try
        {
            File.WriteAllText(Path.Combine(directory, "containers.conf"), string.Join('\n',
                "[containers]", "log_driver = \"k8s-file\"",
                "[engine]", "cgroup_manager = \"cgroupfs\"", "events_logger = \"file\"", "runtime = \"runc\"",
                $"conmon_path = [\"{Prerequisites.InstallPrefix("buildah", "bin", "conmon")}\"]",
                $"helper_binaries_dir = [\"{Prerequisites.InstallPrefix("buildah", "bin")}\"]",
                "[engine.runtimes]", $"runc = [\"{Prerequisites.RequirePrograms("runc")[0]}\"]", ""));
            File.WriteAllText(Path.Combine(directory, "policy.json"), "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}");
            var memcounter = TestImages.Archives()[1];
            foreach (var node in new[] { "source", "target" })
            {
                baseline.Podman(node, "load", "--signature-policy", Path.Combine(directory, "policy.json"), "-i", memcounter);
            }

            return baseline;
        }
        catch
        {
            baseline.Dispose();
            throw;
        }
    }

    /// <summary>A memcounter container on the source, once it ticks.</summary>
    public async Task StartWorkloadAsync(string name, int mib, double dirtyPercentPerSecond)
    {
        Podman("source", ["run", "-d", "--name", name, "--network", "none", TestImages.Memcounter,
            "--mib", mib.ToString(CultureInfo.InvariantCulture), "--seed", "7", "--interval-ms", MigrationBenchmark.TickIntervalMs,
            "--dirty-percent-per-second", dirtyPercentPerSecond.ToString(CultureInfo.InvariantCulture), .. MigrationBenchmark.VerifyOnRequestArgs(name)]);
        var clock = Stopwatch.StartNew();
        while (Ticks("source", name).Count < 5)
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(120))
            {
                throw new TimeoutException($"podman's memcounter {name} did not tick within 120 s");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>Checkpoint, copy, restore; then whether the count went on.</summary>
    public async Task<(TimeSpan Checkpoint, TimeSpan Copy, TimeSpan Restore, long ImageBytes, bool Continued, double? PauseMs)> MoveAsync(string name)
    {
        var exported = Directory.CreateDirectory(Path.Combine(_directory, "export-" + name)).FullName;
        var received = Directory.CreateDirectory(Path.Combine(_directory, "received-" + name)).FullName;
        var archive = Path.Combine(exported, "checkpoint.tar");
        var clock = Stopwatch.StartNew();
        Podman("source", "container", "checkpoint", "--export", archive, "--compress", "none", name);
        var checkpoint = clock.Elapsed;
        long bytes = new FileInfo(archive).Length;
        await ManualBaseline.CopyOverTcpAsync(exported, received, _targetAddress);
        var copy = clock.Elapsed - checkpoint;
        Podman("target", "container", "restore", "--import", Path.Combine(received, "checkpoint.tar"));
        var restore = clock.Elapsed - checkpoint - copy;

        // the export carries the container's log: the lines after the source's are the restored process's
        var before = Ticks("source", name);
        var (continued, pause) = await MigrationBenchmark.ContinuationAsync(before, () => [.. Ticks("target", name).Skip(before.Count)], MigrationBenchmark.VerifyFile(name));
        Directory.Delete(exported, recursive: true);
        Directory.Delete(received, recursive: true);
        return (checkpoint, copy, restore, bytes, continued, pause);
    }

    /// <summary>Removes the container from both roots.</summary>
    public void Remove(string name)
    {
        foreach (var node in new[] { "source", "target" })
        {
            _ = Capture(node, "rm", "-f", "--time", "0", name);
        }
    }

    public void Dispose()
    {
        foreach (var node in new[] { "source", "target" })
        {
            // stops what runs there (by podman's own records), unmounts its storage and empties it
            _ = Capture(node, "system", "reset", "--force");
        }

        // and what podman left mounted all the same (a run ended with its overlay driver's metacopy check still mounted)
        ContainerdNode.UnmountBelow(_directory);
        Directory.Delete(_directory, recursive: true);
        foreach (var made in _made.Where(Directory.Exists))
        {
            Directory.Delete(made, recursive: true);
        }
    }

    private IReadOnlyList<MemcounterTick> Ticks(string node, string name)
    {
        var (code, stdout, _) = Capture(node, "logs", name);
        return code == 0 ? Memcounter.Parse(stdout.Split('\n')) : [];
    }

    private string Podman(string node, params string[] arguments)
    {
        var (code, stdout, stderr) = Capture(node, arguments);
        return code == 0 ? stdout : throw new InvalidOperationException($"podman {string.Join(' ', arguments)} on the {node} root exited {code}: {stderr.Trim()}");
    }

    private (int Code, string Stdout, string Stderr) Capture(string node, params string[] arguments)
    {
        var start = new ProcessStartInfo(_podman)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in (string[])["--root", Path.Combine(_directory, node, "root"), "--runroot", Path.Combine(_directory, node, "run"),
                     "--tmpdir", Path.Combine(_directory, node, "tmp"), .. arguments])
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment["CONTAINERS_CONF"] = Path.Combine(_directory, "containers.conf");
        start.Environment["CONTAINERS_REGISTRIES_CONF"] = "/dev/null";
        start.Environment["PODMAN_IGNORE_CGROUPSV1_WARNING"] = "1";
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {_podman}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}

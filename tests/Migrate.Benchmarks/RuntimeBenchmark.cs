using System.Diagnostics;
using System.Text.Json.Nodes;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// What podmig-runc adds to a plain container start: the same bundle created and started with
/// runc and with podmig-runc (which passes the calls to runc), alternating, many times. The
/// difference of the medians is the cost every container of the podmig handler pays.
/// </summary>
public static class RuntimeBenchmark
{
    private const int Runs = 25;
    private static readonly string[] BenchCgroups = ["/podmig-bench/runtime", "/podmig-bench"];

    public static async Task RunAsync(BenchmarkReport report)
    {
        var shim = RepositoryLayout.RestoreRuntime;
        var root = Directory.CreateTempSubdirectory("podmig-bench-runtime-").FullName;
        try
        {
            var bundle = Path.Combine(root, "bundle");
            TestRootFilesystem.Create(Path.Combine(bundle, "rootfs"));
            Run("runc", ["spec", "--bundle", bundle]);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(bundle, "config.json")))!;
            config["process"]!["terminal"] = false;
            config["process"]!["args"] = new JsonArray("/bin/pause");
            config["linux"]!["cgroupsPath"] = "/podmig-bench/runtime";
            File.WriteAllText(Path.Combine(bundle, "config.json"), config.ToJsonString());
            var state = Path.Combine(root, "state");

            var runc = new List<double>();
            var podmig = new List<double>();
            for (int i = 0; i < Runs; i++)
            {
                runc.Add(CreateAndStart("runc", state, bundle, $"runc-{i}"));
                podmig.Add(CreateAndStart(shim, state, bundle, $"podmig-{i}"));
            }

            double runcMedian = BenchmarkReport.Percentiles(runc).P50;
            double podmigMedian = BenchmarkReport.Percentiles(podmig).P50;
            report.Add("runtime", "runc_create_start_median_ms", runcMedian, "ms");
            report.Add("runtime", "podmig_runc_create_start_median_ms", podmigMedian, "ms");
            report.Add("runtime", "podmig_runc_added_ms", podmigMedian - runcMedian, "ms");
            report.Add("runtime", "podmig_runc_binary_mib", new FileInfo(shim).Length / 1048576.0, "MiB");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
            foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
            {
                foreach (var dir in BenchCgroups.Select(d => hierarchy + d).Where(Directory.Exists))
                {
                    Directory.Delete(dir);
                }
            }
        }

        await Task.CompletedTask;
    }

    private static double CreateAndStart(string runtime, string state, string bundle, string id)
    {
        var clock = Stopwatch.StartNew();
        // the container's init inherits the caller's stdio: give it /dev/null, not our pipes
        Run("sh", ["-c", "exec \"$0\" \"$@\" > /dev/null 2>&1 < /dev/null", runtime, "--root", state, "create", "--bundle", bundle, id]);
        Run(runtime, ["--root", state, "start", id]);
        double elapsed = clock.Elapsed.TotalMilliseconds;
        Run("runc", ["--root", state, "kill", id, "KILL"]);
        for (int i = 0; i < 200 && !Run("runc", ["--root", state, "state", id]).Contains("\"stopped\"", StringComparison.Ordinal); i++)
        {
            Thread.Sleep(5);
        }

        Run("runc", ["--root", state, "delete", "--force", id]);
        return elapsed;
    }

    private static string Run(string program, IReadOnlyList<string> arguments) => Prerequisites.Run(program, [.. arguments]);
}

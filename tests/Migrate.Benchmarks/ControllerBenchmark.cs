using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using Migrate.Api;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>One migration as the controller ran it: from its creation to Succeeded, its downtime, whether state continued.</summary>
public sealed record ControllerSample(string Scenario, int Repetition, string Pod, double TotalMs, double DowntimeMs, bool StateContinued, double MachineBusyPercent = double.NaN);

/// <summary>
/// How busy the whole machine's CPUs were over a stretch of time (/proc/stat's first line: every
/// process, the kernel and interrupts; idle and iowait count as not busy): whether migrations at
/// once had CPUs left to run on.
/// </summary>
public static class MachineCpu
{
    public readonly record struct Reading(long Busy, long Total);

    public static Reading Now()
    {
        var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..]
            .Take(8).Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
        // user nice system idle iowait irq softirq steal
        long total = fields.Sum();
        return new Reading(total - fields[3] - fields[4], total);
    }

    public static double BusyPercentSince(Reading start)
    {
        var end = Now();
        return end.Total == start.Total ? double.NaN : 100.0 * (end.Busy - start.Busy) / (end.Total - start.Total);
    }
}

/// <summary>
/// What the controller does with several migrations at once, in a 4-node sandbox with 64 MiB
/// memcounter pods in the default mode: a lone migration (the baseline); two migrations on disjoint
/// node pairs started together (each one's downtime against the lone one's); a NodeDrain of a node
/// with 8 opted-in pods (its total time against 8 lone migrations one after another, and the
/// longest freeze against the lone one's). Measurements only; written to docs/benchmarks-controller.md.
/// </summary>
public static class ControllerBenchmark
{
    private const int Mib = 64;
    private const int DrainPods = 8;
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static async Task RunAsync(BenchmarkReport report, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(report);
        int repetitions = int.Parse(MigrationBenchmark.Option(args, "--reps", "3"), CultureInfo.InvariantCulture);
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));
        var samples = new List<ControllerSample>();
        var drains = new List<(int Repetition, double TotalMs)>();
        var failures = new List<string>();
        Say($"starting a 4-node sandbox; {repetitions} repetitions of: a lone migration, two at once on disjoint pairs, a drain of {DrainPods} pods");
        await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { Nodes = 4, PhaseTimeoutSeconds = 900 }, line => Say(line)))
        {
            for (int rep = 1; rep <= repetitions; rep++)
            {
                try
                {
                    var lone = await MigrateAsync(cluster, [($"lone-{rep}", "node-a", "node-b")], "lone", rep);
                    samples.AddRange(lone);
                    Say(Describe(lone));
                    var pair = await MigrateAsync(cluster, [($"pair-{rep}-1", "node-a", "node-b"), ($"pair-{rep}-2", "node-c", "node-d")], "pair", rep);
                    samples.AddRange(pair);
                    Say(Describe(pair));
                    var (total, drained) = await DrainAsync(cluster, rep);
                    drains.Add((rep, total));
                    samples.AddRange(drained);
                    Say(string.Create(CultureInfo.InvariantCulture, $"drain #{rep}: {DrainPods} pods in {total:0} ms; {Describe(drained)}"));
                }
                catch (Exception e) when (e is InvalidOperationException or TimeoutException or k8s.Autorest.HttpOperationException or IOException)
                {
                    failures.Add($"repetition {rep}: {e.Message}");
                    Say($"FAILED repetition {rep}: {e.Message}");
                }
            }
        }

        var figures = Figures(samples, drains);
        foreach (var (name, value, unit) in figures)
        {
            report.Add("controller", name, value, unit);
        }

        var docs = RepositoryLayout.InRepository("docs");
        Directory.CreateDirectory(docs);
        File.WriteAllText(Path.Combine(docs, "benchmarks-controller.md"), Markdown(report.Machine, repetitions, samples, drains, figures, failures, clock.Elapsed));
        File.WriteAllText(Path.Combine(BenchmarkReport.Directory, "controller.json"), JsonSerializer.Serialize(new { samples, drains = drains.Select(d => new { d.Repetition, d.TotalMs }), failures },
            Indented));
        Console.WriteLine("  docs/benchmarks-controller.md rewritten");
    }

    /// <summary>The goals' figures, from medians: ratios against the lone migration.</summary>
    internal static IReadOnlyList<(string Name, double Value, string Unit)> Figures(IReadOnlyList<ControllerSample> samples, IReadOnlyList<(int Repetition, double TotalMs)> drains)
    {
        var lone = samples.Where(s => s.Scenario == "lone").ToList();
        var pair = samples.Where(s => s.Scenario == "pair").ToList();
        var drained = samples.Where(s => s.Scenario == "drain").ToList();
        var result = new List<(string, double, string)>();
        if (lone.Count == 0)
        {
            return result;
        }

        double loneDowntime = Median(lone.Select(s => s.DowntimeMs));
        double loneTotal = Median(lone.Select(s => s.TotalMs));
        result.Add(("lone_downtime_median", loneDowntime, "ms"));
        result.Add(("lone_total_median", loneTotal, "ms"));
        if (pair.Count > 0)
        {
            result.Add(("pair_downtime_median", Median(pair.Select(s => s.DowntimeMs)), "ms"));
            result.Add(("pair_downtime_max_to_lone_ratio", pair.Max(s => s.DowntimeMs) / loneDowntime, "x"));
            result.Add(("pair_downtime_median_to_lone_ratio", Median(pair.Select(s => s.DowntimeMs)) / loneDowntime, "x"));
        }

        if (drains.Count > 0 && drained.Count > 0)
        {
            result.Add(("drain_total_median", Median(drains.Select(d => d.TotalMs)), "ms"));
            result.Add(("drain_total_to_8_lone_ratio", Median(drains.Select(d => d.TotalMs)) / (DrainPods * loneTotal), "x"));
            result.Add(("drain_downtime_max", drained.Max(s => s.DowntimeMs), "ms"));
            result.Add(("drain_downtime_max_to_lone_ratio", drained.Max(s => s.DowntimeMs) / loneDowntime, "x"));
        }

        foreach (var scenario in new[] { "lone", "pair", "drain" })
        {
            var busy = samples.Where(s => s.Scenario == scenario && !double.IsNaN(s.MachineBusyPercent)).Select(s => s.MachineBusyPercent).ToList();
            if (busy.Count > 0)
            {
                result.Add(($"{scenario}_machine_cpu_busy_median", Median(busy), $"% of {Environment.ProcessorCount} CPUs"));
            }
        }

        result.Add(("state_continued", samples.Count(s => s.StateContinued), $"of {samples.Count}"));
        return result;
    }

    private static async Task<IReadOnlyList<ControllerSample>> MigrateAsync(SandboxCluster cluster, IReadOnlyList<(string Pod, string Source, string Target)> moves, string scenario, int rep)
    {
        var pods = new List<k8s.Models.V1Pod>();
        foreach (var (pod, source, _) in moves)
        {
            pods.Add(await MigrationBenchmark.StartWorkloadAsync(cluster, pod, Mib, 0, source));
        }

        try
        {
            var clock = Stopwatch.StartNew();
            var cpu = MachineCpu.Now();
            foreach (var (pod, _, target) in moves)
            {
                var request = new JsonObject
                {
                    ["apiVersion"] = "podmigration.io/v1alpha1",
                    ["kind"] = "MigrationRequest",
                    ["metadata"] = new JsonObject { ["name"] = "move-" + pod },
                    ["spec"] = new JsonObject { ["podName"] = pod, ["targetNode"] = target, ["timeoutSeconds"] = 900 },
                };
                await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(request, MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
            }

            var samples = new List<ControllerSample>();
            var names = moves.Select(m => "move-" + m.Pod).ToList();
            var done = await WaitForFinalAsync(cluster, names, clock);
            double busy = MachineCpu.BusyPercentSince(cpu);
            foreach (var ((pod, source, target), uid) in moves.Zip(pods.Select(p => p.Metadata.Uid)))
            {
                var (status, elapsed) = done["move-" + pod];
                samples.Add(await SampleAsync(cluster, scenario, rep, pod, uid, source, target, status, elapsed, busy));
                await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, "move-" + pod);
            }

            return samples;
        }
        finally
        {
            foreach (var (pod, _, _) in moves)
            {
                await DeleteBenchPodsAsync(cluster, pod);
            }
        }
    }

    private static async Task<(double TotalMs, IReadOnlyList<ControllerSample> Samples)> DrainAsync(SandboxCluster cluster, int rep)
    {
        var pods = new List<k8s.Models.V1Pod>();
        var optIn = new Dictionary<string, string> { [Labels.Migrate] = "true" };
        for (int i = 1; i <= DrainPods; i++)
        {
            pods.Add(await MigrationBenchmark.StartWorkloadAsync(cluster, $"drain-{rep}-{i}", Mib, 0, "node-a", optIn));
        }

        var name = $"bench-drain-{rep}";
        try
        {
            var clock = Stopwatch.StartNew();
            var cpu = MachineCpu.Now();
            await cluster.Client.CustomObjects.CreateClusterCustomObjectAsync(new JsonObject
            {
                ["apiVersion"] = "podmigration.io/v1alpha1",
                ["kind"] = "NodeDrain",
                ["metadata"] = new JsonObject { ["name"] = name },
                ["spec"] = new JsonObject { ["nodeName"] = "node-a", ["reason"] = "benchmark" },
            }, MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural);
            string? phase = null;
            while (phase != NodeDrainStatus.Drained)
            {
                var raw = (JsonElement)await cluster.Client.CustomObjects.GetClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, name);
                var status = JsonNode.Parse(raw.GetRawText())!["status"];
                phase = (string?)status?["phase"];
                if (phase is NodeDrainStatus.Blocked || clock.Elapsed > TimeSpan.FromMinutes(15))
                {
                    throw new InvalidOperationException($"drain {name} is {phase ?? "not started"} after {clock.Elapsed.TotalSeconds:0} s: {status?["message"]}");
                }

                await Task.Delay(20);
            }

            double total = clock.Elapsed.TotalMilliseconds;
            double busy = MachineCpu.BusyPercentSince(cpu);
            var list = (JsonElement)await cluster.Client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural,
                labelSelector: $"{Labels.Drain}={name}");
            var samples = new List<ControllerSample>();
            foreach (var item in JsonNode.Parse(list.GetRawText())!["items"]!.AsArray())
            {
                var status = item!["status"]!;
                var pod = (string)item["spec"]!["podName"]!;
                var uid = pods.Single(p => p.Metadata.Name == pod).Metadata.Uid;
                samples.Add(await SampleAsync(cluster, "drain", rep, pod, uid, "node-a", (string)status["targetNode"]!, status,
                    ((DateTime)status["completionTime"]! - (DateTime)status["startTime"]!).TotalMilliseconds, busy));
            }

            if (samples.Count != DrainPods)
            {
                throw new InvalidOperationException($"drain {name} made {samples.Count} migrations for {DrainPods} pods");
            }

            return (total, samples);
        }
        finally
        {
            await cluster.Client.CustomObjects.DeleteClusterCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, NodeDrain.Plural, name);
            foreach (var pod in pods)
            {
                await DeleteBenchPodsAsync(cluster, pod.Metadata.Name);
            }

            var node = await cluster.Client.CoreV1.ReadNodeAsync("node-a");
            if (node.Spec.Unschedulable == true)
            {
                await cluster.Client.CoreV1.PatchNodeAsync(new k8s.Models.V1Patch("""{"spec":{"unschedulable":null}}""", k8s.Models.V1Patch.PatchType.MergePatch), "node-a");
            }
        }
    }

    /// <summary>Waits until every named request is final (15 minutes at most); one that did not succeed fails the run.</summary>
    internal static async Task<Dictionary<string, (JsonNode Status, double ElapsedMs)>> WaitForFinalAsync(SandboxCluster cluster, List<string> names, Stopwatch clock)
    {
        var done = new Dictionary<string, (JsonNode, double)>(StringComparer.Ordinal);
        while (done.Count < names.Count)
        {
            foreach (var name in names.Where(n => !done.ContainsKey(n)))
            {
                var raw = (JsonElement)await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
                var status = JsonNode.Parse(raw.GetRawText())!["status"] ?? new JsonObject();
                var phase = (string?)status["phase"];
                if (MigrationPhases.IsFinal(phase))
                {
                    if (phase != MigrationPhases.Succeeded)
                    {
                        throw new InvalidOperationException($"{name} ended {phase}: {status["reason"]}: {status["message"]}");
                    }

                    done[name] = (status, clock.Elapsed.TotalMilliseconds);
                }
            }

            if (clock.Elapsed > TimeSpan.FromMinutes(15))
            {
                throw new TimeoutException($"migrations {string.Join(", ", names.Where(n => !done.ContainsKey(n)))} not final after 15 minutes");
            }

            await Task.Delay(10);
        }

        return done;
    }

    private static async Task<ControllerSample> SampleAsync(SandboxCluster cluster, string scenario, int rep, string pod, string uid, string source, string target, JsonNode status, double elapsed,
        double machineBusyPercent)
    {
        var replacement = (string)status["replacementPod"]!;
        bool continued = await MigrationBenchmark.ContinuedAsync(cluster.Node(source).LoggedTicks("default", pod, "main", uid),
            () => cluster.Node(target).LoggedTicks("default", replacement, "main"));
        return new ControllerSample(scenario, rep, pod, elapsed, (double?)(long?)status["downtimeMillis"] ?? double.NaN, continued, machineBusyPercent);
    }

    /// <summary>The pod and its replacement (the request's name for it is the pod's with a suffix).</summary>
    private static async Task DeleteBenchPodsAsync(SandboxCluster cluster, string pod)
    {
        var all = await cluster.Client.CoreV1.ListNamespacedPodAsync("default");
        foreach (var name in all.Items.Select(p => p.Metadata.Name).Where(n => n == pod || n.StartsWith(pod + "-m", StringComparison.Ordinal)))
        {
            await MigrationBenchmark.DeletePodAsync(cluster, name);
        }
    }

    private static string Describe(IReadOnlyList<ControllerSample> samples) =>
        string.Join("; ", samples.Select(s => string.Create(CultureInfo.InvariantCulture,
            $"{s.Scenario} {s.Pod}: total {s.TotalMs:0} ms, downtime {s.DowntimeMs:0} ms{(s.StateContinued ? "" : ", STATE NOT CONTINUED")}")));

    internal static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private static string Markdown(JsonObject machine, int repetitions, IReadOnlyList<ControllerSample> samples, IReadOnlyList<(int Repetition, double TotalMs)> drains,
        IReadOnlyList<(string Name, double Value, string Unit)> figures, List<string> failures, TimeSpan elapsed)
    {
        var text = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        text.AppendLine("# Controller benchmark: several migrations at once");
        text.AppendLine();
        text.AppendLine(c, $"Written by `hack/bench.sh controller` (part of `make bench`) on {DateTime.UtcNow:yyyy-MM-dd} in {elapsed.TotalMinutes:0.0} min: {machine["cpus"]} CPUs, kernel {machine["kernel"]}, {machine["cpu"]}.");
        text.AppendLine(c, $"A 4-node sandbox (one machine: every node's containerd, agent and pods share its CPUs), memcounter pods of {Mib} MiB, idle, the default mode; {repetitions} repetitions of each scenario.");
        text.AppendLine("Measurements, never assertions. Times: request created to `Succeeded`; downtime: the request's `downtimeMillis`.");
        text.AppendLine();
        MarkdownParts.AppendFigures(text, figures);

        text.AppendLine();
        text.AppendLine("Goals (issue 19): two migrations at once each within 1.2x the lone downtime; a drain of 8 pods in at most 0.5x the time of 8 lone migrations, no pod frozen longer than 1.5x a lone one.");
        text.AppendLine();
        text.AppendLine("Machine CPU busy: the share of the machine's CPUs in use (every process: /proc/stat) from the requests' creation until all were final, the same for every pod of a run.");
        text.AppendLine();
        text.AppendLine("| scenario | rep | pod | total ms | downtime ms | machine CPU busy | state |");
        text.AppendLine("| --- | --- | --- | --- | --- | --- | --- |");
        foreach (var s in samples)
        {
            text.AppendLine(c, $"| {s.Scenario} | {s.Repetition} | {s.Pod} | {s.TotalMs:0} | {s.DowntimeMs:0} | {s.MachineBusyPercent:0} % | {(s.StateContinued ? "continued" : "NOT continued")} |");
        }

        foreach (var (rep, total) in drains)
        {
            text.AppendLine(c, $"| drain (whole) | {rep} | {DrainPods} pods | {total:0} | - | - | - |");
        }

        MarkdownParts.AppendFailures(text, failures);

        return text.ToString();
    }
}

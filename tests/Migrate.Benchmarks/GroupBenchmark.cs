using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using Migrate.Api;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>One way of moving N pods: as a group, or one after another.</summary>
public sealed record GroupSample(int Members, string Way, int Repetition, double TotalMs, double DowntimeMaxMs, double DowntimeMedianMs, double SpreadMs, int Continued,
    double FreezeAllMs = double.NaN, double DumpAllMs = double.NaN, double RestoreAllMs = double.NaN, double ReleaseMs = double.NaN);

/// <summary>
/// Gang migration against the same pods moved one by one (issue 22): N memcounter pods of 64 MiB
/// on node-a, moved to node-b as one group MigrationRequest, and N new ones moved one after another
/// by single requests, for N = 2, 4, 8, in the default mode. Figures: the longest member downtime
/// (each member's freeze to its network's release), the spread from the first member frozen to
/// the last one running again, and the total time. Every pod's counter and memory checksum are
/// checked to continue. Measurements only; written to docs/benchmarks-groups.md.
/// </summary>
public static class GroupBenchmark
{
    private const int Mib = 64;
    private static readonly int[] DefaultSizes = [2, 4, 8];
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static async Task RunAsync(BenchmarkReport report, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(report);
        int repetitions = int.Parse(MigrationBenchmark.Option(args, "--reps", "1"), CultureInfo.InvariantCulture);
        int[] sizes = [.. MigrationBenchmark.Option(args, "--group-sizes", string.Join(',', DefaultSizes)).Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture))];
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));
        var samples = new List<GroupSample>();
        var failures = new List<string>();
        Say($"starting a 2-node sandbox; {repetitions} repetition(s) of groups of {string.Join(", ", sizes)} pods of {Mib} MiB, and the same moved one by one");
        await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { Nodes = 2, PhaseTimeoutSeconds = 900 }, line => Say(line)))
        {
            for (int rep = 1; rep <= repetitions; rep++)
            {
                foreach (int n in sizes)
                {
                    foreach (var way in new[] { "group", "one-by-one" })
                    {
                        try
                        {
                            var sample = way == "group" ? await GroupAsync(cluster, n, rep) : await OneByOneAsync(cluster, n, rep);
                            samples.Add(sample);
                            Say(string.Create(CultureInfo.InvariantCulture,
                                $"{n} pods {way}: total {sample.TotalMs:0} ms, downtime max {sample.DowntimeMaxMs:0} ms (median {sample.DowntimeMedianMs:0}), spread {sample.SpreadMs:0} ms, {sample.Continued} of {n} continued; all frozen {sample.FreezeAllMs:0}, dumped and staged {sample.DumpAllMs:0}, restored {sample.RestoreAllMs:0}, released {sample.ReleaseMs:0} ms"));
                        }
                        catch (Exception e) when (e is InvalidOperationException or TimeoutException or k8s.Autorest.HttpOperationException or IOException)
                        {
                            failures.Add($"{n} pods {way}, repetition {rep}: {e.Message}");
                            Say($"FAILED {n} pods {way}: {e.Message}");
                        }
                    }
                }
            }
        }

        var figures = Figures(samples, sizes);
        foreach (var (name, value, unit) in figures)
        {
            report.Add("groups", name, value, unit);
        }

        var docs = RepositoryLayout.InRepository("docs");
        File.WriteAllText(Path.Combine(docs, "benchmarks-groups.md"), Markdown(report.Machine, repetitions, samples, figures, failures, clock.Elapsed));
        File.WriteAllText(Path.Combine(BenchmarkReport.Directory, "groups.json"), JsonSerializer.Serialize(new { samples, failures }, Indented));
        Console.WriteLine("  docs/benchmarks-groups.md rewritten");
    }

    /// <summary>Per size: the group's figures against one by one's, as ratios of medians over the repetitions.</summary>
    internal static IReadOnlyList<(string Name, double Value, string Unit)> Figures(IReadOnlyList<GroupSample> samples, IReadOnlyList<int> sizes)
    {
        var result = new List<(string, double, string)>();
        foreach (int n in sizes)
        {
            var group = samples.Where(s => s.Members == n && s.Way == "group").ToList();
            var single = samples.Where(s => s.Members == n && s.Way == "one-by-one").ToList();
            if (group.Count == 0)
            {
                continue;
            }

            result.Add(($"group{n}_downtime_max", ControllerBenchmark.Median(group.Select(s => s.DowntimeMaxMs)), "ms"));
            result.Add(($"group{n}_spread", ControllerBenchmark.Median(group.Select(s => s.SpreadMs)), "ms"));
            result.Add(($"group{n}_total", ControllerBenchmark.Median(group.Select(s => s.TotalMs)), "ms"));
            if (single.Count > 0)
            {
                result.Add(($"group{n}_downtime_max_to_one_by_one_max_ratio", ControllerBenchmark.Median(group.Select(s => s.DowntimeMaxMs)) / ControllerBenchmark.Median(single.Select(s => s.DowntimeMaxMs)), "x"));
                result.Add(($"group{n}_total_to_one_by_one_total_ratio", ControllerBenchmark.Median(group.Select(s => s.TotalMs)) / ControllerBenchmark.Median(single.Select(s => s.TotalMs)), "x"));
            }
        }

        result.Add(("state_continued", samples.Sum(s => s.Continued), $"of {samples.Sum(s => s.Members)}"));
        return result;
    }

    private static async Task<GroupSample> GroupAsync(SandboxCluster cluster, int n, int rep)
    {
        var pods = await StartPodsAsync(cluster, $"g{n}-{rep}", n);
        var name = $"bench-group-{n}-{rep}";
        try
        {
            var clock = Stopwatch.StartNew();
            await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
            {
                ["apiVersion"] = "podmigration.io/v1alpha1",
                ["kind"] = "MigrationRequest",
                ["metadata"] = new JsonObject { ["name"] = name },
                ["spec"] = new JsonObject
                {
                    ["targetNode"] = "node-b",
                    ["timeoutSeconds"] = 900,
                    ["pods"] = new JsonArray([.. pods.Select(p => (JsonNode)new JsonObject { ["podName"] = p.Metadata.Name })]),
                },
            }, MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
            var status = (await ControllerBenchmark.WaitForFinalAsync(cluster, [name], clock))[name].Status;
            double total = clock.Elapsed.TotalMilliseconds;
            var members = status["group"]!["members"]!.AsArray();
            var downtimes = members.Select(m => (double)(long)m!["downtimeMillis"]!).ToList();
            int continued = 0;
            foreach (var member in members)
            {
                var raw = (JsonElement)await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural,
                    (string)member!["request"]!);
                var replacement = (string)JsonNode.Parse(raw.GetRawText())!["status"]!["replacementPod"]!;
                var pod = pods.Single(p => p.Metadata.Name == (string)member["podName"]!);
                continued += await MigrationBenchmark.ContinuedAsync(cluster.Node("node-a").LoggedTicks("default", pod.Metadata.Name, "main", pod.Metadata.Uid),
                    () => cluster.Node("node-b").LoggedTicks("default", replacement, "main")) ? 1 : 0;
            }

            // where the frozen time went: the first freeze to every member frozen (gate Dump), to every member staged (Commit),
            // to every member restored (Release), to the last one released
            var g = status["group"]!;
            var gates = g["gateTimes"]!;
            DateTime At(string gate) => (DateTime)gates[gate]!;
            var first = (DateTime)g["firstFrozenTime"]!;
            double spread = (double?)(long?)g["spreadMillis"] ?? double.NaN;
            return new GroupSample(n, "group", rep, total, downtimes.Max(), ControllerBenchmark.Median(downtimes), spread, continued,
                (At(GroupGates.Dump) - first).TotalMilliseconds, (At(GroupGates.Commit) - At(GroupGates.Dump)).TotalMilliseconds,
                (At(GroupGates.Release) - At(GroupGates.Commit)).TotalMilliseconds, spread - (At(GroupGates.Release) - first).TotalMilliseconds);
        }
        finally
        {
            await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
            await DeletePodsAsync(cluster, pods);
        }
    }

    private static async Task<GroupSample> OneByOneAsync(SandboxCluster cluster, int n, int rep)
    {
        var pods = await StartPodsAsync(cluster, $"s{n}-{rep}", n);
        try
        {
            var clock = Stopwatch.StartNew();
            var downtimes = new List<double>();
            int continued = 0;
            double firstFrozen = double.NaN;
            double lastRunning = 0;
            foreach (var pod in pods)
            {
                var name = "bench-" + pod.Metadata.Name;
                await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
                {
                    ["apiVersion"] = "podmigration.io/v1alpha1",
                    ["kind"] = "MigrationRequest",
                    ["metadata"] = new JsonObject { ["name"] = name },
                    ["spec"] = new JsonObject { ["podName"] = pod.Metadata.Name, ["targetNode"] = "node-b", ["timeoutSeconds"] = 900 },
                }, MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural);
                var status = (await ControllerBenchmark.WaitForFinalAsync(cluster, [name], clock))[name].Status;
                double downtime = (double)(long)status["downtimeMillis"]!;
                downtimes.Add(downtime);
                // the first pod's freeze to the last one's restore, on the operator's clock (its freeze is downtime before its completion, give or take the cut-over)
                double completed = clock.Elapsed.TotalMilliseconds;
                firstFrozen = double.IsNaN(firstFrozen) ? completed - downtime : firstFrozen;
                lastRunning = completed;
                var replacement = (string)status["replacementPod"]!;
                continued += await MigrationBenchmark.ContinuedAsync(cluster.Node("node-a").LoggedTicks("default", pod.Metadata.Name, "main", pod.Metadata.Uid),
                    () => cluster.Node("node-b").LoggedTicks("default", replacement, "main")) ? 1 : 0;
                await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
            }

            return new GroupSample(n, "one-by-one", rep, clock.Elapsed.TotalMilliseconds, downtimes.Max(), ControllerBenchmark.Median(downtimes), lastRunning - firstFrozen, continued);
        }
        finally
        {
            await DeletePodsAsync(cluster, pods);
        }
    }

    private static async Task<List<k8s.Models.V1Pod>> StartPodsAsync(SandboxCluster cluster, string prefix, int n)
    {
        var pods = new List<k8s.Models.V1Pod>();
        for (int i = 1; i <= n; i++)
        {
            pods.Add(await MigrationBenchmark.StartWorkloadAsync(cluster, $"{prefix}-{i}", Mib, 0, "node-a"));
        }

        return pods;
    }

    private static async Task DeletePodsAsync(SandboxCluster cluster, List<k8s.Models.V1Pod> pods)
    {
        var all = await cluster.Client.CoreV1.ListNamespacedPodAsync("default");
        foreach (var name in all.Items.Select(p => p.Metadata.Name).Where(n => pods.Any(p => n == p.Metadata.Name || n.StartsWith(p.Metadata.Name + "-m", StringComparison.Ordinal))))
        {
            await MigrationBenchmark.DeletePodAsync(cluster, name);
        }
    }

    private static string Markdown(JsonObject machine, int repetitions, IReadOnlyList<GroupSample> samples, IReadOnlyList<(string Name, double Value, string Unit)> figures,
        List<string> failures, TimeSpan elapsed)
    {
        var text = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        text.AppendLine("# Group benchmark: pods moved as one consistent cut, against one by one");
        text.AppendLine();
        text.AppendLine(c, $"Written by `hack/bench.sh groups` (part of `make bench`) on {DateTime.UtcNow:yyyy-MM-dd} in {elapsed.TotalMinutes:0.0} min: {machine["cpus"]} CPUs, kernel {machine["kernel"]}, {machine["cpu"]}.");
        text.AppendLine(c, $"A 2-node sandbox (one machine: both nodes' containerd, agents and pods share its CPUs), memcounter pods of {Mib} MiB, idle, the default mode, node-a to node-b; {repetitions} repetition(s).");
        text.AppendLine("Group: one MigrationRequest naming the pods; downtime: each member's freeze to its network's release (its `downtimeMillis`), spread: `status.group.spreadMillis`.");
        text.AppendLine("One by one: the same number of new pods, one single MigrationRequest after another; spread: the first one's freeze to the last one's completion.");
        text.AppendLine("Measurements, never assertions.");
        text.AppendLine();
        MarkdownParts.AppendFigures(text, figures);

        text.AppendLine();
        text.AppendLine("| pods | way | rep | total ms | downtime max ms | downtime median ms | spread ms | continued |");
        text.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var s in samples)
        {
            text.AppendLine(c, $"| {s.Members} | {s.Way} | {s.Repetition} | {s.TotalMs:0} | {s.DowntimeMaxMs:0} | {s.DowntimeMedianMs:0} | {s.SpreadMs:0} | {s.Continued} of {s.Members} |");
        }

        text.AppendLine();
        text.AppendLine("Where a group's frozen time went (`status.group.gateTimes`; the operator's clock for the gates, the agents' for the first freeze and the spread):");
        text.AppendLine("all frozen = the first member's freeze to gate Dump; dumped and staged = Dump to Commit; restored = Commit to Release; released = Release to the last member running again.");
        text.AppendLine();
        text.AppendLine("| pods | rep | all frozen ms | dumped and staged ms | restored ms | released ms |");
        text.AppendLine("| --- | --- | --- | --- | --- | --- |");
        foreach (var s in samples.Where(s => s.Way == "group"))
        {
            text.AppendLine(c, $"| {s.Members} | {s.Repetition} | {s.FreezeAllMs:0} | {s.DumpAllMs:0} | {s.RestoreAllMs:0} | {s.ReleaseMs:0} |");
        }

        MarkdownParts.AppendFailures(text, failures);

        return text.ToString();
    }
}

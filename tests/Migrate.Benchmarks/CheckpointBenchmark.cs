using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using Migrate.Api;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// One checkpoint that left the pod running. FreezeMs: how long the tool says it held the pod
/// (our agent's freeze-to-thaw; runc's whole command, during which CRIU holds the tree).
/// GapMs: the longest silence in the pod's own output around the checkpoint, less one tick
/// interval: what the workload saw.
/// </summary>
public sealed record CheckpointSample(string Tool, int Mib, int Repetition, double FreezeMs, double GapMs, double TotalMs, long Bytes, bool Continued, string Breakdown = "",
    double ExportMs = 0, long ExportBytes = 0, long OwnBytes = 0);

/// <summary>One restore of a checkpoint on the other node: from the node that kept it, or imported from the archive storage first.</summary>
public sealed record RestoreSample(int Mib, int Repetition, string From, double TotalMs, double ImportMs, double RestoreMs, bool Continued);

/// <summary>
/// Checkpoints that leave the pod running, in the sandbox: memcounter pods (idle) checkpointed by
/// a Checkpoint resource and, side by side, by what a user would run on the node (<c>runc
/// checkpoint --leave-running</c> of the pod's container); then a Restore of our checkpoint on the
/// other node (request to Running). Measurements only: docs/benchmarks-checkpoint.md.
/// </summary>
public static class CheckpointBenchmark
{
    private const double TickMs = 100;
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static async Task RunAsync(BenchmarkReport report, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(report);
        int repetitions = int.Parse(MigrationBenchmark.Option(args, "--reps", "3"), CultureInfo.InvariantCulture);
        var sizes = MigrationBenchmark.Option(args, "--sizes", "64,1024").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToList();
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));
        var samples = new List<CheckpointSample>();
        var restores = new List<RestoreSample>();
        var failures = new List<string>();
        Say($"starting a 2-node sandbox; sizes {string.Join(", ", sizes)} MiB, {repetitions} repetitions of: ours, ours exported, runc checkpoint --leave-running, a restore of ours from the node and one from the archive storage");
        await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { PhaseTimeoutSeconds = 900 }, line => Say(line)))
        {
            foreach (int mib in sizes)
            {
                for (int rep = 1; rep <= repetitions; rep++)
                {
                    var name = $"ck-{mib}-{rep}";
                    try
                    {
                        var pod = await MigrationBenchmark.StartWorkloadAsync(cluster, name, mib, 0);
                        try
                        {
                            // alternate which goes first, so that neither always meets a pod that was just frozen
                            // ("delta" right after "ours": a delta on it)
                            foreach (var tool in rep % 2 == 1 ? new[] { "ours", "delta", "exported", "runc" } : ["runc", "exported", "ours", "delta"])
                            {
                                var sample = tool == "runc" ? await RuncAsync(cluster, pod, mib, rep) : await OursAsync(cluster, pod, mib, rep, tool);
                                samples.Add(sample);
                                Say(string.Create(CultureInfo.InvariantCulture,
                                    $"{mib} MiB #{rep} {tool}: freeze {sample.FreezeMs:0} ms, gap seen by the pod {sample.GapMs:0} ms, total {sample.TotalMs:0} ms, {sample.Bytes / 1048576.0:0.0} MiB, continued {sample.Continued}{(sample.Breakdown.Length > 0 ? "; " + sample.Breakdown : "")}"));
                            }

                            foreach (var from in new[] { "node", "archive" })
                            {
                                var restore = await RestoreAsync(cluster, pod, mib, rep, from);
                                restores.Add(restore);
                                Say(string.Create(CultureInfo.InvariantCulture,
                                    $"{mib} MiB #{rep} restore on node-b from the {from}: {restore.TotalMs:0} ms to Running (import {restore.ImportMs:0} ms, restore itself {restore.RestoreMs:0} ms), continued {restore.Continued}"));
                            }
                        }
                        finally
                        {
                            foreach (var checkpoint in await ListAsync(cluster, Checkpoint.Plural))
                            {
                                await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", Checkpoint.Plural,
                                    (string)checkpoint["metadata"]!["name"]!);
                            }

                            await MigrationBenchmark.WaitForAsync(async () => !(await ListAsync(cluster, Checkpoint.Plural)).Any(), TimeSpan.FromMinutes(2), "the checkpoint to be deleted");
                            await MigrationBenchmark.DeletePodAsync(cluster, name);
                        }
                    }
                    catch (Exception e) when (e is InvalidOperationException or TimeoutException or k8s.Autorest.HttpOperationException or IOException)
                    {
                        failures.Add($"{name}: {e.Message}");
                        Say($"FAILED {name}: {e.Message}");
                    }
                }
            }
        }

        var figures = Figures(samples, restores);
        foreach (var (figure, value, unit) in figures)
        {
            report.Add("checkpoint", figure, value, unit);
        }

        var docs = RepositoryLayout.InRepository("docs");
        Directory.CreateDirectory(docs);
        File.WriteAllText(Path.Combine(docs, "benchmarks-checkpoint.md"), Markdown(report.Machine, repetitions, samples, restores, figures, failures, clock.Elapsed));
        Directory.CreateDirectory(BenchmarkReport.Directory);
        File.WriteAllText(Path.Combine(BenchmarkReport.Directory, "checkpoint.json"),
            JsonSerializer.Serialize(new { samples, restores, failures }, Indented));
        Console.WriteLine("  docs/benchmarks-checkpoint.md rewritten");
    }

    /// <summary>Medians per size, and ours against runc's as ratios (below 1: ours freezes the pod for less).</summary>
    internal static IReadOnlyList<(string Name, double Value, string Unit)> Figures(IReadOnlyList<CheckpointSample> samples, IReadOnlyList<RestoreSample> restores)
    {
        var result = new List<(string, double, string)>();
        foreach (var mib in samples.Select(s => s.Mib).Distinct().Order())
        {
            var ours = samples.Where(s => s.Mib == mib && s.Tool == "ours").ToList();
            var runc = samples.Where(s => s.Mib == mib && s.Tool == "runc").ToList();
            if (ours.Count == 0 || runc.Count == 0)
            {
                continue;
            }

            double oursFreeze = ControllerBenchmark.Median(ours.Select(s => s.FreezeMs)), runcFreeze = ControllerBenchmark.Median(runc.Select(s => s.FreezeMs));
            double oursGap = ControllerBenchmark.Median(ours.Select(s => s.GapMs)), runcGap = ControllerBenchmark.Median(runc.Select(s => s.GapMs));
            result.Add(($"{mib}mib_ours_freeze_median", oursFreeze, "ms"));
            result.Add(($"{mib}mib_runc_freeze_median", runcFreeze, "ms"));
            result.Add(($"{mib}mib_freeze_ratio", oursFreeze / runcFreeze, "x"));
            result.Add(($"{mib}mib_ours_gap_median", oursGap, "ms"));
            result.Add(($"{mib}mib_runc_gap_median", runcGap, "ms"));
            result.Add(($"{mib}mib_gap_ratio", oursGap / runcGap, "x"));
            if (samples.Where(s => s.Mib == mib && s.Tool == "exported").ToList() is { Count: > 0 } exported)
            {
                double exportedFreeze = ControllerBenchmark.Median(exported.Select(s => s.FreezeMs));
                result.Add(($"{mib}mib_exported_freeze_median", exportedFreeze, "ms"));
                result.Add(($"{mib}mib_exported_freeze_ratio", exportedFreeze / runcFreeze, "x"));
                result.Add(($"{mib}mib_export_throughput_median", ControllerBenchmark.Median(exported.Select(s => s.ExportBytes / 1e6 / Math.Max(1, s.ExportMs) * 1000)), "MB/s"));
            }

            if (samples.Where(s => s.Mib == mib && s.Tool == "delta").ToList() is { Count: > 0 } delta)
            {
                double deltaFreeze = ControllerBenchmark.Median(delta.Select(s => s.FreezeMs)), deltaOwn = ControllerBenchmark.Median(delta.Select(s => (double)s.OwnBytes));
                result.Add(($"{mib}mib_delta_freeze_median", deltaFreeze, "ms"));
                result.Add(($"{mib}mib_delta_freeze_ratio", deltaFreeze / runcFreeze, "x"));
                result.Add(($"{mib}mib_delta_own_median", deltaOwn / 1048576, "MiB"));
                result.Add(($"{mib}mib_delta_own_ratio", deltaOwn / ControllerBenchmark.Median(ours.Select(s => (double)s.Bytes)), "x"));
            }

            if (restores.Where(r => r.Mib == mib && r.From == "node").ToList() is { Count: > 0 } restored)
            {
                result.Add(($"{mib}mib_restore_to_running_median", ControllerBenchmark.Median(restored.Select(r => r.TotalMs)), "ms"));
            }

            if (restores.Where(r => r.Mib == mib && r.From == "archive").ToList() is { Count: > 0 } imported)
            {
                result.Add(($"{mib}mib_restore_from_archive_to_running_median", ControllerBenchmark.Median(imported.Select(r => r.TotalMs)), "ms"));
            }
        }

        result.Add(("state_continued", samples.Count(s => s.Continued), $"of {samples.Count}"));
        return result;
    }

    private static async Task<CheckpointSample> OursAsync(SandboxCluster cluster, k8s.Models.V1Pod pod, int mib, int rep, string tool)
    {
        bool export = tool == "exported";
        var name = pod.Metadata.Name + tool switch { "exported" => "-x", "delta" => "-d", _ => "" };
        var node = cluster.Node(pod.Spec.NodeName);
        var clock = Stopwatch.StartNew();
        var started = DateTime.UtcNow;
        await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
        {
            ["apiVersion"] = "podmigration.io/v1alpha1",
            ["kind"] = "Checkpoint",
            ["metadata"] = new JsonObject { ["name"] = name },
            ["spec"] = tool switch
            {
                "exported" => new JsonObject { ["podName"] = pod.Metadata.Name, ["export"] = new JsonObject { ["path"] = "bench/" + name } },
                "delta" => new JsonObject { ["podName"] = pod.Metadata.Name },
                _ => new JsonObject { ["podName"] = pod.Metadata.Name, ["incremental"] = false }, // full, as runc's (not a delta on the exported one)
            },
        }, MigrationRequest.Group, MigrationRequest.Version, "default", Checkpoint.Plural);
        var status = await FinalStatusAsync(cluster, Checkpoint.Plural, name, "Ready");

        double total = clock.Elapsed.TotalMilliseconds;
        if ((string?)status!["phase"] != "Ready")
        {
            throw new InvalidOperationException($"checkpoint {name} failed: {status["message"]}");
        }

        if (tool == "delta" && status["parent"] is null)
        {
            throw new InvalidOperationException($"checkpoint {name} was taken as a full one, not as a delta: {status["chainNote"]}");
        }

        var (gap, continued) = await GapAsync(node, pod, started);
        double exportMs = status["export"]?["millis"] is { } millis ? (long)millis : 0;
        long exportBytes = status["export"]?["sizeBytes"] is { } size ? (long)size : 0;
        var exported = export ? string.Create(CultureInfo.InvariantCulture, $"; export {exportBytes / 1048576.0:0.0} MiB in {exportMs:0} ms ({exportBytes / 1e6 / Math.Max(1, exportMs) * 1000:0} MB/s)") : "";
        long own = status["ownBytes"] is { } ownBytes ? (long)ownBytes : (long)status["sizeBytes"]!;
        return new CheckpointSample(tool, mib, rep, (double)(long)status["freezeMillis"]!, gap, total, (long)status["sizeBytes"]!, continued,
            Breakdown((string)status["location"]!) + exported, exportMs, exportBytes, own);
    }

    private static async Task<CheckpointSample> RuncAsync(SandboxCluster cluster, k8s.Models.V1Pod pod, int mib, int rep)
    {
        var node = cluster.Node(pod.Spec.NodeName);
        var containerId = pod.Status.ContainerStatuses[0].ContainerID.Split("://")[1];
        var root = Directory.EnumerateDirectories(node.Containerd.RuncRoot).First(d => Directory.Exists(Path.Combine(d, containerId)));
        var images = Directory.CreateDirectory(Path.Combine(node.Containerd.Root, $"runc-checkpoint-{pod.Metadata.Name}")).FullName;
        try
        {
            var started = DateTime.UtcNow;
            var clock = Stopwatch.StartNew();
            Prerequisites.Run("runc", "--root", root, "checkpoint", "--leave-running", "--image-path", images, "--work-path", Path.Combine(images, "work"), containerId);
            double freeze = clock.Elapsed.TotalMilliseconds;
            long bytes = Directory.EnumerateFiles(images, "*", SearchOption.AllDirectories).Where(f => !f.Contains("/work/", StringComparison.Ordinal)).Sum(f => new FileInfo(f).Length);
            var (gap, continued) = await GapAsync(node, pod, started);
            return new CheckpointSample("runc", mib, rep, freeze, gap, freeze, bytes, continued);
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }

    /// <summary>
    /// A restore on node-b, request to Running: of the checkpoint kept on node-a ("node"), or of the
    /// exported one imported from the archive storage onto node-b first ("archive", import included).
    /// </summary>
    private static async Task<RestoreSample> RestoreAsync(SandboxCluster cluster, k8s.Models.V1Pod pod, int mib, int rep, string from)
    {
        var name = pod.Metadata.Name;
        var checkpoint = name;
        var back = $"{name}-back-{from}";
        var clock = Stopwatch.StartNew();
        double importMs = 0;
        if (from == "archive")
        {
            checkpoint = name + "-imp";
            await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
            {
                ["apiVersion"] = "podmigration.io/v1alpha1",
                ["kind"] = "Checkpoint",
                ["metadata"] = new JsonObject { ["name"] = checkpoint },
                ["spec"] = new JsonObject { ["source"] = new JsonObject { ["path"] = $"bench/{name}-x" }, ["nodeName"] = "node-b" },
            }, MigrationRequest.Group, MigrationRequest.Version, "default", Checkpoint.Plural);
            var imported = await FinalStatusAsync(cluster, Checkpoint.Plural, checkpoint, "Ready");

            if ((string?)imported!["phase"] != "Ready")
            {
                throw new InvalidOperationException($"import {checkpoint} failed: {imported["message"]}");
            }

            importMs = clock.Elapsed.TotalMilliseconds;
        }

        await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
        {
            ["apiVersion"] = "podmigration.io/v1alpha1",
            ["kind"] = "Restore",
            ["metadata"] = new JsonObject { ["name"] = back },
            ["spec"] = new JsonObject { ["checkpointName"] = checkpoint, ["nodeName"] = "node-b" },
        }, MigrationRequest.Group, MigrationRequest.Version, "default", Restore.Plural);
        var status = await FinalStatusAsync(cluster, Restore.Plural, back, "Succeeded");

        double total = clock.Elapsed.TotalMilliseconds;
        try
        {
            if ((string?)status!["phase"] != "Succeeded")
            {
                throw new InvalidOperationException($"restore {back} failed: {status["message"]}");
            }

            var restored = cluster.Node("node-b");
            IReadOnlyList<MemcounterTick> ticks = [];
            await MigrationBenchmark.WaitForAsync(() => (ticks = restored.LoggedTicks("default", back, "main")).Count >= 3, TimeSpan.FromMinutes(1), "the restored pod to tick");
            bool continued = ticks[0].Tick > 1 && ticks.Select((t, i) => t.Tick == ticks[0].Tick + i).All(x => x) && !ticks.Any(t => t.Verified == "BAD");
            return new RestoreSample(mib, rep, from, total, importMs, (double?)(long?)status["restoreMillis"] ?? double.NaN, continued);
        }
        finally
        {
            await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", Restore.Plural, back);
            await MigrationBenchmark.DeletePodAsync(cluster, back);
        }
    }

    /// <summary>
    /// The longest silence between two of the pod's ticks (by the runtime's log timestamps) from
    /// <paramref name="since"/> on, less one interval, once the pod has ticked a few times after;
    /// and whether its ticks stayed consecutive and its memory checks passed.
    /// </summary>
    private static async Task<(double GapMs, bool Continued)> GapAsync(SandboxNode node, k8s.Models.V1Pod pod, DateTime since)
    {
        List<(DateTime At, MemcounterTick Tick)> ticks = [];
        await MigrationBenchmark.WaitForAsync(() => (ticks = TimedTicks(node, pod)).Count(t => t.At >= since) >= 5 && ticks[^1].At > DateTime.UtcNow.AddSeconds(-1),
            TimeSpan.FromMinutes(1), $"{pod.Metadata.Name} to tick after the checkpoint");
        var window = ticks.Where(t => t.At >= since.AddMilliseconds(-2 * TickMs)).ToList();
        double gap = window.Zip(window.Skip(1), (a, b) => (b.At - a.At).TotalMilliseconds).DefaultIfEmpty(TickMs).Max() - TickMs;
        bool continued = ticks.Select((t, i) => t.Tick.Tick == ticks[0].Tick.Tick + i).All(x => x) && !ticks.Any(t => t.Tick.Verified == "BAD");
        return (Math.Max(0, gap), continued);
    }

    /// <summary>The pod's ticks with the time the runtime logged each.</summary>
    private static List<(DateTime At, MemcounterTick Tick)> TimedTicks(SandboxNode node, k8s.Models.V1Pod pod) =>
        [.. node.TimedTicks("default", pod.Metadata.Name, pod.Spec.Containers[0].Name, pod.Metadata.Uid)];

    /// <summary>Where the agent says the freeze went, from the checkpoint's description on the node (checkpoint.json).</summary>
    private static string Breakdown(string location)
    {
        var description = JsonNode.Parse(File.ReadAllText(Path.Combine(location[(location.IndexOf(':', StringComparison.Ordinal) + 1)..], "checkpoint.json")))!;
        var dump = description["dump"];
        long Millis(JsonNode? node, string name) => node?[name] is { } value ? value.GetValue<long>() : 0;
        long capture = dump?["containers"]?.AsArray().Sum(c => Millis(c, "memoryCaptureMillis")) ?? 0;
        return string.Create(CultureInfo.InvariantCulture,
            $"freezing {Millis(dump, "freezeMillis")} ms, dump {Millis(dump, "dumpMillis")} ms (of it reading changed memory {capture} ms), file system {Millis(dump, "filesystemMillis")} ms; lazy memory {description["lazyMemory"]?.GetValue<bool>() ?? false}");
    }

    /// <summary>Polls an object until its status.phase is <paramref name="done"/> or Failed (at most 10 minutes); returns the status.</summary>
    private static async Task<JsonNode> FinalStatusAsync(SandboxCluster cluster, string plural, string name, string done)
    {
        var clock = Stopwatch.StartNew();
        JsonNode? status = null;
        while ((string?)status?["phase"] != done && (string?)status?["phase"] != "Failed")
        {
            if (clock.Elapsed > TimeSpan.FromMinutes(10))
            {
                throw new TimeoutException($"{plural}/{name} is not {done} after 10 minutes");
            }

            await Task.Delay(20);
            var raw = (JsonElement)await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", plural, name);
            status = JsonNode.Parse(raw.GetRawText())!["status"];
        }

        return status!;
    }

    private static async Task<IReadOnlyList<JsonNode>> ListAsync(SandboxCluster cluster, string plural)
    {
        var raw = (JsonElement)await cluster.Client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", plural);
        return [.. JsonNode.Parse(raw.GetRawText())!["items"]!.AsArray().OfType<JsonNode>()];
    }

    private static string Markdown(JsonObject machine, int repetitions, IReadOnlyList<CheckpointSample> samples,
        IReadOnlyList<RestoreSample> restores,
        IReadOnlyList<(string Name, double Value, string Unit)> figures, List<string> failures, TimeSpan elapsed)
    {
        var text = new StringBuilder();
        text.AppendLine("# Checkpoints that leave the pod running (make bench: hack/bench.sh checkpoint)");
        text.AppendLine();
        text.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Written by the benchmark on {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC in {elapsed.TotalMinutes:0.0} min; machine: {machine.ToJsonString()}; {repetitions} repetitions per size."));
        text.AppendLine();
        text.AppendLine("A memcounter pod (idle, one tick every 100 ms) checkpointed by a `Checkpoint` resource (ours) and, on the same pod, by");
        text.AppendLine("`runc checkpoint --leave-running` of its container (what a user would run on the node). *Freeze*: ours is the agent's");
        text.AppendLine("freeze-to-thaw; runc's is the whole command (CRIU holds the tree for most of it). *Gap*: the longest silence in the pod's");
        text.AppendLine("own output (the runtime's log timestamps) around the checkpoint, less one tick: what the workload saw. *Total*: ours from");
        text.AppendLine("the request to Ready. Ours also keeps the writable layer and checks the pod; runc's keeps only the CRIU images. *exported*: ours");
        text.AppendLine("with `spec.export` (one full dump, no pre-copy: an export holds no chain), written to the archive storage as an OCI image layout.");
        text.AppendLine("*ours* is a full checkpoint (`incremental: false`); *delta* is the next checkpoint of the same pod, right after it, taken as a delta on");
        text.AppendLine("it (the default): *MiB its own* is what it added, the rest is hard-linked from its parent.");
        text.AppendLine();
        text.AppendLine("| MiB | tool | freeze ms (median, min-max) | gap ms (median, min-max) | total ms (median) | MiB kept | MiB its own | state continued |");
        text.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var group in samples.GroupBy(s => (s.Mib, s.Tool)).OrderBy(g => g.Key.Mib).ThenBy(g => g.Key.Tool, StringComparer.Ordinal))
        {
            var list = group.ToList();
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {group.Key.Mib} | {group.Key.Tool} | {ControllerBenchmark.Median(list.Select(s => s.FreezeMs)):0} ({list.Min(s => s.FreezeMs):0}-{list.Max(s => s.FreezeMs):0}) | {ControllerBenchmark.Median(list.Select(s => s.GapMs)):0} ({list.Min(s => s.GapMs):0}-{list.Max(s => s.GapMs):0}) | {ControllerBenchmark.Median(list.Select(s => s.TotalMs)):0} | {ControllerBenchmark.Median(list.Select(s => (double)s.Bytes)) / 1048576:0.0} | {ControllerBenchmark.Median(list.Select(s => (double)(s.OwnBytes > 0 ? s.OwnBytes : s.Bytes))) / 1048576:0.00} | {list.Count(s => s.Continued)}/{list.Count} |"));
        }

        text.AppendLine();
        text.AppendLine("Where ours froze the pod, by the agent's own figures (checkpoint.json on the node):");
        text.AppendLine();
        foreach (var sample in samples.Where(s => s.Breakdown.Length > 0))
        {
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- {sample.Mib} MiB #{sample.Repetition}: freeze {sample.FreezeMs:0} ms: {sample.Breakdown}"));
        }

        text.AppendLine();
        text.AppendLine("Restore on the other node, request to Running. *node*: our checkpoint kept on node-a (`Restore`: the images sent, verified, the pod");
        text.AppendLine("made and restored). *archive*: the exported checkpoint imported from the archive storage onto node-b (every digest checked), then restored there:");
        text.AppendLine();
        text.AppendLine("| MiB | from | to Running ms (median, min-max) | import ms (median) | restore itself ms (median) | state continued |");
        text.AppendLine("|---|---|---|---|---|---|");
        foreach (var group in restores.GroupBy(r => (r.Mib, r.From)).OrderBy(g => g.Key.Mib).ThenBy(g => g.Key.From, StringComparer.Ordinal))
        {
            var list = group.ToList();
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {group.Key.Mib} | {group.Key.From} | {ControllerBenchmark.Median(list.Select(r => r.TotalMs)):0} ({list.Min(r => r.TotalMs):0}-{list.Max(r => r.TotalMs):0}) | {ControllerBenchmark.Median(list.Select(r => r.ImportMs)):0} | {ControllerBenchmark.Median(list.Select(r => r.RestoreMs)):0} | {list.Count(r => r.Continued)}/{list.Count} |"));
        }

        text.AppendLine();
        text.AppendLine("| figure | value |");
        text.AppendLine("|---|---|");
        foreach (var (name, value, unit) in figures)
        {
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {value:0.##} {unit} |"));
        }

        if (failures.Count > 0)
        {
            text.AppendLine();
            text.AppendLine("Failures: " + string.Join("; ", failures));
        }

        return text.ToString();
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// One migration of a server pod holding N connections. Kept: keepAddress, the client keeps its
/// connections; GapMs is the longest time any connection went without receiving (the client's
/// own measure), Resets and Broken count connections reset and records lost or repeated.
/// NewAddress: today's behaviour for such a pod, without keepAddress (the same server with no
/// client: a pod holding connections is refused, so its clients must close them first; they
/// lose all N and must find the new address), DowntimeMs the operator's.
/// </summary>
public sealed record ConnectionSample(string Method, int Connections, int Repetition, double? GapMs, double? DowntimeMs, int Resets, int Broken, bool SameAddress, string Outcome);

/// <summary>
/// make bench connections: a seqstream server pod with 1, 100 and 1,000 connections from a client
/// on the pod network's segment (outside every pod), moved keeping its address, beside the same
/// server moved without (today's new address). Measurements only: docs/connections.md.
/// </summary>
public static class ConnectionBenchmark
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static async Task RunAsync(BenchmarkReport report, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(report);
        int repetitions = int.Parse(MigrationBenchmark.Option(args, "--reps", "3"), CultureInfo.InvariantCulture);
        var counts = MigrationBenchmark.Option(args, "--connections", "1,100,1000").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToList();
        var mode = MigrationBenchmark.Option(args, "--mode", "PreCopy");
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));
        var samples = new List<ConnectionSample>();
        var failures = new List<string>();
        Say($"starting a 2-node sandbox; {string.Join(", ", counts)} connection(s), {repetitions} repetitions, {mode}: kept address, then new address");
        await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { PhaseTimeoutSeconds = 600 }, line => Say(line)))
        {
            var seqstream = Workloads.Build("seqstream");
            foreach (int count in counts)
            {
                for (int rep = 1; rep <= repetitions; rep++)
                {
                    foreach (var method in rep % 2 == 1 ? new[] { "Kept", "NewAddress" } : ["NewAddress", "Kept"])
                    {
                        try
                        {
                            var sample = await RunOneAsync(cluster, seqstream, method, count, rep, mode);
                            samples.Add(sample);
                            Say(string.Create(CultureInfo.InvariantCulture,
                                $"{count} connection(s) #{rep} {method}: gap seen by the client {(sample.GapMs is { } g ? g.ToString("0", CultureInfo.InvariantCulture) + " ms" : "-")}, downtime {sample.DowntimeMs?.ToString("0", CultureInfo.InvariantCulture) ?? "-"} ms, resets {sample.Resets}, records lost or repeated {sample.Broken}, same address {sample.SameAddress}; {sample.Outcome}"));
                        }
                        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or k8s.Autorest.HttpOperationException)
                        {
                            failures.Add($"{count} #{rep} {method}: {e.Message}");
                            Say($"{count} connection(s) #{rep} {method} FAILED: {e.Message}");
                        }
                    }
                }
            }
        }

        foreach (var group in samples.GroupBy(s => (s.Method, s.Connections)))
        {
            var gaps = group.Where(s => s.GapMs is not null).Select(s => s.GapMs!.Value).ToList();
            var downtimes = group.Where(s => s.DowntimeMs is not null).Select(s => s.DowntimeMs!.Value).ToList();
            if (gaps.Count > 0)
            {
                report.Add("connections", $"{group.Key.Method} {group.Key.Connections}: client gap p50", Median(gaps), "ms");
            }

            report.Add("connections", $"{group.Key.Method} {group.Key.Connections}: downtime p50", Median(downtimes), "ms");
            report.Add("connections", $"{group.Key.Method} {group.Key.Connections}: resets", group.Sum(s => s.Resets), "connections");
        }

        Directory.CreateDirectory(BenchmarkReport.Directory);
        File.WriteAllText(Path.Combine(BenchmarkReport.Directory, "connections.json"), JsonSerializer.Serialize(new { samples, failures }, Indented));
        File.WriteAllText(RepositoryLayout.InRepository("docs", "benchmarks-connections.md"), Markdown(samples, failures, mode, repetitions));
        Say("wrote artifacts/bench/connections.json and docs/benchmarks-connections.md");
    }

    private static async Task<ConnectionSample> RunOneAsync(SandboxCluster cluster, string seqstream, string method, int count, int rep, string mode)
    {
        var name = $"conn-{count}-{rep}-{method.ToLowerInvariant()}";
        int interval = count >= 1000 ? 50 : 10;
        await cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name },
            Spec = new V1PodSpec
            {
                NodeName = "node-a",
                Containers = [new V1Container
                {
                    Name = "main", Image = TestImages.Memcounter, Command = ["/bin/seqstream"],
                    Args = ["--listen", "7000", "--connections", count.ToString(CultureInfo.InvariantCulture), "--interval-ms", interval.ToString(CultureInfo.InvariantCulture)],
                }],
            },
        }, "default");
        var source = await cluster.WaitForPodRunningAsync(name);
        var address = source.Status.PodIP;
        var log = Path.Combine(cluster.Directory, name + "-client.log");
        File.WriteAllText(log, "");
        using var segment = L2Segment.OnBridge(cluster.Network!.Bridge);
        Process? client = null;
        try
        {
            if (method == "Kept")
            {
                var member = segment.Add("client", cluster.Network.ClientAddress(250));
                client = L2Segment.Start(member, log, seqstream, "--connect", address + ":7000", "--connections", count.ToString(CultureInfo.InvariantCulture),
                    "--interval-ms", interval.ToString(CultureInfo.InvariantCulture));
                // every connection carries records both ways before the move
                await MigrationBenchmark.WaitForAsync(() => Received(log) >= count * 20L || client.HasExited, TimeSpan.FromSeconds(120), "the client's connections to carry records");
            }

            long before = Received(log);
            var status = await MigrateAsync(cluster, name, mode, keepAddress: method == "Kept");
            var replacement = (string)status["replacementPod"]!;
            var moved = await cluster.WaitForPodRunningAsync(replacement);
            double? downtime = (long?)status["downtimeMillis"];
            double? gap = null;
            if (client is not null)
            {
                // 1 s more of records on every connection, then the longest silence any of them had
                await MigrationBenchmark.WaitForAsync(() => Received(log) >= before + (count * 1000L / interval) || client.HasExited, TimeSpan.FromSeconds(120), "records to flow after the move");
                await Task.Delay(1100);
                gap = LastFigure(log, @"maxgap (\d+)");
            }

            var text = File.ReadAllText(log);
            int resets = Regex.Count(text, "error: connection .*(reset|closed)");
            int broken = Regex.Count(text, "error: .*(expected|repeat|gap)");
            await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync("podmigration.io", "v1alpha1", "default", "migrationrequests", "move-" + name);
            await MigrationBenchmark.DeletePodAsync(cluster, replacement);
            // without keepAddress every connection is lost by construction: its client must close it before the move
            return new ConnectionSample(method, count, rep, gap, downtime, method == "Kept" ? resets : count, broken, moved.Status.PodIP == address,
                method == "Kept" ? (client!.HasExited ? "client ended" : "every connection carried on") : "new address; the clients must close their connections first and reconnect there");
        }
        finally
        {
            if (client is { HasExited: false })
            {
                client.Kill();
                await client.WaitForExitAsync();
            }

            client?.Dispose();
            try
            {
                await MigrationBenchmark.DeletePodAsync(cluster, name);
            }
            catch (k8s.Autorest.HttpOperationException)
            {
                // moved: the source is gone
            }
        }
    }

    private static async Task<JsonNode> MigrateAsync(SandboxCluster cluster, string pod, string mode, bool keepAddress)
    {
        var request = new JsonObject
        {
            ["apiVersion"] = "podmigration.io/v1alpha1",
            ["kind"] = "MigrationRequest",
            ["metadata"] = new JsonObject { ["name"] = "move-" + pod },
            ["spec"] = new JsonObject { ["podName"] = pod, ["targetNode"] = "node-b", ["mode"] = mode, ["keepAddress"] = keepAddress, ["timeoutSeconds"] = 600 },
        };
        await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(request, "podmigration.io", "v1alpha1", "default", "migrationrequests");
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(10))
        {
            var raw = (JsonElement)await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync("podmigration.io", "v1alpha1", "default", "migrationrequests", "move-" + pod);
            var status = JsonNode.Parse(raw.GetRawText())!["status"] ?? new JsonObject();
            var phase = (string?)status["phase"];
            if (phase is "Succeeded")
            {
                return status;
            }

            if (phase is "Failed" or "RolledBack")
            {
                throw new InvalidOperationException($"migration of {pod} ended {phase}: {status["reason"]}: {status["message"]}");
            }

            await Task.Delay(20);
        }

        throw new TimeoutException($"migration of {pod} did not end within 10 minutes");
    }

    private static long Received(string log) => (long)LastFigure(log, @"received (\d+) maxgap");

    private static double LastFigure(string log, string pattern)
    {
        var text = File.ReadAllText(log);
        var last = Regex.Matches(text, pattern).LastOrDefault();
        return last is null ? 0 : double.Parse(last.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private static string Markdown(List<ConnectionSample> samples, List<string> failures, string mode, int repetitions)
    {
        var text = new StringBuilder();
        text.AppendLine("# Connections through a migration (make bench connections)");
        text.AppendLine();
        text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"Generated by `hack/bench.sh connections` on {DateTime.UtcNow:yyyy-MM-dd} ({Environment.ProcessorCount} cores); {repetitions} repetitions, mode {mode}, 2-node sandbox on one layer-2 segment (podmig-ipam)."));
        text.AppendLine();
        text.AppendLine("A seqstream server pod (a listening socket and N accepted connections, each carrying 8-byte sequence numbers both ways, checked at both ends) and a seqstream client on the pod network's segment, outside every pod. **Kept**: `keepAddress: true`; the client's longest gap is the longest time any of its connections went without receiving, as the client measured it. **NewAddress**: today's behaviour without `keepAddress`: the agent refuses a pod holding established connections, so its clients must close them (all N lost) and find the new address; the same server, without a client, moves with a new IP, and its downtime is the operator's `downtimeMillis`.");
        text.AppendLine();
        text.AppendLine("| connections | method | client gap ms (median, min-max) | downtime ms (median, min-max) | kept / new address (downtime medians) | connections lost | records lost or repeated | same address | outcome |");
        text.AppendLine("| ---: | --- | --- | --- | ---: | ---: | ---: | --- | --- |");
        foreach (var group in samples.GroupBy(s => (s.Connections, s.Method)).OrderBy(g => g.Key.Connections).ThenBy(g => g.Key.Method, StringComparer.Ordinal))
        {
            var gaps = group.Where(s => s.GapMs is not null).Select(s => s.GapMs!.Value).ToList();
            var gapText = gaps.Count == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{Median(gaps):0} ({gaps.Min():0}-{gaps.Max():0})");
            var downtimes = group.Where(s => s.DowntimeMs is not null).Select(s => s.DowntimeMs!.Value).ToList();
            var downtimeText = downtimes.Count == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{Median(downtimes):0} ({downtimes.Min():0}-{downtimes.Max():0})");
            var baseline = samples.Where(s => s.Connections == group.Key.Connections && s.Method == "NewAddress" && s.DowntimeMs is not null).Select(s => s.DowntimeMs!.Value).ToList();
            var ratio = group.Key.Method == "Kept" && baseline.Count > 0 && downtimes.Count > 0
                ? string.Create(CultureInfo.InvariantCulture, $"{Median(downtimes) / Median(baseline):0.00}") : "-";
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {group.Key.Connections} | {group.Key.Method} | {gapText} | {downtimeText} | {ratio} | {group.Sum(s => s.Resets)} | {group.Sum(s => s.Broken)} | {group.Count(s => s.SameAddress)}/{group.Count()} | {group.First().Outcome} |"));
        }

        if (failures.Count > 0)
        {
            text.AppendLine();
            text.AppendLine("Runs that failed:");
            foreach (var failure in failures)
            {
                text.AppendLine("- " + failure);
            }
        }

        return text.ToString();
    }
}

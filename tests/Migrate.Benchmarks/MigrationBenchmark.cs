using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Models;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>One migration of one workload by one method.</summary>
public sealed record MigrationSample(
    string Method, int Mib, string Workload, int Repetition, double TotalMs, double DowntimeMs, double CheckpointMs, double TransferMs, double RestoreMs,
    long ImageBytes, long BytesTransferred, int Rounds, bool StateContinued, double? PauseMs = null, long PostCopyBytes = 0, string? RanAs = null,
    double? RestoreToRunningMs = null)
{
    /// <summary>
    /// MB/s of the copy step (all the images for Manual and Cold; PreCopy and Hybrid send most while the pod runs,
    /// PostCopy after the replacement runs: none).
    /// </summary>
    public double? TransferMBps => Method is "PreCopy" or "Hybrid" or "PostCopy" or "Auto" || TransferMs <= 0 ? null : BytesTransferred / 1e6 / (TransferMs / 1000);
}

/// <summary>
/// Migration downtime and total time in the sandbox, ours (Cold and PreCopy) against the manual
/// runc checkpoint / tar / TCP / runc restore pipeline on the same nodes, for memcounter workloads
/// of several sizes, idle or dirtying memory. Interleaved (manual, cold, precopy per repetition)
/// so drift hits all three; medians with min and max; measurements only, nothing asserted.
/// </summary>
public static class MigrationBenchmark
{
    /// <summary>How often the workloads tick (and stamp the time): the resolution of the pause they see.</summary>
    public const string TickIntervalMs = "10";

    /// <summary>The baselines and our modes; Auto is a request that names no mode (the default), which the operator resolves (status.mode).</summary>
    public static readonly string[] Methods = ["Manual", "Podman", "Cold", "PreCopy", "PostCopy", "Hybrid", "Auto"];

    /// <summary>Our modes that keep the pod running while memory moves (judged on the pause the pod saw).</summary>
    public static readonly string[] LiveModes = ["PreCopy", "PostCopy", "Hybrid", "Auto"];
    public static readonly (string Name, double DirtyPercent)[] Workloads = [("idle", 0), ("dirtying", 5)];

    public static async Task RunAsync(BenchmarkReport report, IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(report);
        var sizes = Option(args, "--sizes", "64,256,1024").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int repetitions = int.Parse(Option(args, "--reps", "5"), CultureInfo.InvariantCulture);
        // --doc NAME: write docs/NAME.md and .png (and artifacts/bench/NAME.json) instead of the main table's files, for a run of other sizes beside it
        var doc = Option(args, "--doc", "benchmarks");
        if (doc.Length == 0 || doc.Any(c => !char.IsAsciiLetterOrDigit(c) && c != '-'))
        {
            throw new ArgumentException($"--doc takes a file name of letters, digits and dashes, not '{doc}'");
        }

        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));

        var podman = PodmanBaseline.Program();
        Say(podman is null
            ? "podman is not in hack/install-prereqs.sh's prefix: no podman checkpoint --export / restore --import baseline in this run"
            : $"podman: {podman} (checkpoint --export, the archive over TCP, restore --import into a second storage root)");
        var chosen = Option(args, "--methods", string.Join(',', Methods)).Split(',');
        var methods = Methods.Where(m => chosen.Contains(m, StringComparer.OrdinalIgnoreCase) && (m != "Podman" || podman is not null)).ToArray();
        Say($"starting a 2-node sandbox; {sizes.Length} sizes x {Workloads.Length} workloads x {methods.Length} methods x {repetitions} repetitions");
        var samples = new List<MigrationSample>();
        var failures = new List<string>();
        await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { Nodes = 2, PhaseTimeoutSeconds = 900 }, line => Say(line)))
        {
            var targetAddress = cluster.Node("node-b").AgentAddress;
            using var podmanBaseline = podman is null ? null : PodmanBaseline.Start(podman, targetAddress[..targetAddress.LastIndexOf(':')]);
            int total = sizes.Length * Workloads.Length * methods.Length * repetitions;
            foreach (var mib in sizes)
            {
                foreach (var (workload, dirty) in Workloads)
                {
                    for (int rep = 1; rep <= repetitions; rep++)
                    {
                        foreach (var method in methods)
                        {
                            MigrationSample sample;
                            try
                            {
                                sample = method == "Podman"
                                    ? await RunPodmanAsync(podmanBaseline!, mib, workload, dirty, rep)
                                    : await RunOneAsync(cluster, method, mib, workload, dirty, rep);
                            }
                            catch (Exception e) when (e is InvalidOperationException or TimeoutException or k8s.Autorest.HttpOperationException or IOException)
                            {
                                failures.Add($"{mib} MiB {workload} {method} #{rep}: {e.Message}");
                                Say($"FAILED {mib} MiB {workload} {method} #{rep}: {e.Message}");
                                continue;
                            }

                            samples.Add(sample);
                            Say(string.Create(CultureInfo.InvariantCulture,
                                $"[{samples.Count + failures.Count,3}/{total}] {mib,4} MiB {workload,-8} {method,-7} #{rep}: total {sample.TotalMs,7:0} ms, downtime {sample.DowntimeMs,6:0} ms, " +
                                $"pause seen by the pod {(sample.PauseMs is { } pause ? pause.ToString("0", CultureInfo.InvariantCulture) : "-"),6} ms, images {sample.ImageBytes / 1e6,7:0.0} MB, rounds {sample.Rounds}{(sample.StateContinued ? "" : ", STATE NOT CONTINUED")}"));
                        }
                    }
                }
            }
        }

        var summary = MigrationSummary.From(samples, failures);
        summary.Print();
        foreach (var row in summary.Rows)
        {
            var key = $"{row.Mib}MiB_{row.Workload}_{row.Method}";
            report.Add("migration", key + "_total_median", row.Total.Median, "ms");
            report.Add("migration", key + "_downtime_median", row.Downtime.Median, "ms");
        }

        var directory = BenchmarkReport.Directory;
        Directory.CreateDirectory(directory);
        var name = doc == "benchmarks" ? "migration" : doc;
        var json = Path.Combine(directory, name + ".json");
        File.WriteAllText(json, summary.ToJson(report.Machine, sizes, repetitions, podman).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var plot = Path.Combine(directory, name + ".png");
        MigrationPlot.Write(summary, plot);
        var docs = RepositoryLayout.InRepository("docs");
        Directory.CreateDirectory(docs);
        File.Copy(plot, Path.Combine(docs, doc + ".png"), overwrite: true);
        File.WriteAllText(Path.Combine(docs, doc + ".md"), summary.ToMarkdown(report.Machine, sizes, repetitions, podman, clock.Elapsed, doc + ".png"));
        Console.WriteLine($"  every figure: {json}; plot: {plot}; docs/{doc}.md and docs/{doc}.png rewritten");
    }

    internal static string Option(IReadOnlyList<string> args, string name, string fallback)
    {
        int at = args.ToList().IndexOf(name);
        return at >= 0 && at + 1 < args.Count ? args[at + 1] : fallback;
    }

    private static async Task<MigrationSample> RunOneAsync(SandboxCluster cluster, string method, int mib, string workload, double dirty, int rep)
    {
        var name = string.Create(CultureInfo.InvariantCulture, $"b{mib}-{workload[0]}-{method.ToLowerInvariant()}-{rep}");
        var source = cluster.Node("node-a");
        var target = cluster.Node("node-b");
        var pod = await StartWorkloadAsync(cluster, name, mib, dirty, verifyOnRequest: true);
        var uid = pod.Metadata.Uid;
        try
        {
            return method == "Manual"
                ? await RunManualAsync(source, target, pod, mib, workload, rep)
                : await RunOursAsync(cluster, source, target, name, uid, method, mib, workload, rep);
        }
        finally
        {
            await DeletePodAsync(cluster, name);
        }
    }

    /// <summary>
    /// The file a benchmark workload checks its memory on (memcounter's --verify-file), one per pod.
    /// The migration benchmark's workloads verify only when it asks, after the move, never on their
    /// own while they are being moved (see <see cref="VerifyOnRequestArgs"/>).
    /// </summary>
    internal static string VerifyFile(string pod) => "/verify-" + pod;

    /// <summary>
    /// memcounter's arguments for a workload whose pause is timed: no periodic check and none on the
    /// first tick after a pause, so that no full read of the buffer is under way when the final
    /// freeze comes (at 4 GiB that read takes seconds, and after a lazy restore its rest waits on
    /// pages one fault at a time, which the pause would then measure instead of the move); the
    /// memory is checked once the move is over (<see cref="ContinuationAsync"/>).
    /// </summary>
    internal static string[] VerifyOnRequestArgs(string pod) => ["--verify-every", "0", "--verify-on-resume", "0", "--verify-file", VerifyFile(pod)];

    /// <summary>
    /// A memcounter pod on <paramref name="node"/>, once it ticks steadily. With
    /// <paramref name="verifyOnRequest"/> it checks its memory only when asked (<see cref="VerifyOnRequestArgs"/>);
    /// otherwise every 1000 ticks and after every pause.
    /// </summary>
    internal static async Task<V1Pod> StartWorkloadAsync(SandboxCluster cluster, string name, int mib, double dirty, string node = "node-a",
        IReadOnlyDictionary<string, string>? labels = null, bool verifyOnRequest = false)
    {
        var podLabels = new Dictionary<string, string> { ["app"] = "bench" };
        foreach (var (key, value) in labels ?? new Dictionary<string, string>())
        {
            podLabels[key] = value;
        }

        await cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = podLabels },
            Spec = new V1PodSpec
            {
                NodeName = node,
                TerminationGracePeriodSeconds = 0,
                Containers = [new V1Container
                {
                    Name = "main",
                    Image = TestImages.Memcounter,
                    Command = ["/bin/memcounter"],
                    Args = ["--mib", mib.ToString(CultureInfo.InvariantCulture), "--interval-ms", TickIntervalMs,
                        "--dirty-percent-per-second", dirty.ToString(CultureInfo.InvariantCulture), .. verifyOnRequest ? VerifyOnRequestArgs(name) : ["--verify-every", "1000"]],
                }],
            },
        }, "default");
        var pod = await cluster.WaitForPodRunningAsync(name, timeout: TimeSpan.FromMinutes(2));
        // memcounter fills its memory before its first tick; a few ticks later it is in its steady state
        await WaitForAsync(() => cluster.Node(node).LoggedTicks("default", name, "main", pod.Metadata.Uid).Count >= 5, TimeSpan.FromMinutes(2), $"{name} to tick");
        return pod;
    }

    private static async Task<MigrationSample> RunOursAsync(SandboxCluster cluster, SandboxNode source, SandboxNode target, string pod, string uid, string mode,
        int mib, string workload, int rep)
    {
        var request = new JsonObject
        {
            ["apiVersion"] = "podmigration.io/v1alpha1",
            ["kind"] = "MigrationRequest",
            ["metadata"] = new JsonObject { ["name"] = "move-" + pod },
            ["spec"] = new JsonObject { ["podName"] = pod, ["targetNode"] = target.Name, ["timeoutSeconds"] = 1800 },
        };
        if (mode != "Auto")
        {
            // Auto: the request names no mode, as a user who leaves it to the operator
            request["spec"]!["mode"] = mode;
        }

        var clock = Stopwatch.StartNew();
        await cluster.Client.CustomObjects.CreateNamespacedCustomObjectAsync(request, "podmigration.io", "v1alpha1", "default", "migrationrequests");
        var seen = new Dictionary<string, double>(StringComparer.Ordinal);
        JsonNode status;
        while (true)
        {
            var raw = (JsonElement)await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync("podmigration.io", "v1alpha1", "default", "migrationrequests", "move-" + pod);
            status = JsonNode.Parse(raw.GetRawText())!["status"] ?? new JsonObject();
            var phase = (string?)status["phase"] ?? "Pending";
            seen.TryAdd(phase, clock.Elapsed.TotalMilliseconds);
            if (phase is "Succeeded" or "Failed" or "RolledBack")
            {
                if (phase != "Succeeded")
                {
                    throw new InvalidOperationException($"migration of {pod} ended {phase}: {status["reason"]}: {status["message"]}");
                }

                break;
            }

            if (clock.Elapsed > TimeSpan.FromMinutes(30))
            {
                throw new TimeoutException($"migration of {pod} still {phase} after 30 minutes");
            }

            await Task.Delay(10);
        }

        string[] order = ["Pending", "Checkpointing", "Transferring", "Restoring", "CuttingOver", "Succeeded"];
        double At(string phase) => order.Skip(Array.IndexOf(order, phase)).Select(p => seen.TryGetValue(p, out var t) ? t : (double?)null).First(t => t is not null)!.Value;
        var replacement = (string)status["replacementPod"]!;
        var (continued, pause) = await ContinuationAsync(source.LoggedTicks("default", pod, "main", uid),
            () => target.LoggedTicks("default", replacement, "main"), VerifyFile(pod));
        await cluster.Client.CustomObjects.DeleteNamespacedCustomObjectAsync("podmigration.io", "v1alpha1", "default", "migrationrequests", "move-" + pod);
        await DeletePodAsync(cluster, replacement);
        return new MigrationSample(mode, mib, workload, rep, At("Succeeded"), (double?)(long?)status["downtimeMillis"] ?? double.NaN,
            At("Transferring") - At("Checkpointing"), At("Restoring") - At("Transferring"), At("CuttingOver") - At("Restoring"),
            (long?)status["imageBytes"] ?? 0, (long?)status["bytesTransferred"] ?? 0, (int?)status["preCopyRounds"] ?? 0, continued, pause,
            (long?)status["postCopyBytes"] ?? 0, (string?)status["mode"], (double?)(long?)status["restoreMillis"]);
    }

    private static async Task<MigrationSample> RunPodmanAsync(PodmanBaseline podman, int mib, string workload, double dirty, int rep)
    {
        var name = string.Create(CultureInfo.InvariantCulture, $"b{mib}-{workload[0]}-podman-{rep}");
        try
        {
            await podman.StartWorkloadAsync(name, mib, dirty);
            var (checkpoint, copy, restore, bytes, continued, pause) = await podman.MoveAsync(name);
            var frozen = checkpoint + copy + restore;
            return new MigrationSample("Podman", mib, workload, rep, frozen.TotalMilliseconds, frozen.TotalMilliseconds, checkpoint.TotalMilliseconds,
                copy.TotalMilliseconds, restore.TotalMilliseconds, bytes, bytes, 0, continued, pause, RestoreToRunningMs: restore.TotalMilliseconds);
        }
        finally
        {
            podman.Remove(name);
        }
    }

    private static async Task<MigrationSample> RunManualAsync(SandboxNode source, SandboxNode target, V1Pod pod, int mib, string workload, int rep)
    {
        var containerId = pod.Status.ContainerStatuses[0].ContainerID.Split("://")[1];
        await using var manual = await ManualBaseline.PrepareAsync(target, pod.Metadata.Name);
        var (checkpoint, copy, restore, bytes) = await manual.RunAsync(source, containerId);
        var frozen = checkpoint + copy + restore;
        var (continued, pause) = await ContinuationAsync(source.LoggedTicks("default", pod.Metadata.Name, "main", pod.Metadata.Uid),
            () => Memcounter.Parse(manual.Output().Split('\n')), VerifyFile(pod.Metadata.Name));
        return new MigrationSample("Manual", mib, workload, rep, frozen.TotalMilliseconds, frozen.TotalMilliseconds, checkpoint.TotalMilliseconds,
            copy.TotalMilliseconds, restore.TotalMilliseconds, bytes, bytes, 0, continued, pause, RestoreToRunningMs: restore.TotalMilliseconds);
    }

    /// <summary>
    /// Whether the moved process went on from the source's last tick (+1, consecutive) and no memory
    /// verification failed (memcounter verifies its buffer's checksum on the first tick after a pause
    /// of several intervals, so every move that froze it that long is checked).
    /// </summary>
    internal static async Task<bool> ContinuedAsync(IReadOnlyList<MemcounterTick> before, Func<IReadOnlyList<MemcounterTick>> after) =>
        (await ContinuationAsync(before, after)).Continued;

    /// <summary>
    /// <see cref="ContinuedAsync"/>, and the pause the workload itself saw by its own clock
    /// (<see cref="MemcounterTick.PauseMillis"/>; null when the count did not go on). With
    /// <paramref name="verifyFile"/> (a workload started with <see cref="VerifyOnRequestArgs"/>) it then
    /// asks the moved process to check its whole buffer and waits for the answer, which must be ok.
    /// </summary>
    internal static async Task<(bool Continued, double? PauseMs)> ContinuationAsync(IReadOnlyList<MemcounterTick> before, Func<IReadOnlyList<MemcounterTick>> after,
        string? verifyFile = null)
    {
        IReadOnlyList<MemcounterTick> ticks = [];
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30) && (ticks = after()).Count < 2)
        {
            await Task.Delay(50);
        }

        bool continued = before.Count > 0 && ticks.Count >= 2 && ticks[0].Tick == before[^1].Tick + 1
            && ticks.All(t => t.Verified is "-" or "ok") && ticks.Zip(ticks.Skip(1)).All(p => p.Second.Tick == p.First.Tick + 1);
        if (!continued)
        {
            Console.WriteLine($"    state check: source's last tick {(before.Count > 0 ? before[^1] : null)}; moved process's first ticks {string.Join("; ", ticks.Take(2))}");
        }

        var pause = continued ? MemcounterTick.PauseMillis(before, ticks) : null;
        if (continued && verifyFile is not null)
        {
            continued = await VerifiedAfterRequestAsync(after, verifyFile);
        }

        return (continued, continued ? pause : null);
    }

    /// <summary>Asks the moved process for a memory check and waits (up to 5 minutes: a 4 GiB read of lazily restored memory) for a tick that made it.</summary>
    private static async Task<bool> VerifiedAfterRequestAsync(Func<IReadOnlyList<MemcounterTick>> after, string verifyFile)
    {
        int seen = after().Count;
        Memcounter.RequestVerification(verifyFile);
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(5))
        {
            var ticks = after();
            if (ticks.Skip(seen).FirstOrDefault(t => t.Verified != "-") is { } check)
            {
                if (!check.VerifiedOk)
                {
                    Console.WriteLine($"    state check: the memory check asked for after the move failed: {check}");
                }

                return check.VerifiedOk;
            }

            await Task.Delay(50);
        }

        Console.WriteLine($"    state check: no memory check within 5 minutes of asking through {verifyFile}");
        return false;
    }

    internal static async Task DeletePodAsync(SandboxCluster cluster, string name)
    {
        try
        {
            await cluster.Client.CoreV1.DeleteNamespacedPodAsync(name, "default", new V1DeleteOptions { GracePeriodSeconds = 0 });
        }
        catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return;
        }

        await WaitForAsync(async () => (await cluster.Client.CoreV1.ListNamespacedPodAsync("default", fieldSelector: "metadata.name=" + name)).Items.Count == 0,
            TimeSpan.FromMinutes(1), $"pod {name} to go");
    }

    internal static Task WaitForAsync(Func<bool> condition, TimeSpan timeout, string what) => WaitForAsync(() => Task.FromResult(condition()), timeout, what);

    internal static async Task WaitForAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"timed out waiting for {what}");
            }

            await Task.Delay(50);
        }
    }
}

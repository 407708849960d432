using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Models;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// The operator at cluster scale: the real operator program (its own process, so its CPU and memory
/// are its own) against the API emulator holding many nodes and pods, with a fake agent per node
/// (the real gRPC API, no CRIU) and this program playing the kubelet for the replacements. Many
/// MigrationRequests are applied at once: how long the operator takes to decide on every one
/// (admitted or queued), to move them all, and what that costs it in CPU and memory. Run at two
/// scales side by side (a tenth, then the full size) so the figures read as ratios on one machine.
/// Measurements only; written to docs/benchmarks-scale.md.
/// </summary>
public static class ScaleBenchmark
{
    private const string Namespace = "default";
    private const string Identity = "bench-operator";
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private sealed record Scale(string Name, int Nodes, int PodsPerNode, int Requests);

    /// <summary>What one scale measured. CPU in seconds of the operator process, memory in MiB.</summary>
    private sealed record ScaleResult(Scale Scale, double SetupSeconds, double StartupSeconds, double IdleCpuSeconds, double IdleWindowSeconds, double IdleRssMib,
        double CreateSeconds, double AdmitAllSeconds, double AdmitP50Ms, double AdmitMaxMs, int AdmittedAtOnce, double AdmitCpuSeconds,
        double AllFinalSeconds, double RunCpuSeconds, double PeakRssMib, double EndRssMib, Dictionary<string, int> Outcomes);

    public static async Task RunAsync(BenchmarkReport report, string[] args)
    {
        ArgumentNullException.ThrowIfNull(report);
        var full = new Scale("full", Option(args, "--scale-nodes", 50), 40, Option(args, "--scale-requests", 200));
        var tenth = new Scale("tenth", Math.Max(2, full.Nodes / 10), full.PodsPerNode, Math.Max(2, full.Requests / 10));
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  [{clock.Elapsed:mm\\:ss}] {text}"));
        Console.WriteLine($"scale: the operator with {full.Nodes * full.PodsPerNode} pods on {full.Nodes} nodes and {full.Requests} MigrationRequests, beside a tenth of that");

        var results = new List<ScaleResult>();
        var failures = new List<string>();
        foreach (var scale in new[] { tenth, full })
        {
            try
            {
                results.Add(await RunScaleAsync(scale, Say));
            }
            catch (Exception e) when (e is TimeoutException or InvalidOperationException or k8s.Autorest.HttpOperationException or IOException or HttpRequestException
                or Grpc.Core.RpcException)
            {
                failures.Add($"{scale.Name}: {e.Message}");
                Say($"{scale.Name} failed: {e.Message}");
            }
        }

        var figures = Figures(results);
        foreach (var (name, value, unit) in figures)
        {
            report.Add("scale", name, value, unit);
        }

        var docs = RepositoryLayout.InRepository("docs");
        Directory.CreateDirectory(docs);
        File.WriteAllText(Path.Combine(docs, "benchmarks-scale.md"), Markdown(report.Machine, results, figures, failures, clock.Elapsed));
        Directory.CreateDirectory(BenchmarkReport.Directory);
        File.WriteAllText(Path.Combine(BenchmarkReport.Directory, "scale.json"), JsonSerializer.Serialize(new { results, failures }, Indented));
        Console.WriteLine("  docs/benchmarks-scale.md rewritten");
    }

    private static int Option(string[] args, string name, int fallback)
    {
        int at = Array.IndexOf(args, name);
        return at >= 0 && at + 1 < args.Length ? int.Parse(args[at + 1], CultureInfo.InvariantCulture) : fallback;
    }

    private static async Task<ScaleResult> RunScaleAsync(Scale scale, Action<string> say)
    {
        say($"{scale.Name}: {scale.Nodes} nodes, {scale.Nodes * scale.PodsPerNode} pods, {scale.Requests} requests");
        var setup = Stopwatch.StartNew();
        var cluster = new EmulatorFixture();
        var peers = new ConcurrentDictionary<string, FakeAgentState>(StringComparer.Ordinal);
        var agents = new List<FakeAgentServer>();
        using var pki = new TestPki();
        using var stop = new CancellationTokenSource();
        ChildProcess? operatorProcess = null;
        Task? kubelet = null;
        bool started = false;
        try
        {
            await cluster.InitializeAsync();
            started = true;
            (await cluster.KubectlAsync("apply", "-f", RepositoryLayout.InRepository("crds"))).Succeeded();
            var client = cluster.Client;
            var nodes = Enumerable.Range(0, scale.Nodes).Select(i => $"node-{i:000}").ToList();
            foreach (var name in nodes)
            {
                agents.Add(await FakeAgentServer.StartAsync(name, peers));
            }

            await Parallel.ForEachAsync(nodes.Zip(agents), new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (pair, ct) =>
            {
                var node = await client.CoreV1.CreateNodeAsync(new V1Node
                {
                    Metadata = new V1ObjectMeta { Name = pair.First, Annotations = new Dictionary<string, string> { [Annotations.AgentEndpoint] = pair.Second.Endpoint } },
                }, cancellationToken: ct);
                node.Status = new V1NodeStatus
                {
                    Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("16"), ["memory"] = new("64Gi"), ["pods"] = new("110") },
                    Conditions = [new V1NodeCondition { Type = "Ready", Status = "True" }],
                };
                await client.CoreV1.ReplaceNodeStatusAsync(node, pair.First, cancellationToken: ct);
            });

            var pods = Enumerable.Range(0, scale.Nodes * scale.PodsPerNode).Select(i => (Name: $"app-{i:0000}", Node: nodes[i % scale.Nodes])).ToList();
            await Parallel.ForEachAsync(pods, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (p, ct) =>
            {
                var pod = await client.CoreV1.CreateNamespacedPodAsync(new V1Pod
                {
                    Metadata = new V1ObjectMeta { Name = p.Name, Labels = new Dictionary<string, string> { ["app"] = "bench", ["instance"] = p.Name } },
                    Spec = new V1PodSpec
                    {
                        NodeName = p.Node,
                        Containers = [new V1Container
                        {
                            Name = "main", Image = "docker.io/podmig/memcounter:1",
                            Resources = new V1ResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("50m"), ["memory"] = new("64Mi") } },
                        }],
                    },
                }, Namespace, cancellationToken: ct);
                pod.Status = new V1PodStatus { Phase = "Running", PodIP = PodAddress(pods.IndexOf(p)) };
                await client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, p.Name, Namespace, cancellationToken: ct);
            });
            setup.Stop();
            say($"{scale.Name}: cluster made in {setup.Elapsed.TotalSeconds:0.0} s");

            var listed = await client.CoreV1.ListNamespacedPodAsync(Namespace);
            kubelet = Task.Run(() => KubeletAsync(client, peers, listed.Metadata.ResourceVersion, stop.Token));

            var startup = Stopwatch.StartNew();
            operatorProcess = ChildProcess.StartProgram("operator", "Migrate.Operator", "migrate-operator",
                Path.Combine(BenchmarkReport.Directory, $"scale-{scale.Name}-operator.log"), OperatorArguments(cluster.Emulator.KubeconfigPath, pki));
            await WaitForLeadershipAsync(client, operatorProcess);
            startup.Stop();
            say($"{scale.Name}: operator {operatorProcess.Pid} leads after {startup.Elapsed.TotalSeconds:0.0} s");

            // the informers list everything when the operator starts and the runtime compiles its hot paths: let that settle, then measure an idle window
            await Task.Delay(TimeSpan.FromSeconds(20));
            var idleFrom = ProcessFigures.CpuSeconds(operatorProcess.Pid);
            var idleWindow = Stopwatch.StartNew();
            await Task.Delay(TimeSpan.FromSeconds(10));
            double idleCpu = ProcessFigures.CpuSeconds(operatorProcess.Pid) - idleFrom;
            double idleRss = ProcessFigures.Memory(operatorProcess.Pid, "VmRSS:");
            say($"{scale.Name}: idle {idleCpu:0.00} CPU s in {idleWindow.Elapsed.TotalSeconds:0} s, {idleRss:0} MiB resident");

            var requests = Enumerable.Range(0, scale.Requests).Select(i => (Name: $"move-{i:000}", Pod: pods[i].Name)).ToList();
            var created = new ConcurrentDictionary<string, double>(StringComparer.Ordinal);
            var admitted = new ConcurrentDictionary<string, (double At, string Phase, string Reason)>(StringComparer.Ordinal);
            var final = new ConcurrentDictionary<string, string>(StringComparer.Ordinal);
            var run = Stopwatch.StartNew();
            double runFrom = ProcessFigures.CpuSeconds(operatorProcess.Pid);
            var watcher = Task.Run(() => ObserveAsync(client, run, admitted, final, scale.Requests, stop.Token));
            await Parallel.ForEachAsync(requests, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (r, ct) =>
            {
                await client.CustomObjects.CreateNamespacedCustomObjectAsync(new JsonObject
                {
                    ["apiVersion"] = "podmigration.io/v1alpha1",
                    ["kind"] = "MigrationRequest",
                    ["metadata"] = new JsonObject { ["name"] = r.Name },
                    ["spec"] = new JsonObject { ["podName"] = r.Pod },
                }, MigrationRequest.Group, MigrationRequest.Version, Namespace, MigrationRequest.Plural, cancellationToken: ct);
                created[r.Name] = run.Elapsed.TotalMilliseconds;
            });
            double createSeconds = run.Elapsed.TotalSeconds;

            await WaitAsync(() => admitted.Count >= scale.Requests, TimeSpan.FromMinutes(5), operatorProcess,
                () => $"{admitted.Count} of {scale.Requests} requests decided on after 5 minutes");
            double admitAll = admitted.Values.Max(a => a.At) / 1000;
            double admitCpu = ProcessFigures.CpuSeconds(operatorProcess.Pid) - runFrom;
            var latencies = requests.Select(r => admitted[r.Name].At - created[r.Name]).Order().ToList();
            int atOnce = admitted.Values.Count(a => a.Phase != MigrationPhases.Pending);
            say($"{scale.Name}: all {scale.Requests} decided on {admitAll:0.0} s after the first was created ({atOnce} started, the rest queued), {admitCpu:0.0} CPU s");

            await WaitAsync(() => final.Count >= scale.Requests, TimeSpan.FromMinutes(30), operatorProcess,
                () => $"{final.Count} of {scale.Requests} requests final after 30 minutes");
            double allFinal = run.Elapsed.TotalSeconds;
            double runCpu = ProcessFigures.CpuSeconds(operatorProcess.Pid) - runFrom;
            var outcomes = final.Values.GroupBy(p => p).ToDictionary(g => g.Key, g => g.Count());
            say($"{scale.Name}: all final after {allFinal:0.0} s ({string.Join(", ", outcomes.Select(o => $"{o.Value} {o.Key}"))}), {runCpu:0.0} CPU s");
            await stop.CancelAsync();
            await watcher;
            return new ScaleResult(scale, setup.Elapsed.TotalSeconds, startup.Elapsed.TotalSeconds, idleCpu, idleWindow.Elapsed.TotalSeconds, idleRss,
                createSeconds, admitAll, ControllerBenchmark.Median(latencies), latencies[^1], atOnce, admitCpu, allFinal, runCpu,
                ProcessFigures.Memory(operatorProcess.Pid, "VmHWM:"), ProcessFigures.Memory(operatorProcess.Pid, "VmRSS:"), outcomes);
        }
        finally
        {
            // each step on its own: one failing must not leave the others running
            await stop.CancelAsync();
            await Quietly(async () =>
            {
                if (operatorProcess is not null)
                {
                    await operatorProcess.DisposeAsync();
                }
            });
            await Quietly(async () =>
            {
                if (kubelet is not null)
                {
                    await kubelet;
                }
            });
            foreach (var agent in agents)
            {
                await Quietly(async () => await agent.DisposeAsync());
            }

            if (started)
            {
                await Quietly(cluster.DisposeAsync);
            }
        }
    }

    private static async Task Quietly(Func<Task> step)
    {
        try
        {
            await step();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.WriteLine($"  cleaning up: {e.GetType().Name}: {e.Message}");
        }
    }

    private static string[] OperatorArguments(string kubeconfig, TestPki pki) =>
    [
        $"--Operator:Kubeconfig={kubeconfig}",
        $"--Operator:LeaseNamespace={Namespace}",
        $"--Operator:Identity={Identity}",
        $"--Operator:TokenSigningKeyFile={pki.TokenSigningKeyFile}",
        $"--Kestrel:Endpoints:Probes:Url=http://127.0.0.1:{Ports.Free()}",
        "--Logging:LogLevel:Default=Warning",
        "--Logging:Console:FormatterOptions:TimestampFormat=HH:mm:ss.fff ",
    ];

    /// <summary>A distinct address per pod (10.200.0.0/16), as a pod network would give.</summary>
    private static string PodAddress(int index) => string.Create(CultureInfo.InvariantCulture, $"10.200.{index / 250}.{(index % 250) + 2}");

    private static async Task WaitForLeadershipAsync(Kubernetes client, ChildProcess process)
    {
        await WaitAsync(() =>
        {
            try
            {
                var lease = client.CoordinationV1.ReadNamespacedLease("podmig-operator", Namespace);
                return lease.Spec?.HolderIdentity == Identity;
            }
            catch (k8s.Autorest.HttpOperationException)
            {
                return false;
            }
        }, TimeSpan.FromMinutes(2), process, () => "the operator did not take its Lease within 2 minutes");
    }

    private static async Task WaitAsync(Func<bool> done, TimeSpan timeout, ChildProcess process, Func<string> why)
    {
        var clock = Stopwatch.StartNew();
        while (!done())
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException($"the operator exited: {process.LogTail()}");
            }

            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException(why());
            }

            await Task.Delay(100);
        }
    }

    /// <summary>
    /// Watches the requests and notes when each was first seen decided on (started, or queued with
    /// its reason, or refused) and when it became final.
    /// </summary>
    private static async Task ObserveAsync(Kubernetes client, Stopwatch run, ConcurrentDictionary<string, (double At, string Phase, string Reason)> admitted,
        ConcurrentDictionary<string, string> final, int expected, CancellationToken cancellationToken)
    {
        string from = "";
        while (!cancellationToken.IsCancellationRequested && final.Count < expected)
        {
            try
            {
                if (from.Length == 0)
                {
                    var raw = (JsonElement)await client.CustomObjects.ListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, Namespace,
                        MigrationRequest.Plural, cancellationToken: cancellationToken);
                    var list = JsonNode.Parse(raw.GetRawText())!;
                    foreach (var item in list["items"]!.AsArray().OfType<JsonNode>())
                    {
                        Note(item);
                    }

                    from = (string)list["metadata"]!["resourceVersion"]!;
                }

                await foreach (var (_, item) in client.CustomObjects.WatchListNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, Namespace,
                    MigrationRequest.Plural, resourceVersion: from, cancellationToken: cancellationToken))
                {
                    var node = JsonNode.Parse(((JsonElement)item).GetRawText())!;
                    from = (string)node["metadata"]!["resourceVersion"]!;
                    Note(node);
                    if (final.Count >= expected)
                    {
                        return;
                    }
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or IOException or k8s.Autorest.HttpOperationException)
            {
                // the watch broke (or its version expired): list again
                from = "";
                await Task.Delay(200, CancellationToken.None);
            }
        }

        void Note(JsonNode item)
        {
            string name = (string)item["metadata"]!["name"]!;
            string phase = (string?)item["status"]?["phase"] ?? "";
            string reason = (string?)item["status"]?["reason"] ?? "";
            if (Decided(phase, reason))
            {
                admitted.TryAdd(name, (run.Elapsed.TotalMilliseconds, phase, reason));
            }

            if (MigrationPhases.IsFinal(phase))
            {
                final.TryAdd(name, phase);
            }
        }
    }

    /// <summary>The operator has decided on a request: it started it, queued it (saying why), or ended it.</summary>
    internal static bool Decided(string phase, string reason) =>
        phase.Length > 0 && (phase != MigrationPhases.Pending || reason == Reasons.Queued);

    /// <summary>
    /// The kubelet's part for the replacements (runtime class podmig): the container waits until its
    /// node's agent holds the committed images, then runs; or fails once the migration is aborted.
    /// Driven by a watch, so it costs the API server what a kubelet's watch does.
    /// </summary>
    private static async Task KubeletAsync(Kubernetes client, ConcurrentDictionary<string, FakeAgentState> peers, string resourceVersion, CancellationToken cancellationToken)
    {
        var pending = new ConcurrentDictionary<string, V1Pod>(StringComparer.Ordinal);
        var told = new ConcurrentDictionary<string, bool>(StringComparer.Ordinal);
        var watch = Task.Run(async () =>
        {
            string from = resourceVersion;
            while (!cancellationToken.IsCancellationRequested)
            {
                try
                {
                    await foreach (var (type, pod) in client.CoreV1.WatchListNamespacedPodAsync(Namespace, resourceVersion: from, cancellationToken: cancellationToken))
                    {
                        from = pod.Metadata.ResourceVersion;
                        bool waiting = type != WatchEventType.Deleted && pod.Metadata.DeletionTimestamp is null && pod.Spec.RuntimeClassName == "podmig"
                            && pod.Status?.Phase is null or "Pending" && !FakeReplacementStatus.Failed(pod);
                        if (waiting)
                        {
                            pending[pod.Metadata.Name] = pod;
                        }
                        else
                        {
                            pending.TryRemove(pod.Metadata.Name, out _);
                        }
                    }
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                catch (Exception e) when (e is HttpRequestException or IOException or k8s.Autorest.HttpOperationException)
                {
                    await Task.Delay(200, CancellationToken.None);
                }
            }
        }, CancellationToken.None);

        while (!cancellationToken.IsCancellationRequested)
        {
            foreach (var (name, pod) in pending)
            {
                if (Keys.Get(pod.Metadata.Annotations, Annotations.RestoreFrom) is not { } id || !peers.TryGetValue(pod.Spec.NodeName, out var agent))
                {
                    continue;
                }

                // the runtime asks the agent once, then again only when the agent's answer can have changed
                var held = agent.Migration(id);
                if (told.ContainsKey(name) && !held.Committed && held.Decision != "abort")
                {
                    continue;
                }

                told[name] = true;
                var status = FakeReplacementStatus.For(agent.RuntimeCreates(id, "main"), podAddress: pod.Status?.PodIP);
                if (FakeReplacementStatus.Shown(pod, status))
                {
                    continue;
                }

                pod.Status = status;
                try
                {
                    await client.CoreV1.ReplaceNamespacedPodStatusAsync(pod, name, Namespace, cancellationToken: cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                catch (k8s.Autorest.HttpOperationException)
                {
                    // changed or gone meanwhile: the watch brings the new version
                    told.TryRemove(name, out _);
                }
            }

            try
            {
                await Task.Delay(100, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }

        await watch;
    }

    private static List<(string Name, double Value, string Unit)> Figures(List<ScaleResult> results)
    {
        var figures = new List<(string, double, string)>();
        foreach (var r in results)
        {
            string p = r.Scale.Name + "_";
            figures.Add((p + "startup_to_leader", r.StartupSeconds * 1000, "ms"));
            figures.Add((p + "idle_cpu", r.IdleCpuSeconds / r.IdleWindowSeconds * 100, "% of one CPU"));
            figures.Add((p + "idle_rss", r.IdleRssMib, "MiB"));
            figures.Add((p + "create_all", r.CreateSeconds * 1000, "ms"));
            figures.Add((p + "admit_all", r.AdmitAllSeconds * 1000, "ms"));
            figures.Add((p + "admit_p50", r.AdmitP50Ms, "ms"));
            figures.Add((p + "admit_max", r.AdmitMaxMs, "ms"));
            figures.Add((p + "admit_cpu", r.AdmitCpuSeconds, "CPU s"));
            figures.Add((p + "all_final", r.AllFinalSeconds * 1000, "ms"));
            // set by the limit of migrations in flight and the agents' and kubelet's polling, not by the operator's CPU
            figures.Add((p + "migrations_per_minute", r.Scale.Requests / r.AllFinalSeconds * 60, "/min"));
            figures.Add((p + "cpu_per_migration", r.RunCpuSeconds / r.Scale.Requests * 1000, "CPU ms"));
            figures.Add((p + "peak_rss", r.PeakRssMib, "MiB"));
        }

        if (results.FirstOrDefault(r => r.Scale.Name == "tenth") is { } small && results.FirstOrDefault(r => r.Scale.Name == "full") is { } big)
        {
            figures.Add(("full_to_tenth_idle_rss", big.IdleRssMib / small.IdleRssMib, "x"));
            figures.Add(("full_to_tenth_peak_rss", big.PeakRssMib / small.PeakRssMib, "x"));
            figures.Add(("full_to_tenth_admit_all", big.AdmitAllSeconds / small.AdmitAllSeconds, "x"));
            // each scale starts a fresh operator: its one-off costs (compiling its code paths) weigh on the few requests of the tenth
            figures.Add(("cpu_per_added_migration", (big.RunCpuSeconds - small.RunCpuSeconds) / (big.Scale.Requests - small.Scale.Requests) * 1000, "CPU ms"));
        }

        return figures;
    }

    private static string Markdown(JsonObject machine, List<ScaleResult> results, List<(string Name, double Value, string Unit)> figures, List<string> failures, TimeSpan elapsed)
    {
        var text = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        text.AppendLine("# Scale benchmark: the operator with many pods and requests");
        text.AppendLine();
        text.AppendLine(c, $"Written by `hack/bench.sh scale` (part of `make bench`) on {DateTime.UtcNow:yyyy-MM-dd} in {elapsed.TotalMinutes:0.0} min: {machine["cpus"]} CPUs, kernel {machine["kernel"]}, {machine["cpu"]}.");
        text.AppendLine("The real operator program (its own process, default settings: 4 workers; at most 5 migrations in flight, 2 out of and 2 into a node) against the API emulator, " +
            "one fake agent per node (the real gRPC API, no CRIU: a migration's steps take no time there), and the benchmark playing the kubelet for the replacements. " +
            "Everything shares the machine's CPUs; the operator's CPU and memory are its own process's (`/proc/PID/stat`, `VmRSS`, `VmHWM`). " +
            "Each scale runs in a fresh emulator: pods made, operator started, 30 s idle (the last 10 measured), then every request applied at once (4 at a time).");
        text.AppendLine("Decided on: the request started, or left `Pending` with reason `Queued`, or ended; timed from the benchmark's first create call. " +
            "The migrations per minute are set by the limit of 5 in flight and the polling of the fake agents and kubelet, not by the operator's CPU. Measurements, never assertions.");
        text.AppendLine();
        MarkdownParts.AppendFigures(text, figures);
        text.AppendLine();
        text.AppendLine("| scale | nodes | pods | requests | made in | operator leads after | idle CPU | idle RSS | all created in | all decided on | per request p50 / max | started at once | all final | outcomes | CPU per migration | peak RSS |");
        text.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var r in results)
        {
            text.AppendLine(c, $"| {r.Scale.Name} | {r.Scale.Nodes} | {r.Scale.Nodes * r.Scale.PodsPerNode} | {r.Scale.Requests} | {r.SetupSeconds:0.0} s | {r.StartupSeconds:0.0} s | " +
                $"{r.IdleCpuSeconds / r.IdleWindowSeconds * 100:0.0} % | {r.IdleRssMib:0} MiB | {r.CreateSeconds:0.0} s | {r.AdmitAllSeconds:0.0} s | {r.AdmitP50Ms:0} / {r.AdmitMaxMs:0} ms | {r.AdmittedAtOnce} | " +
                $"{r.AllFinalSeconds:0.0} s | {string.Join(", ", r.Outcomes.Select(o => $"{o.Value} {o.Key}"))} | {r.RunCpuSeconds / r.Scale.Requests * 1000:0} ms | {r.PeakRssMib:0} MiB |");
        }

        text.AppendLine();
        text.AppendLine("Goal (issue 19): measure the operator's CPU and memory and its time to admit 200 MigrationRequests with 2,000 pods in the emulator.");
        MarkdownParts.AppendFailures(text, failures);
        return text.ToString();
    }
}

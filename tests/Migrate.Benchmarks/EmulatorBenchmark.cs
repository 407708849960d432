using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Models;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// The API emulator under the load the sandbox gives it: 2,000 stored objects and 100 concurrent
/// watches; how long after a write each watcher gets the event. The emulator runs as its own
/// process (hack/kube-emulator), the clients are the real KubernetesClient.
/// </summary>
public static class EmulatorBenchmark
{
    private const int Objects = 2000;
    private const int Watchers = 100;
    private const int Updates = 200;
    private const string Namespace = "bench";

    public static async Task RunAsync(BenchmarkReport report)
    {
        Console.WriteLine($"emulator: {Objects} objects, {Watchers} watches, {Updates} timed updates");
        int port = Ports.Free();
        var kubeconfig = Path.Combine(Path.GetTempPath(), $"bench-emulator-{port}.kubeconfig");
        using var emulator = StartEmulator(port, kubeconfig);
        try
        {
            using var client = new Kubernetes(KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig));
            await client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = Namespace } });

            var create = Stopwatch.StartNew();
            await Parallel.ForEachAsync(Enumerable.Range(0, Objects), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
                await client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap
                {
                    Metadata = new V1ObjectMeta { Name = $"cm-{i:0000}", Labels = new Dictionary<string, string> { ["bench"] = "yes" } },
                    Data = new Dictionary<string, string> { ["payload"] = new string('x', 512) },
                }, Namespace, cancellationToken: ct));
            create.Stop();
            report.Add("emulator", "create_objects_per_second", Objects / create.Elapsed.TotalSeconds, "objects/s");

            var list = Stopwatch.StartNew();
            var all = await client.CoreV1.ListNamespacedConfigMapAsync(Namespace);
            list.Stop();
            report.Add("emulator", $"list_{all.Items.Count}_objects_ms", list.Elapsed.TotalMilliseconds, "ms");

            // 100 watches from the list's resourceVersion, each on its own client (own connection).
            var latencies = new ConcurrentBag<double>();
            var received = new int[Watchers];
            using var stop = new CancellationTokenSource();
            var ready = new CountdownEvent(Watchers);
            var watchTasks = Enumerable.Range(0, Watchers).Select(w => Task.Run(async () =>
            {
                using var watcherClient = new Kubernetes(KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig));
                var enumerator = watcherClient.CoreV1.WatchListNamespacedConfigMapAsync(Namespace, resourceVersion: all.Metadata.ResourceVersion,
                    fieldSelector: "metadata.name=cm-0000", cancellationToken: stop.Token);
                ready.Signal();
                try
                {
                    await foreach (var (_, cm) in enumerator)
                    {
                        if (cm.Data.TryGetValue("sent", out var sent))
                        {
                            var ms = (Stopwatch.GetTimestamp() - long.Parse(sent, CultureInfo.InvariantCulture)) * 1000.0 / Stopwatch.Frequency;
                            latencies.Add(ms);
                            Interlocked.Increment(ref received[w]);
                        }
                    }
                }
                catch (OperationCanceledException)
                {
                    // end of the benchmark
                }
            })).ToList();
            ready.Wait(TimeSpan.FromSeconds(30));
            await Task.Delay(2000); // let every watch connect

            for (int u = 0; u < Updates; u++)
            {
                var patch = $"{{\"data\":{{\"sent\":\"{Stopwatch.GetTimestamp()}\"}}}}";
                await client.CoreV1.PatchNamespacedConfigMapAsync(new V1Patch(patch, V1Patch.PatchType.MergePatch), "cm-0000", Namespace);
                await Task.Delay(20);
            }

            var deadline = Stopwatch.StartNew();
            while (received.Sum() < Watchers * Updates && deadline.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }

            await stop.CancelAsync();
            await Task.WhenAll(watchTasks);
            var samples = latencies.ToList();
            var (p50, p99, max) = BenchmarkReport.Percentiles(samples);
            report.Add("emulator", "watch_events_delivered", samples.Count, $"of {Watchers * Updates}");
            report.Add("emulator", "watch_delivery_p50_ms", p50, "ms");
            report.Add("emulator", "watch_delivery_p99_ms", p99, "ms");
            report.Add("emulator", "watch_delivery_max_ms", max, "ms");
            report.Add("emulator", "delivered_within_100ms_percent", 100.0 * samples.Count(s => s <= 100) / (Watchers * Updates), "%");
            report.Add("emulator", "server_rss_mib", ProcessFigures.Memory(emulator.Id, "VmRSS:"), "MiB");
        }
        finally
        {
            if (!emulator.HasExited)
            {
                emulator.Kill();
                await emulator.WaitForExitAsync();
            }

            File.Delete(kubeconfig);
        }
    }

    private static Process StartEmulator(int port, string kubeconfig)
    {
        var script = RepositoryLayout.InRepository("hack", "kube-emulator");
        var start = new ProcessStartInfo(script) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--port", port.ToString(CultureInfo.InvariantCulture), "--kubeconfig", kubeconfig })
        {
            start.ArgumentList.Add(a);
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start hack/kube-emulator");
        var line = process.StandardOutput.ReadLine();
        if (line is null || !line.StartsWith("KUBECONFIG=", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"the emulator did not start: {process.StandardError.ReadToEnd()}");
        }

        return process;
    }
}

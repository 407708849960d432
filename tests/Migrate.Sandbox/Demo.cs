using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using k8s;
using Migrate.TestSupport;

namespace Migrate.Sandbox;

/// <summary>
/// make demo, against a running sandbox: the counter image imported on every node, the counter pod
/// from examples/ on node-a, a MigrationRequest from examples/ applied with kubectl, its phases
/// shown as they happen, the counter's continuity checked from kubectl logs on both sides, a
/// summary, and the result as JSON (the caller prints it as the last line, after teardown).
/// </summary>
internal static class Demo
{
    private static readonly JsonSerializerOptions Compact = new() { WriteIndented = false };

    public static async Task<int> RunAsync(CommandLine options)
    {
        var clock = Stopwatch.StartNew();
        void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{clock.Elapsed.TotalSeconds,5:0.0}s] {text}"));
        var state = SandboxState.Read(options.StatePath);
        var kubeconfig = (string)state["kubeconfig"]!;
        using var client = new Kubernetes(KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig));
        var cache = Directory.CreateTempSubdirectory("podmig-demo-kubectl-").FullName;
        var kubectl = new Kubectl(kubeconfig, cache);
        var result = new DemoResult();
        try
        {
            Say($"building the counter image and importing it on every node: hack/sandbox image import {TestImages.Memcounter} <archive>");
            Images.Import(options, TestImages.Memcounter, TestImages.Archives()[1]);

            Say("kubectl apply -f examples/counter-pod.yaml   (a 64 MiB in-memory counter on node-a)");
            await RunAsync(kubectl, "apply", "-f", RepositoryLayout.InRepository("examples", "counter-pod.yaml"));
            await RunAsync(kubectl, "wait", "pod/counter", "--for=condition=Ready", "--timeout=60s");
            Console.WriteLine(await RunAsync(kubectl, "get", "pods", "-o", "wide"));

            // follow the source's log until its pod goes: the last tick it printed is where the replacement must go on from
            using var follow = kubectl.Start(["logs", "-f", "counter"]);
            using var stopFollowing = new FollowGuard(follow);
            var sourceLines = new List<string>();
            var reading = Task.Run(async () =>
            {
                while (await follow.StandardOutput.ReadLineAsync() is { } line)
                {
                    lock (sourceLines)
                    {
                        sourceLines.Add(line);
                    }
                }
            });
            var before = await WaitForTicksAsync(() => Task.FromResult<IEnumerable<string>>(Snapshot(sourceLines)), 20, "counter");
            Say($"counter on node-a at tick {before[^1].Tick} (checksum {before[^1].Checksum:x16})");

            Say("kubectl apply -f examples/migrate-counter.yaml   (no targetNode: the operator picks one)");
            var applied = clock.Elapsed;
            await RunAsync(kubectl, "apply", "-f", RepositoryLayout.InRepository("examples", "migrate-counter.yaml"));
            MigrationRequest? request = null;
            string? phase = null;
            while (clock.Elapsed - applied < TimeSpan.FromMinutes(3) && !MigrationPhases.IsFinal(phase))
            {
                var raw = await client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, "move-counter");
                request = KubernetesJson.Deserialize<MigrationRequest>(((JsonElement)raw).GetRawText());
                if (request.Status?.Phase is { } current && current != phase)
                {
                    phase = current;
                    Say($"  {phase,-13} {request.Status.Message}");
                }

                await Task.Delay(50);
            }

            result.TotalMs = (long)(clock.Elapsed - applied).TotalMilliseconds;
            Console.WriteLine(await RunAsync(kubectl, "get", "migrationrequests"));
            Console.WriteLine(await RunAsync(kubectl, "get", "pods", "-o", "wide"));
            var status = request?.Status;
            result.Phase = status?.Phase ?? "Unknown";
            result.SourceNode = status?.SourceNode;
            result.TargetNode = status?.TargetNode;
            result.DowntimeMs = status?.DowntimeMillis;
            result.ImageBytes = status?.ImageBytes;
            result.MemoryRestore = status?.MemoryRestore;
            result.MemoryTracking = status?.MemoryTracking;
            result.ImageStaging = status?.ImageStaging;
            result.Mode = status?.Mode;
            if (status?.Phase != MigrationPhases.Succeeded)
            {
                Say($"the migration did not succeed: {status?.Phase} {status?.Reason}: {status?.Message}");
                return Finish(options, result, 1);
            }

            // the source pod is gone: its log stream ends (kubectl may hold on; it had all lines)
            if (await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(3))) != reading)
            {
                stopFollowing.Dispose();
            }

            var sourceTicks = Memcounter.Parse(Snapshot(sourceLines));
            var frozen = sourceTicks[^1];
            var after = await WaitForTicksAsync(async () => (await RunAsync(kubectl, "logs", status.ReplacementPod!)).Split('\n'), 15, status.ReplacementPod!);
            bool continued = after[0].Tick == frozen.Tick + 1 && after.Zip(after.Skip(1)).All(p => p.Second.Tick == p.First.Tick + 1);
            bool intact = after.Any(t => t.VerifiedOk) && after.All(t => t.Verified != "BAD");
            result.CounterBefore = frozen.Tick;
            result.CounterAfter = after[0].Tick;
            result.StateContinuous = continued && intact;
            result.PauseSeenMs = MemcounterTick.PauseMillis(sourceTicks, after) is { } pause ? (long)Math.Round(pause) : null;

            Console.WriteLine();
            Console.WriteLine("Summary");
            Console.WriteLine($"  pod default/counter moved {status.SourceNode} -> {status.TargetNode}, now {status.ReplacementPod}");
            Console.WriteLine($"  mode                     {status.Mode} ({status.Condition(ConditionTypes.ModeChosen)?.Message})");
            Console.WriteLine($"  request to Succeeded     {result.TotalMs} ms");
            Console.WriteLine($"  downtime                 {status.DowntimeMillis} ms (frozen until the restored process ran)");
            Console.WriteLine($"  pause the counter saw    {(result.PauseSeenMs is { } seen ? seen + " ms" : "-")} (by its own clock, from its last tick on {status.SourceNode} to its first on {status.TargetNode}; it ticks every 100 ms, so this is up to one tick more than the pause itself)");
            Console.WriteLine($"  memory restore           {status.MemoryRestore}{(status.MemoryRestore == MemoryRestoreModes.Lazy ? " (the process ran first; its memory followed from the images staged on " + status.TargetNode + ")" : "")}");
            Console.WriteLine($"  pre-copy rounds          {status.PreCopyRounds}{(status.MemoryTracking == MemoryTrackingMethods.WriteProtect ? " (after the first, only the pages the pod wrote were read: userfaultfd write-protection)" : status.MemoryTracking is { } tracking ? $" ({tracking})" : "")}");
            Console.WriteLine($"  checkpoint               {status.ImageBytes} bytes staged {(status.ImageStaging == ImageStagingMedia.Memory ? "in memory" : "on disk")} on {status.SourceNode}; {status.BytesTransferred} bytes sent to {status.TargetNode}");
            Console.WriteLine($"  last tick on {status.SourceNode,-10} {frozen.Tick}   (kubectl logs counter)");
            Console.WriteLine($"  first tick on {status.TargetNode,-9} {after[0].Tick}   (kubectl logs {status.ReplacementPod}; then up to {after[^1].Tick})");
            Console.WriteLine($"  counter                  {(continued ? "continued without a gap or a restart" : "NOT continuous")}");
            Console.WriteLine($"  memory checksum checks   {(intact ? "all passed after the move" : "FAILED")}");
            return Finish(options, result, result.StateContinuous ? 0 : 1);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or k8s.Autorest.HttpOperationException or SandboxException)
        {
            Say("the demo failed: " + e.Message);
            return Finish(options, result, 1);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    private static int Finish(CommandLine options, DemoResult result, int exit)
    {
        var line = "DEMO-RESULT " + JsonSerializer.Serialize(result, Compact);
        if (options.Flags.TryGetValue("result", out var file))
        {
            File.WriteAllText(file, line + "\n");
        }
        else
        {
            Console.WriteLine(line);
        }

        return exit;
    }

    private static string[] Snapshot(List<string> lines)
    {
        lock (lines)
        {
            return [.. lines];
        }
    }

    private static async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(Func<Task<IEnumerable<string>>> lines, int count, string pod)
    {
        for (int i = 0; i < 600; i++)
        {
            var ticks = Memcounter.Parse(await lines());
            if (ticks.Count >= count)
            {
                return ticks;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"pod {pod} did not print {count} ticks within 60 s");
    }

    /// <summary>kubectl's output; its error in the exception when it fails.</summary>
    private static async Task<string> RunAsync(Kubectl kubectl, params string[] args)
    {
        var result = await kubectl.RunAsync(args);
        return result.ExitCode == 0
            ? result.Output.TrimEnd()
            : throw new InvalidOperationException($"kubectl {string.Join(' ', args)} failed: {result.Error.Trim()}");
    }

    /// <summary>Stops the kubectl logs -f it was given (by its PID) if the demo ends before the source pod does.</summary>
    private sealed class FollowGuard(Process process) : IDisposable
    {
        public void Dispose()
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
        }
    }

    /// <summary>The DEMO-RESULT line's fields.</summary>
    private sealed class DemoResult
    {
        [System.Text.Json.Serialization.JsonPropertyName("phase")]
        public string Phase { get; set; } = "Unknown";

        [System.Text.Json.Serialization.JsonPropertyName("sourceNode")]
        public string? SourceNode { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("targetNode")]
        public string? TargetNode { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("counterBefore")]
        public long? CounterBefore { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("counterAfter")]
        public long? CounterAfter { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("stateContinuous")]
        public bool StateContinuous { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("downtimeMs")]
        public long? DowntimeMs { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("pauseSeenMs")]
        public long? PauseSeenMs { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("totalMs")]
        public long TotalMs { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("imageBytes")]
        public long? ImageBytes { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("memoryRestore")]
        public string? MemoryRestore { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("memoryTracking")]
        public string? MemoryTracking { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("imageStaging")]
        public string? ImageStaging { get; set; }

        [System.Text.Json.Serialization.JsonPropertyName("mode")]
        public string? Mode { get; set; }
    }
}

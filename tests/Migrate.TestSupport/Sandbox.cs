using System.Diagnostics;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Xunit;

namespace Migrate.TestSupport;

/// <summary>
/// What the end-to-end tests do to the sandbox cluster, all through the API (kubectl or the client),
/// the way a user or an SRE would: run a counter pod, apply a MigrationRequest, watch it, read logs.
/// </summary>
public static class Sandbox
{
    /// <summary>A memcounter pod pinned to <paramref name="node"/>; returns once it is Running and has printed a few ticks.</summary>
    public static async Task<V1Pod> RunCounterAsync(SandboxCluster cluster, string name, string node, int mib, params string[] extraArgs)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        await cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = name } },
            Spec = new V1PodSpec
            {
                NodeName = node,
                Containers = [Counter(mib, ["--dirty-percent-per-second", "1", .. extraArgs])],
            },
        }, "default");
        var pod = await cluster.WaitForPodRunningAsync(name);
        await WaitForTicksAsync(cluster, name, "main", 5);
        return pod;
    }

    /// <summary>The memcounter container "main": <paramref name="mib"/> of memory, a tick every 100 ms, a checksum check every 5 ticks.</summary>
    public static V1Container Counter(int mib, IEnumerable<string> extraArgs) => new()
    {
        Name = "main",
        Image = TestImages.Memcounter,
        Command = ["/bin/memcounter"],
        Args = ["--mib", mib.ToString(System.Globalization.CultureInfo.InvariantCulture), "--interval-ms", "100", "--verify-every", "5", .. extraArgs],
    };

    /// <summary>A memcounter pod with the given labels and owner on <paramref name="node"/> (2 s grace period); returns once it runs.</summary>
    public static async Task<V1Pod> RunPodAsync(SandboxCluster cluster, string ns, string name, string node, Dictionary<string, string> labels,
        V1OwnerReference? owner = null, int mib = 8)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        await cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = name, Labels = labels, OwnerReferences = owner is null ? null : [owner] },
            Spec = new V1PodSpec { NodeName = node, TerminationGracePeriodSeconds = 2, Containers = [Counter(mib, [])] },
        }, ns);
        return await cluster.WaitForPodRunningAsync(name, ns);
    }

    /// <summary>A memcounter pod as a StatefulSet makes it (owner reference, pod-name label) that opted in to keeping its name when moved.</summary>
    public static V1Pod StatefulSetPod(string name, string node, int mib, string ownerUid) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            Labels = new Dictionary<string, string>
            {
                ["app"] = "db",
                ["statefulset.kubernetes.io/pod-name"] = name,
                [Labels.KeepName] = "true",
            },
            OwnerReferences = [new V1OwnerReference { ApiVersion = "apps/v1", Kind = "StatefulSet", Name = name[..name.LastIndexOf('-')], Uid = ownerUid, Controller = true, BlockOwnerDeletion = true }],
        },
        Spec = new V1PodSpec
        {
            NodeName = node,
            Containers = [Counter(mib, ["--dirty-percent-per-second", "1"])],
        },
    };

    /// <summary>
    /// A StatefulSet object (no controller runs it here) whose UID the test's pods can name as their
    /// owner: the API server's garbage collector deletes pods whose owner does not exist.
    /// </summary>
    public static async Task<string> CreateStatefulSetAsync(SandboxCluster cluster, string name)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var set = await cluster.Client.AppsV1.CreateNamespacedStatefulSetAsync(new V1StatefulSet
        {
            Metadata = new V1ObjectMeta { Name = name },
            Spec = new V1StatefulSetSpec { ServiceName = name, Replicas = 1, Selector = Selector(name), Template = Template(name) },
        }, "default");
        return set.Metadata.Uid;
    }

    /// <summary>A ReplicaSet object (no controller runs it here) to own test pods, as <see cref="CreateStatefulSetAsync"/>.</summary>
    public static async Task<string> CreateReplicaSetAsync(SandboxCluster cluster, string name)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var set = await cluster.Client.AppsV1.CreateNamespacedReplicaSetAsync(new V1ReplicaSet
        {
            Metadata = new V1ObjectMeta { Name = name },
            Spec = new V1ReplicaSetSpec { Replicas = 1, Selector = Selector(name), Template = Template(name) },
        }, "default");
        return set.Metadata.Uid;
    }

    private static V1LabelSelector Selector(string app) => new() { MatchLabels = new Dictionary<string, string> { ["app"] = app } };

    private static V1PodTemplateSpec Template(string app) => new()
    {
        Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = app } },
        Spec = new V1PodSpec { Containers = [new V1Container { Name = "main", Image = TestImages.Memcounter }] },
    };

    /// <summary>kubectl apply -f - of <paramref name="yaml"/>.</summary>
    public static async Task ApplyAsync(SandboxCluster cluster, string yaml)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        (await cluster.Api.KubectlInAsync(yaml, "apply", "-f", "-")).Succeeded();
    }

    /// <summary>Polls an object with kubectl until it exists and its status.phase is <paramref name="phase"/> (fails at once on another final phase); returns its status.</summary>
    public static async Task<JsonElement> WaitForPhaseAsync(SandboxCluster cluster, string kind, string name, string phase)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var clock = Stopwatch.StartNew();
        JsonElement status = default;
        while (clock.Elapsed < TimeSpan.FromMinutes(2))
        {
            var got = await cluster.Api.KubectlAsync("get", kind, name, "-o", "json");
            if (got.ExitCode != 0 && got.Error.Contains("(NotFound)", StringComparison.Ordinal))
            {
                await Task.Delay(100); // not made yet (by the operator, for one it creates)
                continue;
            }

            using var document = JsonDocument.Parse(got.Succeeded().Output);
            if (document.RootElement.TryGetProperty("status", out var s) && s.TryGetProperty("phase", out var p))
            {
                status = s.Clone();
                if (p.GetString() == phase)
                {
                    return status;
                }

                Assert.False(p.GetString() is "Failed" or "Succeeded" or "Ready", $"{kind} {name} ended {p.GetString()}, not {phase}: {s}");
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"{kind} {name} is not {phase} after two minutes: {status}");
    }

    /// <summary>A directory with kubectl-migrate (running the build's plugin), to put first on PATH.</summary>
    public static string CreatePluginDirectory()
    {
        var bin = Directory.CreateTempSubdirectory("kubectl-plugins-").FullName;
        var script = Path.Combine(bin, "kubectl-migrate");
        File.WriteAllText(script, $"#!/bin/sh\nexec dotnet '{RepositoryLayout.Program("Migrate.Kubectl", "kubectl-migrate")}' \"$@\"\n");
        File.SetUnixFileMode(script, (UnixFileMode)0b111_101_101);
        return bin;
    }

    /// <summary>kubectl migrate ARGS through the real kubectl (the plugin found in <paramref name="bin"/>), output redirected (not a terminal), against a kubeconfig.</summary>
    public static async Task<(int ExitCode, string Output)> KubectlMigrateAsync(string bin, string kubeconfig, Xunit.Abstractions.ITestOutputHelper output, params string[] args)
    {
        ArgumentNullException.ThrowIfNull(output);
        var result = await RunAsync("kubectl", ["migrate", .. args], new Dictionary<string, string>
        {
            ["PATH"] = $"{bin}:{Environment.GetEnvironmentVariable("PATH")}",
            ["KUBECONFIG"] = kubeconfig,
        });
        output.WriteLine($"$ kubectl migrate {string.Join(' ', args)}  -> {result.ExitCode}\n{result.Output}");
        return result;
    }

    /// <summary>kubectl apply of a MigrationRequest (no mode: the default, Auto; <paramref name="spec"/>: more lines of its spec, YAML at two spaces).</summary>
    public static async Task ApplyRequestAsync(SandboxCluster cluster, string name, string pod, string? mode, string? target = null, bool? keepAddress = null, string? spec = null)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var lines = (mode is null ? "" : $"\n  mode: {mode}") + (target is null ? "" : $"\n  targetNode: {target}")
            + (keepAddress is { } keep ? $"\n  keepAddress: {(keep ? "true" : "false")}" : "") + (spec is null ? "" : "\n" + spec);
        (await cluster.Api.KubectlInAsync($"""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {"{"}name: {name}, namespace: default{"}"}
            spec:
              podName: {pod}{lines}
            """, "apply", "-f", "-")).Succeeded();
    }

    public static async Task<MigrationRequest?> GetRequestAsync(SandboxCluster cluster, string name)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        try
        {
            var raw = await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, name);
            return KubernetesJson.Deserialize<MigrationRequest>(((JsonElement)raw).GetRawText());
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    /// <summary>Polls the request until <paramref name="until"/> holds for it (null: the request is gone).</summary>
    public static async Task<MigrationRequest?> WaitForRequestAsync(SandboxCluster cluster, string name, Func<MigrationRequest?, bool> until, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(until);
        var clock = Stopwatch.StartNew();
        MigrationRequest? request = null;
        while (clock.Elapsed < (timeout ?? TimeSpan.FromMinutes(2)))
        {
            request = await GetRequestAsync(cluster, name);
            if (until(request))
            {
                return request;
            }

            await Task.Delay(25);
        }

        throw new TimeoutException($"MigrationRequest {name}: still {request?.Status?.Phase} ({request?.Status?.Reason}: {request?.Status?.Message})");
    }

    public static Task<MigrationRequest?> WaitForFinalAsync(SandboxCluster cluster, string name) =>
        WaitForRequestAsync(cluster, name, r => MigrationPhases.IsFinal(r?.Status?.Phase));

    /// <summary>The ticks a container printed, from kubectl logs (through the API server's pods/log and the node's kubelet).</summary>
    public static async Task<IReadOnlyList<MemcounterTick>> TicksAsync(SandboxCluster cluster, string pod, string container = "main", bool children = false)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var logs = (await cluster.Api.KubectlAsync("logs", pod, "-c", container)).Succeeded().Output;
        return Memcounter.Parse(logs.Split('\n'), children);
    }

    public static async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(SandboxCluster cluster, string pod, string container, int count, long after = 0)
    {
        var clock = Stopwatch.StartNew();
        IReadOnlyList<MemcounterTick> ticks = [];
        while (clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            ticks = await TicksAsync(cluster, pod, container);
            if (ticks.Count(t => t.Tick > after) >= count)
            {
                return ticks;
            }

            await Task.Delay(200);
        }

        throw new TimeoutException($"pod {pod}/{container} printed {ticks.Count} ticks (up to {(ticks.Count > 0 ? ticks[^1].Tick : 0)}), not {count} after tick {after}");
    }

    /// <summary>Every tick one more than the one before: the counter never restarted or skipped.</summary>
    public static void AssertConsecutive(IReadOnlyList<MemcounterTick> ticks, long first)
    {
        ArgumentNullException.ThrowIfNull(ticks);
        Assert.NotEmpty(ticks);
        Assert.Equal(first, ticks[0].Tick);
        Assert.Equal(Enumerable.Range(0, ticks.Count).Select(i => first + i), ticks.Select(t => t.Tick));
        Assert.DoesNotContain(ticks, t => t.Verified == "BAD");
    }

    /// <summary>Events recorded about an object, by reason.</summary>
    public static async Task<IReadOnlyList<Corev1Event>> EventsAsync(SandboxCluster cluster, string kind, string name)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var events = await cluster.Client.CoreV1.ListNamespacedEventAsync("default");
        return [.. events.Items.Where(e => e.InvolvedObject.Kind == kind && e.InvolvedObject.Name == name)];
    }

    /// <summary>The pods of the default namespace, by name.</summary>
    public static async Task<IReadOnlyList<V1Pod>> PodsAsync(SandboxCluster cluster)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        return [.. (await cluster.Client.CoreV1.ListNamespacedPodAsync("default")).Items];
    }

    /// <summary>Waits until no migration directory is left in any node's staging or incoming directory.</summary>
    public static async Task AssertNoImagesLeftAsync(SandboxCluster cluster)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        var clock = Stopwatch.StartNew();
        IReadOnlyList<string> left = [];
        while (clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            left = [.. cluster.Nodes.SelectMany(n => n.StagedMigrations())];
            if (left.Count == 0)
            {
                return;
            }

            await Task.Delay(100);
        }

        Assert.Fail("staged images left: " + string.Join(", ", left));
    }

    /// <summary>Runs a script of the repository (hack/...) or a program, from the repository root; returns its exit code and output.</summary>
    public static Task<(int ExitCode, string Output)> RunAsync(string program, params string[] args) => RunAsync(program, args, null);

    public static async Task<(int ExitCode, string Output)> RunAsync(string program, string[] args, IReadOnlyDictionary<string, string>? environment)
    {
        ArgumentNullException.ThrowIfNull(program);
        ArgumentNullException.ThrowIfNull(args);
        var start = new ProcessStartInfo(program.Contains('/', StringComparison.Ordinal) ? RepositoryLayout.InRepository(program) : program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = RepositoryLayout.Root,
        };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        start.Environment["CONFIGURATION"] = Path.GetFileName(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Split('_')[0];
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, await stdout + await stderr);
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// The cluster the portable end-to-end tests run against, reached only through a kubeconfig:
/// a real cluster when MIGRATE_E2E_KUBECONFIG names one (see README, "End-to-end tests against a
/// real cluster"), otherwise a sandbox this fixture brings up with hack/sandbox (and takes down).
/// Everything happens in a namespace of its own, deleted at the end.
/// </summary>
public sealed class E2EClusterFixture : IAsyncLifetime
{
    public const string KubeconfigVariable = "MIGRATE_E2E_KUBECONFIG";
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-e2e-").FullName;
    private string? _sandboxState;

    public Kubectl Kubectl { get; private set; } = null!;

    public Kubernetes Client { get; private set; } = null!;

    public string Namespace { get; } = "podmig-e2e-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));

    /// <summary>The counter image (MIGRATE_E2E_IMAGE on a real cluster: the memcounter image pushed where its nodes can pull it).</summary>
    public string Image { get; } = Environment.GetEnvironmentVariable("MIGRATE_E2E_IMAGE") is { Length: > 0 } image ? image : TestImages.Memcounter;

    /// <summary>Where the tests' pods start (MIGRATE_E2E_SOURCE_NODE, or the first eligible node).</summary>
    public string SourceNode { get; private set; } = null!;

    /// <summary>Nodes that are Ready, schedulable and run an agent; at least two are needed.</summary>
    public IReadOnlyList<string> EligibleNodes { get; private set; } = [];

    public async Task InitializeAsync()
    {
        try
        {
            await ConnectAsync();
        }
        catch
        {
            // a fixture that failed to start is not disposed: take the sandbox down here
            if (_sandboxState is not null)
            {
                await Sandbox.RunAsync("hack/sandbox", "down", "--state", _sandboxState);
            }

            throw;
        }
    }

    private async Task ConnectAsync()
    {
        var kubeconfig = Environment.GetEnvironmentVariable(KubeconfigVariable);
        if (string.IsNullOrEmpty(kubeconfig))
        {
            _sandboxState = Path.Combine(_directory, "sandbox", "state.json");
            var up = await Sandbox.RunAsync("hack/sandbox", "up", "--nodes", "2", "--state", _sandboxState);
            Assert.True(up.ExitCode == 0, "hack/sandbox up failed: " + up.Output);
            var import = await Sandbox.RunAsync("hack/sandbox", "image", "import", TestImages.Memcounter, TestImages.Archives()[1], "--state", _sandboxState);
            Assert.True(import.ExitCode == 0, "hack/sandbox image import failed: " + import.Output);
            kubeconfig = (string)JsonNode.Parse(await File.ReadAllTextAsync(_sandboxState))!["kubeconfig"]!;
        }
        else if (!File.Exists(kubeconfig))
        {
            throw new InvalidOperationException($"{KubeconfigVariable}={kubeconfig}: no such file");
        }

        Client = EmulatorFixture.ClientFor(kubeconfig);
        Kubectl = new Kubectl(kubeconfig, Path.Combine(_directory, "kubectl-cache"));
        var nodes = (await Client.CoreV1.ListNodeAsync()).Items;
        EligibleNodes = [.. nodes
            .Where(n => n.Spec?.Unschedulable != true && n.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true
                && n.Metadata.Annotations?.ContainsKey(Annotations.AgentEndpoint) == true)
            .Select(n => n.Metadata.Name)];
        if (EligibleNodes.Count < 2)
        {
            throw new InvalidOperationException($"the cluster has {EligibleNodes.Count} Ready, schedulable node(s) with a pod-migration agent ({Annotations.AgentEndpoint}); the tests need two");
        }

        SourceNode = Environment.GetEnvironmentVariable("MIGRATE_E2E_SOURCE_NODE") is { Length: > 0 } source ? source : EligibleNodes[0];
        (await Kubectl.RunAsync("create", "namespace", Namespace)).Succeeded();
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (Kubectl is not null)
            {
                // requests first, while the operator runs (their finalizer is its to remove)
                await Kubectl.RunAsync("delete", "migrationrequests", "--all", "-n", Namespace, "--wait=true", "--timeout=60s");
                await Kubectl.RunAsync("delete", "pods", "--all", "-n", Namespace, "--wait=true", "--timeout=60s");
                await Kubectl.RunAsync("delete", "namespace", Namespace, "--wait=false");
            }

            Client?.Dispose();
        }
        finally
        {
            if (_sandboxState is not null)
            {
                var down = await Sandbox.RunAsync("hack/sandbox", "down", "--state", _sandboxState);
                Assert.True(down.ExitCode == 0, "hack/sandbox down failed: " + down.Output);
            }

            Directory.Delete(_directory, recursive: true);
        }
    }
}

/// <summary>
/// End-to-end tests that need nothing but a kubeconfig: they run against the sandbox in make test
/// and, unchanged, against a real cluster (MIGRATE_E2E_KUBECONFIG). Pods, requests and logs go
/// only through kubectl and the API.
/// </summary>
public sealed class PortableMigrationTests(E2EClusterFixture cluster, ITestOutputHelper output) : IClassFixture<E2EClusterFixture>
{
    [Fact]
    public async Task A_running_counter_moves_to_the_node_the_operator_picks_and_keeps_counting()
    {
        await RunCounterAsync("counter", 32);
        using var follow = cluster.Kubectl.Start(["logs", "-f", "counter", "-n", cluster.Namespace]);
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
        try
        {
            await WaitAsync(() => Ticks(sourceLines).Count >= 10, "the counter's first 10 ticks");
            await ApplyRequestAsync("move-counter", "counter", null);
            var status = (await WaitForFinalAsync("move-counter")).Status!;
            output.WriteLine($"{status.Phase} {status.Reason}: {status.Message}; downtime {status.DowntimeMillis} ms, {status.ImageBytes} bytes, {status.PreCopyRounds} rounds");
            Assert.True(status.Phase == MigrationPhases.Succeeded, $"{status.Phase} {status.Reason}: {status.Message}");

            // the source's log stream ends with its pod; what it printed last is where the replacement goes on
            await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(5)));
            var frozen = Ticks(sourceLines)[^1].Tick;
            IReadOnlyList<MemcounterTick> after = [];
            await WaitAsync(async () => (after = await LogTicksAsync(status.ReplacementPod!)).Count >= 8, "8 ticks from the replacement");
            Sandbox.AssertConsecutive(after, frozen + 1);
            Assert.Contains(after, t => t.VerifiedOk);

            Assert.Equal(cluster.SourceNode, status.SourceNode);
            Assert.NotEqual(cluster.SourceNode, status.TargetNode);
            Assert.Contains(status.TargetNode, cluster.EligibleNodes);
            var pods = (await cluster.Client.CoreV1.ListNamespacedPodAsync(cluster.Namespace)).Items;
            Assert.DoesNotContain(pods, p => p.Metadata.Name == "counter");
            var replacement = Assert.Single(pods, p => p.Metadata.Name.StartsWith("counter", StringComparison.Ordinal));
            Assert.Equal((status.ReplacementPod, status.TargetNode, "Running"), (replacement.Metadata.Name, replacement.Spec.NodeName, replacement.Status.Phase));
            Assert.Equal("counter", replacement.Metadata.Labels["app"]);
            Assert.True(status.DowntimeMillis > 0 && status.ImageBytes > 32L << 20 && status.BytesTransferred > 0 && status.PreCopyRounds >= 1,
                $"status figures: downtime {status.DowntimeMillis}, imageBytes {status.ImageBytes}, bytesTransferred {status.BytesTransferred}, rounds {status.PreCopyRounds}");
            Assert.True(status.CompletionTime > status.StartTime);
            var printed = (await cluster.Kubectl.RunAsync("get", "migrationrequest", "move-counter", "-n", cluster.Namespace)).Succeeded().Output;
            Assert.Contains("Succeeded", printed, StringComparison.Ordinal);
        }
        finally
        {
            if (!follow.HasExited)
            {
                follow.Kill();
            }
        }
    }

    [Theory]
    [InlineData("ghost", "source", "PodNotFound")]
    [InlineData("lonely", "node-that-does-not-exist", "TargetNotFound")]
    [InlineData("lonely", "source", "TargetIsSource")]
    public async Task A_bad_request_fails_at_once_with_its_reason_and_the_pod_runs_on(string pod, string target, string reason)
    {
        target = target == "source" ? cluster.SourceNode : target;
        V1Pod? before = null;
        if (pod == "lonely")
        {
            before = await ExistingPodAsync("lonely") ?? await RunCounterAsync("lonely", 4);
        }

        var name = "bad-" + reason.ToLowerInvariant();
        await ApplyRequestAsync(name, pod, target);
        var status = (await WaitForFinalAsync(name)).Status!;

        Assert.Equal((MigrationPhases.Failed, reason), (status.Phase, status.Reason));
        Assert.Contains(pod == "ghost" ? $"Pod {cluster.Namespace}/ghost" : target, status.Message, StringComparison.Ordinal);
        Assert.EndsWith(".", status.Message, StringComparison.Ordinal);
        if (before is not null)
        {
            var ticks = await LogTicksAsync("lonely");
            var now = await cluster.Client.CoreV1.ReadNamespacedPodAsync("lonely", cluster.Namespace);
            Assert.Equal((before.Metadata.Uid, before.Spec.NodeName, "Running"), (now.Metadata.Uid, now.Spec.NodeName, now.Status.Phase));
            IReadOnlyList<MemcounterTick> later = [];
            await WaitAsync(async () => (later = await LogTicksAsync("lonely")).Count > ticks.Count + 2, "lonely to go on counting");
            Sandbox.AssertConsecutive(later, 1);
        }

        (await cluster.Kubectl.RunAsync("delete", "migrationrequest", name, "-n", cluster.Namespace)).Succeeded();
    }

    [Theory]
    [InlineData("spec: {mode: PreCopy}", "name one pod (podName) or a group (pods or podSelector), not both and not neither")]
    [InlineData("spec: {podName: x, mode: Warm}", "spec.mode: Unsupported value: \"Warm\"")]
    [InlineData("spec: {podName: x, timeoutSeconds: 1}", "spec.timeoutSeconds: Invalid value: 1")]
    [InlineData("spec: {podName: Not_A_Name}", "spec.podName: Invalid value: \"Not_A_Name\"")]
    public async Task Kubectl_apply_refuses_a_schema_violation_and_names_the_field(string spec, string expected)
    {
        var error = (await cluster.Kubectl.RunWithInputAsync($"""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {"{"}name: invalid, namespace: {cluster.Namespace}{"}"}
            {spec}
            """, "apply", "-f", "-")).Failed();

        Assert.Contains(expected, error, StringComparison.Ordinal);
        Assert.False((await cluster.Kubectl.RunAsync("get", "migrationrequest", "invalid", "-n", cluster.Namespace)).ExitCode == 0);
    }

    private async Task<V1Pod> RunCounterAsync(string name, int mib)
    {
        (await cluster.Kubectl.RunWithInputAsync($$"""
            apiVersion: v1
            kind: Pod
            metadata:
              name: {{name}}
              namespace: {{cluster.Namespace}}
              labels: {app: {{name}} }
            spec:
              nodeName: {{cluster.SourceNode}}
              terminationGracePeriodSeconds: 5
              containers:
                - name: main
                  image: {{cluster.Image}}
                  imagePullPolicy: IfNotPresent
                  command: ["/bin/memcounter"]
                  args: ["--mib", "{{mib.ToString(CultureInfo.InvariantCulture)}}", "--interval-ms", "100", "--verify-every", "5", "--dirty-percent-per-second", "1"]
                  resources:
                    requests: {cpu: 50m, memory: {{(mib + 16).ToString(CultureInfo.InvariantCulture)}}Mi}
            """, "apply", "-f", "-")).Succeeded();
        (await cluster.Kubectl.RunAsync("wait", "pod/" + name, "-n", cluster.Namespace, "--for=condition=Ready", "--timeout=120s")).Succeeded();
        return await cluster.Client.CoreV1.ReadNamespacedPodAsync(name, cluster.Namespace);
    }

    private async Task<V1Pod?> ExistingPodAsync(string name)
    {
        try
        {
            return await cluster.Client.CoreV1.ReadNamespacedPodAsync(name, cluster.Namespace);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private async Task ApplyRequestAsync(string name, string pod, string? target) =>
        (await cluster.Kubectl.RunWithInputAsync($$"""
            apiVersion: podmigration.io/v1alpha1
            kind: MigrationRequest
            metadata: {name: {{name}}, namespace: {{cluster.Namespace}}}
            spec:
              podName: {{pod}}
              mode: PreCopy
            {{(target is null ? "" : "  targetNode: " + target)}}
            """, "apply", "-f", "-")).Succeeded();

    private async Task<MigrationRequest> WaitForFinalAsync(string name)
    {
        MigrationRequest? request = null;
        await WaitAsync(async () =>
        {
            var raw = await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, cluster.Namespace, MigrationRequest.Plural, name);
            request = KubernetesJson.Deserialize<MigrationRequest>(((JsonElement)raw).GetRawText());
            return MigrationPhases.IsFinal(request.Status?.Phase);
        }, $"MigrationRequest {name} to finish", TimeSpan.FromMinutes(3));
        return request!;
    }

    private async Task<IReadOnlyList<MemcounterTick>> LogTicksAsync(string pod) =>
        Memcounter.Parse((await cluster.Kubectl.RunAsync("logs", pod, "-n", cluster.Namespace)).Succeeded().Output.Split('\n'));

    private static IReadOnlyList<MemcounterTick> Ticks(List<string> lines)
    {
        lock (lines)
        {
            return Memcounter.Parse([.. lines]);
        }
    }

    private static Task WaitAsync(Func<bool> condition, string what) => WaitAsync(() => Task.FromResult(condition()), what);

    private static async Task WaitAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < (timeout ?? TimeSpan.FromSeconds(60)))
        {
            if (await condition())
            {
                return;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException("timed out waiting for " + what);
    }
}

using System.Diagnostics;
using System.Globalization;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Migrate.Operator;
using Migrate.Operator.Api;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;

// make demo: a live migration in the local sandbox cluster, with a readable summary.
// Everything it starts is stopped and removed at the end, whatever happens.
var clock = Stopwatch.StartNew();
void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{clock.Elapsed.TotalSeconds,6:0.0}s] {text}"));

Prerequisites.RequireRoot();
var cleanup = new Stack<Func<ValueTask>>();
int exit = 1;
try
{
    Say("starting the sandbox cluster: the Kubernetes API emulator, two containerd nodes with the podmig runtime handler, emulated kubelets, node agents (mutual TLS), the operator");
    var cluster = new EmulatorFixture();
    await cluster.InitializeAsync();
    cleanup.Push(async () => await cluster.DisposeAsync());
    await cluster.ApplyRepositoryFileAsync("crds", "podmigration.io_migrationrequests.yaml");
    await cluster.ApplyRepositoryFileAsync("deploy", "node", "runtimeclass.yaml");
    var pki = new TestPki();
    cleanup.Push(() =>
    {
        pki.Dispose();
        return ValueTask.CompletedTask;
    });
    var nodes = new Dictionary<string, ContainerdNode>();
    foreach (var name in new[] { "node-a", "node-b" })
    {
        var node = await ContainerdNode.StartAsync(name, RepositoryLayout.RestoreRuntime);
        cleanup.Push(node.DisposeAsync);
        nodes[name] = node;
        TestImages.ImportInto(node);
        var agent = await TlsAgent.StartAsync(pki, name, node.Root, $"--Agent:CriSocket={node.SocketPath}");
        cleanup.Push(agent.DisposeAsync);
        var kubelet = await SandboxKubelet.StartAsync(cluster.Client, node, name,
            new Dictionary<string, string> { [AnnotatedAgentDirectory.EndpointAnnotation] = agent.Address });
        cleanup.Push(kubelet.DisposeAsync);
        Say($"{name}: containerd {node.SocketPath}, agent {agent.Address}");
    }

    var operatorIdentity = pki.Issue("operator");
    var operatorHost = OperatorHost.Build([
        $"--Operator:Kubeconfig={cluster.Emulator.KubeconfigPath}", "--Operator:LeaseNamespace=default", "--Operator:Identity=sandbox-operator",
        $"--Operator:TlsCertificateFile={operatorIdentity.CertificateFile}", $"--Operator:TlsKeyFile={operatorIdentity.KeyFile}",
        $"--Operator:TlsAuthorityFile={pki.AuthorityFile}", $"--Operator:TokenSigningKeyFile={pki.TokenSigningKeyFile}",
        "--urls", $"http://127.0.0.1:{Ports.Free()}", "--Logging:LogLevel:Default=Warning"]);
    await operatorHost.StartAsync();
    cleanup.Push(async () =>
    {
        await operatorHost.StopAsync();
        await operatorHost.DisposeAsync();
    });
    Say($"operator running; KUBECONFIG={cluster.Emulator.KubeconfigPath}");

    Say("creating pod default/counter on node-a: a 64 MiB in-memory counter that rewrites 1 % of its memory per second and checks its checksum every 5 ticks");
    await cluster.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
    {
        Metadata = new V1ObjectMeta { Name = "counter", Labels = new Dictionary<string, string> { ["app"] = "counter" } },
        Spec = new V1PodSpec
        {
            NodeName = "node-a",
            Containers = [new V1Container
            {
                Name = "main",
                Image = TestImages.Memcounter,
                Command = ["/bin/memcounter"],
                Args = ["--mib", "64", "--interval-ms", "100", "--verify-every", "5", "--dirty-percent-per-second", "1"],
            }],
        },
    }, "default");
    (await cluster.KubectlAsync("wait", "pod/counter", "--for=condition=Ready", "--timeout=60s")).Succeeded();
    Console.WriteLine((await cluster.KubectlAsync("get", "pods", "-o", "wide")).Output);
    var sourceLog = Directory.GetFiles(nodes["node-a"].PodLogDirectory, "0.log", SearchOption.AllDirectories).Single();
    var before = await Logs.WaitForTicksAsync(sourceLog, 20);
    Say($"counter on node-a reached tick {before[^1].Tick} (checksum {before[^1].Checksum:x16}, last check {before.Last(t => t.Verified != "-").Verified})");

    Say("kubectl apply: MigrationRequest move-counter (no target given: the operator picks one)");
    (await cluster.KubectlInAsync("""
        apiVersion: podmigration.io/v1alpha1
        kind: MigrationRequest
        metadata: {name: move-counter, namespace: default}
        spec: {podName: counter, mode: PreCopy}
        """, "apply", "-f", "-")).Succeeded();
    var started = clock.Elapsed;
    string? phase = null;
    MigrationRequest? request = null;
    while (clock.Elapsed - started < TimeSpan.FromMinutes(3))
    {
        var raw = await cluster.Client.CustomObjects.GetNamespacedCustomObjectAsync(MigrationRequest.Group, MigrationRequest.Version, "default", MigrationRequest.Plural, "move-counter");
        request = KubernetesJson.Deserialize<MigrationRequest>(((System.Text.Json.JsonElement)raw).GetRawText());
        if (request.Status?.Phase is { } current && current != phase)
        {
            phase = current;
            Say($"  phase {phase,-13} {request.Status.Message}");
        }

        if (MigrationPhases.IsFinal(phase))
        {
            break;
        }

        await Task.Delay(50);
    }

    Console.WriteLine((await cluster.KubectlAsync("get", "migrationrequests")).Output);
    Console.WriteLine((await cluster.KubectlAsync("get", "pods", "-o", "wide")).Output);
    var status = request?.Status;
    if (status?.Phase != MigrationPhases.Succeeded)
    {
        Say($"the migration did not succeed: {status?.Phase} {status?.Reason}: {status?.Message}");
    }
    else
    {
        var frozen = Logs.Ticks(sourceLog)[^1];
        var targetLog = Directory.GetFiles(nodes[status.TargetNode!].PodLogDirectory, "0.log", SearchOption.AllDirectories).Single();
        var after = await Logs.WaitForTicksAsync(targetLog, 15);
        bool continued = after[0].Tick == frozen.Tick + 1 && after.Zip(after.Skip(1)).All(p => p.Second.Tick == p.First.Tick + 1);
        bool intact = after.Any(t => t.VerifiedOk) && after.All(t => t.Verified != "BAD");
        Console.WriteLine();
        Console.WriteLine("Summary");
        Console.WriteLine($"  pod default/counter moved {status.SourceNode} -> {status.TargetNode} as {status.ReplacementPod}");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  migration time           {(status.CompletionTime - status.StartTime)?.TotalSeconds:0.00} s (request to Succeeded)"));
        Console.WriteLine($"  downtime                 {status.DowntimeMillis} ms (frozen until the restored process ran)");
        Console.WriteLine($"  pre-copy rounds          {status.PreCopyRounds}");
        Console.WriteLine($"  staged on source         {status.ImageBytes} bytes; sent to target {status.BytesTransferred} bytes");
        Console.WriteLine($"  last tick on {status.SourceNode}      {frozen.Tick}");
        Console.WriteLine($"  first tick on {status.TargetNode}     {after[0].Tick} (then {after[^1].Tick}) -> {(continued ? "continued without a gap" : "NOT continuous")}");
        Console.WriteLine($"  memory checksum checks   {(intact ? "all passed after the move" : "FAILED")}");
        exit = continued && intact ? 0 : 1;
    }
}
catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or Grpc.Core.RpcException or k8s.Autorest.HttpOperationException)
{
    Say("the demo failed: " + e.Message);
}
finally
{
    Say("stopping the sandbox and removing what it made");
    while (cleanup.Count > 0)
    {
        await cleanup.Pop()();
    }

    Say(exit == 0 ? "demo done" : "demo FAILED");
}

return exit;

/// <summary>Counter lines from a CRI log file.</summary>
internal static class Logs
{
    public static IReadOnlyList<MemcounterTick> Ticks(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return Memcounter.Parse(reader.ReadToEnd().Split('\n').Select(l => l.Split(' ', 4) is { Length: 4 } parts ? parts[3] : l));
    }

    public static async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(string path, int count)
    {
        for (int i = 0; i < 600; i++)
        {
            var ticks = Ticks(path);
            if (ticks.Count >= count)
            {
                return ticks;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"{path} did not reach {count} ticks");
    }
}

using System.Diagnostics;
using System.Text.Json.Nodes;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// The README's commands as a user runs them: hack/sandbox up/status/image import/down with three
/// nodes, and make demo's script from start to its DEMO-RESULT line. Each uses a state file of its
/// own, so a sandbox someone left up is not touched.
/// </summary>
public sealed class HackSandboxTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-hack-sandbox-").FullName;

    private string State => Path.Combine(_directory, "state.json");

    [Fact]
    public async Task Sandbox_up_with_three_nodes_on_three_containerd_releases_reports_every_component_imports_an_image_everywhere_and_down_removes_it_all()
    {
        var wrong = await Sandbox.RunAsync("hack/sandbox", "up", "--containerd", "1.5", "--state", State);
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Contains("containerd '1.5' is not a release the sandbox runs (it runs 1.6, 1.7, 2.1)", wrong.Output, StringComparison.Ordinal);

        var up = await Sandbox.RunAsync("hack/sandbox", "up", "--nodes", "3", "--containerd", "1.6,1.7,2.1", "--prometheus", "--state", State);
        Assert.True(up.ExitCode == 0, up.Output);
        Assert.Contains("KUBECONFIG=", up.Output, StringComparison.Ordinal);
        Assert.Matches(@"containerd: node-a 1\.6\.\S+, node-b 1\.7\.\S+, node-c 2\.1\.\S+", up.Output);
        var state = JsonNode.Parse(await File.ReadAllTextAsync(State))!;
        Assert.Equal(["1.6", "1.7", "2.1"], state["nodes"]!.AsArray().Select(n => (string)n!["containerd"]!));
        var sockets = state["nodes"]!.AsArray().Select(n => ((string)n!["containerdSocket"]!, (string)n["ctr"]!)).ToList();
        int prometheusPid = 0;
        var roots = state["nodes"]!.AsArray().SelectMany(n => new[] { (string)n!["root"]!, (string)n["state"]! }).ToList();
        try
        {
            var status = await Sandbox.RunAsync("hack/sandbox", "status", "--json", "--state", State);
            Assert.True(status.ExitCode == 0, status.Output);
            var components = JsonNode.Parse(status.Output)!["components"]!.AsArray();
            Assert.Equal(["node-a", "node-b", "node-c"], components.Where(c => (string)c!["kind"]! == "node agent").Select(c => (string)c!["node"]!));
            Assert.All(components, c => Assert.True((bool)c!["running"]!, $"{c["name"]} (pid {c["pid"]}) is not running"));
            Assert.Single(components, c => (string)c!["name"]! == "operator");
            var prometheus = Assert.Single(components, c => (string)c!["name"]! == "prometheus")!;
            prometheusPid = (int)prometheus["pid"]!;
            using (var http = new HttpClient())
            {
                // (its first target discovery runs a moment after it is ready)
                var targets = "";
                for (int i = 0; i < 50 && !targets.Contains("\"health\":\"up\"", StringComparison.Ordinal); i++)
                {
                    await Task.Delay(200);
                    targets = await http.GetStringAsync(new Uri(new Uri((string)prometheus["address"]!), "api/v1/targets"));
                }

                Assert.Contains("\"scrapePool\":\"podmig-agent\"", targets, StringComparison.Ordinal);
            }
            Assert.Equal(3, components.Where(c => (string)c!["kind"]! == "node agent").Select(c => ((string)c!["address"]!).Split(':')[0]).Distinct().Count());

            var nodes = await Sandbox.RunAsync("kubectl", "--kubeconfig", (string)state["kubeconfig"]!, "get", "nodes", "--no-headers");
            Assert.Equal(3, nodes.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(l => l.Contains(" Ready ", StringComparison.Ordinal)));

            var rootfs = Path.Combine(_directory, "rootfs");
            TestRootFilesystem.Create(rootfs);
            var imported = await Sandbox.RunAsync("hack/sandbox", "image", "import", "docker.io/example/tools:1", rootfs, "--state", State);
            Assert.True(imported.ExitCode == 0, imported.Output);
            foreach (var (socket, ctr) in sockets)
            {
                Assert.Contains("docker.io/example/tools:1", Prerequisites.Run(ctr, "--address", socket, "--namespace", "k8s.io", "images", "ls", "-q"), StringComparison.Ordinal);
            }

            var missing = await Sandbox.RunAsync("hack/sandbox", "image", "import", "docker.io/example/none:1", Path.Combine(_directory, "nothing"), "--state", State);
            Assert.NotEqual(0, missing.ExitCode);
            Assert.Contains("is neither a directory (root file system) nor a file (OCI archive)", missing.Output, StringComparison.Ordinal);
        }
        finally
        {
            var down = await Sandbox.RunAsync("hack/sandbox", "down", "--state", State);
            Assert.True(down.ExitCode == 0, down.Output);
        }

        Assert.False(File.Exists(State));
        Assert.True(prometheusPid > 0 && !Directory.Exists($"/proc/{prometheusPid}"), $"Prometheus (pid {prometheusPid}) still runs");
        Assert.All(roots, r => Assert.False(Directory.Exists(r), $"{r} is left"));
        Assert.DoesNotContain(File.ReadAllLines("/proc/mounts"), l => roots.Any(r => l.Contains(r, StringComparison.Ordinal)));
        var again = await Sandbox.RunAsync("hack/sandbox", "status", "--state", State);
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("no sandbox is up", again.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Down_after_the_sandbox_process_was_killed_stops_and_removes_what_it_left()
    {
        static string[] NetworkNamespaces() => Directory.Exists("/run/netns") ? [.. Directory.EnumerateFiles("/run/netns", "cni-*").Order(StringComparer.Ordinal)] : [];
        var networksBefore = NetworkNamespaces();
        var up = await Sandbox.RunAsync("hack/sandbox", "up", "--state", State);
        Assert.True(up.ExitCode == 0, up.Output);
        var state = JsonNode.Parse(await File.ReadAllTextAsync(State))!;
        var kubeconfig = (string)state["kubeconfig"]!;
        var pids = state["components"]!.AsArray().Select(c => (int)c!["pid"]!).Distinct().ToList();
        var roots = state["nodes"]!.AsArray().SelectMany(n => new[] { (string)n!["root"]!, (string)n["state"]! }).ToList();
        var files = state["files"]!.AsArray().Select(f => (string)f!).ToList();
        try
        {
            var imported = await Sandbox.RunAsync("hack/sandbox", "image", "import", TestImages.Memcounter, TestImages.Archives()[1], "--state", State);
            Assert.True(imported.ExitCode == 0, imported.Output);
            var pod = await Sandbox.RunAsync("kubectl", "--kubeconfig", kubeconfig, "run", "leftover", "--image", TestImages.Memcounter, "--restart=Never",
                "--overrides", """{"spec":{"nodeName":"node-a"}}""", "--command", "--", "/bin/memcounter", "--mib", "4");
            Assert.True(pod.ExitCode == 0, pod.Output);
            await WaitForContainerAsync(roots);
        }
        catch
        {
            await Sandbox.RunAsync("hack/sandbox", "down", "--state", State);
            throw;
        }

        ChildProcess.Signal((int)state["pid"]!, 9);
        var status = await Sandbox.RunAsync("hack/sandbox", "status", "--state", State);
        Assert.NotEqual(0, status.ExitCode);
        Assert.Contains("DEAD", status.Output, StringComparison.Ordinal);
        var down = await Sandbox.RunAsync("hack/sandbox", "down", "--state", State);
        output.WriteLine(down.Output);

        Assert.True(down.ExitCode == 0, down.Output);
        Assert.Contains("had died", down.Output, StringComparison.Ordinal);
        await Task.Delay(500);
        Assert.All(pids, pid => Assert.False(Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z", StringComparison.Ordinal), $"pid {pid} still runs"));
        Assert.All(roots.Concat(files), p => Assert.False(Path.Exists(p), $"{p} is left"));
        Assert.DoesNotContain(File.ReadAllLines("/proc/mounts"), l => roots.Any(r => l.Contains(r, StringComparison.Ordinal)));
        Assert.DoesNotContain(ContainerProcesses(), cmdline => cmdline.Contains("/bin/memcounter", StringComparison.Ordinal) && cmdline.Contains("--mib 4", StringComparison.Ordinal));
Assert.False(File.Exists(State));
        Assert.Equal(networksBefore, NetworkNamespaces()); // the pod's CNI network namespace went too
    }

    private static async Task WaitForContainerAsync(IReadOnlyList<string> roots)
    {
        for (int i = 0; i < 300 && !ContainerProcesses().Any(c => c.Contains("/bin/memcounter --mib 4", StringComparison.Ordinal)); i++)
        {
            await Task.Delay(100);
        }

        Assert.True(ContainerProcesses().Any(c => c.Contains("/bin/memcounter --mib 4", StringComparison.Ordinal)), "the pod never ran on " + string.Join(", ", roots));
    }

    private static List<string> ContainerProcesses() =>
        Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)).Select(d =>
        {
            try
            {
                return File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
            }
            catch (IOException)
            {
                return "";
            }
        }).ToList();

    [Fact]
    public async Task The_demo_moves_the_counter_and_ends_with_a_DEMO_RESULT_line()
    {
        var demo = await Sandbox.RunAsync("hack/demo.sh", [], new Dictionary<string, string> { ["PODMIG_SANDBOX_STATE"] = State });
        output.WriteLine(demo.Output);
        Assert.True(demo.ExitCode == 0, demo.Output);
        var last = demo.Output.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("DEMO-RESULT ", last, StringComparison.Ordinal);
        var result = JsonNode.Parse(last["DEMO-RESULT ".Length..])!;
        Assert.Equal("Succeeded", (string)result["phase"]!);
        Assert.Equal("node-a", (string)result["sourceNode"]!);
        Assert.Equal("node-b", (string)result["targetNode"]!);
        Assert.True((bool)result["stateContinuous"]!);
        Assert.Equal((long)result["counterBefore"]! + 1, (long)result["counterAfter"]!);
        Assert.True((long)result["downtimeMs"]! > 0 && (long)result["totalMs"]! >= (long)result["downtimeMs"]!);
        Assert.True((long)result["imageBytes"]! > 64L << 20);
        Assert.True((long)result["pauseSeenMs"]! > 0, "the counter's own clock shows no pause across the move");
        Assert.Equal("Lazy", (string)result["memoryRestore"]!);
        Assert.Equal("WriteProtect", (string)result["memoryTracking"]!);
        // the sandbox's agents stage in memory (each node's directory on /dev/shm), and a 64 MiB pod fits
        Assert.Equal("Memory", (string)result["imageStaging"]!);
        Assert.Contains(" bytes staged in memory on node-a; ", demo.Output, StringComparison.Ordinal);
        // the example names no mode: Auto took pre-copy rounds, and the idle counter's last one left little enough to send frozen
        Assert.Equal("PreCopy", (string)result["mode"]!);
        Assert.Contains("mode                     PreCopy (Auto: PreCopy; the last of", demo.Output, StringComparison.Ordinal);
        Assert.Contains("memory restore           Lazy (the process ran first", demo.Output, StringComparison.Ordinal);
        Assert.Contains("continued without a gap or a restart", demo.Output, StringComparison.Ordinal);
        Assert.False(File.Exists(State));
        Figures.Record(nameof(HackSandboxTests), "make demo downtime ms", (long)result["downtimeMs"]!, "ms");
        Figures.Record(nameof(HackSandboxTests), "make demo request to Succeeded ms", (long)result["totalMs"]!, "ms");
        Figures.Record(nameof(HackSandboxTests), "make demo pause the counter saw ms", (long)result["pauseSeenMs"]!, "ms");
    }

    public void Dispose()
    {
        // hack/sandbox down removes the state directory when nothing else is in it
        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }
}

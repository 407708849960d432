using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.Sandbox;
using Migrate.TestSupport;

// hack/sandbox and make demo. Commands:
//   serve [--nodes N] [--containerd R[,R...]] [--installed] [--prometheus] [--registry] [--state FILE]  run the sandbox cluster until SIGTERM (hack/sandbox up starts it in the background)
//   status [--json] [--state FILE]       every component with its PID, address and node
//   down [--state FILE]                  stop the sandbox and remove what it made
//   image import NAME PATH [--state FILE] make an image (root file system directory or OCI archive) available on every node
//   demo [--state FILE] [--result FILE]  the live migration of make demo, against a running sandbox
var options = CommandLine.Parse(args);
try
{
    return options.Command switch
    {
        "serve" => await Serve.RunAsync(options),
        "status" => SandboxState.PrintStatus(options),
        "down" => await SandboxState.DownAsync(options),
        "image" when options.Positional is ["import", var name, var path] => Images.Import(options, name, path),
        "demo" => await Demo.RunAsync(options),
        _ => CommandLine.Usage(),
    };
}
catch (Exception e) when (e is SandboxException or InvalidOperationException or TimeoutException or IOException)
{
    Console.Error.WriteLine("sandbox: " + e.Message);
    return 1;
}

namespace Migrate.Sandbox
{
    /// <summary>A failure with a sentence for the user (no stack trace).</summary>
    internal sealed class SandboxException(string message) : Exception(message);

    internal sealed record CommandLine(string Command, IReadOnlyList<string> Positional, IReadOnlyDictionary<string, string> Flags)
    {
        public const string DefaultState = "/run/podmig-sandbox/state.json";

        public string StatePath => Flags.GetValueOrDefault("state", DefaultState);

        public bool Has(string flag) => Flags.ContainsKey(flag);

        public static CommandLine Parse(string[] args)
        {
            var positional = new List<string>();
            var flags = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < args.Length; i++)
            {
                if (args[i].StartsWith("--", StringComparison.Ordinal))
                {
                    var name = args[i][2..];
                    bool valued = name is "nodes" or "state" or "result" or "directory" or "containerd";
                    flags[name] = valued ? (i + 1 < args.Length ? args[++i] : throw new SandboxException($"--{name} needs a value")) : "true";
                }
                else
                {
                    positional.Add(args[i]);
                }
            }

            return new CommandLine(positional.FirstOrDefault() ?? "", positional.Skip(1).ToList(), flags);
        }

        public static int Usage()
        {
            Console.Error.WriteLine("""
                usage: hack/sandbox up [--nodes N] [--containerd 1.6|1.7|2.1[,...]] [--installed] [--prometheus] [--registry] [--state FILE]
                       hack/sandbox status [--json] [--state FILE]
                       hack/sandbox image import NAME PATH [--state FILE]
                       hack/sandbox down [--state FILE]
                """);
            return 2;
        }
    }

    /// <summary>The sandbox's foreground process: starts the cluster, writes the state file, runs until SIGTERM or SIGINT, then removes everything.</summary>
    internal static class Serve
    {
        public static async Task<int> RunAsync(CommandLine options)
        {
            int nodes = int.Parse(options.Flags.GetValueOrDefault("nodes", "2"), CultureInfo.InvariantCulture);
            var state = options.StatePath;
            if (File.Exists(state) && SandboxState.Alive(SandboxState.Read(state)))
            {
                throw new SandboxException($"a sandbox is already up ({state}); 'hack/sandbox down' first");
            }

            var directory = options.Flags.GetValueOrDefault("directory", Path.GetDirectoryName(state)!);
            Directory.CreateDirectory(directory);
            var stop = new TaskCompletionSource();
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
            {
                c.Cancel = true;
                stop.TrySetResult();
            });
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c =>
            {
                c.Cancel = true;
                stop.TrySetResult();
            });
            var clock = System.Diagnostics.Stopwatch.StartNew();
            void Say(string text) => Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{clock.Elapsed.TotalSeconds,5:0.0}s] {text}"));
            bool installed = options.Flags.ContainsKey("installed");
            Say($"starting the sandbox cluster with {nodes} node(s){(installed ? ", installed from deploy/ with RBAC enforced: the operator and the agents as its Deployment's and DaemonSet's pods, from the images make images built" : "")}");
            var containerd = options.Flags.GetValueOrDefault("containerd");
            try
            {
                Say("containerd: " + string.Join(", ", ContainerdRelease.ForNodes(containerd, nodes).Select((r, i) => $"node-{(char)('a' + i)} {r.Version()}")));
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                throw new SandboxException(e.Message);
            }

            await using (var cluster = await SandboxCluster.StartAsync(new SandboxOptions { Nodes = nodes, Directory = directory, ImportTestImages = false, AsInstalled = installed, FromImages = installed, Containerd = containerd, Prometheus = options.Flags.ContainsKey("prometheus"), Registry = options.Flags.ContainsKey("registry") }, Say))
            {
                File.WriteAllText(state + ".tmp", cluster.DescribeJson());
                File.Move(state + ".tmp", state, overwrite: true);
                Say($"sandbox up; KUBECONFIG={cluster.KubeconfigPath}");
                await stop.Task;
                Say("stopping the sandbox");
            }

            File.Delete(state);
            Say("sandbox down: processes stopped, mounts, bridges, cgroups and node directories removed");
            return 0;
        }
    }

    /// <summary>The state file of a running sandbox, and what status and down do with it.</summary>
    internal static class SandboxState
    {
        public static JsonObject Read(string path) =>
            File.Exists(path)
                ? JsonNode.Parse(File.ReadAllText(path))!.AsObject()
                : throw new SandboxException($"no sandbox is up ({path} does not exist); start one with 'hack/sandbox up'");

        public static bool Alive(JsonObject state) => ProcessAlive((int)state["pid"]!);

        private static bool ProcessAlive(int pid) => Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Split(") ")[^1].StartsWith('Z');

        public static int PrintStatus(CommandLine options)
        {
            var state = Read(options.StatePath);
            var components = state["components"]!.AsArray().Select(c => c!.AsObject()).ToList();
            foreach (var c in components)
            {
                c["running"] = ProcessAlive((int)c["pid"]!);
            }

            if (options.Has("json"))
            {
                Console.WriteLine(state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                return components.All(c => (bool)c["running"]!) ? 0 : 1;
            }

            Console.WriteLine($"KUBECONFIG={state["kubeconfig"]}");
            Console.WriteLine($"{"COMPONENT",-20} {"NODE",-8} {"PID",-8} {"STATE",-8} ADDRESS");
            foreach (var c in components)
            {
                Console.WriteLine($"{c["name"],-20} {c["node"]?.ToString() ?? "-",-8} {c["pid"],-8} {((bool)c["running"]! ? "running" : "DEAD"),-8} {c["address"]}");
            }

            return components.All(c => (bool)c["running"]!) ? 0 : 1;
        }

        /// <summary>SIGTERM to the sandbox process, which stops its parts and removes what it made; waits for it.</summary>
        public static async Task<int> DownAsync(CommandLine options)
        {
            var path = options.StatePath;
            if (!File.Exists(path))
            {
                Console.WriteLine("no sandbox is up");
                return 0;
            }

            var state = Read(path);
            int pid = (int)state["pid"]!;
            if (!Alive(state))
            {
                SweepAfterCrash(state);
                File.Delete(path);
                RemoveLogs(state);
                Console.WriteLine($"sandbox down (its process {pid} had died; what it left was stopped and removed)");
                return 0;
            }

            ChildProcess.Signal(pid, 15);
            for (int i = 0; i < 1200 && ProcessAlive(pid); i++)
            {
                await Task.Delay(100);
            }

            if (ProcessAlive(pid))
            {
                throw new SandboxException($"the sandbox process {pid} did not stop within 120 s; see {state["directory"]}/sandbox.log");
            }

            RemoveLogs(state);
            Console.WriteLine("sandbox down");
            return 0;
        }

        /// <summary>
        /// The sandbox process died (killed, out of memory) and could not stop its parts: its agents,
        /// operator and Prometheus (by the PIDs it recorded, if those still run its programs), then each node's
        /// containers, shims, containerd, mounts, bridge, cgroups and directories.
        /// </summary>
        private static void SweepAfterCrash(JsonObject state)
        {
            foreach (var component in state["components"]!.AsArray().Select(c => c!.AsObject()))
            {
                int pid = (int)component["pid"]!;
                var kind = (string)component["kind"]!;
                string program = kind switch { "node agent" => "migrate-node-agent.dll", "operator" => "migrate-operator.dll", "prometheus" => "prometheus", "registry" => "docker-registry", _ => "" };
                if (program.Length > 0 && ProcessAlive(pid) && File.ReadAllText($"/proc/{pid}/cmdline").Contains(program, StringComparison.Ordinal))
                {
                    ChildProcess.Signal(pid, 9);
                    Console.WriteLine($"stopped {component["name"]} (pid {pid})");
                }
            }

            foreach (var node in state["nodes"]!.AsArray())
            {
                ContainerdNode.RemoveLeftovers((string)node!["root"]!, (string)node["state"]!);
                Console.WriteLine($"removed {node["name"]}: containers, containerd, mounts, bridge, cgroups, directories");
            }

            if (state["bridge"] is JsonNode bridge)
            {
                PodNetwork.RemoveBridge((string)bridge!);
                Console.WriteLine($"removed the pod network's bridge {bridge}");
            }

            foreach (var file in state["files"]?.AsArray().Select(f => (string)f!) ?? [])
            {
                if (Directory.Exists(file))
                {
                    Directory.Delete(file, recursive: true);
                }
                else
                {
                    File.Delete(file);
                }
            }
        }

        private static void RemoveLogs(JsonObject state)
        {
            // its logs go with it; a sandbox that failed to stop keeps them for a look
            var directory = (string)state["directory"]!;
            foreach (var leftover in new[] { Path.Combine(directory, "logs") }.Where(Directory.Exists))
            {
                Directory.Delete(leftover, recursive: true);
            }

            File.Delete(Path.Combine(directory, "sandbox.log"));
            if (Directory.Exists(directory) && !Directory.EnumerateFileSystemEntries(directory).Any())
            {
                Directory.Delete(directory);
            }
        }
    }

    /// <summary>hack/sandbox image import: an OCI archive as it is, a root file system directory packed as a one-layer image first.</summary>
    internal static class Images
    {
        public static int Import(CommandLine options, string name, string path)
        {
            var state = SandboxState.Read(options.StatePath);
            string archive = path;
            string? temporary = null;
            if (Directory.Exists(path))
            {
                temporary = Path.Combine(Path.GetTempPath(), $"podmig-image-{Guid.NewGuid():N}.tar");
                OciImage.WriteArchive(path, name, [], temporary);
                archive = temporary;
            }
            else if (!File.Exists(path))
            {
                throw new SandboxException($"{path} is neither a directory (root file system) nor a file (OCI archive)");
            }

            try
            {
                foreach (var node in state["nodes"]!.AsArray())
                {
                    var socket = (string)node!["containerdSocket"]!;
                    var ctr = (string?)node["ctr"] ?? "ctr"; // the node's own release's
                    Prerequisites.Run(ctr, "--address", socket, "--namespace", "k8s.io", "images", "import", archive);
                    var names = Prerequisites.Run(ctr, "--address", socket, "--namespace", "k8s.io", "images", "ls", "-q").Split('\n', StringSplitOptions.TrimEntries);
                    if (!names.Contains(name))
                    {
                        throw new SandboxException($"{path} holds no image named {name} (an OCI archive keeps the names it was saved with)");
                    }

                    Console.WriteLine($"{node["name"]}: {name} imported");
                }
            }
            finally
            {
                if (temporary is not null)
                {
                    File.Delete(temporary);
                }
            }

            return 0;
        }
    }
}

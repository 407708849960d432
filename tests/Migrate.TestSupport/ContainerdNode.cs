using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Grpc.Core;
using Migrate.Cri;
using Migrate.Cri.V1;

namespace Migrate.TestSupport;

/// <summary>
/// One "node": a containerd (with its CRI plugin) of its own, started as a plain process with
/// its own root, state, socket, runc root and CNI bridge, so several fit on one machine. On
/// dispose it removes every pod, stops containerd and the shims it started (by PID), unmounts
/// what is left under its directories, deletes its bridge and directories.
/// </summary>
public sealed class ContainerdNode : IAsyncDisposable
{
    public const string PauseImage = "docker.io/podmig/pause:1";

    private Process _containerd;
    private bool _disposed;

    private ContainerdNode(string name, string id, string root, string state, Process containerd, string bridge)
    {
        Name = name;
        CgroupParent = "/podmig-" + id;
        Root = root;
        State = state;
        _containerd = containerd;
        Bridge = bridge;
        Cri = new CriClient(SocketPath);
    }

    public string Name { get; }

    /// <summary>containerd's process id.</summary>
    public int Pid => _containerd.Id;

    /// <summary>containerd's persistent directory (images, snapshots).</summary>
    public string Root { get; }

    /// <summary>containerd's runtime directory (sockets, bundles, runc state).</summary>
    public string State { get; }

    public string SocketPath => Path.Combine(State, "c.sock");

    /// <summary>Where runc keeps its container state (runtime option Root).</summary>
    public string RuncRoot => Path.Combine(State, "runc");

    /// <summary>Where pod logs go (the kubelet's /var/log/pods).</summary>
    public string PodLogDirectory => Path.Combine(Root, "pod-logs");

    /// <summary>Where pod volumes live (the kubelet's /var/lib/kubelet/pods).</summary>
    public string PodsDirectory => Path.Combine(Root, "pods");

    public string LogPath => Path.Combine(State, "containerd.log");

    public string Bridge { get; }

    /// <summary>The cgroup (in every hierarchy) under which this node's pods get theirs; removed on dispose.</summary>
    public string CgroupParent { get; }

    public CriClient Cri { get; }

    /// <summary>The runtime handler of the restore runtime, when the node has it.</summary>
    public const string RestoreHandler = "podmig";

    /// <summary>Where the restore runtime looks for staged images (PODMIG_INCOMING_DIRECTORY of the node's containerd).</summary>
    public string IncomingDirectory => Path.Combine(Root, "incoming");

    /// <summary>
    /// Starts a node. With <paramref name="restoreRuntime"/> (the podmig-runc binary) it also has
    /// the "podmig" runtime handler, configured as deploy/node/ configures a real node.
    /// </summary>
    public static async Task<ContainerdNode> StartAsync(string name, string? restoreRuntime = null, IReadOnlyDictionary<string, string>? runtimeEnvironment = null,
        ContainerdRelease? release = null, PodNetwork? network = null)
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("runc", "ip", "criu");
        release ??= ContainerdRelease.Default;
        if (!File.Exists("/usr/lib/cni/bridge") && !File.Exists("/opt/cni/bin/bridge"))
        {
            throw new InvalidOperationException("CNI plugins are missing (containernetworking-plugins); run 'sudo hack/install-prereqs.sh'");
        }

        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        var root = Path.Combine("/var/tmp/podmig-nodes", $"{name}-{id}");
        var state = Path.Combine("/run/podmig", id);
        Directory.CreateDirectory(root);
        Directory.CreateDirectory(state);
        Directory.CreateDirectory(Path.Combine(state, "cni"));
        Directory.CreateDirectory(Path.Combine(root, "pod-logs"));
        Directory.CreateDirectory(Path.Combine(root, "pods"));
        var bridge = network?.Bridge ?? "pm-" + id;
        var subnet = $"10.{200 + (RandomNumberGenerator.GetInt32(50))}.{RandomNumberGenerator.GetInt32(250)}.0/24";
        var cniBin = network?.BinDirectory ?? (File.Exists("/usr/lib/cni/bridge") ? "/usr/lib/cni" : "/opt/cni/bin");
        // Pods get an address on a private bridge and no default route: nothing leaves the machine.
        // On a sandbox's shared network, every node's pods share one bridge and one address range.
        File.WriteAllText(Path.Combine(state, "cni", "10-podmig.conflist"), network?.ConfigList(Path.Combine(root, "pin-key.pem")) ?? $$"""
            {
              "cniVersion": "0.4.0",
              "name": "podmig-{{id}}",
              "plugins": [
                {
                  "type": "bridge",
                  "bridge": "{{bridge}}",
                  "isGateway": false,
                  "ipMasq": false,
                  "ipam": { "type": "host-local", "ranges": [[{ "subnet": "{{subnet}}" }]], "dataDir": "{{state}}/cni-ipam" }
                }
              ]
            }
            """);
        var config = Path.Combine(state, "config.toml");
        File.WriteAllText(config, ContainerdConfig.Render(release, root, state, cniBin, restoreRuntime, PauseImage, RestoreHandler));

        var process = Launch(release, config, root, state, runtimeEnvironment);
        var node = new ContainerdNode(name, id, root, state, process, bridge) { _runtimeEnvironment = runtimeEnvironment, Release = release };
        try
        {
            await node.WaitUntilReadyAsync(TimeSpan.FromSeconds(30));
            return node;
        }
        catch
        {
            await node.DisposeAsync();
            throw;
        }
    }

    private IReadOnlyDictionary<string, string>? _runtimeEnvironment;
    private readonly HashSet<string> _crashedNetworks = new(StringComparer.Ordinal);

    /// <summary>The containerd release the node runs.</summary>
    public ContainerdRelease Release { get; private init; } = ContainerdRelease.Default;

    private static Process Launch(ContainerdRelease release, string config, string root, string state, IReadOnlyDictionary<string, string>? runtimeEnvironment)
    {
        var start = new ProcessStartInfo(release.Containerd)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            // containerd looks for a shim in its working directory first: never a stray one
            WorkingDirectory = state,
        };
        if (release.Prefixed)
        {
            // then on its PATH: the release's own shim (the system's is 1.6's)
            start.Environment["PATH"] = release.BinDirectory + ":" + (Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        }

        // the restore runtime runs as a child of containerd's shim and inherits this
        start.Environment[StagingLayout.IncomingRootVariable] = Path.Combine(root, "incoming");
        // its temporary files (and mounts: containerd 2.1's checkpoint import leaves its view of the
        // checkpoint image mounted there when the restore fails) stay in its own state directory
        var temporary = Path.Combine(state, "tmp");
        Directory.CreateDirectory(temporary);
        start.Environment["TMPDIR"] = temporary;
        foreach (var (variable, value) in runtimeEnvironment ?? new Dictionary<string, string>())
        {
            start.Environment[variable] = value;
        }

        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(config);
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start containerd");
        var log = new StreamWriter(Path.Combine(state, "containerd.log"), append: true) { AutoFlush = true };
        process.OutputDataReceived += (_, e) => WriteLog(log, e.Data);
        process.ErrorDataReceived += (_, e) => WriteLog(log, e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        return process;
    }

    /// <summary>
    /// The node fails as a host does: every process of its pods (its cgroups), its shims and its
    /// containerd are killed (SIGKILL, by PID). Its files stay, as on a disk after a power cut;
    /// <see cref="RestartAsync"/> boots it again.
    /// </summary>
    public void Crash()
    {
        // (the pods' network namespaces outlive their processes; disposing removes those nothing removed meanwhile)
        _crashedNetworks.UnionWith(PodNetworkNamespaces(CgroupParent));
        KillCgroupMembers(CgroupParent);
        var socket = SocketPath;
        foreach (var (pid, cmdline) in Processes())
        {
            if (cmdline.Contains("containerd-shim", StringComparison.Ordinal) && cmdline.Contains(socket, StringComparison.Ordinal))
            {
                ChildProcess.Signal(pid, 9);
            }
        }

        if (!_containerd.HasExited)
        {
            _containerd.Kill();
            _containerd.WaitForExit(10_000);
        }
    }

    /// <summary>Starts containerd again on the node's files (after <see cref="Crash"/>), as a rebooted host would; returns once CRI answers.</summary>
    public async Task RestartAsync()
    {
        if (!_containerd.HasExited)
        {
            throw new InvalidOperationException($"containerd of {Name} still runs (pid {_containerd.Id})");
        }

        _containerd.Dispose();
        File.Delete(SocketPath);
        _containerd = Launch(Release, Path.Combine(State, "config.toml"), Root, State, _runtimeEnvironment);
        await WaitUntilReadyAsync(TimeSpan.FromSeconds(30));
    }

    private static void WriteLog(StreamWriter log, string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (log)
        {
            log.WriteLine(line);
        }
    }

    private async Task WaitUntilReadyAsync(TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        Exception? last = null;
        while (deadline.Elapsed < timeout)
        {
            if (_containerd.HasExited)
            {
                throw new InvalidOperationException($"containerd exited with {_containerd.ExitCode}: {Tail(LogPath)}");
            }

            try
            {
                if (File.Exists(SocketPath))
                {
                    var status = await Cri.Runtime.StatusAsync(new StatusRequest(), deadline: DateTime.UtcNow.AddSeconds(2));
                    if (status.Status.Conditions.All(c => c.Status))
                    {
                        return;
                    }

                    last = new InvalidOperationException(string.Join("; ", status.Status.Conditions.Where(c => !c.Status).Select(c => $"{c.Type}: {c.Message}")));
                }
            }
            catch (RpcException e)
            {
                last = e;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"containerd on {SocketPath} was not ready within {timeout.TotalSeconds} s: {last?.Message}; log: {Tail(LogPath)}");
    }

    /// <summary>Imports an OCI archive into the k8s.io namespace (where the CRI plugin sees it).</summary>
    public void ImportImage(string archive) =>
        Prerequisites.Run(Release.Ctr, "--address", SocketPath, "--namespace", "k8s.io", "images", "import", archive);

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        try
        {
            if (!_containerd.HasExited)
            {
                var pods = await Cri.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest(), deadline: DateTime.UtcNow.AddSeconds(10));
                foreach (var pod in pods.Items)
                {
                    await IgnoreErrorsAsync(() => Cri.Runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = pod.Id }, deadline: DateTime.UtcNow.AddSeconds(30)).ResponseAsync);
                    await IgnoreErrorsAsync(() => Cri.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = pod.Id }, deadline: DateTime.UtcNow.AddSeconds(30)).ResponseAsync);
                }
            }
        }
        catch (RpcException)
        {
            // containerd is gone or broken: the sweeps below still clean up
        }

        Cri.Dispose();
        if (!_containerd.HasExited)
        {
            Prerequisites.Run("kill", "-TERM", _containerd.Id.ToString(CultureInfo.InvariantCulture));
            if (!_containerd.WaitForExit(10_000))
            {
                _containerd.Kill();
                _containerd.WaitForExit(5_000);
            }
        }

        _containerd.Dispose();
        RemoveLeftovers(Root, State);
        RemoveNetworkNamespaces(_crashedNetworks);
    }

    /// <summary>
    /// What a node leaves when its owner could not stop it (the sandbox process was killed): every
    /// process in the node's cgroups (thawed first: a frozen task does not die), the shims and the
    /// containerd of this node (found by its socket and config path in their command lines), mounts
    /// below its directories, its bridge, cgroups and directories. Safe to repeat.
    /// </summary>
    public static void RemoveLeftovers(string root, string state)
    {
        ArgumentNullException.ThrowIfNull(root);
        ArgumentNullException.ThrowIfNull(state);
        var id = Path.GetFileName(Path.TrimEndingDirectorySeparator(state));
        var cgroupParent = "/podmig-" + id;
        var networks = PodNetworkNamespaces(cgroupParent);
        KillCgroupMembers(cgroupParent);
        var socket = Path.Combine(state, "c.sock");
        var config = Path.Combine(state, "config.toml");
        foreach (var (pid, cmdline) in Processes())
        {
            if ((cmdline.Contains("containerd-shim", StringComparison.Ordinal) && cmdline.Contains(socket, StringComparison.Ordinal))
                || (cmdline.Split(' ', 2)[0].EndsWith("containerd", StringComparison.Ordinal) && cmdline.Contains(config, StringComparison.Ordinal)))
            {
                ChildProcess.Signal(pid, 9);
            }
        }

        UnmountBelow(state);
        UnmountBelow(root);
        try
        {
            Prerequisites.Run("ip", "link", "delete", "pm-" + id);
        }
        catch (InvalidOperationException)
        {
            // no pod ever created it
        }

        RemoveNetworkNamespaces(networks);
        RemoveCgroups(cgroupParent);
        DeleteDirectory(state);
        DeleteDirectory(root);
        RemoveMemoryDirectory(root);
    }

    /// <summary>The parent of the nodes' directories on the machine's /dev/shm, where their agents stage images in memory.</summary>
    public const string MemoryParent = "/dev/shm/podmig-nodes";

    /// <summary>The directory on /dev/shm of the node whose root is <paramref name="root"/>.</summary>
    public static string MemoryDirectoryOf(string root) => Path.Combine(MemoryParent, Path.GetFileName(Path.TrimEndingDirectorySeparator(root)));

    /// <summary>Deletes the node's directory on /dev/shm (and the parent, when no other node has one there). Safe to repeat.</summary>
    public static void RemoveMemoryDirectory(string root)
    {
        try
        {
            var directory = MemoryDirectoryOf(root);
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }

            Directory.Delete(MemoryParent);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // gone already, or another node's is there
        }
    }

    /// <summary>
    /// The network namespaces (by inode) the node's pod processes are in, read before they are
    /// killed: containerd, killed with them, never tears down the CNI namespaces it made for them.
    /// </summary>
    private static HashSet<string> PodNetworkNamespaces(string cgroupParent)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
        {
            var top = hierarchy + cgroupParent;
            if (!Directory.Exists(top))
            {
                continue;
            }

            foreach (var procs in Directory.EnumerateFiles(top, "cgroup.procs", SearchOption.AllDirectories))
            {
                foreach (var line in File.ReadAllLines(procs))
                {
                    try
                    {
                        // "net:[4026532345]"
                        if (int.TryParse(line, out int pid) && new FileInfo($"/proc/{pid}/ns/net").LinkTarget is { } target && target.StartsWith("net:[", StringComparison.Ordinal))
                        {
                            inodes.Add(target[5..^1]);
                        }
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        // gone meanwhile
                    }
                }
            }
        }

        return inodes;
    }

    /// <summary>
    /// Deletes the CNI network namespaces (/run/netns/cni-*) made since <paramref name="since"/>
    /// (and at least 5 s ago) that no process is in (a live pod sandbox's pause process always is):
    /// what containerd leaves when it is stopped while it sets up or tears down a pod sandbox,
    /// sometimes with the CNI plugin's veth still inside. Called once every node of a sandbox is
    /// stopped. Returns the names deleted.
    /// </summary>
    public static IReadOnlyList<string> RemoveOrphanNetworkNamespaces(DateTime since)
    {
        var deleted = new List<string>();
        if (!Directory.Exists("/run/netns"))
        {
            return deleted;
        }

        // a namespace younger than 5 s may be another sandbox's pod being set up: wait until it is not
        var youngest = Directory.EnumerateFiles("/run/netns", "cni-*").Select(File.GetLastWriteTimeUtc).Where(t => t >= since).DefaultIfEmpty(DateTime.MinValue).Max();
        var wait = youngest + TimeSpan.FromSeconds(5) - DateTime.UtcNow;
        if (wait > TimeSpan.Zero)
        {
            Thread.Sleep(wait);
        }

        foreach (var file in Directory.EnumerateFiles("/run/netns", "cni-*"))
        {
            var name = Path.GetFileName(file);
            var made = File.GetLastWriteTimeUtc(file);
            if (made < since || DateTime.UtcNow - made < TimeSpan.FromSeconds(5)
                || Prerequisites.Capture("ip", ["netns", "pids", name]).Stdout.Trim().Length > 0)
            {
                continue;
            }

            if (Prerequisites.Capture("ip", ["netns", "delete", name]).ExitCode == 0)
            {
                deleted.Add(name);
            }
        }

        return deleted;
    }

    /// <summary>Deletes the CNI network namespaces (/run/netns/cni-*) that are one of <paramref name="inodes"/>.</summary>
    private static void RemoveNetworkNamespaces(HashSet<string> inodes)
    {
        if (inodes.Count == 0 || !Directory.Exists("/run/netns"))
        {
            return;
        }

        foreach (var file in Directory.EnumerateFiles("/run/netns", "cni-*"))
        {
            try
            {
                if (inodes.Contains(Prerequisites.Run("stat", "-L", "-c", "%i", file).Trim()))
                {
                    Prerequisites.Run("ip", "netns", "delete", Path.GetFileName(file));
                }
            }
            catch (InvalidOperationException)
            {
                // gone meanwhile
            }
        }
    }

    private static IEnumerable<(int Pid, string Cmdline)> Processes()
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }

            string cmdline;
            try
            {
                cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
            }
            catch (IOException)
            {
                continue;
            }

            yield return (pid, cmdline);
        }
    }

    private static void KillCgroupMembers(string cgroupParent)
    {
        var freezer = "/sys/fs/cgroup/freezer" + cgroupParent;
        if (Directory.Exists(freezer))
        {
            foreach (var state in Directory.EnumerateFiles(freezer, "freezer.state", SearchOption.AllDirectories))
            {
                try
                {
                    File.WriteAllText(state, "THAWED");
                }
                catch (IOException)
                {
                    // gone meanwhile
                }
            }
        }

        foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
        {
            var top = hierarchy + cgroupParent;
            if (!Directory.Exists(top))
            {
                continue;
            }

            foreach (var procs in Directory.EnumerateFiles(top, "cgroup.procs", SearchOption.AllDirectories))
            {
                foreach (var line in File.ReadAllLines(procs))
                {
                    if (int.TryParse(line, out int pid))
                    {
                        ChildProcess.Signal(pid, 9);
                    }
                }
            }
        }
    }

    /// <summary>Removes this node's cgroup subtree from every mounted hierarchy (deepest first), as a kubelet does for its pods.</summary>
    private static void RemoveCgroups(string cgroupParent)
    {
        foreach (var hierarchy in Directory.EnumerateDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup"))
        {
            var top = hierarchy + cgroupParent;
            if (!Directory.Exists(top))
            {
                continue;
            }

            foreach (var dir in Directory.EnumerateDirectories(top, "*", SearchOption.AllDirectories).OrderByDescending(d => d.Length).Append(top))
            {
                try
                {
                    Directory.Delete(dir);
                }
                catch (IOException)
                {
                    // a process is still in it: the kill sweeps above should have prevented this
                }
            }
        }
    }

    /// <summary>Detaches every mount at or below <paramref name="directory"/>, deepest first.</summary>
    public static void UnmountBelow(string directory)
    {
        var mounts = File.ReadAllLines("/proc/self/mountinfo")
            .Select(l => l.Split(' ')[4].Replace("\\040", " ", StringComparison.Ordinal))
            .Where(m => m.StartsWith(directory + "/", StringComparison.Ordinal) || m == directory)
            .OrderByDescending(m => m.Length)
            .ToList();
        foreach (var mount in mounts)
        {
            try
            {
                Prerequisites.Run("umount", "-l", mount);
            }
            catch (InvalidOperationException)
            {
                // already gone
            }
        }
    }

    private static void DeleteDirectory(string directory)
    {
        try
        {
            Directory.Delete(directory, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // a lazily unmounted file system may still be busy for a moment
        }
    }

    private static async Task IgnoreErrorsAsync(Func<Task> action)
    {
        try
        {
            await action();
        }
        catch (RpcException)
        {
            // best effort
        }
    }

    private static string Tail(string path) =>
        File.Exists(path) ? string.Join(" | ", File.ReadLines(path).TakeLast(5)) : "(no log)";
}

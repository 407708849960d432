using System.Net.Sockets;
using System.Text.Json;
using k8s;
using k8s.Models;
using Migrate.Criu.Lazy;

namespace Migrate.TestSupport;

/// <summary>How big a sandbox to make and how its parts behave.</summary>
public sealed record SandboxOptions
{

    /// <summary>Nodes, named node-a, node-b, …</summary>
    public int Nodes { get; init; } = 2;

    /// <summary>Also run a real Prometheus scraping the operator and the agents, with the chart's alerts (hack/sandbox up --prometheus).</summary>
    public bool Prometheus { get; init; }

    /// <summary>
    /// Also run a real OCI registry (bookworm's docker-registry) on a loopback port, which the
    /// agents publish CRI checkpoints to (Agent:CheckpointRegistry) and the nodes pull from
    /// (hack/sandbox up --registry): the CRI path needs it.
    /// </summary>
    public bool Registry { get; init; }

    /// <summary>The containerd release of each node ("1.7": every node; "1.6,2.1": node-a 1.6, node-b and on 2.1); default bookworm's 1.6.</summary>
    public string? Containerd { get; init; }

    /// <summary>Start the operator (as a process) with the cluster; tests that drive it themselves leave it off.</summary>
    public bool StartOperator { get; init; } = true;

    /// <summary>The agents' Agent:TransferBytesPerSecond (0: unlimited); fault tests slow transfers down to hit them mid-way.</summary>
    public long TransferBytesPerSecond { get; init; }

    /// <summary>The restore runtime's page server limit for lazy memory, in bytes a second (0: unlimited); fault tests slow memory down to hit it mid-way.</summary>
    public long LazyPagesBytesPerSecond { get; init; }

    /// <summary>How long a post-copy page server tries to reach its restarted agent again (null: the product's default, 60 s).</summary>
    public int? LazyPagesReconnectSeconds { get; init; }

    /// <summary>The operator's Operator:PhaseTimeoutSeconds.</summary>
    public int PhaseTimeoutSeconds { get; init; } = 120;

    /// <summary>The operator's Operator:CheckpointAgentGraceSeconds (the product's default, 30).</summary>
    public int CheckpointAgentGraceSeconds { get; init; } = 30;

    /// <summary>Import the test workload images (memcounter) into every node; the pause image is always there.</summary>
    public bool ImportTestImages { get; init; } = true;

    /// <summary>
    /// Run the control plane as deploy/ installs it: RBAC enforced (every request of the operator
    /// and agents recorded), <c>kubectl apply -k deploy/</c> (the Deployment and DaemonSet stay
    /// inert unless <see cref="FromImages"/>: the sandbox runs their programs as processes), the operator and
    /// the agents under their ServiceAccounts' tokens with the environment those two give them,
    /// the agents' certificates made by the operator, agents announcing their own endpoints, and
    /// the webhooks called through their Service. Needs <see cref="StartOperator"/>.
    /// </summary>
    public bool AsInstalled { get; init; }

    /// <summary>
    /// With <see cref="AsInstalled"/>: the node agents run as the DaemonSet's pods and the operator
    /// as the Deployment's, from the images <c>make images</c> built (artifacts/images/*.tar,
    /// imported into every node), as deploy/ asks (privileged, hostPID and hostPath volumes at each
    /// node's paths for the agents; non-root, read-only root, no capabilities for the operator;
    /// service account tokens, env from fields), made by the sandbox's DaemonSet and Deployment
    /// controllers; the webhooks are called through their Service's endpoints, and the machine
    /// gets an address on the pod network, where pods reach the API server.
    /// </summary>
    public bool FromImages { get; init; }

    /// <summary>Environment variables for the operator and agent processes (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).</summary>
    public IReadOnlyDictionary<string, string>? Environment { get; init; }

    /// <summary>The namespace deploy/ installs into.</summary>
    public const string InstallNamespace = "podmig-system";

    /// <summary>Where logs, certificates and the state file go; a new temporary directory when unset.</summary>
    public string? Directory { get; init; }

    /// <summary>
    /// The archive storage every node's agent shares (checkpoint exports and imports); unset:
    /// "archive" in <see cref="Directory"/>. Two sandboxes given the same one share it, as two
    /// clusters mounting one NFS export would.
    /// </summary>
    public string? ArchiveDirectory { get; init; }
}

/// <summary>One part of the sandbox: what it is, where it runs and listens, its process.</summary>
public sealed record SandboxComponent(string Name, string Kind, string? Node, int Pid, string? Address, string? Log);

/// <summary>One node of the sandbox: its containerd, its emulated kubelet and its real node agent (a process of its own).</summary>
public sealed class SandboxNode
{
    private readonly SandboxCluster _cluster;

    internal SandboxNode(SandboxCluster cluster, string name, ContainerdNode containerd, string agentAddress)
    {
        _cluster = cluster;
        Name = name;
        Containerd = containerd;
        AgentAddress = agentAddress;
        ProbeAddress = $"{agentAddress[..agentAddress.LastIndexOf(':')]}:{Ports.Free()}";
    }

    /// <summary>
    /// Where a hostPath volume's path is on this node: the paths a node keeps for itself (the
    /// runtime's socket directory, the agent's state, the kubelet's pod directories, the CNI
    /// configuration, the memory staging directory) are this node's directories; the shared archive storage is the sandbox's;
    /// anything else is the machine's own.
    /// </summary>
    public string HostPath(string path) => path.TrimEnd('/') switch
    {
        "/run/containerd" => Containerd.State,
        "/var/lib/podmig" => Containerd.Root,
        "/var/lib/kubelet/pods" => Containerd.PodsDirectory,
        "/etc/cni/net.d" => Path.Combine(Containerd.State, "cni"),
        "/var/lib/podmig-archive" => _cluster.ArchiveDirectory,
        "/dev/shm/podmig" => MemoryDirectory,
        _ => path,
    };

    /// <summary>The agent's pod (<see cref="SandboxOptions.FromImages"/>): namespace/name, once it runs.</summary>
    public string? AgentPod { get; internal set; }

    public string Name { get; }

    public ContainerdNode Containerd { get; }

    public SandboxKubelet Kubelet { get; internal set; } = null!;

    public ChildProcess Agent { get; private set; } = null!;

    /// <summary>ip:port of the agent's gRPC API (mutual TLS), on a loopback address of its own (as a pod: its pod's address).</summary>
    public string AgentAddress { get; internal set; }

    /// <summary>ip:port of the agent's plain HTTP listener: /healthz and /metrics.</summary>
    public string ProbeAddress { get; internal set; }

    /// <summary>Where the agent stages checkpoints of this node's pods (as a pod: its default, /var/lib/podmig/migrations of the node).</summary>
    public string StagingDirectory => Path.Combine(Containerd.Root, _cluster.Options.FromImages ? "migrations" : "staging");

    /// <summary>
    /// Where the agent stages migrations whose images fit in memory: below this node's directory on the machine's
    /// /dev/shm (a tmpfs), as the chart's is below the host's /dev/shm/podmig, on the same file system as its parent
    /// (where removals rename a directory to before they delete it).
    /// </summary>
    public string MemoryStagingDirectory => Path.Combine(MemoryDirectory, "migrations");

    /// <summary>This node's directory on /dev/shm: its /dev/shm/podmig (see <see cref="HostPath"/>).</summary>
    public string MemoryDirectory => ContainerdNode.MemoryDirectoryOf(Containerd.Root);


    /// <summary>Where the agent receives other nodes' checkpoints (and the restore runtime reads them).</summary>
    public string IncomingDirectory => Containerd.IncomingDirectory;

    /// <summary>Migration directories left in staging (on disk and in memory) and incoming (none once every migration is cleaned up).</summary>
    public IReadOnlyList<string> StagedMigrations() =>
        [.. new[] { StagingDirectory, MemoryStagingDirectory, IncomingDirectory }.Where(Directory.Exists).SelectMany(Directory.EnumerateDirectories)];

    /// <summary>A container's ticks from the node's pod log files (they outlive the pod, as /var/log/pods does for a while).</summary>
    public IReadOnlyList<MemcounterTick> LoggedTicks(string ns, string pod, string container, string? uid = null, bool children = false) =>
        Memcounter.Parse([.. LogLines(ns, pod, container, uid).Select(l => l.Text)], children);

    /// <summary>
    /// The ticks a container printed, each with the time the runtime logged it (CRI log format:
    /// time, stream, tag, line), in the order printed; lines without a time are left out.
    /// </summary>
    public IReadOnlyList<(DateTime At, MemcounterTick Tick)> TimedTicks(string ns, string pod, string container, string? uid = null) =>
        [.. LogLines(ns, pod, container, uid)
            .Select(l => (At: CriLogTime(l.Time), Ticks: Memcounter.Parse([l.Text])))
            .Where(t => t.At is not null && t.Ticks.Count == 1)
            .Select(t => (t.At!.Value, t.Ticks[0]))];

    /// <summary>A CRI log line's time (RFC 3339 with nanoseconds), or null.</summary>
    public static DateTime? CriLogTime(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int dot = text.IndexOf('.', StringComparison.Ordinal);
        if (dot > 0 && text.EndsWith('Z'))
        {
            var fraction = text[(dot + 1)..^1];
            text = text[..(dot + 1)] + (fraction.Length > 7 ? fraction[..7] : fraction) + "Z";
        }

        return DateTime.TryParse(text, System.Globalization.CultureInfo.InvariantCulture,
            System.Globalization.DateTimeStyles.AdjustToUniversal | System.Globalization.DateTimeStyles.AssumeUniversal, out var at) ? at : null;
    }

    /// <summary>The lines of a container's CRI log files on this node (they outlive the pod), with each one's time field.</summary>
    private List<(string Time, string Text)> LogLines(string ns, string pod, string container, string? uid)
    {
        var lines = new List<(string, string)>();
        foreach (var file in System.IO.Directory.EnumerateFiles(Containerd.PodLogDirectory, "0.log", SearchOption.AllDirectories)
            .Where(f => Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(f)))!.StartsWith($"{ns}_{pod}_{uid}", StringComparison.Ordinal)
                && Path.GetFileName(Path.GetDirectoryName(f)) == container))
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var reader = new StreamReader(stream);
            while (reader.ReadLine() is { } line)
            {
                lines.Add(line.Split(' ', 4) is { Length: 4 } parts ? (parts[0], parts[3]) : ("", line));
            }
        }

        return lines;
    }

    /// <summary>Starts (or restarts, as a DaemonSet would) the node agent, on the same address; <paramref name="settings"/>: more command-line settings (--Agent:Name=value).</summary>
    public async Task StartAgentAsync(params string[] settings)
    {
        var (host, port) = SandboxCluster.Split(AgentAddress);
        string[] arguments = _cluster.Options.AsInstalled
            ? ["--Logging:LogLevel:Default=Information", "--Logging:Console:FormatterOptions:TimestampFormat=HH:mm:ss.fff "]
            : [
                .. TlsAgent.Arguments(_cluster.Pki, Name, AgentAddress, Containerd.SocketPath, StagingDirectory, IncomingDirectory),
                $"--Agent:MemoryStagingDirectory={MemoryStagingDirectory}",
                $"--Agent:TransferBytesPerSecond={_cluster.Options.TransferBytesPerSecond}",
                $"--Agent:ProbeListenAddress={ProbeAddress}",
                $"--Agent:ArchiveDirectory={_cluster.ArchiveDirectory}",
                $"--Agent:CniConfigDirectory={Path.Combine(Containerd.State, "cni")}",
                .. _cluster.CheckpointRegistry is { } registry ? [$"--Agent:CheckpointRegistry={registry}"] : Array.Empty<string>(),
                "--Logging:LogLevel:Default=Information", "--Logging:Console:FormatterOptions:TimestampFormat=HH:mm:ss.fff ",
            ];
        Dictionary<string, string>? environment = null;
        if (_cluster.Options.AsInstalled)
        {
            // the DaemonSet's environment, with what differs on a sandbox node: addresses, the node's containerd, its directories,
            // the machine's criu (the image has /usr/sbin/criu) and the ServiceAccount's token instead of the in-cluster one
            environment = _cluster.Manifests!.Environment("DaemonSet", "podmig-agent", new Dictionary<string, string>
            {
                ["spec.nodeName"] = Name,
                ["status.podIP"] = host,
                ["metadata.namespace"] = SandboxOptions.InstallNamespace,
            });
            environment["PODMIG_AGENT__LISTENADDRESS"] = AgentAddress;
            environment["PODMIG_AGENT__ADVERTISEADDRESS"] = AgentAddress;
            environment["PODMIG_AGENT__PROBELISTENADDRESS"] = ProbeAddress;
            environment["PODMIG_AGENT__CRISOCKET"] = Containerd.SocketPath;
            environment.Remove("PODMIG_AGENT__CRIUBINARY");
            environment["PODMIG_AGENT__STAGINGDIRECTORY"] = StagingDirectory;
            environment["PODMIG_AGENT__INCOMINGDIRECTORY"] = IncomingDirectory;
            environment["PODMIG_AGENT__PINKEYFILE"] = TlsAgent.PinKeyFile(StagingDirectory);
            environment["PODMIG_AGENT__ARCHIVEDIRECTORY"] = _cluster.ArchiveDirectory;
            environment["PODMIG_AGENT__MEMORYSTAGINGDIRECTORY"] = MemoryStagingDirectory;
            environment["PODMIG_AGENT__CREDENTIALSDIRECTORY"] = Path.Combine(_cluster.Directory, "credentials", Name);
            environment["PODMIG_AGENT__KUBECONFIG"] = _cluster.AgentKubeconfig!;
            environment["PODMIG_AGENT__TRANSFERBYTESPERSECOND"] = _cluster.Options.TransferBytesPerSecond.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (_cluster.CheckpointRegistry is { } checkpointRegistry)
            {
                environment["PODMIG_AGENT__CHECKPOINTREGISTRY"] = checkpointRegistry;
            }
        }

        environment = SandboxCluster.WithExtra(environment, _cluster.Options.Environment);
        Agent = ChildProcess.StartProgram("agent-" + Name, "Migrate.NodeAgent", "migrate-node-agent", Path.Combine(_cluster.Directory, "logs", $"agent-{Name}.log"),
            [.. arguments, .. settings ?? []], environment);
        await Agent.WaitUntilAsync(() => SandboxCluster.AcceptsAsync(host, port), TimeSpan.FromSeconds(60), "listening on " + AgentAddress);
    }

    /// <summary>SIGKILL of the agent process (a crash, an OOM kill).</summary>
    public Task KillAgentAsync() => Agent.KillAsync();
}

/// <summary>
/// The sandbox cluster: the Kubernetes API emulator as control plane (with the CRDs and the
/// RuntimeClass applied), per node a containerd with the podmig runtime handler, an emulated
/// kubelet and the real node agent as a process on its own loopback address (127.0.0.1x), and the
/// real operator as a process. Used by <c>make demo</c>, <c>hack/sandbox</c> and the end-to-end
/// tests; disposing it stops every process it started (by PID) and removes what it made.
/// </summary>
public sealed class SandboxCluster : IAsyncDisposable
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    private readonly Stack<Func<ValueTask>> _cleanup = new();

    private readonly DateTime _created = DateTime.UtcNow;
    private readonly List<SandboxNode> _nodes = [];
    private readonly bool _ownsDirectory;

    private SandboxCluster(SandboxOptions options, string directory, EmulatorFixture api, TestPki pki)
    {
        Options = options;
        Api = api;
        Pki = pki;
        _ownsDirectory = options.Directory is null;
        Directory = directory;
        System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>The node agent's image as make images writes it.</summary>
    public static string AgentImageArchive => RepositoryLayout.InRepository("artifacts", "images", "node-agent.tar");

    /// <summary>The two images make images writes (the operator's and the agent's).</summary>
    public static IReadOnlyList<string> ImageArchives => [RepositoryLayout.InRepository("artifacts", "images", "operator.tar"), AgentImageArchive];

    /// <summary>The sandbox's Deployment controller (<see cref="SandboxOptions.FromImages"/>).</summary>
    public SandboxDeployments? Deployments { get; private set; }

    /// <summary>The operator's pods (<see cref="SandboxOptions.FromImages"/>), namespace/name.</summary>
    public IReadOnlyList<string> OperatorPods { get; private set; } = [];

    /// <summary>The sandbox's DaemonSet controller (<see cref="SandboxOptions.FromImages"/>).</summary>
    public SandboxDaemonSets? DaemonSets { get; private set; }

    private void UseNetwork(PodNetwork network)
    {
        Network = network;
        _cleanup.Push(() =>
        {
            network.Dispose();
            return ValueTask.CompletedTask;
        });
    }

    public SandboxOptions Options { get; }

    public EmulatorFixture Api { get; }

    public IKubernetes Client => Api.Client;

    public string KubeconfigPath => Api.Emulator.KubeconfigPath;

    /// <summary>With <see cref="SandboxOptions.AsInstalled"/>: deploy/ as rendered, and kubeconfigs with the operator's and the agents' ServiceAccount tokens.</summary>
    public DeployManifests? Manifests { get; private set; }

    public string? OperatorKubeconfig { get; private set; }

    public string? AgentKubeconfig { get; private set; }

    /// <summary>The API emulator's record of the requests RBAC judged (with <see cref="SandboxOptions.AsInstalled"/>).</summary>
    public IEnumerable<(Migrate.KubeEmulator.Auth.AccessRequest Request, bool Allowed)> AccessLog => Api.Emulator.Server.AccessLog;

    public TestPki Pki { get; }

    public string Directory { get; }

    /// <summary>The archive storage the agents share (<see cref="SandboxOptions.ArchiveDirectory"/>).</summary>
    public string ArchiveDirectory => Options.ArchiveDirectory ?? Path.Combine(Directory, "archive");

    public IReadOnlyList<SandboxNode> Nodes => _nodes;

    /// <summary>The pod network every node shares (one segment, one address range).</summary>
    public PodNetwork? Network { get; private set; }

    public SandboxNode Node(string name) => _nodes.Single(n => n.Name == name);

    public ChildProcess? Operator { get; private set; }

    /// <summary>The operator's probe address.</summary>
    public string? OperatorAddress { get; private set; }

    /// <summary>The OCI registry (<see cref="SandboxOptions.Registry"/>).</summary>
    public OciRegistryServer? Registry { get; private set; }

    /// <summary>Where the agents publish CRI checkpoints (host:port/path in <see cref="Registry"/>).</summary>
    public string? CheckpointRegistry => Registry is null ? null : Registry.Host + "/podmig-checkpoints";

    /// <summary>A real Prometheus scraping the operator and the agents (<see cref="SandboxOptions.Prometheus"/>).</summary>
    public PrometheusServer? Prometheus { get; private set; }

    public static async Task<SandboxCluster> StartAsync(SandboxOptions options, Action<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Nodes is < 1 or > 20)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Nodes, "a sandbox has 1 to 20 nodes");
        }

        Prerequisites.RequireRoot();
        if (options.AsInstalled && !options.StartOperator)
        {
            throw new ArgumentException("an installed sandbox needs its operator (the agents wait for the certificates it makes)", nameof(options));
        }

        if (options.FromImages && !options.AsInstalled)
        {
            throw new ArgumentException("agents run as the DaemonSet's pods in an installed sandbox only (AsInstalled: deploy/ applied)", nameof(options));
        }

        if (options.FromImages && ImageArchives.FirstOrDefault(a => !File.Exists(a)) is { } missing)
        {
            throw new InvalidOperationException($"{missing} is missing: the agents' and the operator's pods run the images 'make images' builds; run it first");
        }

        var directory = options.Directory ?? System.IO.Directory.CreateTempSubdirectory("podmig-sandbox-").FullName;
        // pods reach the API server on the machine's address on their network: it exists before the server listens
        var network = options.FromImages ? PodNetwork.Create(Path.Combine(directory, "network"), RepositoryLayout.RestoreRuntime) : null;
        EmulatorFixture api;
        int webhookPort = Ports.Free();
        try
        {
            network?.AddHostAddress();
            api = options.AsInstalled
                ? new ConfiguredEmulatorFixture(o =>
                {
                    o.Rbac = true;
                    o.RecordAccess = true;
                    if (!options.FromImages)
                    {
                        // the operator is a process here: its Service has no endpoints
                        o.ServiceEndpoints[$"podmig-operator.{SandboxOptions.InstallNamespace}.svc"] = $"127.0.0.1:{webhookPort}";
                    }
                }, server =>
                {
                    if (network is not null)
                    {
                        server.AdditionalAddresses.Add(System.Net.IPAddress.Parse(network.HostAddress));
                    }
                })
                : new EmulatorFixture();
            await api.InitializeAsync();
        }
        catch
        {
            network?.Dispose();
            throw;
        }

        var cluster = new SandboxCluster(options, directory, api, new TestPki()) { WebhookAddress = $"127.0.0.1:{webhookPort}" };
        cluster._cleanup.Push(async () => await api.DisposeAsync());
        if (network is not null)
        {
            cluster.UseNetwork(network);
        }

        cluster._cleanup.Push(() =>
        {
            cluster.Pki.Dispose();
            return ValueTask.CompletedTask;
        });
        try
        {
            if (options.AsInstalled)
            {
                await cluster.InstallAsync();
            }
            else
            {
                await api.ApplyRepositoryFileAsync("crds");
                await api.ApplyRepositoryFileAsync("deploy", "node", "runtimeclass.yaml");
            }

            progress?.Invoke($"API emulator at {api.Client.BaseUri}, KUBECONFIG={api.Emulator.KubeconfigPath}{(options.AsInstalled ? " (RBAC on, deploy/ applied)" : "")}");
            // what kube-controller-manager would do for Services: their Endpoints
            var endpoints = SandboxEndpoints.Start(api.Client);
            cluster._cleanup.Push(endpoints.DisposeAsync);
            if (options.Registry)
            {
                cluster.Registry = await OciRegistryServer.StartAsync();
                cluster._cleanup.Push(cluster.Registry.DisposeAsync);
                progress?.Invoke($"registry: pid {cluster.Registry.Pid} at {cluster.Registry.Host} (CRI checkpoints go to {cluster.CheckpointRegistry})");
            }

            var releases = ContainerdRelease.ForNodes(options.Containerd, options.Nodes);
            for (int i = 0; i < options.Nodes; i++)
            {
                await cluster.AddNodeAsync($"node-{(char)('a' + i)}", $"127.0.0.{11 + i}:{Ports.Free()}", releases[i], progress);
            }

            if (options.FromImages)
            {
                await cluster.StartOperatorPodsAsync(progress);
            }
            else if (options.StartOperator)
            {
                await cluster.StartOperatorAsync();
                progress?.Invoke($"operator: pid {cluster.Operator!.Pid}, probes http://{cluster.OperatorAddress}/readyz");
            }

            if (options.FromImages)
            {
                await cluster.StartAgentPodsAsync(progress);
            }
            else if (options.AsInstalled)
            {
                // agents read the certificates the operator makes for their nodes
                foreach (var node in cluster._nodes)
                {
                    await cluster.StartNodeAgentAsync(node, progress);
                }
            }

            if (options.Prometheus && cluster.OperatorAddress is { } operatorAddress)
            {
                cluster.Prometheus = await PrometheusServer.StartAsync([operatorAddress], cluster._nodes.Select(n => n.ProbeAddress));
                cluster._cleanup.Push(cluster.Prometheus.DisposeAsync);
                progress?.Invoke($"prometheus: pid {cluster.Prometheus.Pid} at {cluster.Prometheus.Address} (the chart's ServiceMonitor jobs and PrometheusRule alerts)");
            }

            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    private async Task AddNodeAsync(string name, string agentAddress, ContainerdRelease release, Action<string>? progress)
    {
        if (Network is null)
        {
            UseNetwork(PodNetwork.Create(Path.Combine(Directory, "network"), RepositoryLayout.RestoreRuntime));
        }

        // the restore runtime's environment, which its lazy restores' page servers inherit
        var runtimeEnvironment = new Dictionary<string, string>();
        if (Options.LazyPagesBytesPerSecond > 0)
        {
            runtimeEnvironment[LazyRestoreHelpers.BytesPerSecondVariable] = Options.LazyPagesBytesPerSecond.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        if (Options.LazyPagesReconnectSeconds is { } reconnect)
        {
            runtimeEnvironment[LazyRestoreHelpers.ReconnectSecondsVariable] = reconnect.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        var containerd = await ContainerdNode.StartAsync(name, RepositoryLayout.RestoreRuntime, runtimeEnvironment.Count > 0 ? runtimeEnvironment : null, release, Network);
        _cleanup.Push(containerd.DisposeAsync);
        var archives = TestImages.Archives();
        foreach (var archive in Options.ImportTestImages ? archives : archives.Take(1))
        {
            containerd.ImportImage(archive);
        }

        KubeletNodeView? view = null;
        var node = new SandboxNode(this, name, containerd, agentAddress);
        // the agent's images staged in memory, and removals it had not finished (renamed beside them), if any are
        // left: they hold memory (the node's root on disk goes with containerd)
        _cleanup.Push(() =>
        {
            ContainerdNode.RemoveMemoryDirectory(containerd.Root);
            return ValueTask.CompletedTask;
        });
        if (Options.FromImages)
        {
            foreach (var archive in ImageArchives)
            {
                containerd.ImportImage(archive);
            }

            // the DaemonSet names the runtime's socket by its usual name in /run/containerd
            File.CreateSymbolicLink(Path.Combine(containerd.State, "containerd.sock"), Path.GetFileName(containerd.SocketPath));
            view = new KubeletNodeView(node.HostPath, new KubeletApiAccess(Network!.HostAddress, new Uri(Api.Emulator.Url).Port, Api.Emulator.CaCertificatePem));
        }
        else if (!Options.AsInstalled)
        {
            await StartNodeAgentAsync(node, progress: null);
        }

        // installed, the agent announces its endpoint itself
        node.Kubelet = await SandboxKubelet.StartAsync(Client, containerd, name, Options.AsInstalled
            ? new Dictionary<string, string>()
            : new Dictionary<string, string> { [Annotations.AgentEndpoint] = agentAddress }, view);
        _cleanup.Push(node.Kubelet.DisposeAsync);
        _nodes.Add(node);
        progress?.Invoke($"{name}: containerd {release.Version()} pid {containerd.Pid} ({containerd.SocketPath}), kubelet (emulated) :{node.Kubelet.Port}"
            + (Options.AsInstalled ? "" : $", agent pid {node.Agent.Pid} at {agentAddress}"));
    }

    /// <summary>
    /// The DaemonSet controller makes the agents' pods from deploy/'s DaemonSet; each announces its
    /// pod's address on its Node (it reads the certificate the operator made for the node first).
    /// </summary>
    private async Task StartAgentPodsAsync(Action<string>? progress)
    {
        DaemonSets = SandboxDaemonSets.Start(Client);
        _cleanup.Push(DaemonSets.DisposeAsync);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        foreach (var node in _nodes)
        {
            string? endpoint = null;
            while (endpoint is null)
            {
                var pods = (await Client.CoreV1.ListNamespacedPodAsync(SandboxOptions.InstallNamespace, fieldSelector: "spec.nodeName=" + node.Name,
                    labelSelector: "app.kubernetes.io/name=podmig-agent")).Items;
                var pod = pods.FirstOrDefault(p => p.Status?.Phase == "Running");
                string? announced = null;
                _ = (await Client.CoreV1.ReadNodeAsync(node.Name)).Metadata.Annotations?.TryGetValue(Annotations.AgentEndpoint, out announced);
                if (pod is not null && announced is not null && announced.StartsWith(pod.Status!.PodIP + ":", StringComparison.Ordinal))
                {
                    endpoint = announced;
                    node.AgentPod = $"{pod.Metadata.NamespaceProperty}/{pod.Metadata.Name}";
                    break;
                }

                if (clock.Elapsed > TimeSpan.FromSeconds(120))
                {
                    var waiting = pods.SelectMany(p => p.Status?.ContainerStatuses ?? []).Select(c => c.State?.Waiting).FirstOrDefault(w => w is not null);
                    var lines = pods.Count > 0 && node.Kubelet.Running.TryGetValue($"{SandboxOptions.InstallNamespace}/{pods[0].Metadata.Name}", out var running)
                        ? running.LogLines("agent").TakeLast(30) : [];
                    throw new TimeoutException($"the agent's pod on {node.Name} did not announce itself in 120 s: "
                        + (pods.Count == 0 ? "no pod" : $"pod {pods[0].Metadata.Name} {pods[0].Status?.Phase} {waiting?.Reason} {waiting?.Message}")
                        + $", node annotation {announced ?? "none"}; the agent's last lines:\n" + string.Join("\n", lines));
                }

                await Task.Delay(200);
            }

            node.AgentAddress = endpoint;
            node.ProbeAddress = endpoint[..endpoint.LastIndexOf(':')] + ":8081";
            progress?.Invoke($"{node.Name}: agent pod {node.AgentPod} at {endpoint}");
        }
    }

    private async Task StartNodeAgentAsync(SandboxNode node, Action<string>? progress)
    {
        await node.StartAgentAsync();
        _cleanup.Push(() => node.Agent.DisposeAsync());
        if (Options.AsInstalled)
        {
            // the agent announces itself on its Node: the operator finds it there
            await node.Agent.WaitUntilAsync(async () =>
                (await Client.CoreV1.ReadNodeAsync(node.Name)).Metadata.Annotations?.TryGetValue(Annotations.AgentEndpoint, out var endpoint) == true
                && endpoint == node.AgentAddress, TimeSpan.FromSeconds(30), $"announcing itself on node {node.Name}");
        }

        progress?.Invoke($"{node.Name}: agent pid {node.Agent.Pid} at {node.AgentAddress}");
    }

    /// <summary>
    /// kubectl apply -k deploy/ (the Deployment and DaemonSet run only <see cref="SandboxOptions.FromImages"/>; else the
    /// sandbox runs their programs as processes) and kubeconfigs with the operator's and the agents' ServiceAccount tokens.
    /// </summary>
    private async Task InstallAsync()
    {
        Manifests = await DeployManifests.RenderAsync();
        (await Api.KubectlAsync("apply", "-k", RepositoryLayout.InRepository("deploy"))).Succeeded();
        OperatorKubeconfig = await ServiceAccountKubeconfigAsync("podmig-operator");
        AgentKubeconfig = await ServiceAccountKubeconfigAsync("podmig-agent");
    }

    private async Task<string> ServiceAccountKubeconfigAsync(string account)
    {
        var token = await Client.CoreV1.CreateNamespacedServiceAccountTokenAsync(
            new Authenticationv1TokenRequest { Spec = new V1TokenRequestSpec { ExpirationSeconds = 86400 } }, account, SandboxOptions.InstallNamespace);
        var path = Path.Combine(Directory, $"{account}.kubeconfig");
        Api.Emulator.WriteKubeconfig(path, token.Status.Token, account, SandboxOptions.InstallNamespace);
        return path;
    }

    /// <summary>Starts (or restarts) the operator process: leader election on a Lease in default, mutual TLS to agents, the token signing key.</summary>
    public async Task StartOperatorAsync()
    {
        int port = Ports.Free();
        OperatorAddress = $"127.0.0.1:{port}";
        string[] arguments;
        Dictionary<string, string>? environment = null;
        if (Options.AsInstalled)
        {
            // the Deployment's environment, with the sandbox's addresses and the ServiceAccount's token instead of the in-cluster one
            environment = Manifests!.Environment("Deployment", "podmig-operator", new Dictionary<string, string>
            {
                ["metadata.name"] = "podmig-operator-sandbox",
                ["metadata.namespace"] = SandboxOptions.InstallNamespace,
            });
            environment["PODMIG_OPERATOR__KUBECONFIG"] = OperatorKubeconfig!;
            environment["PODMIG_OPERATOR__WEBHOOKLISTENADDRESS"] = WebhookAddress!;
            environment["PODMIG_OPERATOR__PHASETIMEOUTSECONDS"] = Options.PhaseTimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            environment["PODMIG_OPERATOR__CHECKPOINTAGENTGRACESECONDS"] = Options.CheckpointAgentGraceSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            environment["PODMIG_KESTREL__ENDPOINTS__PROBES__URL"] = $"http://{OperatorAddress}";
            arguments = [
                "--Logging:LogLevel:Default=Information", "--Logging:Console:FormatterOptions:TimestampFormat=HH:mm:ss.fff ",
                "--Logging:LogLevel:Microsoft.AspNetCore=Warning",
                "--Logging:LogLevel:System.Net.Http=Warning",
            ];
        }
        else
        {
            arguments = OperatorArguments();
            // the operator's webhooks (deploy/operator/webhooks.yaml in a cluster): the names of pods that keep them while they
            // move, and evictions of opted-in pods turned into migrations; the operator writes in the CA of the certificate it makes
            (await Api.KubectlInAsync(OperatorWebhooks.Configuration("https://" + WebhookAddress), "apply", "-f", "-")).Succeeded();
        }

        environment = WithExtra(environment, Options.Environment);
        var process = ChildProcess.StartProgram("operator", "Migrate.Operator", "migrate-operator", Path.Combine(Directory, "logs", "operator.log"), arguments, environment);

        if (Operator is null)
        {
            _cleanup.Push(async () =>
            {
                if (Operator is not null)
                {
                    await Operator.DisposeAsync();
                }
            });
        }
        else
        {
            await Operator.DisposeAsync();
        }

        Operator = process;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        await process.WaitUntilAsync(async () =>
        {
            try
            {
                return (await http.GetAsync(new Uri($"http://{OperatorAddress}/readyz"))).IsSuccessStatusCode;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(60), "ready");

        await WaitForCaBundleAsync();
    }

    /// <summary>The operator's command line in a plain sandbox: the admin's kubeconfig, certificates and token key from the test PKI.</summary>
    private string[] OperatorArguments()
    {
        var identity = Pki.Issue("operator");
        return [
            $"--Operator:Kubeconfig={KubeconfigPath}",
            "--Operator:LeaseNamespace=default",
            "--Operator:Identity=sandbox-operator",
            $"--Operator:TlsCertificateFile={identity.CertificateFile}",
            $"--Operator:TlsKeyFile={identity.KeyFile}",
            $"--Operator:TlsAuthorityFile={Pki.AuthorityFile}",
            $"--Operator:TokenSigningKeyFile={Pki.TokenSigningKeyFile}",
            $"--Operator:PhaseTimeoutSeconds={Options.PhaseTimeoutSeconds}",
            $"--Operator:CheckpointAgentGraceSeconds={Options.CheckpointAgentGraceSeconds}",
            "--Operator:CheckpointSweepSeconds=5",
            $"--Kestrel:Endpoints:Probes:Url=http://{OperatorAddress}",
            $"--Operator:WebhookListenAddress={WebhookAddress}",
            "--Operator:WebhookSecretNamespace=default",
            "--Operator:WebhookIpAddresses=127.0.0.1",
            "--Logging:LogLevel:Default=Information", "--Logging:Console:FormatterOptions:TimestampFormat=HH:mm:ss.fff ",
            "--Logging:LogLevel:Microsoft.AspNetCore=Warning",
            "--Logging:LogLevel:System.Net.Http=Warning",
        ];
    }

    /// <summary>Waits until the operator has written its webhook CA into the configuration (the API server cannot call the webhooks before).</summary>
    private async Task WaitForCaBundleAsync()
    {
        await Operator!.WaitUntilAsync(CaBundlePublishedAsync, TimeSpan.FromSeconds(30), "publishing its webhook CA");
    }

    private async Task<bool> CaBundlePublishedAsync()
    {
        var configuration = await Client.AdmissionregistrationV1.ReadValidatingWebhookConfigurationAsync(OperatorWebhooks.ConfigurationName);
        return configuration.Webhooks.All(w => w.ClientConfig.CaBundle is { Length: > 0 });
    }

    /// <summary>
    /// The Deployment controller makes the operator's pods from deploy/'s Deployment; returns once
    /// they run, one of them holds the leader Lease and the webhook CA is published.
    /// </summary>
    private async Task StartOperatorPodsAsync(Action<string>? progress)
    {
        Deployments = SandboxDeployments.Start(Client);
        _cleanup.Push(Deployments.DisposeAsync);
        var deployment = await Client.AppsV1.ReadNamespacedDeploymentAsync("podmig-operator", SandboxOptions.InstallNamespace);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var pods = (await Client.CoreV1.ListNamespacedPodAsync(SandboxOptions.InstallNamespace, labelSelector: "app.kubernetes.io/name=podmig-operator")).Items;
            var running = pods.Where(p => p.Status?.Phase == "Running" && p.Metadata.DeletionTimestamp is null).ToList();
            string? holder = null;
            try
            {
                holder = (await Client.CoordinationV1.ReadNamespacedLeaseAsync("podmig-operator", SandboxOptions.InstallNamespace)).Spec?.HolderIdentity;
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                // no leader yet
            }

            var leader = running.FirstOrDefault(p => p.Metadata.Name == holder);
            if (running.Count == (deployment.Spec.Replicas ?? 1) && leader is not null && await CaBundlePublishedAsync())
            {
                OperatorPods = [.. running.Select(p => $"{p.Metadata.NamespaceProperty}/{p.Metadata.Name}")];
                OperatorAddress = leader.Status.PodIP + ":8080";
                progress?.Invoke($"operator: pods {string.Join(", ", running.Select(p => $"{p.Metadata.Name} on {p.Spec.NodeName} at {p.Status.PodIP}"))}; leader {holder}");
                return;
            }

            if (clock.Elapsed > TimeSpan.FromSeconds(120))
            {
                var lines = pods.SelectMany(p => _nodes.Where(n => n.Name == p.Spec.NodeName)
                    .SelectMany(n => n.Kubelet.Running.TryGetValue($"{SandboxOptions.InstallNamespace}/{p.Metadata.Name}", out var r) ? r.LogLines("operator").TakeLast(20) : []));
                var waiting = pods.SelectMany(p => p.Status?.ContainerStatuses ?? []).Select(c => c.State?.Waiting).FirstOrDefault(w => w is not null);
                throw new TimeoutException($"the operator's pods did not take the lead and publish the webhook CA in 120 s: {pods.Count} pod(s), {running.Count} running, "
                    + $"leader {holder ?? "none"} {waiting?.Reason} {waiting?.Message}; their last lines:\n" + string.Join("\n", lines));
            }

            await Task.Delay(200);
        }
    }

    /// <summary>The operator's webhook address (HTTPS).</summary>
    public string? WebhookAddress { get; private init; }

    /// <summary>Every process of the sandbox, with its PID and address.</summary>
    public IReadOnlyList<SandboxComponent> Components()
    {
        int self = Environment.ProcessId;
        var list = new List<SandboxComponent> { new("api-emulator", "kube-apiserver (emulated)", null, self, Client.BaseUri.ToString(), null) };
        foreach (var node in _nodes)
        {
            list.Add(new SandboxComponent("containerd-" + node.Name, "containerd", node.Name, node.Containerd.Pid, node.Containerd.SocketPath, node.Containerd.LogPath));
            list.Add(new SandboxComponent("kubelet-" + node.Name, "kubelet (emulated)", node.Name, self, $"127.0.0.1:{node.Kubelet.Port}", null));
            if (node.AgentPod is not null)
            {
                // a container of the node's, stopped with it
                list.Add(new SandboxComponent("agent-" + node.Name, "node agent (pod " + node.AgentPod + ")", node.Name, node.Containerd.Pid,
                    $"{node.AgentAddress} (gRPC), {node.ProbeAddress} (metrics)", null));
            }
            else
            {
                list.Add(new SandboxComponent("agent-" + node.Name, "node agent", node.Name, node.Agent.Pid, $"{node.AgentAddress} (gRPC), {node.ProbeAddress} (metrics)", node.Agent.LogPath));
            }
        }

        if (Operator is not null)
        {
            list.Add(new SandboxComponent("operator", "operator", null, Operator.Pid, $"{OperatorAddress} (probes, metrics), {WebhookAddress} (webhooks)", Operator.LogPath));
        }

        foreach (var pod in OperatorPods)
        {
            // a container of a node's, stopped with it
            var node = _nodes.FirstOrDefault(n => n.Kubelet.Running.ContainsKey(pod));
            list.Add(new SandboxComponent("operator-" + pod[(pod.LastIndexOf('-') + 1)..], $"operator (pod {pod})", node?.Name, node?.Containerd.Pid ?? self,
                null, null));
        }

        if (Registry is not null)
        {
            list.Add(new SandboxComponent("registry", "registry", null, Registry.Pid, "http://" + Registry.Host + "/v2/", null));
        }

        if (Prometheus is not null)
        {
            list.Add(new SandboxComponent("prometheus", "prometheus", null, Prometheus.Pid, Prometheus.Address.ToString(), null));
        }

        return list;
    }

    /// <summary>The state file hack/sandbox reads: kubeconfig, nodes (containerd sockets, directories) and components.</summary>
    public string DescribeJson() => JsonSerializer.Serialize(new
    {
        kubeconfig = KubeconfigPath,
        directory = Directory,
        pid = Environment.ProcessId,
        // what the sandbox process removes on a normal stop, listed for hack/sandbox down after a crash
        bridge = Network?.Bridge,
        files = new[] { KubeconfigPath, Pki.Directory, Api.KubectlCacheDirectory }.Concat(InstalledFiles()).Concat(Prometheus is null ? [] : [Prometheus.Directory]),
        nodes = _nodes.Select(n => new
        {
            name = n.Name, containerdSocket = n.Containerd.SocketPath, root = n.Containerd.Root, state = n.Containerd.State, agent = n.AgentAddress,
            containerd = n.Containerd.Release.Name, ctr = n.Containerd.Release.Ctr,
        }),
        components = Components().Select(c => new { name = c.Name, kind = c.Kind, node = c.Node, pid = c.Pid, address = c.Address, log = c.Log }),
    }, Indented);

    /// <summary>What an installed sandbox writes into its directory: the ServiceAccounts' kubeconfigs, the agents' credentials.</summary>
    private IEnumerable<string> InstalledFiles() => Options.AsInstalled
        ? [Path.Combine(Directory, "podmig-operator.kubeconfig"), Path.Combine(Directory, "podmig-agent.kubeconfig"), Path.Combine(Directory, "credentials")]
        : [];

    /// <summary>A Ready pod's node, once it runs.</summary>
    public async Task<V1Pod> WaitForPodRunningAsync(string name, string ns = "default", TimeSpan? timeout = null)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        V1Pod? pod = null;
        while (clock.Elapsed < (timeout ?? TimeSpan.FromSeconds(60)))
        {
            pod = (await Client.CoreV1.ListNamespacedPodAsync(ns, fieldSelector: "metadata.name=" + name)).Items.FirstOrDefault();
            if (pod?.Status?.Phase == "Running")
            {
                return pod;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"pod {ns}/{name} is not Running: {pod?.Status?.Phase} {pod?.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Waiting?.Message}");
    }

    internal static Dictionary<string, string>? WithExtra(Dictionary<string, string>? environment, IReadOnlyDictionary<string, string>? extra)
    {
        if (extra is null)
        {
            return environment;
        }

        environment ??= [];
        foreach (var (key, value) in extra)
        {
            environment[key] = value;
        }

        return environment;
    }

    internal static (string Host, int Port) Split(string address)
    {
        int colon = address.LastIndexOf(':');
        return (address[..colon], int.Parse(address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture));
    }

    internal static async Task<bool> AcceptsAsync(string host, int port)
    {
        using var socket = new TcpClient();
        try
        {
            await socket.ConnectAsync(host, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        while (_cleanup.Count > 0)
        {
            await _cleanup.Pop()();
        }

        ContainerdNode.RemoveOrphanNetworkNamespaces(_created);

        foreach (var path in InstalledFiles())
        {
            if (System.IO.Directory.Exists(path))
            {
                System.IO.Directory.Delete(path, recursive: true);
            }
            else
            {
                File.Delete(path);
            }
        }

        if (Environment.GetEnvironmentVariable("PODMIG_SANDBOX_LOGS") is { Length: > 0 } keep && System.IO.Directory.Exists(Path.Combine(Directory, "logs")))
        {
            // for a person looking into a failure: the components' logs outlive the sandbox
            var into = Path.Combine(keep, Path.GetFileName(Directory));
            System.IO.Directory.CreateDirectory(into);
            foreach (var log in System.IO.Directory.EnumerateFiles(Path.Combine(Directory, "logs")))
            {
                File.Copy(log, Path.Combine(into, Path.GetFileName(log)), overwrite: true);
            }
        }

        if (_ownsDirectory && System.IO.Directory.Exists(Directory))
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
    }
}

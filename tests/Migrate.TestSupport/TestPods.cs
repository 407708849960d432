using Migrate.Cri.V1;

namespace Migrate.TestSupport;

/// <summary>A container of a test pod: name, image, command, the pod's emptyDir volumes it mounts (name, path), hostPath volumes (host path, path) and environment.</summary>
public sealed record TestContainer(string Name, string Image, IReadOnlyList<string> Command, IReadOnlyList<(string Volume, string Path)>? EmptyDirMounts = null,
    IReadOnlyList<(string HostPath, string Path)>? HostPathMounts = null, IReadOnlyDictionary<string, string>? Environment = null)
{
    /// <summary>The image's command's arguments (CRI args: the entry point stays when <see cref="Command"/> is empty).</summary>
    public IReadOnlyList<string> Args { get; init; } = [];

    /// <summary>securityContext.privileged: every capability and device, no seccomp or AppArmor profile.</summary>
    public bool Privileged { get; init; }

    /// <summary>Container paths of <see cref="HostPathMounts"/> mounted read-only.</summary>
    public IReadOnlySet<string> ReadOnlyPaths { get; init; } = new HashSet<string>(StringComparer.Ordinal);

    /// <summary>runAsUser and runAsGroup (unset: the image's user).</summary>
    public (long? User, long? Group) RunAs { get; init; }

    /// <summary>readOnlyRootFilesystem.</summary>
    public bool ReadOnlyRootFilesystem { get; init; }

    /// <summary>allowPrivilegeEscalation: false (no_new_privs).</summary>
    public bool NoNewPrivileges { get; init; }

    /// <summary>capabilities.drop (e.g. ALL).</summary>
    public IReadOnlyList<string> DropCapabilities { get; init; } = [];
}

/// <summary>How a test pod shares the node: its PID namespace (hostPID).</summary>
public sealed record TestPodSharing(bool HostPid);

/// <summary>A pod running on a node through CRI.</summary>
public sealed record RunningTestPod(string Namespace, string Name, string Uid, string SandboxId, PodSandboxConfig Config,
    IReadOnlyDictionary<string, string> ContainerIds, string LogDirectory, string VolumesDirectory)
{
    public string LogPath(string container) => Path.Combine(LogDirectory, container, "0.log");

    public string EmptyDir(string volume) => Path.Combine(VolumesDirectory, "kubernetes.io~empty-dir", volume);

    /// <summary>The container's stdout lines, from the CRI log file (timestamp stream tag content).</summary>
    public IReadOnlyList<string> LogLines(string container)
    {
        var path = LogPath(container);
        if (!File.Exists(path))
        {
            return [];
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        var lines = new List<string>();
        while (reader.ReadLine() is { } line)
        {
            var parts = line.Split(' ', 4);
            lines.Add(parts.Length == 4 ? parts[3] : line);
        }

        return lines;
    }
}

/// <summary>Runs pods through CRI the way a kubelet does: labels, log directory, cgroup parent, emptyDir volumes.</summary>
public static class TestPods
{
    public static async Task<RunningTestPod> RunAsync(ContainerdNode node, string ns, string name, IReadOnlyList<TestContainer> containers,
        string? runtimeHandler = null, IReadOnlyDictionary<string, string>? annotations = null, string? uid = null,
        Func<string, Task>? sandboxReady = null, TestPodSharing? sharing = null,
        Func<string?, TestContainer, TestContainer>? complete = null, CancellationToken cancellationToken = default)
    {
        // hostPID: the pod's processes in the node's PID namespace (a privileged container in it sees every process)
        var pid = sharing?.HostPid == true ? NamespaceMode.Node : NamespaceMode.Container;
        uid ??= Guid.NewGuid().ToString();
        var logDirectory = Path.Combine(node.PodLogDirectory, $"{ns}_{name}_{uid}");
        var volumes = Path.Combine(node.PodsDirectory, uid, "volumes");
        Directory.CreateDirectory(logDirectory);
        var podLabels = new Dictionary<string, string>
        {
            ["io.kubernetes.pod.name"] = name,
            ["io.kubernetes.pod.namespace"] = ns,
            ["io.kubernetes.pod.uid"] = uid,
        };
        var config = new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = name, Namespace = ns, Uid = uid },
            Hostname = name,
            LogDirectory = logDirectory,
            Linux = new LinuxPodSandboxConfig
            {
                CgroupParent = $"{node.CgroupParent}/pod{uid}",
                SecurityContext = new LinuxSandboxSecurityContext
                {
                    NamespaceOptions = new NamespaceOption { Network = NamespaceMode.Pod, Pid = pid, Ipc = NamespaceMode.Pod },
                    Privileged = containers.Any(c => c.Privileged),
                },
            },
        };
        config.Labels.Add(podLabels);
        if (annotations is not null)
        {
            config.Annotations.Add(annotations.ToDictionary());
        }

        var sandbox = await node.Cri.Runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = config, RuntimeHandler = runtimeHandler ?? "" },
            cancellationToken: cancellationToken);
        if (sandboxReady is not null)
        {
            // as a kubelet does: the pod shows its IP (containers still creating) once its sandbox is up
            await sandboxReady(sandbox.PodSandboxId);
        }

        string? podIp = null;
        if (complete is not null)
        {
            var status = await node.Cri.Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = sandbox.PodSandboxId }, cancellationToken: cancellationToken);
            podIp = status.Status.Network?.Ip;
        }

        var ids = new Dictionary<string, string>();
        foreach (var declared in containers)
        {
            // what only the running sandbox tells (its address, for env from status.podIP)
            var c = complete is null ? declared : complete(podIp, declared);
            Directory.CreateDirectory(Path.Combine(logDirectory, c.Name));
            var container = new ContainerConfig
            {
                Metadata = new ContainerMetadata { Name = c.Name },
                Image = new ImageSpec { Image = c.Image },
                LogPath = Path.Combine(c.Name, "0.log"),
                Linux = new LinuxContainerConfig
                {
                    SecurityContext = new LinuxContainerSecurityContext
                    {
                        NamespaceOptions = new NamespaceOption { Network = NamespaceMode.Pod, Pid = pid, Ipc = NamespaceMode.Pod },
                        Privileged = c.Privileged,
                        RunAsUser = c.RunAs.User is { } user ? new Int64Value { Value = user } : null,
                        RunAsGroup = c.RunAs.Group is { } group ? new Int64Value { Value = group } : null,
                        ReadonlyRootfs = c.ReadOnlyRootFilesystem,
                        NoNewPrivs = c.NoNewPrivileges,
                        Capabilities = c.DropCapabilities.Count > 0 ? new Capability { DropCapabilities = { c.DropCapabilities } } : null,
                    },
                },
            };
            container.Command.Add(c.Command);
            container.Args.Add(c.Args);
            foreach (var (key, value) in c.Environment ?? new Dictionary<string, string>())
            {
                container.Envs.Add(new KeyValue { Key = key, Value = value });
            }

            container.Labels.Add(podLabels);
            container.Labels["io.kubernetes.container.name"] = c.Name;
            if (annotations is not null)
            {
                container.Annotations.Add(annotations.ToDictionary());
            }

            foreach (var (volume, path) in c.EmptyDirMounts ?? [])
            {
                var hostPath = Path.Combine(volumes, "kubernetes.io~empty-dir", volume);
                Directory.CreateDirectory(hostPath);
                // as the kubelet makes them: writable by whatever user the container runs as
                File.SetUnixFileMode(hostPath, (UnixFileMode)0b111_111_111);
                container.Mounts.Add(new Mount { ContainerPath = path, HostPath = hostPath });
            }

            foreach (var (hostPath, path) in c.HostPathMounts ?? [])
            {
                container.Mounts.Add(new Mount { ContainerPath = path, HostPath = hostPath, Readonly = c.ReadOnlyPaths.Contains(path) });
            }

            var created = await node.Cri.Runtime.CreateContainerAsync(new CreateContainerRequest { PodSandboxId = sandbox.PodSandboxId, Config = container, SandboxConfig = config },
                cancellationToken: cancellationToken);
            await node.Cri.Runtime.StartContainerAsync(new StartContainerRequest { ContainerId = created.ContainerId }, cancellationToken: cancellationToken);
            ids[c.Name] = created.ContainerId;
        }

        return new RunningTestPod(ns, name, uid, sandbox.PodSandboxId, config, ids, logDirectory, volumes);
    }

    /// <summary>Stops and removes a pod and its volume directories.</summary>
    public static Task RemoveAsync(ContainerdNode node, RunningTestPod pod) =>
        RemoveSandboxAsync(node, pod?.SandboxId ?? throw new ArgumentNullException(nameof(pod)), pod.VolumesDirectory);

    /// <summary>Stops and removes a pod sandbox (and its containers), and the pod's volume directories.</summary>
    public static async Task RemoveSandboxAsync(ContainerdNode node, string sandboxId, string? volumesDirectory)
    {
        ArgumentNullException.ThrowIfNull(node);
        await node.Cri.Runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = sandboxId });
        await node.Cri.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = sandboxId });
        if (volumesDirectory is not null && Directory.Exists(volumesDirectory))
        {
            Directory.Delete(Path.GetDirectoryName(volumesDirectory)!, recursive: true);
        }
    }

    /// <summary>Where a pod's volumes live on the node.</summary>
    public static string VolumesDirectory(ContainerdNode node, string uid) => Path.Combine(node?.PodsDirectory ?? "", uid, "volumes");
}

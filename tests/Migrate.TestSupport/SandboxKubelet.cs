using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using Migrate.Cri.V1;

namespace Migrate.TestSupport;

/// <summary>Where the API server is for pods (KUBERNETES_SERVICE_HOST and _PORT) and the CA that signs its certificate.</summary>
public sealed record KubeletApiAccess(string Host, int Port, string CertificateAuthorityPem);

/// <summary>
/// How a sandbox node looks to its pods: where a hostPath volume's path is on this node (the
/// sandbox's nodes share one machine, so each has its own directories for the paths a node
/// keeps per node: the runtime's socket, the agent's state), and, when pods may talk to the API
/// server, where it is (with it, pods get their service account's token as a real kubelet mounts it).
/// </summary>
public sealed record KubeletNodeView(Func<string, string> HostPath, KubeletApiAccess? Api)
{
    /// <summary>hostPath volumes at the machine's own paths, no API access.</summary>
    public static KubeletNodeView Host { get; } = new(path => path, null);
}

/// <summary>
/// The kubelet's part of the sandbox cluster, emulated: it registers a Node for a containerd node,
/// runs the pods bound to it through CRI (the pod's runtime class as the handler, its podmigration.io/
/// annotations, labels, emptyDir and hostPath volumes, command, args and env (values with $(VAR),
/// fieldRef), privileged containers, hostPID, users, read-only root file systems, dropped
/// capabilities, the service account's token), stops deleted pods
/// within their grace period, reports their status (ContainerCreating with the sandbox's IP while
/// the containers start, each pod on its own worker, then Running with
/// the sandbox's IP, or the CRI error as RunContainerError), and removes a deleted pod's sandbox
/// before it lets the pod object go. It serves containers' logs (/containerLogs, HTTPS, where the
/// API server's pods/log goes) and can report its node NotReady. Images a node lacks are pulled
/// through CRI. No probes, restarts or resource enforcement.
/// </summary>
public sealed class SandboxKubelet : IAsyncDisposable
{
    private readonly IKubernetes _client;
    private readonly ContainerdNode _node;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<string, RunningTestPod> _running = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, PodWorker> _workers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Task> _stopping = new(StringComparer.Ordinal);
    private readonly List<string> _started = [];
    private Task _loop = Task.CompletedTask;
    private WebApplication? _logServer;

    private readonly KubeletNodeView _view;

    private SandboxKubelet(IKubernetes client, ContainerdNode node, string nodeName, KubeletNodeView? view)
    {
        _client = client;
        _node = node;
        NodeName = nodeName;
        _view = view ?? KubeletNodeView.Host;
    }

    public string NodeName { get; }

    /// <summary>The port of its HTTPS endpoint (containerLogs), as the node's status reports it.</summary>
    public int Port { get; private set; }

    /// <summary>Annotations the node gets (e.g. the agent's endpoint).</summary>
    private Dictionary<string, string> NodeAnnotations { get; } = [];

    /// <summary>Every pod this kubelet started (namespace/name), in order, whether or not it still runs.</summary>
    public IReadOnlyList<string> StartedPods
    {
        get
        {
            lock (_started)
            {
                return [.. _started];
            }
        }
    }

    /// <summary>The pods this kubelet runs, by namespace/name.</summary>
    public IReadOnlyDictionary<string, RunningTestPod> Running => _running;

    /// <summary>Registers the node (with <paramref name="annotations"/>) and starts running its pods.</summary>
    public static async Task<SandboxKubelet> StartAsync(IKubernetes client, ContainerdNode node, string nodeName, IReadOnlyDictionary<string, string>? annotations = null,
        KubeletNodeView? view = null)
    {
        var kubelet = new SandboxKubelet(client, node, nodeName, view);
        foreach (var (key, value) in annotations ?? new Dictionary<string, string>())
        {
            kubelet.NodeAnnotations[key] = value;
        }

        try
        {
            await kubelet.ServeLogsAsync();
            await kubelet.RegisterAsync();
        }
        catch
        {
            await kubelet.DisposeAsync();
            throw;
        }

        return kubelet;
    }

    /// <summary>Reports the node Ready or NotReady (as a kubelet that lost its runtime or its network would); pods keep running.</summary>
    public async Task SetReadyAsync(bool ready)
    {
        var node = await _client.CoreV1.ReadNodeAsync(NodeName);
        node.Status.Conditions = [ReadyCondition(ready)];
        await _client.CoreV1.ReplaceNodeStatusAsync(node, NodeName);
    }

    private V1NodeCondition ReadyCondition(bool ready) => ready
        ? new V1NodeCondition { Type = "Ready", Status = "True", Reason = "KubeletReady", Message = "sandbox kubelet (emulated) on containerd " + _node.Name, LastTransitionTime = DateTime.UtcNow }
        : new V1NodeCondition { Type = "Ready", Status = "False", Reason = "KubeletNotReady", Message = "the sandbox kubelet was told to report NotReady", LastTransitionTime = DateTime.UtcNow };

    /// <summary>GET /containerLogs/{namespace}/{pod}/{container}[?tailLines=N&amp;follow=true]: the container's output without the CRI prefix.</summary>
    private async Task ServeLogsAsync()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=" + NodeName, key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(30));
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var serving = X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), null);
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l =>
        {
            l.Protocols = HttpProtocols.Http1AndHttp2;
            l.UseHttps(serving);
        }));
        _logServer = builder.Build();
        _logServer.MapGet("/containerLogs/{ns}/{pod}/{container}", ContainerLogAsync);
        await _logServer.StartAsync();
        Port = new Uri(_logServer.Urls.First()).Port;
    }

    private async Task ContainerLogAsync(HttpContext http, string ns, string pod, string container)
    {
        if (!_running.TryGetValue($"{ns}/{pod}", out var running) || !running.ContainerIds.ContainsKey(container))
        {
            http.Response.StatusCode = 404;
            await http.Response.WriteAsync($"container {container} of pod {ns}/{pod} does not run on {NodeName}");
            return;
        }

        http.Response.ContentType = "text/plain";
        var lines = running.LogLines(container);
        int tail = int.TryParse(http.Request.Query["tailLines"], NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : int.MaxValue;
        foreach (var line in lines.Skip(Math.Max(0, lines.Count - tail)))
        {
            await http.Response.WriteAsync(line + "\n", http.RequestAborted);
        }

        if (http.Request.Query["follow"] != "true")
        {
            return;
        }

        int sent = lines.Count;
        try
        {
            while (!http.RequestAborted.IsCancellationRequested && _running.ContainsKey($"{ns}/{pod}"))
            {
                await Task.Delay(100, http.RequestAborted);
                lines = running.LogLines(container);
                foreach (var line in lines.Skip(sent))
                {
                    await http.Response.WriteAsync(line + "\n", http.RequestAborted);
                }

                sent = lines.Count;
                await http.Response.Body.FlushAsync(http.RequestAborted);
            }
        }
        catch (OperationCanceledException)
        {
            // the client went away
        }
    }

    private async Task RegisterAsync()
    {
        var node = new V1Node
        {
            Metadata = new V1ObjectMeta
            {
                Name = NodeName,
                Labels = new Dictionary<string, string> { ["kubernetes.io/hostname"] = NodeName, ["kubernetes.io/os"] = "linux" },
                Annotations = NodeAnnotations,
            },
        };
        node = await _client.CoreV1.CreateNodeAsync(node);
        node.Status = new V1NodeStatus
        {
            Allocatable = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("2"), ["memory"] = new("8Gi"), ["pods"] = new("110") },
            Capacity = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("2"), ["memory"] = new("8Gi"), ["pods"] = new("110") },
            Conditions = [ReadyCondition(true)],
            Addresses = [new V1NodeAddress { Type = "InternalIP", Address = "127.0.0.1" }, new V1NodeAddress { Type = "Hostname", Address = NodeName }],
            DaemonEndpoints = new V1NodeDaemonEndpoints { KubeletEndpoint = new V1DaemonEndpoint { Port = Port } },
            NodeInfo = new V1NodeSystemInfo
            {
                Architecture = "amd64",
                OperatingSystem = "linux",
                ContainerRuntimeVersion = "containerd://sandbox",
                KubeletVersion = "v1.32.0-sandbox",
                KubeProxyVersion = "",
                KernelVersion = Environment.OSVersion.Version.ToString(),
                OsImage = "sandbox",
                MachineID = NodeName,
                SystemUUID = NodeName,
                BootID = NodeName,
            },
        };
        await _client.CoreV1.ReplaceNodeStatusAsync(node, NodeName);
        _loop = Task.Run(() => LoopAsync(_stop.Token));
    }

    /// <summary>How long the loop waits for a change to its pods before it lists them again anyway (a kubelet's periodic resync).</summary>
    private static readonly TimeSpan Resync = TimeSpan.FromSeconds(1);

    private async Task LoopAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var version = await SyncAsync(cancellationToken);
                await WaitForChangeAsync(version, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or RpcException or HttpRequestException or IOException or KubernetesException)
            {
                // the next pass tries again
                await Task.Delay(100, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
        }
    }

    /// <summary>
    /// As a kubelet learns of its pods: a watch of the pods bound to this node from the list's
    /// version, which returns at the first change (a pod bound here, deleted, updated) or after
    /// <see cref="Resync"/>; the caller then lists again.
    /// </summary>
    private async Task WaitForChangeAsync(string? version, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(version))
        {
            // a watch from no version would replay every pod at once: wait out the period instead
            await Task.Delay(TimeSpan.FromMilliseconds(100), cancellationToken);
            return;
        }

        using var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        wait.CancelAfter(Resync);
        try
        {
            await foreach (var _ in _client.CoreV1.WatchListPodForAllNamespacesAsync(fieldSelector: $"spec.nodeName={NodeName}", resourceVersion: version,
                timeoutSeconds: (int)Math.Ceiling(Resync.TotalSeconds), cancellationToken: wait.Token))
            {
                return;
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // no change within the resync period
        }
    }

    /// <summary>One pass over the pods bound to this node; returns the list's resource version.</summary>
    private async Task<string?> SyncAsync(CancellationToken cancellationToken)
    {
        var pods = await _client.CoreV1.ListPodForAllNamespacesAsync(fieldSelector: $"spec.nodeName={NodeName}", cancellationToken: cancellationToken);
        // force-deleted (grace period 0): the object is gone at once, the kubelet still has to stop its containers
        var listed = pods.Items.ToDictionary(p => $"{p.Metadata.NamespaceProperty}/{p.Metadata.Name}", StringComparer.Ordinal);
        foreach (var (key, worker) in _workers.Where(w => !listed.TryGetValue(w.Key, out var pod) || pod.Metadata.Uid != w.Value.Uid).ToList())
        {
            Stop(key, worker, null);
        }

        foreach (var pod in pods.Items)
        {
            var key = $"{pod.Metadata.NamespaceProperty}/{pod.Metadata.Name}";
            if (pod.Metadata.DeletionTimestamp is not null)
            {
                if (_workers.TryGetValue(key, out var worker))
                {
                    Stop(key, worker, pod);
                }
                else if (!_stopping.ContainsKey(key))
                {
                    await ForgetAsync(pod, cancellationToken);
                }

                continue;
            }

            if (_workers.ContainsKey(key) || _stopping.ContainsKey(key))
            {
                continue;
            }

            // as the kubelet's pod workers: each pod starts on its own, a slow one holds up no other
            var starting = new PodWorker(pod.Metadata.Uid, CancellationTokenSource.CreateLinkedTokenSource(_stop.Token));
            _workers[key] = starting;
            starting.Start = Task.Run(() => StartPodAsync(pod, key, starting), CancellationToken.None);
        }

        return pods.Metadata.ResourceVersion;
    }

    /// <summary>A pod being started or running on this node.</summary>
    private sealed class PodWorker(string uid, CancellationTokenSource stop)
    {
        public string Uid { get; } = uid;

        public CancellationTokenSource Stop { get; } = stop;

        public Task Start { get; set; } = Task.CompletedTask;

        public string? SandboxId { get; set; }
    }

    /// <summary>Stops a pod in the background: its start (if under way) is called off, its containers stopped within the grace period, its sandbox removed; then the object may go.</summary>
    private void Stop(string key, PodWorker worker, V1Pod? pod)
    {
        if (!_workers.TryRemove(key, out _))
        {
            return;
        }

        _stopping[key] = Task.Run(async () =>
        {
            try
            {
                await worker.Stop.CancelAsync();
                await Task.WhenAny(worker.Start, Task.Delay(TimeSpan.FromSeconds(30)));
                if (_running.TryRemove(key, out var running))
                {
                    // SIGTERM, and SIGKILL once the pod's grace period is over
                    long grace = pod?.Metadata.DeletionGracePeriodSeconds ?? pod?.Spec.TerminationGracePeriodSeconds ?? 0;
                    foreach (var id in running.ContainerIds.Values)
                    {
                        await _node.Cri.Runtime.StopContainerAsync(new StopContainerRequest { ContainerId = id, Timeout = grace });
                    }

                    await TestPods.RemoveAsync(_node, running);
                }
                else if (worker.SandboxId is { } sandbox)
                {
                    await TestPods.RemoveSandboxAsync(_node, sandbox, TestPods.VolumesDirectory(_node, worker.Uid));
                }

                if (pod is not null)
                {
                    await ForgetAsync(pod, CancellationToken.None);
                }
            }
            catch (Exception e) when (e is RpcException or HttpOperationException or HttpRequestException or IOException)
            {
                // the next pass finds what is left
            }
            finally
            {
                _stopping.TryRemove(key, out _);
                worker.Stop.Dispose();
            }
        });
    }

    private async Task StartPodAsync(V1Pod pod, string key, PodWorker worker)
    {
        var cancellationToken = worker.Stop.Token;
        List<TestContainer> containers;
        try
        {
            containers = await ContainersAsync(pod, cancellationToken);
        }
        catch (InvalidOperationException e)
        {
            // as the kubelet's CreateContainerConfigError and FailedMount: the pod waits, saying why
            await ReportAsync(pod, new V1PodStatus
            {
                Phase = "Pending",
                Conditions = [new V1PodCondition { Type = "Ready", Status = "False", Reason = "ContainersNotReady" }],
                ContainerStatuses = [.. pod.Spec.Containers.Select(c => Waiting(c, "CreateContainerConfigError", e.Message))],
            }, cancellationToken);
            return;
        }

        var annotations = (pod.Metadata.Annotations ?? new Dictionary<string, string>())
            .Where(a => Keys.IsOurs(a.Key))
            .ToDictionary(a => a.Key, a => a.Value);
        var handler = pod.Spec.RuntimeClassName is { Length: > 0 } runtimeClass ? runtimeClass : null;
        V1PodStatus status;
        if (await PullMissingAsync(pod, cancellationToken) is { } pullFailure)
        {
            await ReportAsync(pod, pullFailure, cancellationToken);
            return;
        }

        try
        {
            var byName = pod.Spec.Containers.ToDictionary(c => c.Name, StringComparer.Ordinal);
            var running = await TestPods.RunAsync(_node, pod.Metadata.NamespaceProperty, pod.Metadata.Name, containers, handler, annotations, pod.Metadata.Uid,
                async sandboxId =>
                {
                    worker.SandboxId = sandboxId;
                    var sandbox = await _node.Cri.Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = sandboxId }, cancellationToken: cancellationToken);
                    await ReportAsync(pod, new V1PodStatus
                    {
                        Phase = "Pending",
                        HostIP = "127.0.0.1",
                        PodIP = sandbox.Status.Network?.Ip,
                        StartTime = DateTime.UtcNow,
                        Conditions = [new V1PodCondition { Type = "Ready", Status = "False", Reason = "ContainersNotReady" }],
                        ContainerStatuses = [.. pod.Spec.Containers.Select(c => Waiting(c, "ContainerCreating", null))],
                    }, cancellationToken);
                }, new TestPodSharing(pod.Spec.HostPID == true),
                (podIp, container) => Complete(container, byName[container.Name], pod, podIp), cancellationToken);
            _running[key] = running;
            lock (_started)
            {
                _started.Add(key);
            }

            var sandbox = await _node.Cri.Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = running.SandboxId }, cancellationToken: cancellationToken);
            var now = DateTime.UtcNow;
            status = new V1PodStatus
            {
                Phase = "Running",
                HostIP = "127.0.0.1",
                PodIP = sandbox.Status.Network?.Ip,
                StartTime = now,
                Conditions = [new V1PodCondition { Type = "Ready", Status = "True", LastTransitionTime = now }],
                ContainerStatuses = [.. pod.Spec.Containers.Select(c => new V1ContainerStatus
                {
                    Name = c.Name,
                    Image = c.Image,
                    ImageID = c.Image,
                    ContainerID = "containerd://" + running.ContainerIds[c.Name],
                    Ready = true,
                    Started = true,
                    RestartCount = 0,
                    State = new V1ContainerState { Running = new V1ContainerStateRunning { StartedAt = now } },
                })],
            };
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            status = new V1PodStatus
            {
                Phase = "Pending",
                Conditions = [new V1PodCondition { Type = "Ready", Status = "False", Reason = "ContainersNotReady" }],
                ContainerStatuses = [.. pod.Spec.Containers.Select(c => Waiting(c, "RunContainerError", e.Status.Detail))],
            };
        }
        catch (Exception e) when (e is OperationCanceledException or RpcException)
        {
            return; // the pod was deleted while it started
        }

        await ReportAsync(pod, status, cancellationToken);
    }

    /// <summary>
    /// The pod's containers as CRI will run them: command and arguments, emptyDir volumes, hostPath
    /// volumes at the node's path for them (<see cref="KubeletNodeView.HostPath"/>; type
    /// DirectoryOrCreate made, Directory required), the service account's token, CA and namespace
    /// (with API access), privileged. The environment waits for the sandbox's address (<see cref="Complete"/>).
    /// </summary>
    private async Task<List<TestContainer>> ContainersAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        var emptyDirs = (pod.Spec.Volumes ?? []).Where(v => v.EmptyDir is not null).Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var hostPaths = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var volume in (pod.Spec.Volumes ?? []).Where(v => v.HostPath is not null))
        {
            var path = _view.HostPath(volume.HostPath.Path);
            if (volume.HostPath.Type == "DirectoryOrCreate")
            {
                Directory.CreateDirectory(path);
            }
            else if (volume.HostPath.Type == "Directory" && !Directory.Exists(path))
            {
                throw new InvalidOperationException($"hostPath volume {volume.Name}: {volume.HostPath.Path} is not a directory on node {NodeName}");
            }

            hostPaths[volume.Name] = path;
        }

        foreach (var container in pod.Spec.Containers)
        {
            // refused before anything is made: env this emulation cannot give
            _ = PodEnvironment.For(container, pod, podIp: null);
        }

        var serviceAccount = _view.Api is not null && pod.Spec.AutomountServiceAccountToken != false ? await ServiceAccountFilesAsync(pod, cancellationToken) : null;
        return [.. pod.Spec.Containers.Select(c => new TestContainer(
            c.Name,
            c.Image,
            [.. c.Command ?? []],
            [.. (c.VolumeMounts ?? []).Where(m => emptyDirs.Contains(m.Name)).Select(m => (m.Name, m.MountPath))],
            [.. (c.VolumeMounts ?? []).Where(m => hostPaths.ContainsKey(m.Name)).Select(m => (hostPaths[m.Name], m.MountPath)),
                .. serviceAccount is null ? [] : new[] { (serviceAccount, ServiceAccountMountPath) }],
            null)
        {
            Args = [.. c.Args ?? []],
            Privileged = c.SecurityContext?.Privileged == true,
            RunAs = (c.SecurityContext?.RunAsUser ?? pod.Spec.SecurityContext?.RunAsUser, c.SecurityContext?.RunAsGroup ?? pod.Spec.SecurityContext?.RunAsGroup),
            ReadOnlyRootFilesystem = c.SecurityContext?.ReadOnlyRootFilesystem == true,
            NoNewPrivileges = c.SecurityContext?.AllowPrivilegeEscalation == false,
            DropCapabilities = [.. c.SecurityContext?.Capabilities?.Drop ?? []],
            ReadOnlyPaths = new HashSet<string>((c.VolumeMounts ?? []).Where(m => m.ReadOnlyProperty == true).Select(m => m.MountPath)
                .Concat(serviceAccount is null ? [] : [ServiceAccountMountPath]), StringComparer.Ordinal),
        })];
    }

    /// <summary>Where a pod finds its service account's credentials (the kube-api-access projected volume).</summary>
    public const string ServiceAccountMountPath = "/var/run/secrets/kubernetes.io/serviceaccount";

    /// <summary>
    /// The kube-api-access volume: a token of the pod's service account (TokenRequest), the API
    /// server's CA and the namespace; none when the account does not exist (no controller makes
    /// each namespace's "default" account here).
    /// </summary>
    private async Task<string?> ServiceAccountFilesAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        var account = pod.Spec.ServiceAccountName is { Length: > 0 } name ? name : "default";
        Authenticationv1TokenRequest token;
        try
        {
            token = await _client.CoreV1.CreateNamespacedServiceAccountTokenAsync(
                new Authenticationv1TokenRequest { Spec = new V1TokenRequestSpec { ExpirationSeconds = 3607 } }, account, pod.Metadata.NamespaceProperty,
                cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }

        var directory = Path.Combine(TestPods.VolumesDirectory(_node, pod.Metadata.Uid), "kubernetes.io~projected", "kube-api-access");
        Directory.CreateDirectory(directory);
        await File.WriteAllTextAsync(Path.Combine(directory, "token"), token.Status.Token, cancellationToken);
        await File.WriteAllTextAsync(Path.Combine(directory, "ca.crt"), _view.Api!.CertificateAuthorityPem, cancellationToken);
        await File.WriteAllTextAsync(Path.Combine(directory, "namespace"), pod.Metadata.NamespaceProperty, cancellationToken);
        return directory;
    }

    /// <summary>A container with its environment, once the sandbox's address is known (env from status.podIP).</summary>
    private TestContainer Complete(TestContainer container, V1Container declared, V1Pod pod, string? podIp)
    {
        var services = _view.Api is { } api
            ? new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = api.Host, ["KUBERNETES_SERVICE_PORT"] = api.Port.ToString(CultureInfo.InvariantCulture) }
            : null;
        var environment = PodEnvironment.For(declared, pod, podIp, services);
        return container with
        {
            Environment = environment,
            Command = [.. container.Command.Select(a => PodEnvironment.Expand(a, environment))],
            Args = [.. container.Args.Select(a => PodEnvironment.Expand(a, environment))],
        };
    }

    /// <summary>
    /// As a kubelet does before it creates a container: an image the node does not hold is pulled
    /// through CRI, unless the container's imagePullPolicy is Never. Null when every image is there;
    /// else the pod's status, its containers waiting with ErrImagePull or ErrImageNeverPull.
    /// </summary>
    private async Task<V1PodStatus?> PullMissingAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        foreach (var container in pod.Spec.Containers)
        {
            var spec = new ImageSpec { Image = container.Image };
            string reason, message;
            try
            {
                var held = await _node.Cri.Images.ImageStatusAsync(new ImageStatusRequest { Image = spec }, cancellationToken: cancellationToken);
                if (held.Image is not null)
                {
                    continue;
                }

                if (container.ImagePullPolicy == "Never")
                {
                    (reason, message) = ("ErrImageNeverPull", $"Container image \"{container.Image}\" is not present with pull policy of Never");
                }
                else
                {
                    await _node.Cri.Images.PullImageAsync(new PullImageRequest { Image = spec }, deadline: DateTime.UtcNow.AddMinutes(5), cancellationToken: cancellationToken);
                    continue;
                }
            }
            catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
            {
                (reason, message) = ("ErrImagePull", e.Status.Detail);
            }

            return new V1PodStatus
            {
                Phase = "Pending",
                Conditions = [new V1PodCondition { Type = "Ready", Status = "False", Reason = "ContainersNotReady" }],
                ContainerStatuses = [.. pod.Spec.Containers.Select(c => c.Name == container.Name ? Waiting(c, reason, message) : Waiting(c, "ContainerCreating", null))],
            };
        }

        return null;
    }

    private static V1ContainerStatus Waiting(V1Container container, string reason, string? message) => new()
    {
        Name = container.Name,
        Image = container.Image,
        ImageID = "",
        Ready = false,
        RestartCount = 0,
        State = new V1ContainerState { Waiting = new V1ContainerStateWaiting { Reason = reason, Message = message } },
    };

    /// <summary>Writes the pod's status (on the pod as it is now: its resourceVersion moves while it starts).</summary>
    private async Task ReportAsync(V1Pod pod, V1PodStatus status, CancellationToken cancellationToken)
    {
        for (int attempt = 0; attempt < 5; attempt++)
        {
            try
            {
                var current = await _client.CoreV1.ReadNamespacedPodAsync(pod.Metadata.Name, pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
                if (current.Metadata.Uid != pod.Metadata.Uid || current.Metadata.DeletionTimestamp is not null)
                {
                    return;
                }

                current.Status = status;
                await _client.CoreV1.ReplaceNamespacedPodStatusAsync(current, pod.Metadata.Name, pod.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
                return;
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
            {
                // written meanwhile (labels handed over): read it again
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
            {
                return;
            }
        }
    }

    /// <summary>The pod's containers are gone: the API server may drop the object (the kubelet's final delete).</summary>
    private async Task ForgetAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        try
        {
            await _client.CoreV1.DeleteNamespacedPodAsync(pod.Metadata.Name, pod.Metadata.NamespaceProperty, new V1DeleteOptions { GracePeriodSeconds = 0 },
                cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // already gone
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        await Task.WhenAll(_workers.Values.Select(w => w.Start).Concat(_stopping.Values));
        _stop.Dispose();
        if (_logServer is not null)
        {
            await _logServer.StopAsync();
            await _logServer.DisposeAsync();
        }
    }
}

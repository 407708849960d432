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

/// <summary>
/// The kubelet's part of the sandbox cluster, emulated: it registers a Node for a containerd node,
/// runs the pods bound to it through CRI (the pod's runtime class as the handler, its podmigration.io/
/// annotations, labels, emptyDir and hostPath volumes, command, args and env), stops deleted pods
/// within their grace period, reports their status (ContainerCreating with the sandbox's IP while
/// the containers start, each pod on its own worker, then Running with
/// the sandbox's IP, or the CRI error as RunContainerError), and removes a deleted pod's sandbox
/// before it lets the pod object go. It serves containers' logs (/containerLogs, HTTPS, where the
/// API server's pods/log goes) and can report its node NotReady. No probes, restarts, image pulls
/// or resource enforcement.
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

    private SandboxKubelet(IKubernetes client, ContainerdNode node, string nodeName)
    {
        _client = client;
        _node = node;
        NodeName = nodeName;
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
    public static async Task<SandboxKubelet> StartAsync(IKubernetes client, ContainerdNode node, string nodeName, IReadOnlyDictionary<string, string>? annotations = null)
    {
        var kubelet = new SandboxKubelet(client, node, nodeName);
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

    private async Task LoopAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await SyncAsync(cancellationToken);
                await Task.Delay(100, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or RpcException or HttpRequestException or IOException)
            {
                // the next pass tries again
            }
        }
    }

    private async Task SyncAsync(CancellationToken cancellationToken)
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
        var emptyDirs = (pod.Spec.Volumes ?? []).Where(v => v.EmptyDir is not null).Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var hostPaths = (pod.Spec.Volumes ?? []).Where(v => v.HostPath is not null).ToDictionary(v => v.Name, v => v.HostPath.Path, StringComparer.Ordinal);
        var containers = pod.Spec.Containers.Select(c => new TestContainer(
            c.Name,
            c.Image,
            [.. c.Command ?? [], .. c.Args ?? []],
            [.. (c.VolumeMounts ?? []).Where(m => emptyDirs.Contains(m.Name)).Select(m => (m.Name, m.MountPath))],
            [.. (c.VolumeMounts ?? []).Where(m => hostPaths.ContainsKey(m.Name)).Select(m => (hostPaths[m.Name], m.MountPath))],
            (c.Env ?? []).Where(e => e.Value is not null).ToDictionary(e => e.Name, e => e.Value))).ToList();
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
                }, cancellationToken);
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

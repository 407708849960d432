using System.Text.Json;
using Grpc.Core;
using Migrate.Cri;
using Migrate.Cri.V1;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>A running container of a pod, as the node's runtime reports it.</summary>
public sealed record LocatedContainer(string Id, string Name, string Image, int Pid, string RuntimeState, ContainerRuntimeSpec Spec);

/// <summary>A pod found on this node: its sandbox and its running containers.</summary>
public sealed record LocatedPod(string Namespace, string Name, string Uid, string SandboxId, IReadOnlyList<LocatedContainer> Containers, int ExitedContainers);

/// <summary>Finds pods and their containers through the CRI, by the labels the kubelet puts on sandboxes and containers.</summary>
public sealed class PodLocator(CriClient cri)
{
    public const string NamespaceLabel = "io.kubernetes.pod.namespace";
    public const string NameLabel = "io.kubernetes.pod.name";
    public const string UidLabel = "io.kubernetes.pod.uid";
    public const string ContainerNameLabel = "io.kubernetes.container.name";

    /// <summary>The ready sandbox of the pod, or null when this node runs no such pod.</summary>
    public async Task<LocatedPod?> FindAsync(string ns, string name, CancellationToken cancellationToken)
    {
        var filter = new PodSandboxFilter { State = new PodSandboxStateValue { State = PodSandboxState.SandboxReady } };
        filter.LabelSelector[NamespaceLabel] = ns;
        filter.LabelSelector[NameLabel] = name;
        var sandboxes = await cri.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = filter }, cancellationToken: cancellationToken);
        var sandbox = sandboxes.Items.OrderByDescending(s => s.CreatedAt).FirstOrDefault();
        if (sandbox is null)
        {
            return null;
        }

        var containers = await cri.Runtime.ListContainersAsync(
            new ListContainersRequest { Filter = new ContainerFilter { PodSandboxId = sandbox.Id } }, cancellationToken: cancellationToken);
        var located = new List<LocatedContainer>();
        int exited = 0;
        foreach (var container in containers.Containers.OrderBy(c => c.CreatedAt))
        {
            if (container.State != ContainerState.ContainerRunning)
            {
                exited++;
                continue;
            }

            located.Add(await DescribeAsync(container.Id, cancellationToken));
        }

        sandbox.Labels.TryGetValue(UidLabel, out var uid);
        return new LocatedPod(ns, name, uid ?? sandbox.Metadata?.Uid ?? "", sandbox.Id, located, exited);
    }

    /// <summary>A container's name, image, init PID and OCI spec (from the runtime's verbose status).</summary>
    public async Task<LocatedContainer> DescribeAsync(string containerId, CancellationToken cancellationToken)
    {
        var status = await cri.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = containerId, Verbose = true }, cancellationToken: cancellationToken);
        if (!status.Info.TryGetValue("info", out var info))
        {
            throw new RpcException(new Status(StatusCode.Unimplemented,
                $"the container runtime gave no verbose information for container {containerId}; it needs the init PID and OCI spec (containerd's CRI plugin provides them)"));
        }

        using var document = JsonDocument.Parse(info);
        var root = document.RootElement;
        int pid = root.TryGetProperty("pid", out var p) ? p.GetInt32() : 0;
        if (pid <= 0 || !root.TryGetProperty("runtimeSpec", out var spec))
        {
            throw new RpcException(new Status(StatusCode.Unimplemented, $"the runtime's verbose status of container {containerId} has no pid or runtimeSpec"));
        }

        var name = status.Status.Metadata?.Name ?? status.Status.Labels.GetValueOrDefault(ContainerNameLabel, containerId);
        return new LocatedContainer(containerId, name, status.Status.Image?.Image ?? "", pid, status.Status.State.ToString(), ContainerRuntimeSpec.Parse(spec));
    }
}

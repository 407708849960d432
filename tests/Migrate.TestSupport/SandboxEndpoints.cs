using System.Globalization;
using k8s;
using k8s.Models;

namespace Migrate.TestSupport;

/// <summary>
/// The sandbox's stand-in for kube-controller-manager's endpoints controller (there is no real one
/// here): for every Service with a selector, an Endpoints object of the same name listing the
/// pods that match it and have an address, Ready ones under addresses and the others under
/// notReadyAddresses, each with its node and a reference to the pod, the Service's ports resolved
/// to the pods' target ports. Pods being deleted are left out, as the real controller leaves them.
/// It looks every 100 ms and writes only what changed.
/// </summary>
public sealed class SandboxEndpoints : SandboxController
{
    /// <summary>What was last written for each Service (namespace/name): its subsets, serialized.</summary>
    private readonly Dictionary<string, string> _written = new(StringComparer.Ordinal);

    private SandboxEndpoints(IKubernetes client)
        : base(client, "endpoints", TimeSpan.FromMilliseconds(100))
    {
    }

    public static SandboxEndpoints Start(IKubernetes client)
    {
        var controller = new SandboxEndpoints(client);
        controller.Run();
        return controller;
    }

    /// <summary>The endpoints of <paramref name="service"/> among <paramref name="pods"/> (the decision, as a pure function).</summary>
    public static V1EndpointSubset? SubsetFor(V1Service service, IEnumerable<V1Pod> pods)
    {
        ArgumentNullException.ThrowIfNull(service);
        ArgumentNullException.ThrowIfNull(pods);
        var selector = service.Spec?.Selector;
        if (selector is null || selector.Count == 0)
        {
            return null; // endpoints of a Service without a selector are the user's
        }

        var matching = pods
            .Where(p => p.Metadata.NamespaceProperty == service.Metadata.NamespaceProperty && p.Metadata.DeletionTimestamp is null
                && !string.IsNullOrEmpty(p.Status?.PodIP) && p.Status.Phase is "Running" or "Pending"
                && selector.All(s => p.Metadata.Labels?.TryGetValue(s.Key, out var v) == true && v == s.Value))
            .OrderBy(p => p.Metadata.Name, StringComparer.Ordinal)
            .ToList();
        if (matching.Count == 0)
        {
            return null;
        }

        static V1EndpointAddress Address(V1Pod pod) => new()
        {
            Ip = pod.Status.PodIP,
            NodeName = pod.Spec.NodeName,
            TargetRef = new V1ObjectReference { Kind = "Pod", Name = pod.Metadata.Name, NamespaceProperty = pod.Metadata.NamespaceProperty, Uid = pod.Metadata.Uid },
        };

        bool Ready(V1Pod pod) => pod.Status.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true;
        var ready = matching.Where(Ready).Select(Address).ToList();
        var notReady = matching.Where(p => !Ready(p)).Select(Address).ToList();
        var ports = (service.Spec!.Ports ?? []).Select(p => new Corev1EndpointPort
        {
            Name = p.Name,
            Protocol = p.Protocol ?? "TCP",
            Port = TargetPort(p, matching[0]),
        }).ToList();
        return new V1EndpointSubset
        {
            Addresses = ready.Count > 0 ? ready : null,
            NotReadyAddresses = notReady.Count > 0 ? notReady : null,
            Ports = ports,
        };
    }

    /// <summary>A Service port's target: a number, a container port's name, or (absent) the Service port itself.</summary>
    private static int TargetPort(V1ServicePort port, V1Pod pod)
    {
        var target = port.TargetPort?.Value;
        if (string.IsNullOrEmpty(target))
        {
            return port.Port;
        }

        if (int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out int number))
        {
            return number;
        }

        return pod.Spec.Containers.SelectMany(c => c.Ports ?? []).FirstOrDefault(p => p.Name == target)?.ContainerPort ?? port.Port;
    }

    protected override async Task PassAsync(CancellationToken cancellationToken)
    {
        var services = await Client.CoreV1.ListServiceForAllNamespacesAsync(cancellationToken: cancellationToken);
        var pods = (await Client.CoreV1.ListPodForAllNamespacesAsync(cancellationToken: cancellationToken)).Items;
        foreach (var service in services.Items)
        {
            if (service.Spec?.Selector is not { Count: > 0 })
            {
                continue;
            }

            var key = service.Metadata.NamespaceProperty + "/" + service.Metadata.Name;
            var subset = SubsetFor(service, pods);
            var endpoints = new V1Endpoints
            {
                Metadata = new V1ObjectMeta { Name = service.Metadata.Name, NamespaceProperty = service.Metadata.NamespaceProperty, Labels = service.Metadata.Labels },
                Subsets = subset is null ? [] : [subset],
            };
            var text = KubernetesJson.Serialize(endpoints.Subsets);
            if (_written.TryGetValue(key, out var last) && last == text)
            {
                continue;
            }

            V1Endpoints? existing = null;
            try
            {
                existing = await Client.CoreV1.ReadNamespacedEndpointsAsync(service.Metadata.Name, service.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                // first time
            }

            if (existing is null)
            {
                await Client.CoreV1.CreateNamespacedEndpointsAsync(endpoints, service.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
            }
            else
            {
                // an update names the version it replaces (a conflict: look again)
                endpoints.Metadata.ResourceVersion = existing.Metadata.ResourceVersion;
                await Client.CoreV1.ReplaceNamespacedEndpointsAsync(endpoints, service.Metadata.Name, service.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
            }

            _written[key] = text;
        }

        // a Service's Endpoints go with it
        var present = services.Items.Select(s => s.Metadata.NamespaceProperty + "/" + s.Metadata.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var gone in _written.Keys.Where(k => !present.Contains(k)).ToList())
        {
            var parts = gone.Split('/');
            try
            {
                await Client.CoreV1.DeleteNamespacedEndpointsAsync(parts[1], parts[0], cancellationToken: cancellationToken);
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                // already gone
            }

            _written.Remove(gone);
        }
    }
}

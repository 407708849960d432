using System.Text;
using k8s.Models;

namespace Migrate.TestSupport;

/// <summary>
/// A container's environment as the kubelet makes it: the service variables first (here only the
/// API server's, KUBERNETES_SERVICE_HOST and _PORT), then the container's env in order, each
/// <c>value</c> with its <c>$(VAR)</c> references to variables defined before it expanded
/// (<c>$$</c> is a literal <c>$</c>, an unknown reference stays as written), and <c>valueFrom.fieldRef</c>
/// read from the pod. What this emulation cannot give (Secret and ConfigMap keys, resource
/// fields) is an error naming the variable, as the kubelet's CreateContainerConfigError does.
/// </summary>
public static class PodEnvironment
{
    public static Dictionary<string, string> For(V1Container container, V1Pod pod, string? podIp, IReadOnlyDictionary<string, string>? services = null)
    {
        ArgumentNullException.ThrowIfNull(container);
        ArgumentNullException.ThrowIfNull(pod);
        var environment = new Dictionary<string, string>(services ?? new Dictionary<string, string>(), StringComparer.Ordinal);
        foreach (var variable in container.Env ?? [])
        {
            environment[variable.Name] = variable.ValueFrom switch
            {
                null => Expand(variable.Value ?? "", environment),
                { FieldRef: { } field } => Field(field.FieldPath, pod, podIp)
                    ?? throw new InvalidOperationException($"env {variable.Name} of container {container.Name}: field {field.FieldPath} is not supported"),
                _ => throw new InvalidOperationException($"env {variable.Name} of container {container.Name}: only value and valueFrom.fieldRef are supported by the sandbox kubelet"),
            };
        }

        return environment;
    }

    /// <summary>A downward-API field of the pod, or null when this emulation does not know it.</summary>
    public static string? Field(string path, V1Pod pod, string? podIp)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return path switch
        {
            "metadata.name" => pod.Metadata.Name,
            "metadata.namespace" => pod.Metadata.NamespaceProperty,
            "metadata.uid" => pod.Metadata.Uid,
            "spec.nodeName" => pod.Spec.NodeName,
            "spec.serviceAccountName" => pod.Spec.ServiceAccountName ?? "default",
            "status.podIP" => podIp ?? "",
            "status.hostIP" => "127.0.0.1",
            _ when Keyed(path, "metadata.labels") is { } key => pod.Metadata.Labels?.TryGetValue(key, out var label) == true ? label : "",
            _ when Keyed(path, "metadata.annotations") is { } key => pod.Metadata.Annotations?.TryGetValue(key, out var annotation) == true ? annotation : "",
            _ => null,
        };
    }

    /// <summary>metadata.labels['KEY'] → KEY.</summary>
    private static string? Keyed(string path, string map) =>
        path.StartsWith(map + "['", StringComparison.Ordinal) && path.EndsWith("']", StringComparison.Ordinal) ? path[(map.Length + 2)..^2] : null;

    /// <summary>Kubernetes' expansion of <c>$(VAR)</c> in env values, commands and arguments.</summary>
    public static string Expand(string text, IReadOnlyDictionary<string, string> defined)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(defined);
        var result = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] != '$' || i + 1 >= text.Length)
            {
                result.Append(text[i]);
                continue;
            }

            if (text[i + 1] == '$')
            {
                result.Append('$');
                i++;
                continue;
            }

            int close = text[i + 1] == '(' ? text.IndexOf(')', i + 2) : -1;
            if (close < 0)
            {
                result.Append(text[i]);
                continue;
            }

            var name = text[(i + 2)..close];
            result.Append(defined.TryGetValue(name, out var value) ? value : text[i..(close + 1)]);
            i = close;
        }

        return result.ToString();
    }
}

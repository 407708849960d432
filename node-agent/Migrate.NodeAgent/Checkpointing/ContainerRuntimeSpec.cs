using System.Collections.Immutable;
using System.Text.Json;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>A mount of an OCI runtime spec.</summary>
public sealed record SpecMount(string Destination, string Type, string Source, ImmutableArray<string> Options)
{
    public bool IsBind => Type == "bind" || Options.Contains("bind") || Options.Contains("rbind");
}

/// <summary>A namespace of an OCI runtime spec; <see cref="Path"/> set when the container joins an existing one.</summary>
public sealed record SpecNamespace(string Type, string? Path);

/// <summary>The parts of a container's OCI runtime spec (as the CRI runtime reports it) a checkpoint needs.</summary>
public sealed record ContainerRuntimeSpec(
    string RootPath,
    ImmutableArray<SpecMount> Mounts,
    ImmutableArray<SpecNamespace> Namespaces,
    string? CgroupsPath,
    ImmutableArray<string> MaskedPaths,
    ImmutableDictionary<string, string> Annotations)
{
    public SpecNamespace? Namespace(string type) => Namespaces.FirstOrDefault(n => n.Type == type);

    public static ContainerRuntimeSpec Parse(JsonElement spec)
    {
        string root = spec.TryGetProperty("root", out var r) && r.TryGetProperty("path", out var p) ? p.GetString() ?? "" : "";
        var mounts = ImmutableArray.CreateBuilder<SpecMount>();
        if (spec.TryGetProperty("mounts", out var ms) && ms.ValueKind == JsonValueKind.Array)
        {
            foreach (var m in ms.EnumerateArray())
            {
                mounts.Add(new SpecMount(
                    String(m, "destination"),
                    String(m, "type"),
                    String(m, "source"),
                    m.TryGetProperty("options", out var o) && o.ValueKind == JsonValueKind.Array
                        ? [.. o.EnumerateArray().Select(x => x.GetString() ?? "")]
                        : []));
            }
        }

        var namespaces = ImmutableArray.CreateBuilder<SpecNamespace>();
        string? cgroups = null;
        var masked = ImmutableArray<string>.Empty;
        if (spec.TryGetProperty("linux", out var linux))
        {
            if (linux.TryGetProperty("namespaces", out var ns) && ns.ValueKind == JsonValueKind.Array)
            {
                foreach (var n in ns.EnumerateArray())
                {
                    var path = n.TryGetProperty("path", out var np) ? np.GetString() : null;
                    namespaces.Add(new SpecNamespace(String(n, "type"), string.IsNullOrEmpty(path) ? null : path));
                }
            }

            cgroups = linux.TryGetProperty("cgroupsPath", out var cg) ? cg.GetString() : null;
            if (linux.TryGetProperty("maskedPaths", out var mp) && mp.ValueKind == JsonValueKind.Array)
            {
                masked = [.. mp.EnumerateArray().Select(x => x.GetString() ?? "")];
            }
        }

        var annotations = ImmutableDictionary.CreateBuilder<string, string>();
        if (spec.TryGetProperty("annotations", out var a) && a.ValueKind == JsonValueKind.Object)
        {
            foreach (var kv in a.EnumerateObject())
            {
                annotations[kv.Name] = kv.Value.GetString() ?? "";
            }
        }

        return new ContainerRuntimeSpec(root, mounts.ToImmutable(), namespaces.ToImmutable(), cgroups, masked, annotations.ToImmutable());
    }

    private static string String(JsonElement element, string name) =>
        element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString()! : "";
}

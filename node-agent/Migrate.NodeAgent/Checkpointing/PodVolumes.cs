namespace Migrate.NodeAgent.Checkpointing;

/// <summary>What a container's bind mount is, as far as moving the pod goes.</summary>
public enum MountKind
{
    /// <summary>Files the container runtime makes for every pod (/etc/hosts, /etc/hostname, /etc/resolv.conf, /dev/shm): the target's runtime makes its own.</summary>
    RuntimeProvided,

    /// <summary>ConfigMap, Secret, projected and downward-API volumes: the target's kubelet recreates them from the API.</summary>
    KubeletProvided,

    /// <summary>An emptyDir volume: its contents travel with the checkpoint.</summary>
    EmptyDir,

    /// <summary>A hostPath or persistent volume: node-local state this version cannot move.</summary>
    Unmovable,
}

/// <summary>A bind mount of a container, classified.</summary>
public sealed record ClassifiedMount(string Destination, string Source, MountKind Kind, string? VolumeName);

/// <summary>Classifies a container's bind mounts by where the kubelet and the runtime put their sources.</summary>
public static class PodVolumes
{
    private static readonly string[] RuntimeDestinations = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm", "/dev/termination-log"];

    private static readonly string[] KubeletPlugins =
        ["kubernetes.io~configmap", "kubernetes.io~secret", "kubernetes.io~projected", "kubernetes.io~downward-api"];

    public static ClassifiedMount Classify(SpecMount mount)
    {
        ArgumentNullException.ThrowIfNull(mount);
        var source = mount.Source;
        var (plugin, volume) = VolumeOf(source);
        if (plugin == "kubernetes.io~empty-dir")
        {
            return new ClassifiedMount(mount.Destination, source, MountKind.EmptyDir, volume);
        }

        if (plugin is not null && KubeletPlugins.Contains(plugin))
        {
            return new ClassifiedMount(mount.Destination, source, MountKind.KubeletProvided, volume);
        }

        // the kubelet's per-container files (termination log, etc-hosts) live under pods/<uid>/
        if (plugin is null && (source.Contains("/pods/", StringComparison.Ordinal) && (source.EndsWith("/etc-hosts", StringComparison.Ordinal)
            || source.Contains("/containers/", StringComparison.Ordinal))))
        {
            return new ClassifiedMount(mount.Destination, source, MountKind.KubeletProvided, null);
        }

        if (plugin is null && RuntimeDestinations.Contains(mount.Destination))
        {
            return new ClassifiedMount(mount.Destination, source, MountKind.RuntimeProvided, null);
        }

        return new ClassifiedMount(mount.Destination, source, MountKind.Unmovable, volume);
    }

    /// <summary>Why a mount stops the pod from moving, in one sentence.</summary>
    public static string Explain(ClassifiedMount mount, string container)
    {
        ArgumentNullException.ThrowIfNull(mount);
        var (plugin, _) = VolumeOf(mount.Source);
        string what = plugin switch
        {
            null => $"hostPath {mount.Source}",
            "kubernetes.io~csi" => $"CSI persistent volume {mount.VolumeName}",
            "kubernetes.io~local-volume" => $"local persistent volume {mount.VolumeName}",
            _ => $"volume {mount.VolumeName} ({plugin.Replace("kubernetes.io~", "", StringComparison.Ordinal)})",
        };
        return $"container {container} mounts {what} at {mount.Destination}; node-local and persistent volumes cannot move in this version";
    }

    /// <summary>The volume plugin and volume name of a kubelet volume path (.../pods/UID/volumes/PLUGIN/NAME[/...]).</summary>
    private static (string? Plugin, string? Volume) VolumeOf(string source)
    {
        const string marker = "/volumes/";
        int at = source.IndexOf(marker, StringComparison.Ordinal);
        if (at < 0 || !source[..at].Contains("/pods/", StringComparison.Ordinal))
        {
            return (null, null);
        }

        var rest = source[(at + marker.Length)..].Split('/', StringSplitOptions.RemoveEmptyEntries);
        return rest.Length >= 2 ? (rest[0], rest[1]) : (rest.Length == 1 ? rest[0] : null, null);
    }
}

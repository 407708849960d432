namespace Migrate.TestSupport;

/// <summary>
/// A sandbox node's containerd configuration, in the format of its release: version 2 for 1.6 and
/// 1.7 (the CRI plugin <c>io.containerd.grpc.v1.cri</c>), version 3 for 2.x (the CRI plugin split
/// into <c>io.containerd.cri.v1.runtime</c> and <c>io.containerd.cri.v1.images</c>). The same
/// settings either way: its own root, state and sockets, overlayfs, runc with its own state
/// directory, the node's CNI configuration, and, with a restore runtime, the <c>podmig</c> handler
/// as deploy/node/ configures it. A prefixed release names its own shim (<c>runtime_path</c>).
/// </summary>
public static class ContainerdConfig
{
    private static readonly string[] Disabled =
    [
        "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
    ];

    private static readonly string[] DisabledSince2 =
    [
        "io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs",
    ];

    public static string Render(ContainerdRelease release, string root, string state, string cniBin, string? restoreRuntime, string pauseImage, string restoreHandler)
    {
        ArgumentNullException.ThrowIfNull(release);
        var shim = release.Prefixed ? $"""runtime_path = "{release.Shim}" """.TrimEnd() : "";
        // 2.x: NRI (on by default) would open one socket shared by every instance on the machine; erofs and blockfile need what this host lacks
        var disabled = string.Join(", ", Disabled.Concat(release.ConfigVersion >= 3 ? DisabledSince2 : []).Select(p => $"\"{p}\""));
        var header = $$"""
            version = {{release.ConfigVersion}}
            root = "{{root}}/containerd"
            state = "{{state}}/containerd"
            disabled_plugins = [{{disabled}}]

            [grpc]
              address = "{{state}}/c.sock"

            [ttrpc]
              address = "{{state}}/c.sock.ttrpc"

            [debug]
              level = "info"

            """;
        return header + (release.ConfigVersion >= 3
            ? Version3(state, cniBin, restoreRuntime, pauseImage, restoreHandler, shim)
            : Version2(state, cniBin, restoreRuntime, pauseImage, restoreHandler, shim));
    }

    private static string Version2(string state, string cniBin, string? restoreRuntime, string pauseImage, string restoreHandler, string shim)
    {
        const string Cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        return $$"""
            [{{Cri}}]
              sandbox_image = "{{pauseImage}}"
              enable_selinux = false
              disable_apparmor = true
              restrict_oom_score_adj = true
              [{{Cri}}.containerd]
                snapshotter = "overlayfs"
                default_runtime_name = "runc"
            {{Runtimes(Cri + ".containerd.runtimes", state, restoreRuntime, restoreHandler, shim)}}
              [{{Cri}}.cni]
                bin_dir = "{{cniBin}}"
                conf_dir = "{{state}}/cni"
            """;
    }

    private static string Version3(string state, string cniBin, string? restoreRuntime, string pauseImage, string restoreHandler, string shim)
    {
        const string Runtime = "plugins.\"io.containerd.cri.v1.runtime\"";
        const string Images = "plugins.\"io.containerd.cri.v1.images\"";
        return $$"""
            [{{Images}}]
              snapshotter = "overlayfs"
              [{{Images}}.pinned_images]
                sandbox = "{{pauseImage}}"

            [{{Runtime}}]
              enable_selinux = false
              disable_apparmor = true
              restrict_oom_score_adj = true
              enable_cdi = false
              [{{Runtime}}.containerd]
                default_runtime_name = "runc"
            {{Runtimes(Runtime + ".containerd.runtimes", state, restoreRuntime, restoreHandler, shim)}}
              [{{Runtime}}.cni]
                bin_dirs = ["{{cniBin}}"]
                conf_dir = "{{state}}/cni"
            """;
    }

    private static string Runtimes(string table, string state, string? restoreRuntime, string restoreHandler, string shim)
    {
        var runc = $$"""
                [{{table}}.runc]
                  runtime_type = "io.containerd.runc.v2"
                  {{shim}}
                  [{{table}}.runc.options]
                    BinaryName = "runc"
                    Root = "{{state}}/runc"
                    SystemdCgroup = false
            """;
        return restoreRuntime is null ? runc : runc + "\n" + $$"""
                [{{table}}.{{restoreHandler}}]
                  runtime_type = "io.containerd.runc.v2"
                  {{shim}}
                  pod_annotations = ["podmigration.io/*", "podmig.io/*"]
                  [{{table}}.{{restoreHandler}}.options]
                    BinaryName = "{{restoreRuntime}}"
                    Root = "{{state}}/runc"
                    SystemdCgroup = false
            """;
    }
}

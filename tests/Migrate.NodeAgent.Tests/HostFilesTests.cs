using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>How an agent in a container of its own (the DaemonSet's pod) opens the node's paths that the runtime names.</summary>
public sealed class HostFilesTests
{
    private const string Overlay = "overlay";

    [Theory]
    [InlineData("/var/lib/containerd/snapshots/12/fs", null, "/var/lib/containerd/snapshots/12/fs")]
    [InlineData("/var/lib/containerd/snapshots/12/fs", 4242, "/proc/4242/root/var/lib/containerd/snapshots/12/fs")]
    [InlineData("/var/lib/kubelet/pods/5f1c/volumes/kubernetes.io~empty-dir/cache/", 7, "/proc/7/root/var/lib/kubelet/pods/5f1c/volumes/kubernetes.io~empty-dir/cache")]
    [InlineData("/", 7, "/proc/7/root")]
    public void A_node_path_is_opened_as_it_is_or_through_a_process_of_the_runtimes(string hostPath, int? through, string expected) =>
        Assert.Equal(expected, HostFiles.Resolve(hostPath, through));

    [Theory]
    [InlineData("")]
    [InlineData("var/lib/containerd")]
    public void A_path_that_is_not_absolute_is_refused(string hostPath) =>
        Assert.ThrowsAny<ArgumentException>(() => HostFiles.Resolve(hostPath, 7));

    [Theory]
    [InlineData("Name:\tmemcounter\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nNgid:\t0\nPid:\t812\nPPid:\t790\nTracerPid:\t0\n", 790)]
    [InlineData("Name:\tinit\nPPid:\t0\n", null)]
    [InlineData("Name:\tbroken\n", null)]
    public void The_parent_is_read_from_the_status_file(string status, int? parent) =>
        Assert.Equal(parent, HostFiles.ParentPid(status));

    [Fact]
    public void A_root_mount_is_found_in_the_runtimes_table_by_its_identity_not_its_mount_point()
    {
        // the container's root as the container sees it ("/"), and the runtime's mounts: the same overlay twice (the last one counts), another
        var root = new MountInfoEntry(900, 800, "0:77", "/", "/", "rw", Overlay, Overlay, "rw,lowerdir=/l,upperdir=/u/12/fs,workdir=/u/12/work");
        MountInfoEntry[] node =
        [
            new(30, 1, "0:77", "/", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/old/rootfs", "rw", Overlay, Overlay, root.SuperOptions),
            new(31, 1, "0:78", "/", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/other/rootfs", "rw", Overlay, Overlay, "rw,upperdir=/u/13/fs"),
            new(32, 1, "0:77", "/", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs", "rw", Overlay, Overlay, root.SuperOptions),
        ];

        Assert.Equal("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs", HostFiles.MountPointOf(root, node));
        Assert.Null(HostFiles.MountPointOf(root with { Device = "0:99" }, node));
    }

    [Fact]
    public void A_process_on_the_machine_shares_its_parents_mount_namespace()
    {
        // this test runs as a process of the machine, as an agent installed on a node does: nothing to go through
        var view = HostFiles.ForContainer(Environment.ProcessId);
        Assert.False(view.Separate);
        Assert.Equal("/var/lib/podmig", view.Open("/var/lib/podmig"));
    }
}

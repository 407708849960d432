using System.Text.Json;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The parsing and classification the checkpoint engine relies on, on recorded inputs.</summary>
public sealed class CheckpointLogicTests
{
    private const string PodVolumes = "/var/lib/kubelet/pods/5f1c/volumes";

    [Fact]
    public void The_staging_layout_names_the_image_sets_the_pre_copy_session_writes()
    {
        var container = StagingLayout.ContainerImages("app");

        Assert.Equal(container + "/" + Criu.Incremental.PreCopySession.FinalDirectoryName, StagingLayout.FinalImages("app"));
        Assert.Equal(container + "/" + Criu.Incremental.PreCopySession.RoundName(2), StagingLayout.RoundImages("app", 2));
    }

    [Theory]
    [InlineData(PodVolumes + "/kubernetes.io~empty-dir/cache", "/cache", MountKind.EmptyDir, "cache")]
    [InlineData(PodVolumes + "/kubernetes.io~configmap/settings", "/etc/app", MountKind.KubeletProvided, "settings")]
    [InlineData(PodVolumes + "/kubernetes.io~secret/token", "/var/run/secrets/x", MountKind.KubeletProvided, "token")]
    [InlineData(PodVolumes + "/kubernetes.io~projected/kube-api-access-abc", "/var/run/secrets/kubernetes.io/serviceaccount", MountKind.KubeletProvided, "kube-api-access-abc")]
    [InlineData("/var/lib/kubelet/pods/5f1c/etc-hosts", "/etc/hosts", MountKind.KubeletProvided, null)]
    [InlineData("/var/lib/kubelet/pods/5f1c/containers/app/0b2e", "/dev/termination-log", MountKind.KubeletProvided, null)]
    [InlineData("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/ab/shm", "/dev/shm", MountKind.RuntimeProvided, null)]
    [InlineData("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/ab/resolv.conf", "/etc/resolv.conf", MountKind.RuntimeProvided, null)]
    [InlineData(PodVolumes + "/kubernetes.io~csi/pvc-123/mount", "/data", MountKind.Unmovable, "pvc-123")]
    [InlineData("/srv/data", "/data", MountKind.Unmovable, null)]
    public void Bind_mounts_are_classified_by_where_their_source_lives(string source, string destination, MountKind kind, string? volume)
    {
        var classified = Checkpointing.PodVolumes.Classify(new SpecMount(destination, "bind", source, ["rbind", "rw"]));

        Assert.Equal(kind, classified.Kind);
        Assert.Equal(volume, classified.VolumeName);
    }

    [Fact]
    public void Refusals_name_the_volume_and_where_it_is_mounted()
    {
        var pvc = Checkpointing.PodVolumes.Classify(new SpecMount("/data", "bind", PodVolumes + "/kubernetes.io~csi/pvc-123/mount", ["rbind"]));
        var host = Checkpointing.PodVolumes.Classify(new SpecMount("/logs", "bind", "/var/log", ["rbind"]));

        Assert.Equal("container db mounts CSI persistent volume pvc-123 at /data; node-local and persistent volumes cannot move in this version",
            Checkpointing.PodVolumes.Explain(pvc, "db"));
        Assert.StartsWith("container web mounts hostPath /var/log at /logs", Checkpointing.PodVolumes.Explain(host, "web"), StringComparison.Ordinal);
    }

    [Fact]
    public void Mountinfo_lines_parse_with_optional_fields_and_escapes()
    {
        var entry = MountInfoEntry.Parse(
            "95 60 0:50 / / rw,relatime shared:4 master:1 - overlay overlay rw,lowerdir=/l/1:/l/2,upperdir=/u\\040dir/fs,workdir=/u/work");
        var bind = MountInfoEntry.Parse("111 95 254:0 /var/tmp/x /scratch rw,relatime - ext4 /dev/vda rw");

        Assert.Equal(95, entry.Id);
        Assert.Equal("overlay", entry.FileSystemType);
        Assert.Equal("/u dir/fs", entry.SuperOption("upperdir"));
        Assert.Equal("/l/1:/l/2", entry.SuperOption("lowerdir"));
        Assert.Equal("/var/tmp/x", bind.Root);
        Assert.Equal("/scratch", bind.MountPoint);
        Assert.Throws<FormatException>(() => MountInfoEntry.Parse("95 60 0:50 / /"));
    }

    [Theory]
    [InlineData("0100007F:2328", "127.0.0.1:9000")]
    [InlineData("0000000000000000FFFF00000100007F:AD42", "[::ffff:127.0.0.1]:44354")]
    [InlineData("0200000A:0050", "10.0.0.2:80")]
    public void Proc_net_tcp_addresses_decode(string raw, string expected) =>
        Assert.Equal(expected, ContainerProcess.DecodeAddress(raw));

    [Fact]
    public void The_runtime_spec_yields_mounts_namespaces_cgroups_and_masked_paths()
    {
        using var document = JsonDocument.Parse("""
            {"root":{"path":"rootfs"},
             "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                       {"destination":"/cache","type":"bind","source":"/k/pods/u/volumes/kubernetes.io~empty-dir/cache","options":["rbind","rw"]},
                       {"destination":"/etc/hosts","source":"/s/hosts","options":["bind"]}],
             "linux":{"cgroupsPath":"/kubepods/podu/c1","maskedPaths":["/proc/kcore"],
                      "namespaces":[{"type":"pid"},{"type":"network","path":"/proc/42/ns/net"},{"type":"ipc","path":""}]},
             "annotations":{"io.kubernetes.cri.container-type":"container"}}
            """);

        var spec = ContainerRuntimeSpec.Parse(document.RootElement);

        Assert.Equal("rootfs", spec.RootPath);
        Assert.Equal(["/cache", "/etc/hosts"], spec.Mounts.Where(m => m.IsBind).Select(m => m.Destination));
        Assert.Equal("/proc/42/ns/net", spec.Namespace("network")?.Path);
        Assert.Null(spec.Namespace("ipc")?.Path);
        Assert.Null(spec.Namespace("uts"));
        Assert.Equal("/kubepods/podu/c1", spec.CgroupsPath);
        Assert.Equal(["/proc/kcore"], spec.MaskedPaths.ToArray());
        Assert.Equal("container", spec.Annotations["io.kubernetes.cri.container-type"]);
    }

    [Theory]
    [InlineData("Cleaned", 0L, 10_000_000L, false)]          // cleaned before this process knew when: kept
    [InlineData("Cleaned", 1000L, 3_600_999L, false)]         // cleaned less than an hour ago
    [InlineData("Cleaned", 1000L, 3_601_000L, true)]           // an hour ago
    [InlineData("Finished", 1000L, 9_000_000L, false)]       // ended, not cleaned: its files are still there
    [InlineData("Frozen", 1000L, 9_000_000L, false)]
    public void A_cleaned_migration_is_forgotten_an_hour_after_its_cleanup(string phase, long cleanedAt, long now, bool forgotten)
    {
        var record = new MigrationRecord
        {
            MigrationId = "m1",
            Namespace = "default",
            PodName = "p",
            PodUid = "u",
            NodeName = "node-a",
            SandboxId = "s",
            StagingDirectory = "/nonexistent",
            PreCopyMethod = Migrate.Criu.Incremental.PreCopyMethod.ContentComparison,
            Containers = [],
            Phase = Enum.Parse<Migrate.Agent.V1.MigrationPhase>(phase),
            CleanedUnixMillis = cleanedAt,
        };
        var ids = MigrationRecord.Forgettable([record], now, TimeSpan.FromHours(1));
        Assert.Equal(forgotten ? ["m1"] : [], ids);
    }

    [Theory]
    [InlineData("(00.047449) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported", "cannot dump one on a kernel 6.16 or later")]
    [InlineData("(00.047452) Error (criu/sockets.c:628): sockets: Can't get 1:34 opt: Operation not supported", "install CRIU 4.2 or newer")]
    [InlineData("(00.050000) Error (criu/sk-unix.c:123): unix: External socket is used. Consider using --ext-unix-sk option.", "connected to a process outside the pod")]
    [InlineData("(00.050000) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.", "established TCP connection")]
    [InlineData("(00.050000) Error (criu/cr-dump.c:1681): Dump files (pid: 1) failed with -1", null)]
    public void A_criu_failure_the_pod_or_the_node_causes_is_explained_in_plain_words(string logLine, string? reasonPart)
    {
        var error = new Migrate.Criu.CriuException(Migrate.Criu.CriuOperation.Dump, -1, 52, "could not dump", null, [logLine]);
        var reason = CriuFailures.Explain(error);
        if (reasonPart is null)
        {
            Assert.Null(reason);
        }
        else
        {
            Assert.Contains(reasonPart, reason, StringComparison.Ordinal);
        }
    }
}

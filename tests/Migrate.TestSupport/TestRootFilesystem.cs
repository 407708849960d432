namespace Migrate.TestSupport;

/// <summary>
/// A minimal root file system for test containers: busybox (static) with its applets, the
/// memcounter, pause and seqstream workloads, /dev/null, and empty /proc, /sys, /etc, /tmp and /data.
/// </summary>
public static class TestRootFilesystem
{
    /// <summary>The busybox applets linked into /bin (part of the test images' identity).</summary>
    public static readonly IReadOnlyList<string> Applets = ["sh", "sleep", "cat", "ls", "echo", "mkdir", "rmdir", "rm", "dd", "nc", "umount", "mount", "true", "kill"];

    public static void Create(string root)
    {
        var busybox = Prerequisites.FindOnPath("busybox") ?? "/bin/busybox";
        if (!File.Exists(busybox))
        {
            throw new InvalidOperationException("busybox (static) is missing; run 'sudo hack/install-prereqs.sh'");
        }

        foreach (var dir in new[] { "bin", "dev", "proc", "sys", "etc", "tmp", "data" })
        {
            Directory.CreateDirectory(Path.Combine(root, dir));
        }

        File.Copy(busybox, Path.Combine(root, "bin", "busybox"), overwrite: true);
        foreach (var applet in Applets)
        {
            File.CreateSymbolicLink(Path.Combine(root, "bin", applet), "busybox");
        }

        File.Copy(Memcounter.BinaryPath(), Path.Combine(root, "bin", "memcounter"), overwrite: true);
        File.Copy(Workloads.Build("pause"), Path.Combine(root, "bin", "pause"), overwrite: true);
        File.Copy(Workloads.Build("seqstream"), Path.Combine(root, "bin", "seqstream"), overwrite: true);
        File.Copy(Workloads.Build("ring"), Path.Combine(root, "bin", "ring"), overwrite: true);
        Prerequisites.Run("mknod", "-m", "666", Path.Combine(root, "dev", "null"), "c", "1", "3");
    }
}

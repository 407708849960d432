using System.Security.Cryptography;
using System.Text;

namespace Migrate.TestSupport;

/// <summary>The images test pods run: pause (sandboxes) and memcounter, both from the test root file system.</summary>
public static class TestImages
{
    public const string Memcounter = "docker.io/podmig/memcounter:1";
    private static readonly Lock Gate = new();

    /// <summary>Imports the test images into a node (built once per workload version).</summary>
    public static void ImportInto(ContainerdNode node)
    {
        foreach (var archive in Archives())
        {
            node.ImportImage(archive);
        }
    }

    /// <summary>The OCI archives of the test images (pause first, then memcounter), built on first use.</summary>
    public static IReadOnlyList<string> Archives()
    {
        string[] identity = [Workloads.Build("memcounter"), Workloads.Build("pause"), Workloads.Build("seqstream"), Workloads.Build("ring"), .. TestRootFilesystem.Applets];
        var version = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join('|', identity))))[..16];
        var directory = Path.Combine(RepositoryLayout.Artifacts, "images", version);
        var pause = Path.Combine(directory, "pause.tar");
        var memcounter = Path.Combine(directory, "memcounter.tar");
        lock (Gate)
        {
            if (!File.Exists(pause) || !File.Exists(memcounter))
            {
                var rootfs = Path.Combine(Directory.CreateTempSubdirectory("image-rootfs-").FullName, "rootfs");
                try
                {
                    TestRootFilesystem.Create(rootfs);
                    OciImage.WriteArchive(rootfs, ContainerdNode.PauseImage, ["/bin/pause"], pause + ".tmp");
                    OciImage.WriteArchive(rootfs, Memcounter, ["/bin/memcounter"], memcounter + ".tmp");
                    File.Move(pause + ".tmp", pause, overwrite: true);
                    File.Move(memcounter + ".tmp", memcounter, overwrite: true);
                }
                finally
                {
                    Directory.Delete(Path.GetDirectoryName(rootfs)!, recursive: true);
                }
            }
        }

        return [pause, memcounter];
    }
}

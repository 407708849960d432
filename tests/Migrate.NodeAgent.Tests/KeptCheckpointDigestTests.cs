using Google.Protobuf;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>A kept container's digest covers its own files (images and writable layer), every byte of each through its SHA-256.</summary>
public sealed class KeptCheckpointDigestTests
{
    private static Manifest Manifest(byte pagesHash = 1, ulong pagesSize = 4096)
    {
        var manifest = new Manifest();
        manifest.Files.Add(new ManifestFile { Path = "containers/main/final/pages-1.img", Size = pagesSize, Sha256 = ByteString.CopyFrom(Enumerable.Repeat(pagesHash, 32).ToArray()) });
        manifest.Files.Add(new ManifestFile { Path = "rootfs/main.tar", Size = 10240, Sha256 = ByteString.CopyFrom(Enumerable.Repeat((byte)2, 32).ToArray()) });
        manifest.Files.Add(new ManifestFile { Path = "containers/side/final/pages-1.img", Size = 4096, Sha256 = ByteString.CopyFrom(Enumerable.Repeat((byte)3, 32).ToArray()) });
        manifest.Files.Add(new ManifestFile { Path = "volumes/data.tar", Size = 512, Sha256 = ByteString.CopyFrom(Enumerable.Repeat((byte)4, 32).ToArray()) });
        return manifest;
    }

    [Fact]
    public void Changes_when_a_file_of_the_container_changes_and_only_then()
    {
        var main = KeptCheckpoints.Describe("main", "memcounter", Manifest());
        Assert.Matches("^sha256:[0-9a-f]{64}$", main.Digest);
        Assert.Equal(4096UL + 10240, main.SizeBytes);
        Assert.Equal(main.Digest, KeptCheckpoints.Describe("main", "memcounter", Manifest()).Digest);
        Assert.NotEqual(main.Digest, KeptCheckpoints.Describe("main", "memcounter", Manifest(pagesHash: 9)).Digest); // same sizes, other bytes
        Assert.NotEqual(main.Digest, KeptCheckpoints.Describe("main", "memcounter", Manifest(pagesSize: 8192)).Digest);
        Assert.NotEqual(main.Digest, KeptCheckpoints.Describe("side", "memcounter", Manifest()).Digest);
    }
}

using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Migrate.Agent.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Checkpoints exported as OCI image layouts and read back: the same bytes come back, and an export
/// that was cut short, altered, hostile or written by a CRIU this node cannot restore is refused
/// with the reason, leaving nothing behind. (Real CRIU images and checkpointctl: the end-to-end test.)
/// </summary>
public sealed class CheckpointArchiveTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("podmig-archive-test-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Half_written_exports_untouched_past_their_time_are_removed_and_nothing_else_is()
    {
        var storage = Path.Combine(_root, "storage");
        var (kept, directory) = KeptCheckpoint("cp-2", ["main"]);
        CheckpointArchive.Export(directory, kept, Path.Combine(storage, "ns", "done"), "ns/done");
        var old = Partial(storage, "ns/old", "cp-3", DateTime.UtcNow.AddHours(-7));
        var fresh = Partial(storage, "ns/fresh", "cp-4", DateTime.UtcNow.AddHours(-7));
        File.SetLastWriteTimeUtc(Path.Combine(fresh, "blobs", "sha256", "part"), DateTime.UtcNow); // still being written
        var lookalike = Directory.CreateDirectory(Path.Combine(storage, "ns", "user.partial-data")).FullName; // not hidden: not ours
        Directory.SetLastWriteTimeUtc(lookalike, DateTime.UtcNow.AddDays(-2));
        var inside = Partial(Path.Combine(storage, "ns", "done"), "x", "cp-5", DateTime.UtcNow.AddDays(-2)); // inside a complete export: not looked into

        var removed = CheckpointArchive.RemoveAbandoned(storage, DateTime.UtcNow.AddHours(-6));

        Assert.Equal([old], removed);
        Assert.False(Directory.Exists(old));
        Assert.True(Directory.Exists(fresh) && Directory.Exists(lookalike) && Directory.Exists(inside));
        Assert.True(File.Exists(Path.Combine(storage, "ns", "done", CheckpointArchive.LayoutFile)));
        Assert.Empty(CheckpointArchive.RemoveAbandoned(Path.Combine(_root, "no-storage"), DateTime.UtcNow));
    }

    private static string Partial(string storage, string exportPath, string checkpointId, DateTime written)
    {
        var parent = Path.Combine(storage, Path.GetDirectoryName(exportPath) ?? "");
        var partial = Path.Combine(parent, CheckpointArchive.PartialName(Path.GetFileName(exportPath), checkpointId));
        var blobs = Directory.CreateDirectory(Path.Combine(partial, "blobs", "sha256")).FullName;
        File.WriteAllText(Path.Combine(blobs, "part"), "half");
        foreach (var path in new[] { Path.Combine(blobs, "part") })
        {
            File.SetLastWriteTimeUtc(path, written);
        }

        foreach (var path in new[] { blobs, Path.GetDirectoryName(blobs)!, partial })
        {
            Directory.SetLastWriteTimeUtc(path, written);
        }

        return partial;
    }

    [Fact]
    public void An_exported_checkpoint_imports_back_with_every_file_identical_and_its_description_kept()
    {
        var (kept, directory) = KeptCheckpoint("cp-1", ["main", "side"]);
        var export = CheckpointArchive.Export(directory, kept, Path.Combine(_root, "storage", "ns", "cp"), "ns/cp");

        var layout = Path.Combine(_root, "storage", "ns", "cp");
        Assert.Equal("""{"imageLayoutVersion":"1.0.0"}""", File.ReadAllText(Path.Combine(layout, CheckpointArchive.LayoutFile)));
        Assert.Equal("sha256:" + Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(layout, "index.json")))), export.Digest);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(layout, "index.json")))!;
        Assert.Equal(["main", "side"], index["manifests"]!.AsArray().Select(m => m!["annotations"]![CheckpointArchive.RefNameAnnotation]!.GetValue<string>()));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(_root, "storage", "ns"), ".*")); // no partial left beside it

        // the layer is a checkpoint archive in the runtimes' layout
        var layer = LayerOf(layout, 0);
        var names = TarNames(layer);
        Assert.Contains("checkpoint/", names);
        Assert.Contains("checkpoint/pages-1.img", names);
        Assert.Contains("config.dump", names);
        Assert.Contains("spec.dump", names);
        Assert.Contains("status.dump", names);
        Assert.Contains("stats-dump", names);
        Assert.Contains("rootfs-diff.tar", names);
        Assert.Contains("volumes/cache.tar", names);
        Assert.Contains(CheckpointArchive.DescriptionEntry, names);
        Assert.DoesNotContain("volumes/cache.tar", TarNames(LayerOf(layout, 1))); // the pod's volumes travel once

        var imported = Path.Combine(_root, "imported");
        var back = CheckpointArchive.Import(layout, "ns/cp", export.Digest, imported, "4.1.1");

        Assert.Equal(kept.Containers, back.Containers);
        Assert.Equal((kept.Pod, kept.SavedPodJson, kept.FrozenMillis), (back.Pod, back.SavedPodJson, back.FrozenMillis));
        Assert.Equal(export.Digest, back.ImportedFrom.Digest);
        foreach (var file in Directory.EnumerateFiles(Path.Combine(directory, KeptCheckpoints.ImagesDirectory), "*", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(Path.Combine(directory, KeptCheckpoints.ImagesDirectory), file);
            Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(imported, KeptCheckpoints.ImagesDirectory, relative)));
        }
    }

    [Fact]
    public void A_chained_checkpoint_is_not_exported_and_an_existing_export_is_not_overwritten()
    {
        var (kept, directory) = KeptCheckpoint("cp-2", ["main"]);
        Directory.CreateDirectory(Path.Combine(directory, "images", StagingLayout.LazyMemoryImages("main")));
        var e = Assert.Throws<CheckpointException>(() => CheckpointArchive.Export(directory, kept, Path.Combine(_root, "out"), "out"));
        Assert.Contains("not one full dump", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(_root, "out")));

        Directory.Delete(Path.Combine(directory, "images", StagingLayout.LazyMemoryImages("main")));
        CheckpointArchive.Export(directory, kept, Path.Combine(_root, "out"), "out");
        var again = Assert.Throws<CheckpointException>(() => CheckpointArchive.Export(directory, kept, Path.Combine(_root, "out"), "out"));
        Assert.Contains("already holds out", again.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, string> Damages => new()
    {
        { "flip a byte of the layer", "does not match its digest" },
        { "truncate the layer", "(truncated or replaced)" },
        { "remove the layer", "is missing" },
        { "change an annotation and re-digest", "was altered: annotation org.criu.checkpoint.pod.name is 'other'" },
        { "put a symlink in the layer", "of type SymbolicLink (only files and directories are accepted)" },
        { "put ../escape in the layer", "an unexpected entry '../escape'" },
        { "put checkpoint/../../x in the layer", "an unexpected entry 'checkpoint/../../x'" },
        { "change an image file and re-digest", "are not those the checkpoint was taken with" },
        { "write the images with CRIU 9.0", "written by CRIU 9.0.0, this node has CRIU 4.1.1" },
        { "ask for another digest", "not the sha256:0000000000000000000000000000000000000000000000000000000000000000 asked for" },
        { "replace index.json with garbage", "is refused:" },
    };

    [Theory]
    [MemberData(nameof(Damages))]
    public void A_damaged_or_hostile_export_is_refused_naming_why(string damage, string expected)
    {
        var (kept, directory) = KeptCheckpoint("cp-3", ["main"]);
        if (damage == "write the images with CRIU 9.0")
        {
            kept.Node.Criu.Version = "9.0.0";
        }

        var layout = Path.Combine(_root, "storage", "cp");
        var export = CheckpointArchive.Export(directory, kept, layout, "cp");
        string? digest = export.Digest;
        var layer = LayerOf(layout, 0);
        switch (damage)
        {
            case "flip a byte of the layer":
                var bytes = File.ReadAllBytes(layer);
                bytes[bytes.Length / 2] ^= 0x40;
                File.WriteAllBytes(layer, bytes);
                break;
            case "truncate the layer":
                using (var stream = new FileStream(layer, FileMode.Open))
                {
                    stream.SetLength(stream.Length - 512);
                }

                break;
            case "remove the layer":
                File.Delete(layer);
                break;
            case "change an annotation and re-digest":
                digest = Rewrite(layout, manifest => manifest["annotations"]![CheckpointArchive.PodAnnotation] = "other", null);
                break;
            case "put a symlink in the layer":
                digest = Rewrite(layout, null, tar => tar.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "checkpoint/parent") { LinkName = "/etc" }));
                break;
            case "put ../escape in the layer":
                digest = Rewrite(layout, null, tar => Write(tar, "../escape", "x"));
                break;
            case "put checkpoint/../../x in the layer":
                digest = Rewrite(layout, null, tar => Write(tar, "checkpoint/../../x", "x"));
                break;
            case "change an image file and re-digest":
                digest = Rewrite(layout, null, tar => Write(tar, "checkpoint/extra.img", "not from the checkpoint"));
                break;
            case "ask for another digest":
                digest = "sha256:" + new string('0', 64);
                break;
            case "replace index.json with garbage":
                File.WriteAllText(Path.Combine(layout, "index.json"), "{\"manifests\": [1, 2");
                digest = null;
                break;
        }

        var target = Path.Combine(_root, "imported");
        var e = Assert.Throws<CheckpointException>(() => CheckpointArchive.Import(layout, "cp", digest, target, "4.1.1"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.StartsWith("checkpoint export cp ", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(target, KeptCheckpoints.ImagesDirectory)), "a refused export left files behind");
    }

    [Theory]
    [InlineData("checkpoint", "containers/c/final", null)]
    [InlineData("checkpoint/pages-1.img", "containers/c/final/pages-1.img", null)]
    [InlineData("rootfs-diff.tar", "rootfs/c.tar", null)]
    [InlineData("volumes/data.tar", "volumes/data.tar", null)]
    [InlineData("spec.dump", null, null)]
    [InlineData("stats-dump", null, null)]
    [InlineData("podmig.json", ArchiveRules.Description, null)]
    [InlineData("checkpoint/sub/x.img", null, "an unexpected entry 'checkpoint/sub/x.img'")]
    [InlineData("checkpoint/..", null, "an unexpected entry 'checkpoint/..'")]
    [InlineData("volumes/../x.tar", null, "an unexpected entry 'volumes/../x.tar'")]
    [InlineData("/etc/passwd", null, "an unexpected entry '/etc/passwd'")]
    [InlineData("container.log", null, "an unexpected entry 'container.log'")]
    public void Layer_entries_are_placed_in_the_image_tree_or_refused(string entry, string? placed, string? refused)
    {
        var place = ArchiveRules.Place(entry, "c", out var why);

        Assert.Equal((placed, refused), (place, why));
    }

    [Theory]
    [InlineData("4.1.1", "4.1.1", null)]
    [InlineData("4.0", "4.1.1", null)]
    [InlineData("4.2.0", "4.1.1", "newer than this node's 4.1.1")]
    [InlineData("3.19", "4.1.1", "another major version")]
    [InlineData("", "4.1.1", "an unknown CRIU version ('')")]
    [InlineData("4.x", "4.1.1", "an unknown CRIU version ('4.x')")]
    [InlineData("4.1.1.1", "4.1.1", "an unknown CRIU version")]
    [InlineData("4.1", "", "this node's CRIU version is unknown")]
    public void Images_restore_only_on_a_node_whose_CRIU_knows_their_version(string image, string node, string? why)
    {
        var answer = ArchiveRules.WhyNotRestorable(image, node);

        if (why is null)
        {
            Assert.Null(answer);
        }
        else
        {
            Assert.Contains(why, answer, StringComparison.Ordinal);
        }
    }

    private (KeptCheckpoint Kept, string Directory) KeptCheckpoint(string id, string[] containers)
    {
        var directory = Path.Combine(_root, "kept", id);
        var images = Path.Combine(directory, KeptCheckpoints.ImagesDirectory);
        foreach (var container in containers)
        {
            var set = Path.Combine(images, StagingLayout.FinalImages(container));
            Directory.CreateDirectory(set);
            File.WriteAllBytes(Path.Combine(set, "pages-1.img"), RandomNumberGenerator.GetBytes(200_000));
            File.WriteAllText(Path.Combine(set, "pstree.img"), "tree of " + container);
            File.WriteAllText(Path.Combine(set, "stats-dump"), "stats");
            File.WriteAllText(Path.Combine(set, "descriptors.json"), "[\"pipe:[1]\",\"pipe:[2]\",\"pipe:[3]\"]");
            Directory.CreateDirectory(Path.Combine(images, "rootfs"));
            File.WriteAllBytes(Path.Combine(images, StagingLayout.RootfsArchive(container)), RandomNumberGenerator.GetBytes(10_240));
        }

        Directory.CreateDirectory(Path.Combine(images, "volumes"));
        File.WriteAllBytes(Path.Combine(images, StagingLayout.VolumeArchive("cache")), RandomNumberGenerator.GetBytes(20_480));
        var manifest = ImageSender.BuildManifest(images);
        var kept = new KeptCheckpoint
        {
            CheckpointId = id,
            Pod = new PodRef { Namespace = "default", Name = "counter", Uid = "u-1" },
            NodeName = "node-a",
            Ready = true,
            Directory = directory,
            FrozenUnixMillis = 1_790_000_000_000,
            FrozenMillis = 321,
            SizeBytes = (ulong)manifest.Files.Sum(f => (long)f.Size),
            Node = new GetCapabilitiesResponse { NodeName = "node-a", Criu = new CriuCapabilities { Version = "4.1.1" }, Kernel = new KernelInfo { Release = "6.18.0", Machine = "x86_64" } },
            SavedPodJson = """{"metadata":{"name":"counter"}}""",
        };
        kept.Containers.Add(containers.Select(c => KeptCheckpoints.Describe(c, "registry.local/counter:1", manifest)));
        return (kept, directory);
    }

    private static string LayerOf(string layout, int container)
    {
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(layout, "index.json")))!;
        var manifest = JsonNode.Parse(File.ReadAllText(Blob(layout, index["manifests"]![container]!["digest"]!.GetValue<string>())))!;
        return Blob(layout, manifest["layers"]![0]!["digest"]!.GetValue<string>());
    }

    private static string Blob(string layout, string digest) => Path.Combine(layout, "blobs", "sha256", digest["sha256:".Length..]);

    private static List<string> TarNames(string tar)
    {
        using var stream = File.OpenRead(tar);
        using var reader = new TarReader(stream);
        var names = new List<string>();
        while (reader.GetNextEntry() is { } entry)
        {
            names.Add(entry.Name);
        }

        return names;
    }

    private static void Write(TarWriter tar, string name, string text) =>
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(Encoding.UTF8.GetBytes(text)) });

    /// <summary>Alters the first image (its manifest, or its layer by appending entries) and re-digests the chain up to index.json, as a forger would; returns the new index digest.</summary>
    private static string Rewrite(string layout, Action<JsonNode>? manifestChange, Action<TarWriter>? layerAppend)
    {
        var indexPath = Path.Combine(layout, "index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        var manifestRef = index["manifests"]![0]!;
        var manifest = JsonNode.Parse(File.ReadAllText(Blob(layout, manifestRef["digest"]!.GetValue<string>())))!;
        if (layerAppend is not null)
        {
            var layerRef = manifest["layers"]![0]!;
            var layer = new MemoryStream();
            using (var source = File.OpenRead(Blob(layout, layerRef["digest"]!.GetValue<string>())))
            using (var reader = new TarReader(source))
            using (var writer = new TarWriter(layer, TarEntryFormat.Pax, leaveOpen: true))
            {
                while (reader.GetNextEntry(copyData: true) is { } entry)
                {
                    writer.WriteEntry(entry);
                }

                layerAppend(writer);
            }

            var (digest, size) = Store(layout, layer.ToArray());
            layerRef["digest"] = digest;
            layerRef["size"] = size;
        }

        manifestChange?.Invoke(manifest);
        var (manifestDigest, manifestSize) = Store(layout, Encoding.UTF8.GetBytes(manifest.ToJsonString()));
        manifestRef["digest"] = manifestDigest;
        manifestRef["size"] = manifestSize;
        var indexBytes = Encoding.UTF8.GetBytes(index.ToJsonString());
        File.WriteAllBytes(indexPath, indexBytes);
        return "sha256:" + Convert.ToHexStringLower(SHA256.HashData(indexBytes));
    }

    private static (string Digest, long Size) Store(string layout, byte[] bytes)
    {
        var digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));
        File.WriteAllBytes(Blob(layout, digest), bytes);
        return (digest, bytes.Length);
    }
}

/// <summary>A restore on the checkpoint's own node links the kept files; they must still be what was kept.</summary>
public sealed class LinkedStagingTests
{
    public static TheoryData<string, string?> Cases => new()
    {
        { "the same files", null },
        { "a file changed", "containers/c/final/pages-1.img differs from what was kept (3 bytes, kept 3)" },
        { "a file grew", "containers/c/final/pages-1.img differs from what was kept (4 bytes, kept 3)" },
        { "a file added", "rootfs/c.tar was not kept" },
        { "a file missing", "containers/c/final/pstree.img is missing" },
        { "a parent link differs", "the image sets' parent links differ" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void The_linked_images_must_be_those_kept(string change, string? expected)
    {
        var kept = Manifest();
        var actual = Manifest();
        switch (change)
        {
            case "a file changed":
                actual.Files[0].Sha256 = Google.Protobuf.ByteString.CopyFrom(SHA256.HashData("xyz"u8));
                break;
            case "a file grew":
                actual.Files[0].Size = 4;
                break;
            case "a file added":
                actual.Files.Add(new ManifestFile { Path = "rootfs/c.tar", Size = 1, Sha256 = Google.Protobuf.ByteString.CopyFrom(SHA256.HashData("a"u8)) });
                break;
            case "a file missing":
                actual.Files.RemoveAt(1);
                break;
            case "a parent link differs":
                actual.ParentLinks.Add(new ManifestParentLink { Directory = "containers/c/final", Parent = "containers/c/round-1" });
                break;
        }

        Assert.Equal(expected, ImageReceiver.ManifestDifference(kept, actual));
    }

    private static Manifest Manifest()
    {
        var manifest = new Manifest();
        manifest.Files.Add(new ManifestFile { Path = "containers/c/final/pages-1.img", Size = 3, Sha256 = Google.Protobuf.ByteString.CopyFrom(SHA256.HashData("abc"u8)) });
        manifest.Files.Add(new ManifestFile { Path = "containers/c/final/pstree.img", Size = 1, Sha256 = Google.Protobuf.ByteString.CopyFrom(SHA256.HashData("p"u8)) });
        return manifest;
    }
}

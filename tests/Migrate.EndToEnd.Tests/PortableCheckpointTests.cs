using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>
/// Checkpoints carried on portable storage: a checkpoint exported by one sandbox cluster to an
/// archive storage both clusters mount, read by the real checkpointctl, and imported and restored
/// by a second sandbox that never saw the first (the first is gone by then); a tampered export is
/// refused there with the reason and restores nothing.
/// </summary>
public sealed class PortableCheckpointTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _storage = Directory.CreateTempSubdirectory("podmig-archive-storage-").FullName;

    public void Dispose() => Directory.Delete(_storage, recursive: true);

    [Fact]
    public async Task A_checkpoint_exported_by_one_sandbox_is_read_by_checkpointctl_and_resumes_in_a_second_sandbox_that_never_saw_the_first()
    {
        Prerequisites.RequirePrograms("checkpointctl");
        string digest;
        long before, after;
        await using (var first = await SandboxCluster.StartAsync(new SandboxOptions { ArchiveDirectory = _storage }))
        {
            await Sandbox.RunCounterAsync(first, "pt", "node-a", 16);
            before = (await Sandbox.WaitForTicksAsync(first, "pt", "main", 3))[^1].Tick;
            await Sandbox.ApplyAsync(first, """
                apiVersion: podmigration.io/v1alpha1
                kind: Checkpoint
                metadata:
                  name: pt-1
                  namespace: default
                spec:
                  podName: pt
                  export:
                    path: team/pt-1
                    retain: true
                """);
            var status = await Sandbox.WaitForPhaseAsync(first, "checkpoint", "pt-1", "Ready");
            after = (await Sandbox.TicksAsync(first, "pt"))[^1].Tick;
            output.WriteLine($"first sandbox: {status.GetProperty("message").GetString()} (ticks {before}..{after})");
            var export = status.GetProperty("export");
            digest = export.GetProperty("digest").GetString()!;
            Assert.Equal("team/pt-1", export.GetProperty("path").GetString());
            var layout = Path.Combine(_storage, "team", "pt-1");
            Assert.Equal("sha256:" + Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(layout, "index.json")))), digest);
            Assert.True(export.GetProperty("sizeBytes").GetInt64() > 16L << 20, "the export holds less than the counter's 16 MiB");

            // the image's layer is a checkpoint archive the real checkpointctl reads: the process tree, CRIU's statistics, the open files
            var layer = LayerOf(layout, "main");
            var inspected = Prerequisites.Run("checkpointctl", "inspect", layer, "--ps-tree", "--stats", "--files");
            output.WriteLine(inspected);
            Assert.Contains("[1]  memcounter", inspected, StringComparison.Ordinal); // the process tree, from pstree.img and core-1.img
            Assert.Contains("Image: " + TestImages.Memcounter, inspected, StringComparison.Ordinal); // config.dump
            Assert.Contains("Frozen time:", inspected, StringComparison.Ordinal); // stats-dump at the archive's root
            Assert.Contains("Root FS diff size:", inspected, StringComparison.Ordinal); // rootfs-diff.tar
            Assert.Contains("[PIPE 1]", inspected, StringComparison.Ordinal); // files.img, fdinfo

            // the first cluster's Checkpoint is deleted: its export is retained (spec.export.retain)
            (await first.Api.KubectlAsync("delete", "checkpoint", "pt-1", "--wait=true", "--timeout=30s")).Succeeded();
            Assert.True(File.Exists(Path.Combine(layout, "index.json")), "the retained export went with its Checkpoint");
        }

        await using var second = await SandboxCluster.StartAsync(new SandboxOptions { ArchiveDirectory = _storage });
        Assert.DoesNotContain(await Sandbox.PodsAsync(second), p => p.Metadata.Name == "pt");

        // a forged copy (one annotation changed, every digest recomputed) is refused, naming what was altered
        CopyDirectory(Path.Combine(_storage, "team", "pt-1"), Path.Combine(_storage, "team", "forged"));
        Forge(Path.Combine(_storage, "team", "forged"));
        await Sandbox.ApplyAsync(second, """
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata: {name: forged, namespace: default}
            spec:
              source: {path: team/forged}
            """);
        var forged = await Sandbox.WaitForPhaseAsync(second, "checkpoint", "forged", "Failed");
        output.WriteLine($"forged: {forged.GetProperty("message").GetString()}");
        Assert.Equal("ImportRefused", forged.GetProperty("reason").GetString());
        Assert.Contains("was altered: annotation org.criu.checkpoint.pod.name is 'someone-else'", forged.GetProperty("message").GetString(), StringComparison.Ordinal);

        // the real one, imported onto node-b with the digest the first cluster reported, then restored
        await Sandbox.ApplyAsync(second, $"""
            apiVersion: podmigration.io/v1alpha1
            kind: Checkpoint
            metadata: {"{"}name: pt-1-imported, namespace: default{"}"}
            spec:
              source: {"{"}path: team/pt-1, digest: "{digest}"{"}"}
              nodeName: node-b
            ---
            apiVersion: podmigration.io/v1alpha1
            kind: Restore
            metadata: {"{"}name: pt-back, namespace: default{"}"}
            spec:
              checkpointName: pt-1-imported
              nodeName: node-b
            """);
        var imported = await Sandbox.WaitForPhaseAsync(second, "checkpoint", "pt-1-imported", "Ready");
        output.WriteLine($"second sandbox: {imported.GetProperty("message").GetString()}");
        Assert.Equal(("Imported", "node-b", digest), (imported.GetProperty("reason").GetString(), imported.GetProperty("nodeName").GetString(),
            imported.GetProperty("importedFrom").GetProperty("digest").GetString()));
        var restored = await Sandbox.WaitForPhaseAsync(second, "restore", "pt-back", "Succeeded");
        output.WriteLine($"restore: {restored.GetProperty("message").GetString()}");

        var ticks = await Sandbox.WaitForTicksAsync(second, "pt-back", "main", 5);
        long resumed = ticks[0].Tick;
        output.WriteLine($"pt-back on node-b of the second sandbox: first tick {resumed} (the checkpoint was taken between ticks {before} and {after})");
        Assert.InRange(resumed, before + 1, after + 1);
        Sandbox.AssertConsecutive(ticks, resumed);
        Assert.Contains(ticks, t => t.VerifiedOk); // its 16 MiB came back with the checksum it had

        (await second.Api.KubectlAsync("delete", "restore", "--all")).Succeeded();
        (await second.Api.KubectlAsync("delete", "pod", "pt-back", "--wait=true")).Succeeded();
        (await second.Api.KubectlAsync("delete", "checkpoint", "--all", "--wait=true", "--timeout=30s")).Succeeded();
        Assert.True(Directory.Exists(Path.Combine(_storage, "team", "pt-1")), "deleting an imported Checkpoint must not delete the export it came from");
    }

    private static string LayerOf(string layout, string container)
    {
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(layout, "index.json")))!;
        var entry = index["manifests"]!.AsArray().Single(m => m!["annotations"]!["org.opencontainers.image.ref.name"]!.GetValue<string>() == container)!;
        var manifest = JsonNode.Parse(File.ReadAllText(Blob(layout, entry["digest"]!.GetValue<string>())))!;
        Assert.Equal(container, manifest["annotations"]!["org.criu.checkpoint.container.name"]!.GetValue<string>());
        Assert.Equal(container, manifest["annotations"]!["io.kubernetes.cri-o.annotations.checkpoint.name"]!.GetValue<string>());
        return Blob(layout, manifest["layers"]![0]!["digest"]!.GetValue<string>());
    }

    private static string Blob(string layout, string digest) => Path.Combine(layout, "blobs", "sha256", digest["sha256:".Length..]);

    /// <summary>Changes the pod name in the first image's manifest annotations and rewrites the digests up to index.json, as a forger would.</summary>
    private static void Forge(string layout)
    {
        var indexPath = Path.Combine(layout, "index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        var entry = index["manifests"]![0]!;
        var manifest = JsonNode.Parse(File.ReadAllText(Blob(layout, entry["digest"]!.GetValue<string>())))!;
        manifest["annotations"]!["org.criu.checkpoint.pod.name"] = "someone-else";
        var bytes = JsonSerializer.SerializeToUtf8Bytes(manifest);
        var digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));
        File.WriteAllBytes(Blob(layout, digest), bytes);
        entry["digest"] = digest;
        entry["size"] = bytes.Length;
        File.WriteAllText(indexPath, index.ToJsonString());
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var directory in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
        {
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, directory)));
        }

        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
        }
    }
}

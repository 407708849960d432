using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace Migrate.TestSupport;

/// <summary>
/// Builds OCI image layout archives from a root file system directory (one uncompressed layer),
/// the form <c>ctr images import</c> takes; no registry is reachable on these machines.
/// </summary>
public static class OciImage
{
    /// <param name="rootfs">The directory that becomes the image's single layer.</param>
    /// <param name="name">Full image name, e.g. docker.io/podmig/memcounter:1.</param>
    /// <param name="entrypoint">The image's default command.</param>
    /// <param name="archive">The .tar file to write.</param>
    public static void WriteArchive(string rootfs, string name, string[] entrypoint, string archive)
    {
        var work = Directory.CreateTempSubdirectory("oci-image-").FullName;
        try
        {
            var blobs = Path.Combine(work, "blobs", "sha256");
            Directory.CreateDirectory(blobs);

            var layerPath = Path.Combine(work, "layer.tar");
            TarFile.CreateFromDirectory(rootfs, layerPath, includeBaseDirectory: false);
            var (layerDigest, layerSize) = AddBlob(blobs, File.ReadAllBytes(layerPath));
            File.Delete(layerPath);

            var config = new JsonObject
            {
                ["architecture"] = "amd64",
                ["os"] = "linux",
                ["config"] = new JsonObject
                {
                    ["Entrypoint"] = new JsonArray([.. entrypoint.Select(e => (JsonNode)e)]),
                    ["Env"] = new JsonArray("PATH=/bin"),
                    ["WorkingDir"] = "/",
                },
                ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = new JsonArray(layerDigest) },
            };
            var (configDigest, configSize) = AddBlob(blobs, Encoding.UTF8.GetBytes(config.ToJsonString()));

            var manifest = new JsonObject
            {
                ["schemaVersion"] = 2,
                ["mediaType"] = "application/vnd.oci.image.manifest.v1+json",
                ["config"] = Descriptor("application/vnd.oci.image.config.v1+json", configDigest, configSize),
                ["layers"] = new JsonArray(Descriptor("application/vnd.oci.image.layer.v1.tar", layerDigest, layerSize)),
            };
            var (manifestDigest, manifestSize) = AddBlob(blobs, Encoding.UTF8.GetBytes(manifest.ToJsonString()));

            var tag = name[(name.LastIndexOf(':') + 1)..];
            var indexEntry = Descriptor("application/vnd.oci.image.manifest.v1+json", manifestDigest, manifestSize);
            indexEntry["annotations"] = new JsonObject
            {
                ["io.containerd.image.name"] = name,
                ["org.opencontainers.image.ref.name"] = tag,
            };
            indexEntry["platform"] = new JsonObject { ["architecture"] = "amd64", ["os"] = "linux" };
            File.WriteAllText(Path.Combine(work, "index.json"), new JsonObject
            {
                ["schemaVersion"] = 2,
                ["manifests"] = new JsonArray(indexEntry),
            }.ToJsonString());
            File.WriteAllText(Path.Combine(work, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");

            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(archive))!);
            File.Delete(archive);
            TarFile.CreateFromDirectory(work, archive, includeBaseDirectory: false);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static (string Digest, long Size) AddBlob(string blobs, byte[] content)
    {
        var hex = Convert.ToHexStringLower(SHA256.HashData(content));
        File.WriteAllBytes(Path.Combine(blobs, hex), content);
        return ("sha256:" + hex, content.Length);
    }

    private static JsonObject Descriptor(string mediaType, string digest, long size) =>
        new() { ["mediaType"] = mediaType, ["digest"] = digest, ["size"] = size };
}

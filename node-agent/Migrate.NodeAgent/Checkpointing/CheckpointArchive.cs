using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.NodeAgent.Transfer;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// A kept checkpoint written to (and read back from) portable storage as an OCI image layout
/// (<c>oci-layout</c>, <c>index.json</c>, <c>blobs/sha256/…</c>) with one image per container, named
/// by the container in <c>org.opencontainers.image.ref.name</c>. Each image's single layer is a
/// checkpoint archive in the layout CRI-O and containerd write and checkpointctl reads:
/// <code>
/// checkpoint/         the container's CRIU image set (a full dump: an export holds no chain)
/// config.dump         the container's config (checkpointctl's ContainerConfig)
/// spec.dump           an OCI runtime spec carrying the CRI annotations (pod, namespace, container)
/// status.dump         the CRI container status, as containerd writes it
/// stats-dump, dump.log  CRIU's statistics and log, when the dump left them
/// rootfs-diff.tar     the container's writable layer (an overlay upper directory, whiteouts included)
/// volumes/NAME.tar    the pod's emptyDir volumes (in the first container's layer)
/// podmig.json         the project's description of the checkpoint (the saved pod among it)
/// </code>
/// The manifests carry the checkpoint annotations containerd (<c>org.criu.checkpoint.container.name</c>)
/// and CRI-O (<c>io.kubernetes.cri-o.annotations.checkpoint.name</c>) look for. Reading one back checks
/// every digest and size, each layer's entries (regular files and directories only, names confined),
/// that its annotations agree with its description, that the CRIU that took it is one this node's
/// CRIU can restore, and that the images are byte for byte those the checkpoint was taken with.
/// </summary>
public static class CheckpointArchive
{
    private const string PartialMarker = ".partial-";

    /// <summary>The directory an export is written in before it is renamed into place (hidden, beside it).</summary>
    public static string PartialName(string exportName, string checkpointId) => "." + exportName + PartialMarker + checkpointId;

    /// <summary>
    /// Exports abandoned half-written (their agent died) under <paramref name="root"/>, untouched since
    /// <paramref name="expiry"/>: removed. Complete exports (an OCI layout) are not looked into. Returns the paths removed.
    /// </summary>
    public static IReadOnlyList<string> RemoveAbandoned(string root, DateTime expiry)
    {
        var removed = new List<string>();
        if (!Directory.Exists(root))
        {
            return removed;
        }

        var pending = new Stack<(string Directory, int Depth)>([(root, 0)]);
        while (pending.Count > 0)
        {
            var (directory, depth) = pending.Pop();
            foreach (var child in new DirectoryInfo(directory).EnumerateDirectories())
            {
                if (child.LinkTarget is not null)
                {
                    continue;
                }

                if (child.Name.StartsWith('.') && child.Name.Contains(PartialMarker, StringComparison.Ordinal))
                {
                    if (DirectoryTimes.LastChange(child.FullName) <= expiry)
                    {
                        child.Delete(recursive: true);
                        removed.Add(child.FullName);
                    }
                }
                else if (depth < 32 && !File.Exists(Path.Combine(child.FullName, LayoutFile)))
                {
                    pending.Push((child.FullName, depth + 1));
                }
            }
        }

        return removed;
    }

    public const string LayoutFile = "oci-layout";
    public const string IndexFile = "index.json";
    public const string DescriptionEntry = "podmig.json";
    public const string ManifestMediaType = "application/vnd.oci.image.manifest.v1+json";
    public const string IndexMediaType = "application/vnd.oci.image.index.v1+json";
    public const string ConfigMediaType = "application/vnd.oci.image.config.v1+json";
    public const string LayerMediaType = "application/vnd.oci.image.layer.v1.tar";

    public const string RefNameAnnotation = "org.opencontainers.image.ref.name";
    public const string CreatedAnnotation = "org.opencontainers.image.created";
    public const string ContainerAnnotation = "org.criu.checkpoint.container.name";
    public const string CrioContainerAnnotation = "io.kubernetes.cri-o.annotations.checkpoint.name";
    public const string EngineAnnotation = "org.criu.checkpoint.engine.name";
    public const string PodAnnotation = "org.criu.checkpoint.pod.name";
    public const string NamespaceAnnotation = "org.criu.checkpoint.pod.namespace";
    public const string ImageAnnotation = "org.criu.checkpoint.rootfsImageName";
    public const string CriuVersionAnnotation = "org.criu.checkpoint.criu.version";
    public const string KernelAnnotation = "org.criu.checkpoint.host.kernel";
    public const string ArchAnnotation = "org.criu.checkpoint.host.arch";
    public const string CheckpointIdAnnotation = "podmigration.io/checkpoint-id";
    public const string MigrationAnnotation = "podmigration.io/migration-id";
    public const string EngineName = "podmig";

    /// <summary>Largest JSON document (index, manifest, config, description) read from storage.</summary>
    public const int MaxDocumentBytes = 4 << 20;

    private const UnixFileMode PrivateDirectory = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    private static readonly JsonFormatter ProtoJson = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));
    private static readonly JsonSerializerOptions Compact = new() { WriteIndented = false };

    /// <summary>
    /// Writes the kept checkpoint in <paramref name="keptDirectory"/> (described by <paramref name="kept"/>)
    /// as an OCI image layout at <paramref name="destination"/>, which must not exist (it appears whole:
    /// written beside it, then renamed). Returns the export's description.
    /// </summary>
    public static CheckpointExport Export(string keptDirectory, KeptCheckpoint kept, string destination, string relativePath)
    {
        ArgumentNullException.ThrowIfNull(kept);
        var clock = Stopwatch.StartNew();
        var images = Path.Combine(keptDirectory, KeptCheckpoints.ImagesDirectory);
        foreach (var container in kept.Containers)
        {
            var set = Path.Combine(images, StagingLayout.FinalImages(container.Name));
            if (!Directory.Exists(set) || File.Exists(Path.Combine(set, "parent")) || Directory.Exists(Path.Combine(set, "parent"))
                || Directory.Exists(Path.Combine(images, StagingLayout.LazyMemoryImages(container.Name))))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition,
                    $"checkpoint {kept.CheckpointId}'s images of container {container.Name} are not one full dump (a chained or lazy checkpoint cannot be exported)");
            }
        }

        if (Directory.Exists(destination) || File.Exists(destination))
        {
            throw new CheckpointException(StatusCode.AlreadyExists, $"the archive storage already holds {relativePath}");
        }

        var parent = Path.GetDirectoryName(destination)!;
        Directory.CreateDirectory(parent);
        var work = Path.Combine(parent, PartialName(Path.GetFileName(destination), kept.CheckpointId));
        if (Directory.Exists(work))
        {
            Directory.Delete(work, recursive: true);
        }

        try
        {
            Directory.CreateDirectory(work, PrivateDirectory);
            var blobs = Path.Combine(work, "blobs", "sha256");
            Directory.CreateDirectory(blobs, PrivateDirectory);
            var description = kept.Clone();
            description.Sends.Clear();
            description.Export = null;
            description.Directory = "";
            var descriptionBytes = Encoding.UTF8.GetBytes(ProtoJson.Format(description));
            var created = DateTimeOffset.FromUnixTimeMilliseconds(kept.FrozenUnixMillis).UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);
            var manifests = new JsonArray();
            long total = 0;
            bool first = true;
            foreach (var container in kept.Containers)
            {
                var annotations = Annotations(kept, container.Name, container.Image, created);
                var (layerDigest, layerSize) = WriteBlob(blobs, stream => WriteLayer(stream, images, kept, container, created, descriptionBytes, withVolumes: first));
                first = false;
                var (configDigest, configSize) = WriteBlob(blobs, ImageConfig(created, annotations, layerDigest));
                var (manifestDigest, manifestSize) = WriteBlob(blobs, ImageManifest((configDigest, configSize), (layerDigest, layerSize), annotations));
                var entry = Descriptor(ManifestMediaType, manifestDigest, manifestSize);
                var refAnnotations = new Dictionary<string, string>(annotations) { [RefNameAnnotation] = container.Name };
                entry["annotations"] = ToJson(refAnnotations);
                entry["platform"] = new JsonObject { ["architecture"] = "amd64", ["os"] = "linux" };
                manifests.Add(entry);
                total += layerSize + configSize + manifestSize;
            }

            var index = new JsonObject
            {
                ["schemaVersion"] = 2,
                ["mediaType"] = IndexMediaType,
                ["manifests"] = manifests,
                ["annotations"] = new JsonObject
                {
                    [CheckpointIdAnnotation] = kept.CheckpointId,
                    [PodAnnotation] = kept.Pod?.Name ?? "",
                    [NamespaceAnnotation] = kept.Pod?.Namespace ?? "",
                    [CreatedAnnotation] = created,
                },
            };
            var indexBytes = Encoding.UTF8.GetBytes(index.ToJsonString(Compact));
            File.WriteAllText(Path.Combine(work, LayoutFile), """{"imageLayoutVersion":"1.0.0"}""");
            File.WriteAllBytes(Path.Combine(work, IndexFile), indexBytes);
            Directory.Move(work, destination);
            return new CheckpointExport
            {
                Path = relativePath,
                Digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(indexBytes)),
                SizeBytes = (ulong)(total + indexBytes.Length),
                ExportMillis = (uint)clock.ElapsedMilliseconds,
            };
        }
        catch
        {
            if (Directory.Exists(work))
            {
                Directory.Delete(work, recursive: true);
            }

            throw;
        }
    }

    /// <summary>The annotations of a container's image: those the runtimes look for and the checkpoint's provenance.</summary>
    public static Dictionary<string, string> Annotations(KeptCheckpoint kept, string container, string image, string created)
    {
        ArgumentNullException.ThrowIfNull(kept);
        return new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [ContainerAnnotation] = container,
            [CrioContainerAnnotation] = container,
            [EngineAnnotation] = EngineName,
            [PodAnnotation] = kept.Pod?.Name ?? "",
            [NamespaceAnnotation] = kept.Pod?.Namespace ?? "",
            [ImageAnnotation] = image,
            [CriuVersionAnnotation] = kept.Node?.Criu?.Version ?? "",
            [KernelAnnotation] = kept.Node?.Kernel?.Release ?? "",
            [ArchAnnotation] = "amd64",
            [CheckpointIdAnnotation] = kept.CheckpointId,
            [CreatedAnnotation] = created,
        };
    }

    private static void WriteLayer(Stream stream, string images, KeptCheckpoint kept, KeptContainer container, string created, byte[] description, bool withVolumes)
    {
        using var tar = new TarWriter(stream, TarEntryFormat.Pax, leaveOpen: true);
        var set = Path.Combine(images, StagingLayout.FinalImages(container.Name));
        // checkpointctl needs the directory's own entry, not only the files under it
        tar.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "checkpoint/") { Mode = PrivateDirectory, ModificationTime = DateTimeOffset.UtcNow });
        foreach (var file in Directory.EnumerateFiles(set).Order(StringComparer.Ordinal))
        {
            tar.WriteEntry(file, "checkpoint/" + Path.GetFileName(file));
        }

        var pod = kept.Pod ?? new PodRef();
        var spec = new JsonObject
        {
            ["ociVersion"] = "1.2.0",
            ["annotations"] = new JsonObject
            {
                ["io.container.manager"] = EngineName,
                ["io.kubernetes.cri.container-type"] = "container",
                ["io.kubernetes.cri.container-name"] = container.Name,
                ["io.kubernetes.cri.sandbox-name"] = pod.Name,
                ["io.kubernetes.cri.sandbox-namespace"] = pod.Namespace,
                ["io.kubernetes.cri.sandbox-uid"] = pod.Uid,
                ["io.kubernetes.cri.image-name"] = container.Image,
            },
            ["mounts"] = new JsonArray(),
        };
        var config = new JsonObject
        {
            ["id"] = kept.CheckpointId + "-" + container.Name,
            ["name"] = container.Name,
            ["rootfsImage"] = container.Image,
            ["rootfsImageName"] = container.Image,
            ["runtime"] = "runc",
            ["createdTime"] = created,
            ["checkpointedTime"] = created,
            ["restoredTime"] = "0001-01-01T00:00:00Z",
            ["restored"] = false,
        };
        var labels = new JsonObject { ["io.kubernetes.pod.name"] = pod.Name, ["io.kubernetes.pod.namespace"] = pod.Namespace, ["io.kubernetes.container.name"] = container.Name };
        var status = new JsonObject
        {
            ["id"] = config["id"]!.GetValue<string>(),
            ["metadata"] = new JsonObject { ["name"] = container.Name, ["attempt"] = 0 },
            ["state"] = 1,
            ["image"] = new JsonObject { ["image"] = container.Image, ["user_specified_image"] = container.Image },
            ["image_ref"] = container.Image,
            ["labels"] = labels,
            ["annotations"] = new JsonObject { [CheckpointIdAnnotation] = kept.CheckpointId },
        };
        WriteBytes(tar, "config.dump", Encoding.UTF8.GetBytes(config.ToJsonString(Compact)));
        WriteBytes(tar, "spec.dump", Encoding.UTF8.GetBytes(spec.ToJsonString(Compact)));
        WriteBytes(tar, "status.dump", Encoding.UTF8.GetBytes(status.ToJsonString(Compact)));
        foreach (var (name, entry) in new[] { ("stats-dump", "stats-dump"), ("dump.log", "dump.log") })
        {
            // checkpointctl reads the statistics at the root only
            if (File.Exists(Path.Combine(set, name)))
            {
                tar.WriteEntry(Path.Combine(set, name), entry);
            }
        }

        var rootfs = Path.Combine(images, StagingLayout.RootfsArchive(container.Name));
        if (File.Exists(rootfs))
        {
            tar.WriteEntry(rootfs, "rootfs-diff.tar");
        }

        var volumes = Path.Combine(images, "volumes");
        if (withVolumes && Directory.Exists(volumes))
        {
            tar.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "volumes/") { Mode = PrivateDirectory, ModificationTime = DateTimeOffset.UtcNow });
            foreach (var file in Directory.EnumerateFiles(volumes, "*.tar").Order(StringComparer.Ordinal))
            {
                tar.WriteEntry(file, "volumes/" + Path.GetFileName(file));
            }
        }

        WriteBytes(tar, DescriptionEntry, description);
    }

    private static void WriteBytes(TarWriter tar, string name, byte[] bytes)
    {
        using var data = new MemoryStream(bytes, writable: false);
        tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            ModificationTime = DateTimeOffset.UtcNow,
            DataStream = data,
        });
    }

    /// <summary>A checkpoint image's configuration: its one (uncompressed) layer, its annotations as labels.</summary>
    internal static JsonObject ImageConfig(string created, IReadOnlyDictionary<string, string> annotations, string layerDigest) => new()
    {
        ["created"] = created,
        ["architecture"] = "amd64",
        ["os"] = "linux",
        ["config"] = new JsonObject { ["Labels"] = ToJson(annotations) },
        ["rootfs"] = new JsonObject { ["type"] = "layers", ["diff_ids"] = new JsonArray(layerDigest) },
    };

    /// <summary>A checkpoint image's manifest: its configuration, its one layer (a checkpoint archive) and the checkpoint annotations runtimes look for.</summary>
    internal static JsonObject ImageManifest((string Digest, long Size) config, (string Digest, long Size) layer, IReadOnlyDictionary<string, string> annotations) => new()
    {
        ["schemaVersion"] = 2,
        ["mediaType"] = ManifestMediaType,
        ["config"] = Descriptor(ConfigMediaType, config.Digest, config.Size),
        ["layers"] = new JsonArray(Descriptor(LayerMediaType, layer.Digest, layer.Size)),
        ["annotations"] = ToJson(annotations),
    };

    /// <summary>A JSON document as the bytes of a blob (compact UTF-8).</summary>
    internal static byte[] BlobBytes(JsonObject document) => Encoding.UTF8.GetBytes(document.ToJsonString(Compact));

    private static JsonObject Descriptor(string mediaType, string digest, long size) => new() { ["mediaType"] = mediaType, ["digest"] = digest, ["size"] = size };

    private static JsonObject ToJson(IReadOnlyDictionary<string, string> values)
    {
        var json = new JsonObject();
        foreach (var (key, value) in values.OrderBy(v => v.Key, StringComparer.Ordinal))
        {
            json[key] = value;
        }

        return json;
    }

    private static (string Digest, long Size) WriteBlob(string blobs, JsonObject document) =>
        WriteBlob(blobs, stream => stream.Write(BlobBytes(document)));

    /// <summary>Writes a blob through a hash, then names it by its digest.</summary>
    private static (string Digest, long Size) WriteBlob(string blobs, Action<Stream> write)
    {
        var temporary = Path.Combine(blobs, ".writing-" + Guid.NewGuid().ToString("N"));
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long size;
        using (var file = new FileStream(temporary, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            BufferSize = 1 << 20,
        }))
        using (var hashing = new HashingStream(file, hash))
        {
            write(hashing);
            hashing.Flush();
            size = hashing.Length;
        }

        var hex = Convert.ToHexStringLower(hash.GetHashAndReset());
        File.Move(temporary, Path.Combine(blobs, hex), overwrite: true);
        return ("sha256:" + hex, size);
    }

    /// <summary>
    /// Reads the export at <paramref name="source"/> into <paramref name="keptDirectory"/>'s image tree
    /// (which must not exist) and returns its description, or refuses it (INVALID_ARGUMENT, naming
    /// why) leaving nothing behind. <paramref name="nodeCriu"/> is this node's CRIU version.
    /// </summary>
    public static KeptCheckpoint Import(string source, string relativePath, string? expectedDigest, string keptDirectory, string nodeCriu)
    {
        var indexPath = Path.Combine(source, IndexFile);
        if (!Directory.Exists(source) || !File.Exists(indexPath))
        {
            throw new CheckpointException(StatusCode.NotFound, $"the archive storage holds no checkpoint export at {relativePath} (no {IndexFile})");
        }

        var indexBytes = ReadDocument(indexPath, IndexFile);
        var indexDigest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(indexBytes));
        if (!string.IsNullOrEmpty(expectedDigest) && !string.Equals(expectedDigest, indexDigest, StringComparison.Ordinal))
        {
            throw Refused(relativePath, $"its {IndexFile} has digest {indexDigest}, not the {expectedDigest} asked for");
        }

        var images = Path.Combine(keptDirectory, KeptCheckpoints.ImagesDirectory);
        try
        {
            var index = ParseObject(indexBytes, IndexFile, relativePath);
            var entries = index["manifests"] as JsonArray ?? throw Refused(relativePath, $"{IndexFile} lists no manifests");
            if (entries.Count is 0 or > 64)
            {
                throw Refused(relativePath, $"{IndexFile} lists {entries.Count} manifests (1 to 64 expected, one per container)");
            }

            Directory.CreateDirectory(images);
            KeptCheckpoint? description = null;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in entries)
            {
                var manifestRef = entry as JsonObject ?? throw Refused(relativePath, $"{IndexFile} has a manifest entry that is not an object");
                var container = Text(manifestRef["annotations"]?[RefNameAnnotation]) ?? throw Refused(relativePath, $"a manifest in {IndexFile} has no {RefNameAnnotation}");
                if (!ArchiveRules.IsContainerName(container) || !seen.Add(container))
                {
                    throw Refused(relativePath, $"{IndexFile} names container '{Shorten(container)}' twice or with a name that is not a container's");
                }

                var manifest = ParseObject(ReadBlob(source, manifestRef, ManifestMediaType, relativePath), "a manifest", relativePath);
                var layers = manifest["layers"] as JsonArray;
                if (layers is not { Count: 1 } || layers[0] is not JsonObject layerRef)
                {
                    throw Refused(relativePath, $"the image of container {container} does not have exactly one layer");
                }

                var layerPath = VerifyBlob(source, layerRef, LayerMediaType, relativePath);
                var layerDescription = ExtractLayer(layerPath, images, container, relativePath);
                var annotations = (manifest["annotations"] as JsonObject)?.ToDictionary(a => a.Key, a => Text(a.Value) ?? "", StringComparer.Ordinal) ?? [];
                if (ArchiveRules.Disagreement(annotations, layerDescription, container) is { } tampered)
                {
                    throw Refused(relativePath, $"the image of container {container} was altered: {tampered}");
                }

                if (description is not null && description.CheckpointId != layerDescription.CheckpointId)
                {
                    throw Refused(relativePath, "its images come from different checkpoints");
                }

                description ??= layerDescription;
            }

            var kept = description!;
            if (!kept.Containers.Select(c => c.Name).Order(StringComparer.Ordinal).SequenceEqual(seen.Order(StringComparer.Ordinal)))
            {
                throw Refused(relativePath, $"it holds images of containers {string.Join(", ", seen.Order(StringComparer.Ordinal))}, its description names {string.Join(", ", kept.Containers.Select(c => c.Name))}");
            }

            if (ArchiveRules.WhyNotRestorable(kept.Node?.Criu?.Version, nodeCriu) is { } why)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"checkpoint export {relativePath} cannot be restored here: {why}");
            }

            var manifestOfFiles = ImageSender.BuildManifest(images);
            foreach (var container in kept.Containers)
            {
                var digest = KeptCheckpoints.Describe(container.Name, container.Image, manifestOfFiles).Digest;
                if (digest != container.Digest)
                {
                    throw Refused(relativePath, $"the images of container {container.Name} are not those the checkpoint was taken with (digest {digest}, recorded {container.Digest})");
                }
            }

            kept.ImportedFrom = new CheckpointExport { Path = relativePath, Digest = indexDigest, SizeBytes = (ulong)manifestOfFiles.Files.Sum(f => (long)f.Size) };
            return kept;
        }
        catch (Exception e)
        {
            // nothing of a refused export stays behind
            if (Directory.Exists(images))
            {
                Directory.Delete(images, recursive: true);
            }

            if (e is InvalidDataException or JsonException or InvalidProtocolBufferException or FormatException or InvalidJsonException or InvalidOperationException)
            {
                throw Refused(relativePath, e.Message);
            }

            throw;
        }
    }

    private static CheckpointException Refused(string path, string why) => new(StatusCode.InvalidArgument, $"checkpoint export {path} is refused: {why}");

    private static string Shorten(string value) => value.Length <= 64 ? value : value[..64] + "...";

    private static string? Text(JsonNode? node) => node is JsonValue value && value.TryGetValue<string>(out var text) ? text : null;

    private static JsonObject ParseObject(byte[] bytes, string what, string path) =>
        JsonNode.Parse(bytes) as JsonObject ?? throw Refused(path, $"{what} is not a JSON object");

    private static byte[] ReadDocument(string file, string what)
    {
        var info = new FileInfo(file);
        if (info.LinkTarget is not null || info.Length > MaxDocumentBytes)
        {
            throw new CheckpointException(StatusCode.InvalidArgument, $"{what} is a link or larger than {MaxDocumentBytes} bytes");
        }

        return File.ReadAllBytes(file);
    }

    private static byte[] ReadBlob(string source, JsonObject descriptor, string mediaType, string path)
    {
        var file = VerifyBlob(source, descriptor, mediaType, path);
        return ReadDocument(file, "a manifest");
    }

    /// <summary>The blob a descriptor names, checked: its media type, a regular file of the stated size whose SHA-256 is its name.</summary>
    private static string VerifyBlob(string source, JsonObject descriptor, string mediaType, string path)
    {
        var digest = Text(descriptor["digest"]) ?? "";
        if (Text(descriptor["mediaType"]) != mediaType)
        {
            throw Refused(path, $"a descriptor has media type '{Shorten(Text(descriptor["mediaType"]) ?? "")}', {mediaType} expected");
        }

        if (!ArchiveRules.IsSha256Digest(digest))
        {
            throw Refused(path, $"a descriptor's digest '{Shorten(digest)}' is not sha256:<64 hex digits>");
        }

        long size = descriptor["size"] is JsonValue value && value.TryGetValue<long>(out var s) ? s : -1;
        var file = Path.Combine(source, "blobs", "sha256", digest["sha256:".Length..]);
        var info = new FileInfo(file);
        if (!info.Exists || info.LinkTarget is not null)
        {
            throw Refused(path, $"blob {digest} is missing (or is a link)");
        }

        if (info.Length != size)
        {
            throw Refused(path, $"blob {digest} holds {info.Length} bytes, its descriptor says {size} (truncated or replaced)");
        }

        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        var actual = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(stream));
        if (actual != digest)
        {
            throw Refused(path, $"blob {digest} does not match its digest (its content hashes to {actual})");
        }

        return file;
    }

    /// <summary>Unpacks one container's layer into the image tree; returns the description it carries.</summary>
    private static KeptCheckpoint ExtractLayer(string layer, string images, string container, string path)
    {
        KeptCheckpoint? description = null;
        using var stream = new FileStream(layer, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        using var tar = new TarReader(stream);
        while (tar.GetNextEntry() is { } entry)
        {
            if (entry.EntryType is TarEntryType.GlobalExtendedAttributes)
            {
                continue;
            }

            var name = entry.Name.StartsWith("./", StringComparison.Ordinal) ? entry.Name[2..] : entry.Name;
            bool directory = entry.EntryType == TarEntryType.Directory;
            if (!directory && entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile))
            {
                throw Refused(path, $"the layer of container {container} holds '{Shorten(name)}' of type {entry.EntryType} (only files and directories are accepted)");
            }

            var target = ArchiveRules.Place(name.TrimEnd('/'), container, out var why);
            if (why is not null)
            {
                throw Refused(path, $"the layer of container {container} holds {why}");
            }

            if (target == ArchiveRules.Description)
            {
                if (entry.Length > MaxDocumentBytes || entry.DataStream is null)
                {
                    throw Refused(path, $"the description in the layer of container {container} is empty or larger than {MaxDocumentBytes} bytes");
                }

                using var reader = new StreamReader(entry.DataStream, Encoding.UTF8);
                description = KeptCheckpoint.Parser.ParseJson(reader.ReadToEnd());
                continue;
            }

            if (target is null)
            {
                continue; // the runtimes' files, rebuilt on every export
            }

            var full = TransferPaths.Confine(images, target, out var reason) ?? throw Refused(path, $"an entry that escapes the checkpoint ({reason})");
            if (directory)
            {
                Directory.CreateDirectory(full, PrivateDirectory);
                continue;
            }

            Directory.CreateDirectory(Path.GetDirectoryName(full)!, PrivateDirectory);
            if (File.Exists(full))
            {
                throw Refused(path, $"the layer of container {container} holds '{Shorten(name)}' twice");
            }

            using var output = new FileStream(full, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite });
            entry.DataStream?.CopyTo(output);
        }

        return description ?? throw Refused(path, $"the layer of container {container} has no {DescriptionEntry} (not a checkpoint this project exported)");
    }
}

/// <summary>The decisions about an archive's contents, as pure functions.</summary>
public static class ArchiveRules
{
    /// <summary>What <see cref="Place"/> returns for the description entry.</summary>
    public const string Description = "\0description";

    private static readonly HashSet<string> RuntimeFiles = new(StringComparer.Ordinal) { "config.dump", "spec.dump", "status.dump", "stats-dump", "dump.log", "volumes" };

    /// <summary>
    /// Where a layer entry goes in the image tree (relative), null for the runtimes' own files that are
    /// not kept, or <see cref="Description"/>; <paramref name="why"/> says why an entry is refused.
    /// </summary>
    public static string? Place(string name, string container, out string? why)
    {
        ArgumentNullException.ThrowIfNull(name);
        why = null;
        if (name == CheckpointArchive.DescriptionEntry)
        {
            return Description;
        }

        if (RuntimeFiles.Contains(name))
        {
            return null;
        }

        if (name == "checkpoint")
        {
            return StagingLayout.FinalImages(container);
        }

        if (name.StartsWith("checkpoint/", StringComparison.Ordinal) && IsPlainName(name["checkpoint/".Length..]))
        {
            return StagingLayout.FinalImages(container) + "/" + name["checkpoint/".Length..];
        }

        if (name == "rootfs-diff.tar")
        {
            return StagingLayout.RootfsArchive(container);
        }

        if (name.StartsWith("volumes/", StringComparison.Ordinal) && name.EndsWith(".tar", StringComparison.Ordinal) && IsPlainName(name["volumes/".Length..]))
        {
            return name;
        }

        why = $"an unexpected entry '{(name.Length <= 64 ? name : name[..64] + "...").Replace('\0', '?')}'";
        return null;
    }

    /// <summary>One path component: no separators, not "." or "..", no NUL.</summary>
    public static bool IsPlainName(string name) =>
        name.Length is > 0 and <= 255 && name is not "." and not ".." && !name.Contains('/', StringComparison.Ordinal) && !name.Contains('\0', StringComparison.Ordinal);

    /// <summary>A Kubernetes container name (a DNS label).</summary>
    public static bool IsContainerName(string name) =>
        name.Length is > 0 and <= 63 && name.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '-') && name[0] != '-' && name[^1] != '-';

    public static bool IsSha256Digest(string digest) =>
        digest.Length == 71 && digest.StartsWith("sha256:", StringComparison.Ordinal) && digest[7..].All(c => c is (>= '0' and <= '9') or (>= 'a' and <= 'f'));

    /// <summary>How an image's annotations disagree with the description its layer carries, or null when they agree.</summary>
    public static string? Disagreement(IReadOnlyDictionary<string, string> annotations, KeptCheckpoint description, string container)
    {
        ArgumentNullException.ThrowIfNull(annotations);
        ArgumentNullException.ThrowIfNull(description);
        var image = description.Containers.FirstOrDefault(c => c.Name == container);
        if (image is null)
        {
            return $"its description names no container {container}";
        }

        var expected = new (string Key, string Value)[]
        {
            (CheckpointArchive.ContainerAnnotation, container),
            (CheckpointArchive.CrioContainerAnnotation, container),
            (CheckpointArchive.PodAnnotation, description.Pod?.Name ?? ""),
            (CheckpointArchive.NamespaceAnnotation, description.Pod?.Namespace ?? ""),
            (CheckpointArchive.ImageAnnotation, image.Image),
            (CheckpointArchive.CriuVersionAnnotation, description.Node?.Criu?.Version ?? ""),
            (CheckpointArchive.KernelAnnotation, description.Node?.Kernel?.Release ?? ""),
            (CheckpointArchive.CheckpointIdAnnotation, description.CheckpointId),
        };
        foreach (var (key, value) in expected)
        {
            var found = annotations.TryGetValue(key, out var v) ? v : null;
            if (found != value)
            {
                return $"annotation {key} is '{found ?? "(missing)"}', its description says '{value}'";
            }
        }

        return null;
    }

    /// <summary>
    /// Why a node with CRIU <paramref name="nodeCriu"/> cannot restore images CRIU <paramref name="imageCriu"/>
    /// wrote (null: it can): the images' CRIU must be a known version (major.minor[.sub]) no newer than the
    /// node's, and of the same major version (CRIU keeps its image format within one).
    /// </summary>
    public static string? WhyNotRestorable(string? imageCriu, string? nodeCriu)
    {
        if (!TryParse(imageCriu, out var image))
        {
            return $"the images were written by an unknown CRIU version ('{imageCriu}')";
        }

        if (!TryParse(nodeCriu, out var node))
        {
            return $"this node's CRIU version is unknown ('{nodeCriu}')";
        }

        if (image.Major != node.Major)
        {
            return $"the images were written by CRIU {imageCriu}, this node has CRIU {nodeCriu} (another major version)";
        }

        return image > node ? $"the images were written by CRIU {imageCriu}, newer than this node's {nodeCriu}" : null;
    }

    private static bool TryParse(string? text, out Version version)
    {
        version = new Version();
        var parts = (text ?? "").Split('.');
        return parts.Length is 2 or 3 && parts.All(p => p.Length is > 0 and < 6 && p.All(char.IsAsciiDigit)) && Version.TryParse(text, out version!);
    }
}

/// <summary>A write-only stream that hashes what passes through it on the way to another.</summary>
internal sealed class HashingStream(Stream inner, IncrementalHash hash) : Stream
{
    private long _length;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => _length;

    public override long Position { get => _length; set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        hash.AppendData(buffer);
        inner.Write(buffer);
        _length += buffer.Length;
    }

    public override void Flush() => inner.Flush();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}

using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Grpc.Core;
using Migrate.Cri;
using Migrate.Cri.V1;
using Microsoft.Extensions.Options;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The CRI path's I/O: a container checkpointed by its own runtime (CRI CheckpointContainer, which
/// writes a checkpoint archive), the archive published as a checkpoint image (one uncompressed layer,
/// the checkpoint annotations containerd and CRI-O look for) in the node's checkpoint registry, and
/// such images deleted again.
/// </summary>
public sealed class CriCheckpointer(CriClient cri, IOptions<AgentOptions> options)
{
    private static readonly HttpClient Http = new(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(2) }) { Timeout = TimeSpan.FromMinutes(30) };

    private readonly string? _registry = options.Value.CheckpointRegistry;

    /// <summary>How long the runtime may take for one container's checkpoint.</summary>
    public static TimeSpan CheckpointTimeout { get; } = TimeSpan.FromMinutes(5);

    /// <summary>This node's CRI path, as its runtime and configuration allow it.</summary>
    public async Task<Agent.V1.CriCheckpointInfo> SupportAsync(CancellationToken cancellationToken)
    {
        var version = await cri.Runtime.VersionAsync(new VersionRequest(), deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: cancellationToken);
        return CriCheckpointSupport.Evaluate(version.RuntimeName, version.RuntimeVersion, _registry);
    }

    /// <summary>The registry configured, or a refusal naming the setting.</summary>
    public CheckpointRegistry Registry
    {
        get
        {
            if (string.IsNullOrEmpty(_registry))
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"node {options.Value.NodeName} has no checkpoint registry (Agent:CheckpointRegistry): the CRI path publishes its checkpoints as images there");
            }

            try
            {
                return CheckpointRegistry.Parse(_registry);
            }
            catch (ArgumentException e)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, e.Message);
            }
        }
    }

    /// <summary>
    /// Why the target's runtime could not restore this container's checkpoint, or null: it pulls the
    /// image the checkpoint was taken from by the digest the source's runtime knows it under
    /// (NAME@sha256:...), which an image never pulled from a registry does not have.
    /// </summary>
    public async Task<string?> WhyNotPullableAsync(ContainerRecord container, CancellationToken cancellationToken)
    {
        var status = await cri.Runtime.ContainerStatusAsync(new ContainerStatusRequest { ContainerId = container.ContainerId }, deadline: DateTime.UtcNow.AddSeconds(10),
            cancellationToken: cancellationToken);
        var reference = status.Status?.ImageRef ?? "";
        return reference.Contains('@', StringComparison.Ordinal) && !reference.StartsWith("sha256:", StringComparison.Ordinal)
            ? null
            : $"the image of container {container.Name} ({container.Image}) is known on this node only as {reference}, not by a registry digest: the target's runtime pulls the checkpoint's base image by digest, so it must have been pulled from a registry";
    }

    /// <summary>
    /// Freezes a container's task through containerd (its shim pauses it, so the shim's state says
    /// paused: the runtime's checkpoint then neither pauses it again nor resumes it afterwards).
    /// </summary>
    public async Task PauseAsync(ContainerRecord container, CancellationToken cancellationToken) =>
        await cri.Tasks.PauseAsync(new Cri.Containerd.Tasks.PauseTaskRequest { ContainerId = container.ContainerId }, CriClient.ContainerdHeaders,
            DateTime.UtcNow.AddSeconds(30), cancellationToken);

    /// <summary>Thaws a container paused through containerd; one that is not paused (or gone) is left as it is. Returns what could not be done, or null.</summary>
    public async Task<string?> ResumeAsync(ContainerRecord container)
    {
        try
        {
            await cri.Tasks.ResumeAsync(new Cri.Containerd.Tasks.ResumeTaskRequest { ContainerId = container.ContainerId }, CriClient.ContainerdHeaders, DateTime.UtcNow.AddSeconds(30));
            return null;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound || e.Status.Detail.Contains("cannot resume a running", StringComparison.Ordinal))
        {
            return null;
        }
        catch (RpcException e)
        {
            return $"container {container.Name} could not be resumed through containerd: {e.Status.Detail}";
        }
    }

    /// <summary>Checkpoints a (frozen) container through its runtime into <paramref name="archive"/> and publishes it; returns where.</summary>
    public async Task<CheckpointImageRecord> CheckpointAsync(MigrationRecord record, ContainerRecord container, string archive, CancellationToken cancellationToken)
    {
        var registry = Registry;
        var clock = Stopwatch.StartNew();
        // the runtime opens the location without truncating it: nothing may be there
        File.Delete(archive);
        await cri.Runtime.CheckpointContainerAsync(new CheckpointContainerRequest
        {
            ContainerId = container.ContainerId,
            Location = archive,
            Timeout = (long)CheckpointTimeout.TotalSeconds,
        }, deadline: DateTime.UtcNow.Add(CheckpointTimeout + TimeSpan.FromSeconds(30)), cancellationToken: cancellationToken);
        var checkpointed = clock.Elapsed;
        long size = new FileInfo(archive).Length;
        string layerDigest;
        await using (var file = File.OpenRead(archive))
        {
            layerDigest = "sha256:" + Convert.ToHexStringLower(await SHA256.HashDataAsync(file, cancellationToken));
        }

        var created = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);
        var annotations = Annotations(record, container, created);
        var config = CheckpointArchive.BlobBytes(CheckpointArchive.ImageConfig(created, annotations, layerDigest));
        var configDigest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(config));
        var manifest = CheckpointArchive.BlobBytes(CheckpointArchive.ImageManifest((configDigest, config.Length), (layerDigest, size), annotations));
        var repository = registry.RepositoryFor(record.Namespace, record.PodName);
        var client = new OciRegistryClient(Http, registry.BaseAddress, repository);
        await client.PushBlobAsync(layerDigest, size, () => File.OpenRead(archive), cancellationToken);
        await client.PushBlobAsync(configDigest, config.Length, () => new MemoryStream(config, writable: false), cancellationToken);
        var digest = await client.PushManifestAsync(Tag(record.MigrationId, container.Name), manifest, cancellationToken);
        return new CheckpointImageRecord(container.Name, $"{registry.Host}/{repository}@{digest}", registry.BaseAddress.ToString(), repository, digest, (ulong)size,
            Millis(checkpointed), Millis(clock.Elapsed - checkpointed));
    }

    /// <summary>Deletes a published checkpoint image (its manifest; the registry's garbage collection takes the blobs).</summary>
    public static Task DeleteAsync(CheckpointImageRecord image, CancellationToken cancellationToken) =>
        new OciRegistryClient(Http, new Uri(image.Registry), image.Repository).DeleteManifestAsync(image.Digest, cancellationToken);

    /// <summary>The tag an image is pushed under: container and migration (each a DNS label, so a valid tag of at most 127 characters).</summary>
    internal static string Tag(string migrationId, string container) => $"{container}-{migrationId}";

    internal static Dictionary<string, string> Annotations(MigrationRecord record, ContainerRecord container, string created) => new(StringComparer.Ordinal)
    {
        [CheckpointArchive.ContainerAnnotation] = container.Name,
        [CheckpointArchive.CrioContainerAnnotation] = container.Name,
        [CheckpointArchive.PodAnnotation] = record.PodName,
        [CheckpointArchive.NamespaceAnnotation] = record.Namespace,
        [CheckpointArchive.ImageAnnotation] = container.Image,
        [CheckpointArchive.CreatedAnnotation] = created,
        [CheckpointArchive.MigrationAnnotation] = record.MigrationId,
    };

    private static uint Millis(TimeSpan elapsed) => (uint)Math.Ceiling(elapsed.TotalMilliseconds);
}

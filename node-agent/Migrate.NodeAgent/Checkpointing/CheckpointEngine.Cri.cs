using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Microsoft.Extensions.Logging;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>The CRI path's final dump: the pod frozen here, each container checkpointed by its runtime and published as a checkpoint image.</summary>
public sealed partial class CheckpointEngine
{
    /// <summary>The CRI path's I/O (null: this agent offers no CRI path).</summary>
    public CriCheckpointer? CriCheckpoints { get; init; }

    /// <summary>
    /// Why this migration's pod cannot take the CRI path, or null: the runtime's checkpoint carries
    /// the processes and each container's writable layer, not the pod's emptyDir volumes, and the
    /// replacement gets a new address.
    /// </summary>
    public static string? CriPathRefusal(MigrationRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (record.AddressMove is not null)
        {
            return "the pod keeps its address, which only the RuntimeClass path can move";
        }

        var volume = record.Containers.SelectMany(c => c.Volumes).FirstOrDefault(v => v.Kind == MountKind.EmptyDir);
        return volume is null ? null : $"emptyDir volume {volume.VolumeName} would be lost: a CRI checkpoint carries the processes and the writable layers, not the pod's volumes";
    }

    /// <summary>
    /// Freezes the pod (its downtime starts), has the runtime checkpoint each container and publishes
    /// each archive as a checkpoint image; the pod stays frozen. Any failure thaws it and deletes what
    /// was published.
    /// </summary>
    public async Task<FinalDumpResponse> CriDumpAsync(string migrationId, CancellationToken cancellationToken) =>
        await WithMigrationAsync(migrationId, async record =>
        {
            if (record.Phase == MigrationPhase.Frozen && record.FinalDump is not null)
            {
                return FinalDumpResponse.Parser.ParseJson(record.FinalDump);
            }

            if (record.Phase != MigrationPhase.Prepared)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"migration {record.MigrationId} is {record.Phase}; the CRI path takes one checkpoint of a pod that was not pre-copied");
            }

            var cri = CriCheckpoints ?? throw new CheckpointException(StatusCode.FailedPrecondition, $"the agent on {_options.NodeName} has no CRI path");
            if (CriPathRefusal(record) is { } refusal)
            {
                throw new CheckpointException(StatusCode.FailedPrecondition, $"pod {record.Namespace}/{record.PodName} cannot take the CRI path: {refusal}");
            }

            EnsureUnchanged(record);
            _ = cri.Registry; // refused before anything is frozen
            foreach (var container in record.Containers)
            {
                string? why;
                try
                {
                    why = await cri.WhyNotPullableAsync(container, cancellationToken);
                }
                catch (RpcException e)
                {
                    why = $"the runtime did not describe container {container.Name}: {e.Status.Detail}";
                }

                if (why is not null)
                {
                    throw new CheckpointException(StatusCode.FailedPrecondition, $"pod {record.Namespace}/{record.PodName} cannot take the CRI path: {why}");
                }
            }

            using var activity = AgentTelemetry.Source.StartActivity("checkpoint.cri_dump");
            activity?.SetTag("migration.id", record.MigrationId);
            var response = new FinalDumpResponse();
            var clock = Stopwatch.StartNew();
            var paused = new List<ContainerRecord>();
            var published = new List<CheckpointImageRecord>();
            bool succeeded = false;
            string step = "freezing";
            record.CriPath = true;
            try
            {
                using (AgentTelemetry.Source.StartActivity("checkpoint.freeze"))
                {
                    // the downtime starts here
                    record.Handoff.FrozenUnixMillis = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
                    record.Handoff.Step = HandoffStep.Dumping;
                    record.Save();
                    _events.Changed(record.MigrationId);
                    foreach (var container in record.Containers)
                    {
                        step = $"pausing container {container.Name} through containerd";
                        paused.Add(container);
                        await cri.PauseAsync(container, cancellationToken);
                    }

                    response.FreezeMillis = Millis(clock.Elapsed);
                }

                var dumpStart = clock.Elapsed;
                var directory = Path.Combine(record.StagingDirectory, "cri");
                Directory.CreateDirectory(directory, OwnerOnly);
                foreach (var container in record.Containers)
                {
                    step = $"checkpointing container {container.Name} through the runtime and publishing it";
                    using var span = AgentTelemetry.Source.StartActivity("cri.checkpoint");
                    span?.SetTag("k8s.container.name", container.Name);
                    var image = await cri.CheckpointAsync(record, container, Path.Combine(directory, container.Name + ".tar"), cancellationToken);
                    published.Add(image);
                    response.Containers.Add(new ContainerDump { ContainerName = container.Name, DumpMillis = image.CheckpointMillis + image.PublishMillis, ImageBytes = image.Bytes });
                    LogCriCheckpoint(record.MigrationId, container.Name, image.Bytes, image.CheckpointMillis, image.PublishMillis, image.Image);
                }

                response.DumpMillis = Millis(clock.Elapsed - dumpStart);
                response.FrozenMillis = Millis(clock.Elapsed);
                response.FinalImageBytes = (ulong)published.Sum(i => (long)i.Bytes);
                response.StagedBytes = response.FinalImageBytes;
                record.CheckpointImages = published;
                record.FinalDump = JsonFormatter.Default.Format(response);
                record.Phase = MigrationPhase.Frozen;
                record.Message = $"pod frozen and checkpointed by its runtime: {response.StagedBytes} bytes published as {published.Count} checkpoint image(s), frozen for {response.FrozenMillis} ms so far";
                record.Save();
                AgentTelemetry.FrozenDuration.Record(response.FrozenMillis);
                succeeded = true;
                return response;
            }
            catch (Exception e) when (e is RpcException or HttpRequestException or IOException or InvalidOperationException or UnauthorizedAccessException or TaskCanceledException)
            {
                LogDumpFailed(e, record.MigrationId, step);
                var detail = e is RpcException rpc ? rpc.Status.Detail : e.Message;
                throw new CheckpointException(StatusCode.Internal,
                    $"CRI checkpoint of pod {record.Namespace}/{record.PodName} failed while {step}: {detail.TrimEnd('.')}.", e);
            }
            finally
            {
                if (!succeeded)
                {
                    // never left frozen by a failed checkpoint, nor its images left behind
                    foreach (var container in paused)
                    {
                        if (await cri.ResumeAsync(container) is { } stuck)
                        {
                            LogResumeFailed(record.MigrationId, stuck);
                        }
                    }

                    ThawAll(record);
                    await DeletePublishedAsync(record.MigrationId, published);
                    record.Handoff.Step = HandoffStep.Freezing;
                    record.Message = $"CRI checkpoint failed while {step}; the pod was thawed";
                    record.Save();
                }
            }
        }, cancellationToken);

    /// <summary>Thaws a CRI path's pod through containerd (so that its shim's state agrees), then its cgroups; returns what could not be done, or null.</summary>
    private async Task<string?> ResumeThroughRuntimeAsync(MigrationRecord record)
    {
        string? failure = null;
        if (CriCheckpoints is { } cri)
        {
            foreach (var container in record.Containers)
            {
                if (await cri.ResumeAsync(container) is { } stuck)
                {
                    LogResumeFailed(record.MigrationId, stuck);
                    failure = stuck;
                }
            }
        }

        ThawAll(record);
        return failure;
    }

    /// <summary>Deletes checkpoint images from the registry, each failure logged (the registry keeps that one; the record names it).</summary>
    private async Task<string?> DeletePublishedAsync(string migrationId, IEnumerable<CheckpointImageRecord> images)
    {
        string? failure = null;
        foreach (var image in images)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await CriCheckpointer.DeleteAsync(image, timeout.Token);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or UriFormatException)
            {
                LogImageNotDeleted(e, migrationId, image.Image);
                failure = $"checkpoint image {image.Image} could not be deleted: {e.Message}";
            }
        }

        return failure;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Migration {Migration}: container {Container} checkpointed by its runtime, {Bytes} bytes in {CheckpointMillis} ms, published in {PublishMillis} ms as {Image}")]
    private partial void LogCriCheckpoint(string migration, string container, ulong bytes, uint checkpointMillis, uint publishMillis, string image);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: {Problem}")]
    private partial void LogResumeFailed(string migration, string problem);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Migration {Migration}: checkpoint image {Image} could not be deleted from its registry")]
    private partial void LogImageNotDeleted(Exception e, string migration, string image);
}

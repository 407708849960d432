using System.Diagnostics;
using Migrate.Criu;
using Migrate.Criu.Incremental;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>What a frozen pod's file systems came to: each container's writable layer, its emptyDir volumes.</summary>
/// <param name="RootfsBytes">Per container, in the record's order, its writable layer's archive.</param>
/// <param name="VolumeBytes">The emptyDir volumes' archives together.</param>
/// <param name="Elapsed">The archives' own time.</param>
/// <param name="Overlap">Of that time, what ran before the freeze's next step asked for them.</param>
internal sealed record ArchivedFilesystems(IReadOnlyList<ulong> RootfsBytes, ulong VolumeBytes, TimeSpan Elapsed, TimeSpan Overlap);

/// <summary>
/// The archives of a frozen pod's writable layers and emptyDir volumes (<see cref="FilesystemArchive"/>),
/// made on a thread of their own from the final dump's post-dump on, while CRIU finishes. Not earlier:
/// to read a container's mounts CRIU makes and removes scratch directories in its <c>/tmp</c>, which
/// an archive of the writable layer would catch half made. One instance per freeze, used from the
/// thread that dumps (CRIU's notifications come on it).
/// </summary>
internal sealed class FilesystemArchives(MigrationRecord record, Func<TimeSpan> clock)
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private Task<(ulong[] Rootfs, ulong Volumes, TimeSpan Elapsed)>? _running;
    private TimeSpan _startedAt;

    /// <summary>A handler of CRIU's notifications: the archives begin at a dump's post-dump (once).</summary>
    public bool StartAt(CriuNotification notification)
    {
        if (notification.Action == PreCopySession.PostDumpAction && _running is null)
        {
            _startedAt = clock();
            _running = Task.Run(Archive);
        }

        return true;
    }

    /// <summary>Waits for archives begun and forgets them: whatever comes next (a dump again, a thaw) starts from nothing.</summary>
    public void Settle()
    {
        try
        {
            _running?.Wait();
        }
        catch (AggregateException)
        {
            // what failed is made again, or no longer wanted
        }

        _running = null;
    }

    /// <summary>The archives, waited for; made now when nothing began them. A failed archive throws here.</summary>
    public ArchivedFilesystems Finish()
    {
        var asked = clock();
        if (_running is null)
        {
            var (rootfs, volumes, elapsed) = Archive();
            return new ArchivedFilesystems(rootfs, volumes, elapsed, TimeSpan.Zero);
        }

        var (r, v, e) = _running.GetAwaiter().GetResult();
        var before = asked - _startedAt;
        return new ArchivedFilesystems(r, v, e, before < e ? before : e);
    }

    private (ulong[] Rootfs, ulong Volumes, TimeSpan Elapsed) Archive()
    {
        var stopwatch = Stopwatch.StartNew();
        using var span = AgentTelemetry.Source.StartActivity("checkpoint.capture_filesystem");
        Directory.CreateDirectory(Path.Combine(record.StagingDirectory, "rootfs"), OwnerOnly);
        Directory.CreateDirectory(Path.Combine(record.StagingDirectory, "volumes"), OwnerOnly);
        // the layers and volumes are the runtime's paths: an agent in a container reads them through the runtime's view
        var node = HostFiles.ForContainer(record.Containers[0].Pid);
        var rootfs = new ulong[record.Containers.Count];
        for (int i = 0; i < rootfs.Length; i++)
        {
            var container = record.Containers[i];
            rootfs[i] = Create($"the writable layer of container {container.Name}", node.Open(container.UpperDirectory!),
                Path.Combine(record.StagingDirectory, StagingLayout.RootfsArchive(container.Name)));
        }

        ulong volumes = 0;
        foreach (var volume in record.Containers.SelectMany(c => c.Volumes).Where(v => v.Kind == MountKind.EmptyDir).DistinctBy(v => v.VolumeName))
        {
            volumes += Create($"emptyDir volume {volume.VolumeName}", node.Open(volume.Source), Path.Combine(record.StagingDirectory, StagingLayout.VolumeArchive(volume.VolumeName!)));
        }

        return (rootfs, volumes, stopwatch.Elapsed);
    }

    private static ulong Create(string what, string directory, string archive)
    {
        try
        {
            return (ulong)FilesystemArchive.Create(directory, archive);
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
        {
            throw new IOException($"archiving {what}: {e.Message}", e);
        }
    }
}

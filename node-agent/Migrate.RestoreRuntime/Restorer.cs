using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Migrate.Criu;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Networking;

namespace Migrate.RestoreRuntime;

/// <summary>A container creation marked for restore, read from its bundle's config.json.</summary>
public sealed record RestoreRequest(string MigrationId, string Container, string Bundle, string RootPath, IReadOnlyList<(string Destination, string Source)> Mounts,
    string? NetworkNamespace = null, string? PinnedAddress = null)
{
    /// <summary>The request when the bundle is a pod container (not the sandbox) marked for restore; null otherwise.</summary>
    public static RestoreRequest? TryRead(RuncCommandLine line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var bundle = Path.GetFullPath(line.CommandOption("--bundle", "-b") ?? Directory.GetCurrentDirectory());
        using var config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(bundle, "config.json")));
        var spec = config.RootElement;
        if (!spec.TryGetProperty("annotations", out var annotations)
            || !(annotations.TryGetProperty(Annotations.RestoreFrom, out var migration) || annotations.TryGetProperty(Keys.Deprecated(Annotations.RestoreFrom)!, out migration))
            || !annotations.TryGetProperty("io.kubernetes.cri.container-type", out var type) || type.GetString() != "container")
        {
            return null;
        }

        var name = annotations.TryGetProperty("io.kubernetes.cri.container-name", out var n) ? n.GetString() ?? "" : "";
        var root = spec.GetProperty("root").GetProperty("path").GetString() ?? "rootfs";
        var mounts = new List<(string, string)>();
        if (spec.TryGetProperty("mounts", out var list))
        {
            foreach (var mount in list.EnumerateArray())
            {
                if (mount.TryGetProperty("destination", out var d) && mount.TryGetProperty("source", out var s))
                {
                    mounts.Add((d.GetString() ?? "", s.GetString() ?? ""));
                }
            }
        }

        // the pod sandbox's network namespace, which the container joins (and a kept address moves into)
        string? network = null;
        if (spec.TryGetProperty("linux", out var linux) && linux.TryGetProperty("namespaces", out var namespaces))
        {
            network = namespaces.EnumerateArray()
                .Where(n => n.TryGetProperty("type", out var t) && t.GetString() == "network" && n.TryGetProperty("path", out _))
                .Select(n => n.GetProperty("path").GetString())
                .FirstOrDefault(p => !string.IsNullOrEmpty(p));
        }

        var pinned = annotations.TryGetProperty(Annotations.PinnedAddress, out var pin) ? pin.GetString() : null;
        return new RestoreRequest(migration.GetString() ?? "", name, bundle, Path.GetFullPath(root, bundle), mounts, network, pinned);
    }
}

/// <summary>A restore that cannot go on; the message is what the pod's status will show.</summary>
public sealed class RestoreFailedException(string message) : Exception(message);

/// <summary>
/// Restores a container in place of creating it: checks the staged images against their digests,
/// puts back the captured writable layer (under the overlay mount containerd prepared) and emptyDir
/// contents, then has runc restore the process tree into the new container, with its stdio on the
/// new container's pipes. The container is running afterwards; the later "start" is a no-op.
/// </summary>
public static partial class Restorer
{
    public const string Marker = "podmig.restored";

    /// <summary>In the migration's directory: the address a container of the pod claimed (its CIDR).</summary>
    private const string ClaimedMarker = "network.claimed";
    private const string EmptyDirMarker = "/volumes/kubernetes.io~empty-dir/";


    /// <summary>Whether runc's state of the container says we restored it (so "start" has nothing to do).</summary>
    public static bool IsRestored(RuncCommandLine line)
    {
        ArgumentNullException.ThrowIfNull(line);
        return line.ContainerId is { } id && IsSafeName(id) && File.Exists(Path.Combine(line.GlobalOption("--root") ?? "/run/runc", id, Marker));
    }

    public static int Run(string runc, RuncCommandLine line, RestoreRequest request)
    {
        ArgumentNullException.ThrowIfNull(line);
        ArgumentNullException.ThrowIfNull(request);
        var clock = Stopwatch.StartNew();
        try
        {
            var id = line.ContainerId ?? throw new RestoreFailedException("create names no container id");
            if (!MigrationId().IsMatch(request.MigrationId) || !IsSafeName(request.Container))
            {
                throw new RestoreFailedException($"annotation {Annotations.RestoreFrom}='{request.MigrationId}' (container '{request.Container}') does not name a migration");
            }

            var layout = StagingLayout.FromEnvironment();
            var migration = layout.Incoming(request.MigrationId);
            var files = layout.IncomingFiles(request.MigrationId);
            var staged = Path.Combine(migration, StagingLayout.StagedFile);
            if (!Directory.Exists(migration))
            {
                throw new RestoreFailedException($"the images of migration {request.MigrationId} are not staged on this node (no completed transfer in {migration})");
            }

            // CRIU's version, for a lazy restore's page server: asked now, not while the source is frozen,
            // beside what follows (the replacement says it is ready without waiting for the answer, which the restore joins after the commit)
            (CriuVersion? Version, string Error) criu = default;
            var probe = new Thread(() => criu = ProbeCriu()) { IsBackground = true, Name = "podmig criu probe" };
            probe.Start();

            // a pod pinned to its source's address: its network is locked now, while it waits (nothing flows there yet), not in the downtime;
            // beside the rest: the replacement says it is ready without waiting for the lock's processes, and the restore waits for them after the commit if it must
            var earlyLock = EarlyLock.Start(request);
            // and the address claim's programs started: after the commit they only read what to do
            var (claimAhead, claimAheadNote) = StartClaimAhead(request);
            long claimStartedAt = clock.ElapsedMilliseconds;
            using var claimPrograms = claimAhead;
            var work = Path.Combine(migration, StagingLayout.RestoreWorkDirectory(request.Container));
            try
            {
                if (Directory.Exists(work))
                {
                    // what an earlier attempt left: its helpers, a runc it began, its mounts, then its files
                    LazyRestoreHelpers.StopRecorded(work);
                    _ = GatedRunc.ReleaseLeftover(work);
                    CarriedMountsOnNode.UnmountLeftovers(work);
                    Directory.Delete(work, recursive: true);
                }

                Directory.CreateDirectory(work);
            }
            catch
            {
                // (the threads begun above end before the failure is reported)
                earlyLock.WaitQuietly();
                probe.Join();
                throw;
            }

            // runc begun now, its own preparation done while the source still runs; it waits at the gate for the images
            long workAt = clock.ElapsedMilliseconds;
            using var begun = BeginGated(runc, line, id, request, migration, work);
            var gated = begun;
            long begunAt = clock.ElapsedMilliseconds;
            // for the report: how long the replacement took to be ready for its images, and where that went
            var readyNote = string.Create(CultureInfo.InvariantCulture,
                $"; it was ready for the images {begunAt} ms after runc's create reached it (the claim's programs {claimStartedAt} ms, an earlier attempt's leftovers {workAt - claimStartedAt} ms, runc begun {begunAt - workAt} ms)");
            try
            {
                // the pod's sandbox, network and root file system are ready: wait here for the final images,
                // meanwhile writing back what the rounds staged (the writable layer's unmount would, in the downtime)
                using (FileSystemFlusher.Start(request.RootPath))
                {
                    WaitForCommit(migration, request, WaitLimit());
                }
                clock.Restart();
                bool locked = earlyLock.Join();
                readyNote += earlyLock.Note();
                var (unlock, unlockNote) = earlyLock.TakeUnlock();
                using var unlockAhead = unlock;
                long probing = clock.ElapsedMilliseconds;
                probe.Join();
                readyNote += string.Create(CultureInfo.InvariantCulture, $"; CRIU's version asked beside (after the commit the restore waited {clock.ElapsedMilliseconds - probing} ms more for it)");
                if (!File.Exists(staged))
                {
                    throw new RestoreFailedException($"the images of migration {request.MigrationId} are not staged on this node (no completed transfer in {migration})");
                }

                var images = Path.Combine(files, StagingLayout.FinalImages(request.Container));
                if (!Directory.Exists(images))
                {
                    throw new RestoreFailedException($"migration {request.MigrationId} has no images of container {request.Container}");
                }

                // a lazy restore's helpers start now: the daemon probes the kernel and reads the process
                // tree while the files below are checked and put back (it reads, and serves nothing until
                // the restore below, which only runs once they all passed)
                // (images that cannot be read are left to the digest check, which says what is wrong with them)
                var memory = Path.Combine(files, StagingLayout.LazyMemoryImages(request.Container));
                bool? lazy = LazyMemoryNeeded(images);
                string gateNote = "";
                if (gated is not null)
                {
                    // not at its gate (it failed, or is slow), or begun for the other kind of memory: runc starts again below, after the files
                    long reached = clock.ElapsedMilliseconds;
                    bool atGate = gated.WaitAtGate(GateReachLimit);
                    var why = !atGate ? "it did not reach its gate"
                        : !Mounts.IsMountPoint(CriuRoot(line, id)) ? "its bind of the container's root was not found"
                        : lazy is { } needed ? GatedRunc.Mismatch(gated.Lazy, needed, gated.TcpEstablished, gated.TcpEstablished) : null;
                    if (why is not null)
                    {
                        // (one that is not at its gate is not waited for long: it is killed)
                        EndGated(gated, runc, line, id, atGate ? TimeSpan.FromSeconds(10) : TimeSpan.FromSeconds(1));
                        gated = null;
                        gateNote = string.Create(CultureInfo.InvariantCulture, $" (the runc begun ahead was stopped in {clock.ElapsedMilliseconds - reached} ms: {why})");
                    }
                }

                var helpers = lazy == true ? BeginLazyHelpers(criu, images, memory, work, request) : null;
                try
                {
                    return RestoreCommitted(runc, line, request, clock, id, migration, files, staged, images, work, locked, (claimAhead, claimAheadNote), (unlock, unlockNote), gated, gateNote, readyNote,
                        () => helpers ?? (lazy is null && LazyRestoreHelpers.Needed(images) ? BeginLazyHelpers(criu, images, memory, work, request) : null));
                }
                catch
                {
                    // helpers begun for a restore that did not happen
                    LazyRestoreHelpers.StopRecorded(work);
                    throw;
                }
            }
            catch when (begun is not null)
            {
                EndGated(begun, runc, line, id, TimeSpan.FromSeconds(10));
                throw;
            }
            finally
            {
                earlyLock.WaitQuietly();
                probe.Join();
            }
        }
        catch (Exception e) when (e is RestoreFailedException or IOException or UnauthorizedAccessException or JsonException or InvalidOperationException)
        {
            var message = e is RestoreFailedException ? e.Message : $"restore from migration {request.MigrationId} failed: {e.Message}";
            Log(line, "error", message);
            Console.Error.WriteLine("podmig-runc: " + message);
            Report(request, StagingLayout.RestoreFailedFile(request.Container), message);
            return 1;
        }
    }

    /// <summary>The restore once the images are committed and found: files checked and put back, the address claimed, runc restore.</summary>
    private static int RestoreCommitted(string runc, RuncCommandLine line, RestoreRequest request, Stopwatch clock, string id, string migration, string files, string staged,
        string images, string work, bool locked, (CommandsAhead? Programs, string Note) claimAhead, (PreparedNetworkChange? Change, string Note) unlock, GatedRunc? gated, string gateNote, string readyNote, Func<LazyRestoreHelpers?> lazyHelpers)
    {
        var volumes = request.Mounts
            .Select(m => (m.Source, Volume: VolumeName(m.Source)))
            .Where(m => m.Volume is not null)
            .ToList();
        var needed = NeededFiles(request.Container, volumes.Select(v => v.Volume!).ToHashSet());
        // the staged address first, checked alone: it is claimed (in the pod's network namespace) while
        // the other files are checked and put back (under its root), neither waiting for the other inside the downtime
        var addressChecked = Verify(staged, files, path => path == AddressMove.FileName);
        var move = ReadAddressMove(files, request);
        if (move is null && locked)
        {
            // pinned, but the source moved no address (an older agent): this pod keeps the address its sandbox was given
            new PodNetworkLock().Unlock(request.NetworkNamespace!);
            locked = false;
        }

        var claim = move is null ? null : AddressClaim.Start(() => ClaimAddress(migration, move, request, locked, claimAhead.Programs), clock);
        (int Files, long Bytes, string First) rechecked;
        long checkedAt;
        string layerNote;
        CarriedMountsOnNode? carried = null;
        try
        {
            var others = Verify(staged, files, path => path != AddressMove.FileName && needed(path));
            rechecked = (addressChecked.Files + others.Files, addressChecked.Bytes + others.Bytes, addressChecked.First.Length > 0 ? addressChecked.First : others.First);
            checkedAt = clock.ElapsedMilliseconds;
            layerNote = PutBackFiles(request, migration, files, volumes, gated is null ? null : CriuRoot(line, id));
            // (after the digests: what the source carried is built from checked files only)
            carried = CarriedMountsOnNode.Build(images, work);
        }
        catch
        {
            carried?.Dispose();
            if (claim?.Wait() is { } alsoFailed)
            {
                // (it gave the address back itself)
                Console.Error.WriteLine($"podmig-runc: the address claim failed too: {alsoFailed.Message}");
            }
            else if (claim is { ClaimedHere: true })
            {
                GiveUpAddress(migration, move!, request);
            }

            throw;
        }

        // (the carried mounts leave the node when the restore ended, failed or not: the container keeps its own binds)
        using var built = carried;
        long prepared = clock.ElapsedMilliseconds, claimed = prepared;
        if (claim is not null)
        {
            if (claim.Wait() is { } failed)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failed);
            }

            claimed = Math.Max(prepared, claim.DoneAt);
        }

        var helpers = lazyHelpers();
        bool lazy = helpers is not null;
        if (helpers is not null)
        {
            WaitForLazyHelpers(helpers, request);
        }

        long helpersReady = clock.ElapsedMilliseconds;
        string ahead = gateNote;
        if (gated is not null && GatedRunc.Mismatch(gated.Lazy, lazy, gated.TcpEstablished, claim is not null) is { } mismatch)
        {
            EndGated(gated, runc, line, id, TimeSpan.FromSeconds(10));
            gated = null;
            ahead = string.Create(CultureInfo.InvariantCulture, $" (the runc begun ahead was stopped in {clock.ElapsedMilliseconds - helpersReady} ms: {mismatch})");
            helpersReady = clock.ElapsedMilliseconds;
        }

        int exit;
        var restoredImages = images;
        if (gated is not null)
        {
            // the source's connections come back in repair mode, on the address claimed under the lock
            // (when one moved); CRIU reads the carried mounts' configuration at its start
            try
            {
                exit = gated.Open(images, GateReadLimit);
            }
            catch (Exception e) when (e is RestoreFailedException or IOException or UnauthorizedAccessException)
            {
                // (the caller has the runc end; the address leaves as after any failed restore)
                if (move is not null)
                {
                    GiveUpAddress(migration, move, request);
                }

                throw;
            }

            restoredImages = gated.ImagesDirectory;
            ahead = string.Create(CultureInfo.InvariantCulture, $" (begun ahead: the images linked in {gated.LinkMillis:0.0} ms, read {gated.ReadMillis:0.0} ms after)");
        }
        else
        {
            // (the same, runc started only now)
            exit = RunInheritingStdio(runc, RestoreArguments(line, id, images, work, request, claim is not null, lazy),
                carried is null ? null : ("CRIU_CONFIG_FILE", carried.ConfigurationFile));
        }

        long ran = clock.ElapsedMilliseconds;
        if (exit != 0)
        {
            if (move is not null)
            {
                GiveUpAddress(migration, move, request);
            }

            LazyRestoreHelpers.StopRecorded(work);
            // (a runc killed in its restore leaves its bind of the root, through which runc's delete would remove the root's files)
            DetachCriuRoot(line, id);
            RunQuietly(runc, [.. line.Global, "delete", "--force", id]);
            throw new RestoreFailedException($"runc restore of container {request.Container} from migration {request.MigrationId} failed ({exit}): {CriuErrors(work)}; the images stay in {migration} for diagnosis");
        }

        File.WriteAllText(Path.Combine(line.GlobalOption("--root") ?? "/run/runc", id, Marker), request.MigrationId);
        long done = clock.ElapsedMilliseconds;
        // the moment the process runs, taken before CRIU's log is read for the figures below
        long restoredAt = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var steps = string.Create(CultureInfo.InvariantCulture,
            $"files {prepared} ms{Rechecked(rechecked)} (checked {checkedAt} ms{layerNote}), address {(claim is null ? 0 : claim.DoneAt - claim.StartedAt)} ms at once from {(claim is null ? 0 : claim.StartedAt)} ms{(claim is null ? "" : claimAhead.Programs is { Waiting: 0 } ? " (its programs started ahead)" : claimAhead.Note)}, {claimed - prepared} ms of it after the files, lazy-pages helpers {helpersReady - claimed} ms, {CarriedPart(carried)}runc restore {ran - helpersReady} ms{ahead}{CriuPart(work, restoredImages)}{readyNote}");
        var restored = new RestoreReport(restoredAt, done, lazy, steps);
        WholeFile.WriteText(Path.Combine(migration, StagingLayout.RestoredFile(request.Container)), JsonSerializer.Serialize(restored, RestoreReportJson.Default.RestoreReport));
        if (move is not null && move.Containers.All(c => File.Exists(Path.Combine(migration, StagingLayout.RestoredFile(c))))
            && File.Exists(Path.Combine(migration, StagingLayout.HoldNetworkFile)))
        {
            // a member of a group: no traffic until every member is restored; the node's agent lifts the lock when the group says so
            File.WriteAllText(Path.Combine(migration, StagingLayout.NetworkHeldFile), request.NetworkNamespace + "\n");
            steps += ", network held for the group";
        }
        else if (move is not null && move.Containers.All(c => File.Exists(Path.Combine(migration, StagingLayout.RestoredFile(c)))))
        {
            // every container of the pod holds its sockets again: traffic may flow, and the segment learns where the address is
            try
            {
                OpenAddress(move, request, unlock.Change);
            }
            catch (RestoreFailedException)
            {
                GiveUpAddress(migration, move, request);
                throw;
            }

            steps += string.Create(CultureInfo.InvariantCulture, $", unlock {clock.ElapsedMilliseconds - done} ms{unlock.Note}");
        }
        Log(line, "info", string.Create(CultureInfo.InvariantCulture,
            $"podmig-runc: restored container {request.Container} from migration {request.MigrationId} in {done} ms ({steps}){(lazy ? " (memory follows lazily)" : "")}"));
        return 0;
    }

    /// <summary>How long a runc begun ahead may take to read the descriptors once the gate opens (it is there already, normally).</summary>
    private static readonly TimeSpan GateReadLimit = TimeSpan.FromSeconds(30);

    /// <summary>How long a runc begun ahead may take to reach its gate once the images are committed (it is there already, normally).</summary>
    private static readonly TimeSpan GateReachLimit = TimeSpan.FromSeconds(10);

    /// <summary>Set to "off" (in the runtime's environment), every restore starts runc only once the images are in place.</summary>
    public const string GatedVariable = "PODMIG_RUNC_AHEAD";

    /// <summary>runc's restore of container <paramref name="id"/> from <paramref name="images"/>, with the create call's own pid file, console and pivot.</summary>
    public static List<string> RestoreArguments(RuncCommandLine line, string id, string images, string work, RestoreRequest request, bool tcpEstablished, bool lazy)
    {
        ArgumentNullException.ThrowIfNull(line);
        ArgumentNullException.ThrowIfNull(request);
        var arguments = new List<string>(line.Global) { "restore", "--detach", "--image-path", images, "--work-path", work, "--bundle", request.Bundle, "--manage-cgroups-mode", "soft" };
        if (tcpEstablished)
        {
            arguments.Add("--tcp-established");
        }

        if (lazy)
        {
            arguments.Add("--lazy-pages");
        }

        if (line.CommandOption("--pid-file") is { } pidFile)
        {
            arguments.AddRange(["--pid-file", pidFile]);
        }

        if (line.CommandOption("--console-socket") is { } console)
        {
            arguments.AddRange(["--console-socket", console]);
        }

        if (line.HasCommandFlag("--no-pivot"))
        {
            arguments.Add("--no-pivot");
        }

        arguments.Add(id);
        return arguments;
    }

    /// <summary>
    /// runc's restore begun before the images are committed, waiting at its gate (null when they are
    /// committed already, or it is turned off). Its options are taken now: established connections
    /// for a pod pinned to its source's address (only such a pod's address moves), lazy memory when
    /// the operator said the source leaves it lazy (ExpectImages). Images that need other options
    /// (a container whose memory is shared copy-on-write is dumped whole) cost one stopped runc, and
    /// the restore starts runc again.
    /// </summary>
    private static GatedRunc? BeginGated(string runc, RuncCommandLine line, string id, RestoreRequest request, string migration, string work)
    {
        if (Environment.GetEnvironmentVariable(GatedVariable) == "off" || File.Exists(Path.Combine(migration, StagingLayout.CommittedFile)))
        {
            return null;
        }

        bool tcp = !string.IsNullOrEmpty(request.PinnedAddress) && !string.IsNullOrEmpty(request.NetworkNamespace);
        bool lazy = File.Exists(Path.Combine(migration, StagingLayout.LazyMemoryExpectedFile));
        var gate = GatedRunc.GateDirectory(work);
        try
        {
            return GatedRunc.Start(runc, RestoreArguments(line, id, gate, work, request, tcp, lazy), gate, lazy, tcp,
                new Dictionary<string, string>(StringComparer.Ordinal) { ["CRIU_CONFIG_FILE"] = CarriedMountsOnNode.ConfigurationPath(work) });
        }
        catch (IOException e)
        {
            // (the restore starts runc once the images are in place, as without it)
            Console.Error.WriteLine($"podmig-runc: runc's restore could not be begun ahead: {e.Message}");
            if (Directory.Exists(gate))
            {
                Directory.Delete(gate, recursive: true);
            }

            return null;
        }
    }

    /// <summary>A runc begun ahead and not let through: it ends without restoring (within <paramref name="limit"/>, else killed), and whatever it left goes.</summary>
    private static void EndGated(GatedRunc gated, string runc, RuncCommandLine line, string id, TimeSpan limit)
    {
        if (gated.Opened || gated.Aborted)
        {
            return; // it restored, or failed on its own (the caller's failure path cleans up), or was ended already
        }

        try
        {
            if (!gated.Abort(limit))
            {
                Console.Error.WriteLine("podmig-runc: the runc begun ahead did not end by itself; it was killed");
            }
        }
        finally
        {
            // its bind of the container's root (which a runc that ends by itself undoes) before runc's delete, which would remove files through it
            DetachCriuRoot(line, id);
            if (Directory.Exists(Path.Combine(line.GlobalOption("--root") ?? "/run/runc", id)))
            {
                RunQuietly(runc, [.. line.Global, "delete", "--force", id]);
            }
        }
    }

    /// <summary>Where runc binds the container's root for CRIU during a restore.</summary>
    private static string CriuRoot(RuncCommandLine line, string id) => Path.Combine(line.GlobalOption("--root") ?? "/run/runc", id, "criu-root");

    private static void DetachCriuRoot(RuncCommandLine line, string id)
    {
        var root = CriuRoot(line, id);
        if (Directory.Exists(root))
        {
            Mounts.DetachIfMounted(Mounts.RealPath(root) ?? root);
        }
    }

    /// <summary>The captured writable layer put back under the container's root, and the pod's emptyDir volumes (each once for the pod).</summary>
    /// <remarks>
    /// A runc begun ahead has bound the container's root at <paramref name="criuRoot"/> (for CRIU): that
    /// bind goes before the overlay is unmounted (so the old overlay is gone before the new one is
    /// mounted on the same upper directory), and comes back on the new one. A layer without file
    /// content is set in place instead, mounted as it is (<see cref="PutBackMetadataOnly"/>).
    /// </remarks>
    /// <returns>For the report: what was done with the layer, when it was not the usual.</returns>
    private static string PutBackFiles(RestoreRequest request, string migration, string files, List<(string Source, string? Volume)> volumes, string? criuRoot)
    {
        var layer = Path.Combine(files, StagingLayout.RootfsArchive(request.Container));
        string note = "";
        if (File.Exists(layer))
        {
            note = PutBackWritableLayer(request.RootPath, layer, criuRoot);
        }

        foreach (var (source, volume) in volumes)
        {
            // a volume the pod's containers share is put back once, before the first of them
            // runs: unpacking it again for the next container would swap the files under the first
            var archive = Path.Combine(files, StagingLayout.VolumeArchive(volume!));
            var unpacked = Path.Combine(migration, $"volume-{volume}.unpacked");
            if (File.Exists(archive) && !File.Exists(unpacked))
            {
                if (!PutBackMetadataOnly(archive, source))
                {
                    FilesystemArchive.Extract(archive, source);
                }

                File.WriteAllText(unpacked, request.Container + "\n");
            }
        }

        return note;
    }

    /// <summary>
    /// An archive of directories and empty files only (<see cref="MetadataArchive"/>) put back without
    /// <c>tar</c>: each entry made where it is missing and given the owner, mode and times extracting it
    /// would give it, under <paramref name="directory"/> (an overlay's merged view: its upper layer
    /// takes them). False, having done nothing, when the archive holds more, or an entry's place is not
    /// plainly there to take: a part of its path that is a link or not a directory, a place holding
    /// another kind of file or a file with content (these the extraction decides, as always).
    /// </summary>
    private static bool PutBackMetadataOnly(string archive, string directory)
    {
        if (MetadataArchive.Read(archive) is not { } entries)
        {
            return false;
        }

        var listed = entries.Where(e => e.IsDirectory).Select(e => e.Path).ToHashSet(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            if (!Placeable(directory, entry, listed))
            {
                return false;
            }
        }

        Directory.CreateDirectory(directory);
        string PathOf(MetadataEntry e) => e.Path == "." ? directory : Path.Combine(directory, e.Path);
        foreach (var entry in entries)
        {
            // in the archive's order, a directory before what it holds; the mode after the owner: chown clears set-user-ID and set-group-ID
            var path = PathOf(entry);
            if (FileStatus.Of(path) is null)
            {
                Check(entry.IsDirectory ? Posix.Mkdir(path, 0x1C0) : Posix.Mknod(path, FileStatus.Regular | 0x180, 0), entry.IsDirectory ? "mkdir" : "mknod", path);
            }

            Check(Posix.Lchown(path, entry.Owner, entry.Group), "lchown", path);
            Check(Posix.Chmod(path, entry.Mode), "chmod", path);
        }

        // the times last, what a directory holds before the directory: making an entry moves its directory's time
        foreach (var entry in entries.Reverse())
        {
            var path = PathOf(entry);
            var accessed = entry.Accessed ?? entry.Modified;
            var times = new Posix.Timespec[] { new(accessed.Seconds, accessed.Nanoseconds), new(entry.Modified.Seconds, entry.Modified.Nanoseconds) };
            Check(Posix.Utimensat(Posix.AtFdCwd, path, times, Posix.AtSymlinkNoFollow), "utimensat", path);
        }

        return true;

        static void Check(int result, string call, string path)
        {
            if (result != 0)
            {
                throw new IOException($"{call} {path} failed: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(System.Runtime.InteropServices.Marshal.GetLastPInvokeError())}");
            }
        }
    }

    /// <summary>
    /// Whether an entry can be put in place under <paramref name="directory"/> by the calls above: each
    /// directory on its way there (not following links), or made by an earlier entry; the entry itself
    /// missing, or of its own kind (an empty regular file for a file).
    /// </summary>
    private static bool Placeable(string directory, MetadataEntry entry, HashSet<string> listed)
    {
        if (FileStatus.Of(directory) is { } top && top.Type != FileStatus.Directory)
        {
            return false;
        }

        if (entry.Path == ".")
        {
            return true;
        }

        var parts = entry.Path.Split('/');
        for (int i = 1; i < parts.Length; i++)
        {
            var parent = string.Join('/', parts[..i]);
            var status = FileStatus.Of(Path.Combine(directory, parent));
            if (status is null ? !listed.Contains(parent) : status.Value.Type != FileStatus.Directory)
            {
                return false;
            }
        }

        return FileStatus.Of(Path.Combine(directory, entry.Path)) is not { } existing
            || (entry.IsDirectory ? existing.Type == FileStatus.Directory : existing.Type == FileStatus.Regular && existing.Size == 0);
    }

    /// <summary>The address the source released for this pod, when the migration keeps it (network.json among the images).</summary>
    private static AddressMove? ReadAddressMove(string files, RestoreRequest request)
    {
        AddressMove? move;
        try
        {
            move = AddressMove.Read(Path.Combine(files, AddressMove.FileName));
            _ = move?.ToAddress();
            _ = move?.ToRoutes();
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new RestoreFailedException($"the address staged by migration {request.MigrationId} is unreadable: {e.Message}");
        }

        if (move is not null && string.IsNullOrEmpty(request.NetworkNamespace))
        {
            throw new RestoreFailedException($"migration {request.MigrationId} keeps the pod's address, but container {request.Container} names no network namespace to claim it in");
        }

        // the network gave this pod the pinned address; the one moved must be that one (else the store would not know who holds it)
        if (move is not null && move.ToAddress().Address.ToString() != request.PinnedAddress)
        {
            throw new RestoreFailedException($"migration {request.MigrationId} moves address {move.Cidr}, but this pod was pinned to '{request.PinnedAddress}' ({Annotations.PinnedAddress})");
        }

        return move;
    }

    /// <summary>
    /// Locks the replacement's network and puts the source's address (and MAC) on its interface in
    /// place of the one its sandbox was given. Done by the pod's first container to be restored;
    /// both steps are idempotent, so a retried restore repeats them harmlessly. False when an earlier
    /// container of the pod claimed it (this restore did nothing, and has nothing to give back).
    /// </summary>
    private static bool ClaimAddress(string migration, AddressMove move, RestoreRequest request, bool locked, CommandsAhead? ahead)
    {
        var address = move.ToAddress();
        var claimed = Path.Combine(migration, ClaimedMarker);
        if (File.Exists(claimed) && File.ReadAllText(claimed).Trim() == address.Cidr)
        {
            return false; // an earlier container of the pod claimed it: its sockets may be restored already
        }

        try
        {
            if (!locked)
            {
                new PodNetworkLock().Lock(request.NetworkNamespace!);
            }

            new NamespaceStepRunner().Run(request.NetworkNamespace!, AddressHandover.Claim(address, move.ToRoutes()), $"claim address {address.Cidr}", ahead);
            File.WriteAllText(claimed, address.Cidr + "\n");
            return true;
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            GiveUpAddress(migration, move, request);
            throw new RestoreFailedException($"the pod's address {address.Cidr} could not be claimed on this node: {e.Message}");
        }
    }

    /// <summary>
    /// For a pod pinned to its source's address: the address claim's programs (<see cref="AddressHandover.IpBatch"/>,
    /// twice) started inside its namespace while it waits for the commit, and for the report what became of
    /// them; none when it is not pinned, or they could not be started (the claim starts them itself).
    /// </summary>
    private static (CommandsAhead? Programs, string Note) StartClaimAhead(RestoreRequest request)
    {
        if (string.IsNullOrEmpty(request.PinnedAddress) || string.IsNullOrEmpty(request.NetworkNamespace))
        {
            return (null, "");
        }

        try
        {
            var started = CommandsAhead.Start(new NamespaceStepRunner(), request.NetworkNamespace, AddressHandover.IpBatch, 2);
            // (the note for a claim that did not take them: an earlier container of the pod claimed the address)
            return (started, started is null ? "" : " (its programs started ahead, not used)");
        }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return (null, $" (its programs not started ahead: {e.Message})");
        }
    }

    /// <summary>
    /// A pinned replacement's network locked while it waits for its images (nothing flows there yet),
    /// and the unlock's tools started after it (<see cref="TakeUnlock"/>: after the restore they only
    /// read what to do), on a thread of its own: the replacement is ready for its images without waiting for the lock's
    /// processes, and the restore joins the lock after the commit (for a pod whose freeze, dump and
    /// send outlast the lock, it is done by then). A lock that failed, however, is taken for not
    /// locked: the address claim then locks the namespace itself, and fails the restore, saying
    /// why, if it cannot.
    /// </summary>
    private sealed class EarlyLock
    {
        private readonly Thread? _thread;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private bool _locked;
        private long _doneAt;
        private long _waited;
        private string? _failure;
        private PreparedNetworkChange? _unlock;
        private string? _unlockFailure;
        private long _unlockReadyAt;

        private EarlyLock(RestoreRequest request)
        {
            if (string.IsNullOrEmpty(request.PinnedAddress) || string.IsNullOrEmpty(request.NetworkNamespace))
            {
                return; // nothing to lock
            }

            _thread = new Thread(() =>
            {
                try
                {
                    new PodNetworkLock().Lock(request.NetworkNamespace);
                    _locked = true;
                }
                catch (Exception e)
                {
                    // whatever it was, the namespace is taken for not locked: the claim locks it, in the downtime, and says why if it cannot
                    _failure = e.Message;
                }
                finally
                {
                    _doneAt = _clock.ElapsedMilliseconds;
                }

                try
                {
                    // the unlock's tools too, locked or not (the claim locks it then)
                    _unlock = new PodNetworkLock().PrepareUnlock(request.NetworkNamespace);
                }
                catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
                {
                    _unlockFailure = e.Message;
                }
                finally
                {
                    _unlockReadyAt = _clock.ElapsedMilliseconds;
                }
            }) { IsBackground = true, Name = "podmig network lock" };
        }

        public static EarlyLock Start(RestoreRequest request)
        {
            var early = new EarlyLock(request);
            early._thread?.Start();
            return early;
        }

        /// <summary>Waits for the lock; whether the pod's network is locked.</summary>
        public bool Join()
        {
            long joining = _clock.ElapsedMilliseconds;
            _thread?.Join();
            _waited = _clock.ElapsedMilliseconds - joining;
            return _locked;
        }

        /// <summary>
        /// After <see cref="Join"/>: the unlock made ready beside the lock, the caller's to apply or drop
        /// from now on (null when none is: the unlock then starts its tools itself), and for the report why not.
        /// </summary>
        public (PreparedNetworkChange? Unlock, string Note) TakeUnlock()
        {
            var taken = _unlock;
            _unlock = null;
            return (taken, taken is not null ? " (its tools started ahead)" : _unlockFailure is { } why ? $" (its tools not started ahead: {why})" : "");
        }

        /// <summary>
        /// Waits for the lock's thread (done already after <see cref="Join"/>), so that no lock process
        /// outlives a failed restore unseen, and drops an unlock made ready and not taken.
        /// </summary>
        public void WaitQuietly()
        {
            _thread?.Join();
            _unlock?.Dispose();
            _unlock = null;
        }

        /// <summary>For the report, after <see cref="Join"/>: how long the lock took, and how long the restore waited for it after the commit.</summary>
        public string Note() => _thread is null ? "" : string.Create(CultureInfo.InvariantCulture,
            $"; its network lock took {_doneAt} ms beside that{(_failure is null ? "" : $" and failed ({_failure}): made with the claim")}, its unlock's tools started by {_unlockReadyAt} ms (after the commit the restore waited {_waited} ms more for it)");
    }

    /// <summary>After a failed restore: the address leaves this node again, so the source can take it back.</summary>
    private static void GiveUpAddress(string migration, AddressMove move, RestoreRequest request)
    {
        // a retried restore claims it again rather than take it for claimed
        File.Delete(Path.Combine(migration, ClaimedMarker));
        try
        {
            new NamespaceStepRunner().Run(request.NetworkNamespace!, AddressHandover.Release(move.ToAddress()), "give the address back");
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            Console.Error.WriteLine($"podmig-runc: could not give address {move.Cidr} back after a failed restore: {e.Message}");
        }
    }

    /// <summary>
    /// Lifts the replacement's network lock (with the unlock made ready, when there is one) and announces
    /// the address (the announcement runs on without being waited for).
    /// </summary>
    private static void OpenAddress(AddressMove move, RestoreRequest request, PreparedNetworkChange? unlock)
    {
        var address = move.ToAddress();
        try
        {
            if (unlock is not null)
            {
                unlock.Apply();
            }
            else
            {
                new PodNetworkLock().Unlock(request.NetworkNamespace!);
            }
        }
        catch (Exception e) when (e is IOException or ArgumentException)
        {
            throw new RestoreFailedException($"the restored pod's network could not be unlocked: {e.Message}");
        }

        foreach (var step in AddressHandover.Announce(address))
        {
            var command = step.Command.InNetworkNamespace(request.NetworkNamespace!);
            var start = new ProcessStartInfo(command.Program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in command.Arguments)
            {
                start.ArgumentList.Add(argument);
            }

            try
            {
                using var announcing = Process.Start(start);
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                Console.Error.WriteLine($"podmig-runc: could not announce {address.Cidr}: {e.Message}");
            }
        }
    }

    /// <summary>
    /// Starts the page server (this very program, in its serving mode) over the container's staged
    /// memory and CRIU's lazy-pages daemon beside it, in the restore's work directory, where the
    /// restore finds the daemon. The same CRIU as runc's (the one on PATH) runs the daemon.
    /// </summary>
    /// <summary>Whether the final images leave memory to a lazy restore; null when they cannot be read (the digest check that follows says why).</summary>
    private static bool? LazyMemoryNeeded(string images)
    {
        try
        {
            return LazyRestoreHelpers.Needed(images);
        }
        catch (Exception e) when (e is IOException or InvalidDataException)
        {
            return null;
        }
    }

    /// <summary>CRIU's version (null, with the reason, when it cannot be had: only a lazy restore needs it).</summary>
    private static (CriuVersion? Version, string Error) ProbeCriu()
    {
        try
        {
            var text = RunChecked("criu", ["--version"]);
            return CriuVersion.TryParse(text) is { } version ? (version, "") : (null, $"criu --version names no version: {text.Trim()}");
        }
        catch (Exception e) when (e is RestoreFailedException or System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            return (null, e.Message);
        }
    }

    private static LazyRestoreHelpers BeginLazyHelpers((CriuVersion? Version, string Error) criu, string images, string memory, string work, RestoreRequest request)
    {
        if (!Directory.Exists(memory))
        {
            throw new RestoreFailedException($"the final images of container {request.Container} leave memory to a lazy restore, but migration {request.MigrationId} staged no memory set for it");
        }

        var version = criu.Version ?? throw new RestoreFailedException(criu.Error);
        var self = Environment.ProcessPath ?? throw new RestoreFailedException("this program's own path is unknown: it cannot start its page server");
        try
        {
            // pages a post-copy dump left on the source are fetched through this node's agent, which listens in the migration's directory
            var agent = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(work))!, RemotePagesProtocol.SocketName);
            bool criuDaemon = Environment.GetEnvironmentVariable(LazyRestoreHelpers.FillerVariable) == "criu";
            return LazyRestoreHelpers.Begin("criu", version, self, images, memory, work, (agent, request.Container), criuDaemon);
        }
        catch (IOException e)
        {
            throw new RestoreFailedException($"the lazy restore of container {request.Container} could not start its helpers: {e.Message}");
        }
    }

    private static void WaitForLazyHelpers(LazyRestoreHelpers helpers, RestoreRequest request)
    {
        try
        {
            helpers.WaitReady(TimeSpan.FromSeconds(10));
        }
        catch (Exception e) when (e is IOException or TimeoutException)
        {
            throw new RestoreFailedException($"the lazy restore of container {request.Container} could not start its helpers: {e.Message}");
        }
    }

    /// <summary>How long a restore waits for its images to be committed (PODMIG_RESTORE_WAIT_SECONDS, default 100: within the kubelet's 2-minute runtime request timeout).</summary>
    private static TimeSpan WaitLimit() =>
        TimeSpan.FromSeconds(int.TryParse(Environment.GetEnvironmentVariable("PODMIG_RESTORE_WAIT_SECONDS"), NumberStyles.None, CultureInfo.InvariantCulture, out var seconds) && seconds > 0
            ? seconds : 100);

    /// <summary>
    /// Says (restore-&lt;container&gt;.waiting) that the replacement is ready, then waits until the
    /// source's final images are committed and claims the restore (the decision file, written
    /// once: if the migration was aborted first, the restore fails and the source runs on).
    /// </summary>
    private static void WaitForCommit(string migration, RestoreRequest request, TimeSpan limit)
    {
        var waiting = Path.Combine(migration, StagingLayout.RestoreWaitingFile(request.Container));
        var decision = Path.Combine(migration, StagingLayout.DecisionFile);
        var committed = Path.Combine(migration, StagingLayout.CommittedFile);
        File.WriteAllText(waiting, Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        try
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                var decided = RestoreMarkers.Read(decision);
                if (decided == RestoreMarkers.Restore)
                {
                    return; // another container of the pod began it
                }

                if (decided == RestoreMarkers.Abort)
                {
                    throw new RestoreFailedException($"migration {request.MigrationId} was aborted on this node; the source pod runs on");
                }

                if (File.Exists(committed))
                {
                    if (RestoreMarkers.Claim(decision, RestoreMarkers.Restore) != RestoreMarkers.Restore)
                    {
                        throw new RestoreFailedException($"migration {request.MigrationId} was aborted on this node; the source pod runs on");
                    }

                    return;
                }

                if (!Directory.Exists(migration))
                {
                    throw new RestoreFailedException($"the images of migration {request.MigrationId} were removed from this node while the restore waited for them");
                }

                if (clock.Elapsed > limit)
                {
                    throw new RestoreFailedException($"the images of migration {request.MigrationId} were not committed within {limit.TotalSeconds:0} seconds");
                }

                Thread.Sleep(5);
            }
        }
        finally
        {
            File.Delete(waiting);
        }
    }

    private static void Report(RestoreRequest request, string file, string text)
    {
        try
        {
            var migration = StagingLayout.FromEnvironment().Incoming(request.MigrationId);
            if (Directory.Exists(migration) && MigrationId().IsMatch(request.MigrationId) && IsSafeName(request.Container))
            {
                // the agent reads it as soon as its name appears (inotify)
                WholeFile.WriteText(Path.Combine(migration, file), text);
            }
        }
        catch (IOException)
        {
            // the report is for the agent; the error is in runc's log either way
        }
    }

    /// <summary>For the report: the files whose stamp had changed since they were staged, hashed again in the downtime.</summary>
    private static string Rechecked((int Files, long Bytes, string First) rechecked) => rechecked.Files == 0 ? "" :
        string.Create(CultureInfo.InvariantCulture, $" ({rechecked.Files} file(s) of {rechecked.Bytes / 1e6:0.#} MB hashed again, as their stamps changed since staging: {rechecked.First})");

    /// <summary>The staged files a container's restore reads: its images, the staged address, its writable layer, the pod's emptyDir volumes it mounts.</summary>
    private static Func<string, bool> NeededFiles(string container, HashSet<string> volumes) => path =>
        path.StartsWith($"containers/{container}/", StringComparison.Ordinal)
        || path == AddressMove.FileName
        || path == $"rootfs/{container}.tar"
        || (path.StartsWith("volumes/", StringComparison.Ordinal) && volumes.Contains(Path.GetFileNameWithoutExtension(path)));

    /// <summary>
    /// Checks the staged files <paramref name="needed"/> names: each must match the digest the transfer
    /// verified; a file whose stamp (size, inode, change time) is still the one recorded at that
    /// verification is unchanged since, any other is hashed again. Returns those hashed again and the
    /// first of them with its stamps.
    /// </summary>
    private static (int Files, long Bytes, string First) Verify(string stagedManifest, string files, Func<string, bool> needed)
    {
        int rehashed = 0;
        long rehashedBytes = 0;
        string first = "";
        var stamps = StagedFileStamp.Load(Path.Combine(Path.GetDirectoryName(stagedManifest)!, StagingLayout.StampsFile));
        using var manifest = JsonDocument.Parse(File.ReadAllBytes(stagedManifest));
        if (!manifest.RootElement.TryGetProperty("files", out var list))
        {
            throw new RestoreFailedException($"{stagedManifest} lists no files");
        }

        foreach (var file in list.EnumerateArray())
        {
            var path = file.GetProperty("path").GetString() ?? "";
            if (!needed(path))
            {
                continue;
            }

            var full = Path.Combine(files, path);
            long size = long.Parse(file.TryGetProperty("size", out var s) ? s.GetString() ?? "0" : "0", CultureInfo.InvariantCulture);
            // an upload's checksum (XXH3-128) or a SHA-256 (kept checkpoints, uploads from older agents)
            var (kind, expected) = file.TryGetProperty("xxh128", out var x)
                ? (StagedDigestKind.Xxh128, x.GetBytesFromBase64())
                : (StagedDigestKind.Sha256, file.TryGetProperty("sha256", out var d) ? d.GetBytesFromBase64() : []);
            if (!File.Exists(full) || new FileInfo(full).Length != size)
            {
                throw new RestoreFailedException($"image file {path} of migration is missing or truncated (expected {size} bytes)");
            }

            if (stamps.TryGetValue(path, out var stamp) && stamp.Size == size && stamp.Matches(full))
            {
                continue;
            }

            rehashed++;
            rehashedBytes += size;
            if (first.Length == 0)
            {
                first = $"{path}: staged {stamp?.ToString() ?? "no stamp"}, now {StagedFileStamp.Of(full, path)}";
            }

            if (!StagedFileDigest.OfFile(kind, full).AsSpan().SequenceEqual(expected))
            {
                throw new RestoreFailedException($"image file {path} does not match its {StagedFileDigest.NameOf(kind)}: the staged images are corrupted");
            }
        }

        return (rehashed, rehashedBytes, first);
    }

    /// <summary>
    /// Puts the captured writable-layer changes into the new container's overlay upper directory.
    /// The overlay is unmounted meanwhile (an overlay's layers must not change under it) and mounted
    /// again with the same layers, so whiteouts and opaque directories take effect as in the source.
    /// </summary>
    private static string PutBackWritableLayer(string rootfs, string archive, string? criuRoot)
    {
        if (PutBackMetadataOnly(archive, rootfs))
        {
            // (a container that wrote no file: its layer stays mounted)
            return ", the writable layer without file content: set in place";
        }

        var mounts = MountInfoEntry.Read("/proc/self/mountinfo");
        var mount = mounts.LastOrDefault(m => m.MountPoint == rootfs);
        if (mount is null || mount.FileSystemType != "overlay" || mount.SuperOption("upperdir") is not { } upper)
        {
            FilesystemArchive.Extract(archive, rootfs);
            return "";
        }

        var boundAt = criuRoot is null ? null : Mounts.RealPath(criuRoot);
        bool rebind = boundAt is not null && mounts.Any(m => m.MountPoint == boundAt);
        if (rebind)
        {
            Mounts.DetachIfMounted(boundAt!);
        }

        var options = $"lowerdir={mount.SuperOption("lowerdir")},upperdir={upper},workdir={mount.SuperOption("workdir")}";
        Mounts.Unmount(rootfs);
        try
        {
            FilesystemArchive.Extract(archive, upper);
        }
        finally
        {
            Mounts.MountOverlay(rootfs, options);
            if (rebind)
            {
                Mounts.BindRecursive(rootfs, boundAt!);
            }
        }

        return "";
    }

    private static string? VolumeName(string source)
    {
        int at = source.IndexOf(EmptyDirMarker, StringComparison.Ordinal);
        return at < 0 ? null : source[(at + EmptyDirMarker.Length)..].Split('/')[0];
    }

    /// <summary>For the report: how much of runc's restore CRIU took by its own log, and the restore proper by its statistics.</summary>
    private static string CriuPart(string work, string images)
    {
        try
        {
            var span = CriuStatisticsReader.LogSpan(Path.Combine(work, "restore.log"));
            var stats = CriuStatisticsReader.ReadRestore(work) ?? CriuStatisticsReader.ReadRestore(images);
            return span is null ? "" : string.Create(CultureInfo.InvariantCulture,
                $" (CRIU {span.Value.TotalMilliseconds:0} ms of it{(stats is null ? "" : $", its restore proper {stats.RestoreTime.TotalMilliseconds:0} ms")})");
        }
        catch (Exception e) when (e is IOException or InvalidDataException or Google.Protobuf.InvalidProtocolBufferException)
        {
            return ""; // the figures are for people reading the report; the restore itself succeeded
        }
    }

    /// <summary>CRIU's error lines from the restore log (the reason a restore failed).</summary>
    private static string CriuErrors(string work)
    {
        var log = Path.Combine(work, "restore.log");
        if (!File.Exists(log))
        {
            return "no CRIU log";
        }

        var errors = File.ReadLines(log).Where(l => l.Contains("Error", StringComparison.Ordinal) && !l.Contains("RLIMIT_NOFILE", StringComparison.Ordinal)).TakeLast(3).ToList();
        return errors.Count > 0 ? string.Join(" | ", errors) : string.Join(" | ", File.ReadLines(log).TakeLast(3));
    }

    /// <summary>A line in runc's JSON log, where containerd looks for the reason of a failed call.</summary>
    private static void Log(RuncCommandLine line, string level, string message)
    {
        if (line.GlobalOption("--log") is not { } path)
        {
            return;
        }

        try
        {
            var entry = new Dictionary<string, string> { ["level"] = level, ["msg"] = message, ["time"] = DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture) };
            // (Go's time parser reads the raw JSON: no escapes in the time, so UTC with a 'Z')
            File.AppendAllText(path, JsonSerializer.Serialize(entry, RuntimeJson.Default.DictionaryStringString) + "\n");
        }
        catch (IOException)
        {
            // the log is a convenience; stderr has the message too
        }
    }

    /// <summary>The carried mounts' part of the restore's figures.</summary>
    private static string CarriedPart(CarriedMountsOnNode? carried) =>
        carried is null ? "" : string.Create(CultureInfo.InvariantCulture, $"{carried.Count} carried tmpfs built in {carried.Elapsed.TotalMilliseconds:0.0} ms, ");

    private static int RunInheritingStdio(string program, IReadOnlyList<string> arguments, (string Name, string Value)? environment = null)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false };
        if (environment is { } variable)
        {
            start.Environment[variable.Name] = variable.Value;
        }

        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new RestoreFailedException($"could not start {program}");
        process.WaitForExit();
        return process.ExitCode;
    }

    private static string RunChecked(string program, IReadOnlyList<string> arguments)
    {
        var result = Migrate.NodeAgent.HostCommands.Run(new Migrate.NodeAgent.HostCommand(program, arguments));
        return result.Succeeded ? result.Output
            : throw new RestoreFailedException($"{program} {string.Join(' ', arguments)} failed: {result.Error.Trim()}");
    }

    private static void RunQuietly(string program, IReadOnlyList<string> arguments)
    {
        try
        {
            _ = RunChecked(program, arguments);
        }
        catch (RestoreFailedException)
        {
            // best effort
        }
    }

    private static bool IsSafeName(string value) => value.Length is > 0 and <= 128 && SafeName().IsMatch(value);

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    private static partial Regex MigrationId();

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    private static partial Regex SafeName();
}

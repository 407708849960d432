using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.Cri.V1;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A container restored with plain <c>runc restore</c> from a migration's staged images, into a
/// fresh pod sandbox of the same node: a new root file system from the same image layers with the
/// captured writable layer put back, the captured emptyDir volumes, the new sandbox's network,
/// IPC and UTS namespaces, and the tmpfs mounts the agent carried built in tmpfs mounts CRIU is told
/// of (<c>external mnt[KEY]:PATH</c> in a configuration file). What the restore runtime does, done by hand.
/// </summary>
public sealed class RuncRestore : IAsyncDisposable
{
    private readonly string _runcRoot;
    private readonly List<string> _carried = [];
    private bool _mounted;

    private RuncRestore(string directory, string id)
    {
        Directory = directory;
        Id = id;
        _runcRoot = Path.Combine(directory, "runc");
    }

    public string Directory { get; }

    public string Id { get; }

    public string Rootfs => Path.Combine(Directory, "bundle", "rootfs");

    /// <summary>The restored container's writable layer.</summary>
    public string Upper => Path.Combine(Directory, "upper");

    /// <summary>Where a restored emptyDir volume lives.</summary>
    public string Volume(string name) => Path.Combine(Directory, "volumes", name);

    /// <summary>What the restored process writes to stdout and stderr.</summary>
    public string OutputPath => Path.Combine(Directory, "output.log");

    public IReadOnlyList<MemcounterTick> Ticks() =>
        File.Exists(OutputPath) ? Memcounter.Parse(ReadShared(OutputPath).Split('\n')) : [];

    /// <param name="agent">The node.</param>
    /// <param name="spec">The source container's OCI spec (from the runtime, taken before the dump).</param>
    /// <param name="lowerDirectories">The overlay lower directories of the source container's image.</param>
    /// <param name="staging">The migration's staging directory.</param>
    /// <param name="container">The container's name.</param>
    public static async Task<RuncRestore> RestoreAsync(AgentOnNode agent, JsonNode spec, string lowerDirectories, string staging, string container)
    {
        ArgumentNullException.ThrowIfNull(agent);
        ArgumentNullException.ThrowIfNull(spec);
        var id = "restored-" + Guid.NewGuid().ToString("N")[..8];
        var restore = new RuncRestore(Path.Combine(agent.Node.Root, id), id);
        try
        {
            await restore.PrepareAndRunAsync(agent, spec, lowerDirectories, staging, container);
            return restore;
        }
        catch
        {
            await restore.DisposeAsync();
            throw;
        }
    }

    private async Task PrepareAndRunAsync(AgentOnNode agent, JsonNode spec, string lowerDirectories, string staging, string container)
    {
        var bundle = System.IO.Directory.CreateDirectory(Path.Combine(Directory, "bundle")).FullName;
        var work = System.IO.Directory.CreateDirectory(Path.Combine(Directory, "overlay-work")).FullName;
        System.IO.Directory.CreateDirectory(Rootfs);
        FilesystemArchive.Extract(Path.Combine(staging, "rootfs", container + ".tar"), Upper);
        Prerequisites.Run("mount", "-t", "overlay", "overlay", "-o", $"lowerdir={lowerDirectories},upperdir={Upper},workdir={work}", Rootfs);
        _mounted = true;

        // a fresh sandbox to restore into, as the target node's runtime would make
        var sandbox = await TestPods.RunAsync(agent.Node, "default", Id, []);
        var status = await agent.Node.Cri.Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = sandbox.SandboxId, Verbose = true });
        int pausePid = JsonDocument.Parse(status.Info["info"]).RootElement.GetProperty("pid").GetInt32();

        var config = spec.DeepClone();
        config["root"] = new JsonObject { ["path"] = Rootfs };
        foreach (var mount in config["mounts"]!.AsArray())
        {
            var source = (string?)mount!["source"] ?? "";
            const string marker = "/volumes/kubernetes.io~empty-dir/";
            int at = source.IndexOf(marker, StringComparison.Ordinal);
            if (at >= 0)
            {
                var volume = source[(at + marker.Length)..].Split('/')[0];
                FilesystemArchive.Extract(Path.Combine(staging, "volumes", volume + ".tar"), Volume(volume));
                mount["source"] = Volume(volume);
            }
        }

        config["linux"]!["cgroupsPath"] = $"{agent.Node.CgroupParent}/{Id}";
        foreach (var ns in config["linux"]!["namespaces"]!.AsArray())
        {
            var type = (string?)ns!["type"];
            var file = type switch { "network" => "net", "ipc" => "ipc", "uts" => "uts", _ => null };
            if (file is not null)
            {
                ns["path"] = string.Create(CultureInfo.InvariantCulture, $"/proc/{pausePid}/ns/{file}");
            }
        }

        File.WriteAllText(Path.Combine(bundle, "config.json"), config.ToJsonString());
        var images = Path.Combine(staging, "containers", container, "final");
        // the tmpfs mounts the agent carried in place of CRIU: built in tmpfs mounts of their own, named to CRIU as the external mounts the images expect
        var environment = "";
        if (CarriedMounts.Read(images) is { } carried)
        {
            var mapping = new List<(string, string)>();
            foreach (var mount in carried.Mounts)
            {
                var directory = System.IO.Directory.CreateDirectory(Path.Combine(Directory, mount.Key)).FullName;
                Prerequisites.Run("mount", "-t", "tmpfs", "-o", mount.Options, "tmpfs", directory);
                _carried.Add(directory);
                TmpfsListing.Build(directory, mount.Entries);
                mapping.Add((mount.Key, directory));
            }

            File.WriteAllText(Path.Combine(Directory, "carried.conf"), CarriedMounts.CriuConfiguration(mapping));
            environment = $"CRIU_CONFIG_FILE='{Path.Combine(Directory, "carried.conf")}' ";
        }

        var command = $"{environment}exec runc --root '{_runcRoot}' restore --detach --image-path '{images}' --work-path '{Path.Combine(Directory, "criu-work")}' --bundle '{bundle}' {Id} > '{OutputPath}' 2>&1 < /dev/null";
        try
        {
            Prerequisites.Run("sh", "-c", command);
        }
        catch (InvalidOperationException e)
        {
            var log = Path.Combine(Directory, "criu-work", "restore.log");
            throw new InvalidOperationException($"runc restore failed: {e.Message}; output: {ReadShared(OutputPath)}; CRIU log: {(File.Exists(log) ? string.Join(" | ", File.ReadLines(log).TakeLast(8)) : "none")}", e);
        }
    }

    /// <summary>runc's view of the restored container (e.g. "running").</summary>
    public string State()
    {
        var json = Prerequisites.Run("runc", "--root", _runcRoot, "state", Id);
        return JsonDocument.Parse(json).RootElement.GetProperty("status").GetString() ?? "";
    }

    public async Task<IReadOnlyList<MemcounterTick>> WaitForTicksAsync(Func<IReadOnlyList<MemcounterTick>, bool> done)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var ticks = Ticks();
            if (done(ticks))
            {
                return ticks;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the restored container printed: '{ReadShared(OutputPath)}'; {Diagnose()}");
            }

            await Task.Delay(50);
        }
    }

    private string Diagnose()
    {
        try
        {
            var state = JsonDocument.Parse(Prerequisites.Run("runc", "--root", _runcRoot, "state", Id)).RootElement;
            int pid = state.GetProperty("pid").GetInt32();
            var freezer = CgroupFreezer.ForProcess(pid);
            var status = File.ReadLines($"/proc/{pid}/status").Where(l => l.StartsWith("State", StringComparison.Ordinal));
            var fds = System.IO.Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Select(f => $"{Path.GetFileName(f)}->{new FileInfo(f).LinkTarget}");
            return $"runc: {state.GetProperty("status")}, pid {pid}, {string.Join(",", status)}, cgroup {freezer.Directory} frozen={freezer.IsFrozen}, fds {string.Join(" ", fds)}";
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or JsonException or KeyNotFoundException)
        {
            return "no state: " + e.Message;
        }
    }

    public static string ReadShared(string path)
    {
        if (!File.Exists(path))
        {
            return "";
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    public async ValueTask DisposeAsync()
    {
        if (System.IO.Directory.Exists(Path.Combine(_runcRoot, Id)))
        {
            try
            {
                Prerequisites.Run("runc", "--root", _runcRoot, "kill", Id, "KILL");
            }
            catch (InvalidOperationException)
            {
                // already stopped
            }

            for (int i = 0; i < 100 && State() != "stopped"; i++)
            {
                await Task.Delay(50);
            }

            Prerequisites.Run("runc", "--root", _runcRoot, "delete", "--force", Id);
        }

        if (_mounted)
        {
            Prerequisites.Run("umount", Rootfs);
        }

        // (the restored container held its own binds of them until it was deleted above)
        foreach (var carried in _carried)
        {
            Prerequisites.Run("umount", carried);
        }

        System.IO.Directory.Delete(Directory, recursive: true);
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.Cri.V1;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// What a user would script instead of pod-migration, on the same sandbox nodes: <c>runc
/// checkpoint</c> of the pod's container (its processes stop there), <c>tar</c> of the images
/// piped over a TCP connection to the target node's address into <c>tar -x</c>, then <c>runc
/// restore --detach</c> into a pod sandbox made on the target beforehand (its namespaces, and a
/// copy of the image's root file system: the target has the image, as it has for our migration).
/// Stop-and-copy: the workload is frozen from the first step to the last.
/// </summary>
public sealed class ManualBaseline : IAsyncDisposable
{
    private readonly SandboxNode _target;
    private readonly string _directory;
    private readonly string _runcRoot;
    private readonly string _id;
    private RunningTestPod? _sandbox;
    private bool _restored;

    private ManualBaseline(SandboxNode target, string directory, string id)
    {
        _target = target;
        _directory = directory;
        _id = id;
        _runcRoot = Path.Combine(directory, "runc");
    }

    public string OutputPath => Path.Combine(_directory, "output.log");

    /// <summary>Prepares the target (untimed): a fresh pod sandbox, a bundle directory with the image's root file system.</summary>
    public static async Task<ManualBaseline> PrepareAsync(SandboxNode target, string name)
    {
        ArgumentNullException.ThrowIfNull(target);
        var directory = Directory.CreateDirectory(Path.Combine(target.Containerd.Root, "manual-" + name)).FullName;
        var baseline = new ManualBaseline(target, directory, "manual-" + name);
        baseline._sandbox = await TestPods.RunAsync(target.Containerd, "bench", "manual-" + name, []);
        TestRootFilesystem.Create(Path.Combine(directory, "bundle", "rootfs"));
        return baseline;
    }

    /// <summary>The four timed steps; returns their durations and the bytes of checkpoint images copied.</summary>
    public async Task<(TimeSpan Checkpoint, TimeSpan Copy, TimeSpan Restore, long ImageBytes)> RunAsync(SandboxNode source, string containerId)
    {
        ArgumentNullException.ThrowIfNull(source);
        var sourceRuncRoot = Directory.EnumerateDirectories(source.Containerd.RuncRoot).First(d => Directory.Exists(Path.Combine(d, containerId)));
        var sourceBundle = JsonNode.Parse(Prerequisites.Run("runc", "--root", sourceRuncRoot, "state", containerId))!["bundle"]!.GetValue<string>();
        var spec = JsonNode.Parse(File.ReadAllText(Path.Combine(sourceBundle, "config.json")))!;
        var images = Directory.CreateDirectory(Path.Combine(source.Containerd.Root, "manual-images-" + _id)).FullName;
        var received = Directory.CreateDirectory(Path.Combine(_directory, "images")).FullName;
        try
        {
            var clock = Stopwatch.StartNew();
            Prerequisites.Run("runc", "--root", sourceRuncRoot, "checkpoint", "--image-path", images, "--work-path", Path.Combine(images, "work"), containerId);
            var checkpoint = clock.Elapsed;
            long bytes = Directory.EnumerateFiles(images, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);

            await CopyOverTcpAsync(images, received, _target.AgentAddress[.._target.AgentAddress.LastIndexOf(':')]);
            var copy = clock.Elapsed - checkpoint;

            WriteBundle(spec);
            var command = $"exec runc --root '{_runcRoot}' restore --detach --image-path '{received}' --work-path '{Path.Combine(_directory, "criu-work")}' --bundle '{Path.Combine(_directory, "bundle")}' {_id} > '{OutputPath}' 2>&1 < /dev/null";
            Prerequisites.Run("sh", "-c", command);
            _restored = true;
            var restore = clock.Elapsed - checkpoint - copy;
            return (checkpoint, copy, restore, bytes);
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }

    /// <summary>tar -c on the source | TCP to the target's address | tar -x on the target, streamed.</summary>
    /// <summary>The files of <paramref name="from"/> (but ./work) into <paramref name="to"/>: tar, a TCP connection to <paramref name="targetAddress"/>, tar -x.</summary>
    internal static async Task CopyOverTcpAsync(string from, string to, string targetAddress)
    {
        using var listener = new TcpListener(IPAddress.Parse(targetAddress), 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var receiving = Task.Run(async () =>
        {
            using var connection = await listener.AcceptTcpClientAsync();
            using var untar = Process.Start(new ProcessStartInfo("tar", ["-x", "-f", "-", "-C", to]) { RedirectStandardInput = true })!;
            await connection.GetStream().CopyToAsync(untar.StandardInput.BaseStream, 1 << 20);
            untar.StandardInput.Close();
            await untar.WaitForExitAsync();
            return untar.ExitCode == 0 ? 0 : throw new InvalidOperationException($"tar -x exited {untar.ExitCode}");
        });
        using (var client = new TcpClient())
        {
            await client.ConnectAsync(IPAddress.Parse(targetAddress), port);
            using var tar = Process.Start(new ProcessStartInfo("tar", ["-c", "-f", "-", "-C", from, "--exclude", "./work", "."]) { RedirectStandardOutput = true })!;
            await tar.StandardOutput.BaseStream.CopyToAsync(client.GetStream(), 1 << 20);
            await tar.WaitForExitAsync();
            if (tar.ExitCode != 0)
            {
                throw new InvalidOperationException($"tar -c exited {tar.ExitCode}");
            }
        }

        await receiving;
    }

    /// <summary>The source's OCI spec, pointed at the target's root file system, sandbox namespaces and a cgroup of its own.</summary>
    private void WriteBundle(JsonNode spec)
    {
        var status = _target.Containerd.Cri.Runtime.PodSandboxStatus(new PodSandboxStatusRequest { PodSandboxId = _sandbox!.SandboxId, Verbose = true });
        int pausePid = JsonDocument.Parse(status.Info["info"]).RootElement.GetProperty("pid").GetInt32();
        spec["root"] = new JsonObject { ["path"] = Path.Combine(_directory, "bundle", "rootfs") };
        spec["linux"]!["cgroupsPath"] = $"{_target.Containerd.CgroupParent}/{_id}";
        foreach (var ns in spec["linux"]!["namespaces"]!.AsArray())
        {
            var file = (string?)ns!["type"] switch { "network" => "net", "ipc" => "ipc", "uts" => "uts", _ => null };
            if (file is not null)
            {
                ns["path"] = string.Create(CultureInfo.InvariantCulture, $"/proc/{pausePid}/ns/{file}");
            }
        }

        File.WriteAllText(Path.Combine(_directory, "bundle", "config.json"), spec.ToJsonString());
    }

    /// <summary>What the restored process has printed.</summary>
    public string Output()
    {
        if (!File.Exists(OutputPath))
        {
            return "";
        }

        using var stream = new FileStream(OutputPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return new StreamReader(stream).ReadToEnd();
    }

    public async ValueTask DisposeAsync()
    {
        if (_restored)
        {
            try
            {
                Prerequisites.Run("runc", "--root", _runcRoot, "kill", _id, "KILL");
            }
            catch (InvalidOperationException)
            {
                // it stopped already
            }

            for (int i = 0; i < 100; i++)
            {
                try
                {
                    Prerequisites.Run("runc", "--root", _runcRoot, "delete", "--force", _id);
                    break;
                }
                catch (InvalidOperationException)
                {
                    await Task.Delay(50);
                }
            }
        }

        if (_sandbox is not null)
        {
            await TestPods.RemoveAsync(_target.Containerd, _sandbox);
        }

        Directory.Delete(_directory, recursive: true);
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Migrate.TestSupport;

/// <summary>
/// A process tree in its own PID, mount, UTS, IPC and network namespaces, rooted in a private
/// busybox file system: the smallest honest stand-in for a container, started with unshare(1).
/// PID 1 of the namespace is a shell running <c>/init.sh</c>, which runs the given command with
/// its output in <c>/out.log</c>. Everything it starts is stopped by PID on dispose.
/// </summary>
public sealed partial class IsolatedProcessTree : IDisposable
{
    private readonly Process? _unshare;
    private readonly List<int> _restoredRoots = [];
    private bool _disposed;

    private IsolatedProcessTree(string directory, Process unshare, int rootPid)
    {
        Directory = directory;
        _unshare = unshare;
        RootPid = rootPid;
    }

    /// <summary>Scratch directory of this tree: the root file system and room for images.</summary>
    public string Directory { get; }

    public string RootFilesystem => Path.Combine(Directory, "rootfs");

    public string OutputPath => Path.Combine(RootFilesystem, "out.log");

    /// <summary>Host PID of the namespace's init (the tree's root task) as started.</summary>
    public int RootPid { get; }

    /// <param name="command">The command line PID 1 runs (inside the new root).</param>
    /// <param name="holdHostFile">Keep a descriptor of a host file (outside the new root) open in
    /// PID 1, which CRIU cannot dump: a way to make a dump fail after it has frozen the tree.</param>
    public static IsolatedProcessTree Start(string command, bool holdHostFile = false)
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("unshare", "setsid", "mount", "pivot_root", "busybox");
        var directory = System.IO.Directory.CreateTempSubdirectory("migrate-tree-").FullName;
        var rootfs = Path.Combine(directory, "rootfs");
        TestRootFilesystem.Create(rootfs);
        File.WriteAllText(Path.Combine(rootfs, "init.sh"),
            $"umount -l /.oldroot\nrmdir /.oldroot\n{command} >/out.log 2>&1\necho \"exited $?\" >>/out.log\n");

        var hostFile = Path.Combine(directory, "host-file");
        File.WriteAllText(hostFile, "outside the container root\n");
        // Runs as the namespace's PID 1 (host busybox) until it replaces itself with the shell in
        // the new root. It drops every inherited descriptor: stdio becomes the new root's /dev/null.
        var keep = holdHostFile ? "|7" : string.Empty;
        var script = string.Join('\n',
            "set -e",
            "mount --make-rprivate /",
            $"mount --bind {rootfs} {rootfs}",
            $"mount -t proc proc {rootfs}/proc",
            $"cd {rootfs}",
            holdHostFile ? $"exec 7<{hostFile}" : ":",
            $"exec <{rootfs}/dev/null >{rootfs}/dev/null 2>&1",
            $"for fd in $(ls /proc/self/fd); do case $fd in 0|1|2{keep}) ;; *) eval \"exec $fd>&-\" ;; esac; done",
            "mkdir -p .oldroot",
            "pivot_root . .oldroot",
            "exec /bin/sh /init.sh");

        var start = new ProcessStartInfo("unshare")
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in new[] { "--pid", "--mount", "--uts", "--ipc", "--net", "--fork", "--kill-child", "setsid", "busybox", "sh", "-c", script })
        {
            start.ArgumentList.Add(arg);
        }

        var unshare = Process.Start(start) ?? throw new InvalidOperationException("could not start unshare");
        int rootPid = WaitForChild(unshare.Id, TimeSpan.FromSeconds(10));
        var tree = new IsolatedProcessTree(directory, unshare, rootPid);
        return tree;
    }

    /// <summary>Registers a tree CRIU restored as a child of this process, so dispose stops and reaps it.</summary>
    public void AdoptRestoredRoot(int hostPid) => _restoredRoots.Add(hostPid);

    public IReadOnlyList<MemcounterTick> ReadTicks() =>
        File.Exists(OutputPath) ? Memcounter.Parse(ReadLinesShared(OutputPath)) : [];

    /// <summary>Waits until the workload has printed a tick satisfying <paramref name="condition"/>.</summary>
    public MemcounterTick WaitForTick(Func<MemcounterTick, bool> condition, TimeSpan timeout, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            var match = ReadTicks().FirstOrDefault(condition);
            if (match is not null)
            {
                return match;
            }

            Thread.Sleep(25);
        }

        var tail = File.Exists(OutputPath) ? string.Join(" | ", ReadLinesShared(OutputPath).TakeLast(3)) : "(no output)";
        throw new TimeoutException($"timed out after {timeout.TotalSeconds:0.#} s waiting for {what}; last output: {tail}");
    }

    /// <summary>
    /// Asks the workload to re-scan its whole buffer against its running checksum and waits for
    /// the tick that reports the result (verified=ok or BAD).
    /// </summary>
    public MemcounterTick RequestVerification(TimeSpan timeout)
    {
        long after = ReadTicks() is { Count: > 0 } ticks ? ticks[^1].Tick : 0;
        File.WriteAllText(Path.Combine(RootFilesystem, "verify-now"), string.Empty);
        return WaitForTick(t => t.Tick > after && t.Verified != "-", timeout, "the workload to verify its buffer");
    }

    /// <summary>State letter of a process from /proc/&lt;pid&gt;/status (R, S, D, T, t, Z, ...), or null if it is gone.</summary>
    public static char? ProcessState(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("State:", StringComparison.Ordinal));
            return line?["State:".Length..].Trim()[0];
        }
        catch (Exception e) when (e is DirectoryNotFoundException or FileNotFoundException or IOException)
        {
            return null;
        }
    }

    /// <summary>Host PIDs of the root's descendants (one level per call of /proc/.../children).</summary>
    public static IReadOnlyList<int> Descendants(int pid)
    {
        var result = new List<int>();
        var queue = new Queue<int>([pid]);
        while (queue.Count > 0)
        {
            var p = queue.Dequeue();
            try
            {
                foreach (var task in System.IO.Directory.EnumerateDirectories($"/proc/{p}/task"))
                {
                    foreach (var c in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    {
                        int child = int.Parse(c, CultureInfo.InvariantCulture);
                        result.Add(child);
                        queue.Enqueue(child);
                    }
                }
            }
            catch (Exception e) when (e is DirectoryNotFoundException or FileNotFoundException or IOException)
            {
                // gone meanwhile
            }
        }

        return result;
    }

    /// <summary>The PIDs of a process in each PID namespace it belongs to, outermost first.</summary>
    public static int[] NamespacePids(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("NSpid:", StringComparison.Ordinal));
        return line["NSpid:".Length..].Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)
            .Select(p => int.Parse(p, CultureInfo.InvariantCulture)).ToArray();
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        // SIGKILL to a PID namespace's init kills the whole namespace.
        foreach (var pid in _restoredRoots)
        {
            _ = Kill(pid, 9);
            for (int i = 0; i < 200 && WaitPid(pid, out _, 1) == 0; i++)
            {
                Thread.Sleep(10);
            }
        }

        if (_unshare is not null)
        {
            if (!_unshare.HasExited)
            {
                _ = Kill(RootPid, 9);
                if (!_unshare.WaitForExit(5000))
                {
                    _unshare.Kill();
                    _unshare.WaitForExit(5000);
                }
            }

            _unshare.Dispose();
        }

        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // a restored tree may still be on its way out; the temp directory is cleaned up later
        }
    }

    private static List<string> ReadLinesShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        var lines = new List<string>();
        while (reader.ReadLine() is { } line)
        {
            lines.Add(line);
        }

        return lines;
    }

    private static int WaitForChild(int parentPid, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            var children = Descendants(parentPid);
            if (children.Count > 0)
            {
                // wait until the child has moved into the new root (it then runs /bin/sh /init.sh)
                var cmdline = TryRead($"/proc/{children[0]}/cmdline");
                if (cmdline is not null && cmdline.Contains("/init.sh", StringComparison.Ordinal))
                {
                    return children[0];
                }
            }

            Thread.Sleep(20);
        }

        throw new TimeoutException($"the namespaced tree under unshare ({parentPid}) did not start within {timeout.TotalSeconds} s");
    }

    private static string? TryRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is DirectoryNotFoundException or FileNotFoundException or IOException)
        {
            return null;
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc.so.6", EntryPoint = "waitpid", SetLastError = true)]
    private static partial int WaitPid(int pid, out int status, int options);
}

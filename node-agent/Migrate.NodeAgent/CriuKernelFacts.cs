using Microsoft.Extensions.Options;

namespace Migrate.NodeAgent;

/// <summary>What the agent does about CRIU's kernel-facts cache on this node.</summary>
public enum CriuKernelFactsPlan
{
    /// <summary>Turned off (<c>Agent:KeepCriuKernelFacts=false</c>): every CRIU run probes the kernel.</summary>
    Off,

    /// <summary><c>/run</c> is a tmpfs: CRIU keeps its cache there itself.</summary>
    CriuKeepsIt,

    /// <summary><c>/run</c> is not a tmpfs: the agent writes CRIU's cache there, made fresh by CRIU on this kernel.</summary>
    AgentWritesIt,
}

/// <summary>
/// CRIU learns what the kernel can do (its "kerndat": about 75 ms of probes on this kind of machine,
/// including an <c>iptables -L</c>) at the start of every run, unless it finds the facts it saved in
/// <c>/run/criu.kdat</c>. CRIU saves them only when <c>/run</c> is a tmpfs (so that a reboot, maybe
/// into another kernel, forgets them), which it is on a systemd host but not in a container or on
/// a machine like this one. A migration's freeze holds three CRIU runs (the dump, the lazy-pages
/// daemon, the restore). So where <c>/run</c> is not a tmpfs the agent, at its start, has CRIU
/// itself make the cache in a private mount namespace whose <c>/run</c> is a tmpfs, and puts that
/// file in place: CRIU's own bytes, for this kernel and this CRIU build (CRIU refuses and removes a
/// file of another build). Being made anew at each start, it never outlives the kernel it describes
/// for the agent's own runs; the agent removes it when it stops.
/// </summary>
public sealed partial class CriuKernelFacts(IOptions<AgentOptions> options, ILogger<CriuKernelFacts> logger) : IHostedService
{
    /// <summary>Where CRIU looks for its cache (its build's run directory).</summary>
    public const string CacheFile = "/run/criu.kdat";

    /// <summary>A kdat larger than this is not CRIU's (the structure is a few kilobytes).</summary>
    public const long MaximumCacheBytes = 1 << 20;

    private byte[]? _written;
    private Task _writing = Task.CompletedTask;

    /// <summary>The decision, from the setting and the file system <c>/run</c> is on.</summary>
    public static CriuKernelFactsPlan Decide(bool enabled, string? runFileSystem) =>
        !enabled ? CriuKernelFactsPlan.Off
        : string.Equals(runFileSystem, "tmpfs", StringComparison.Ordinal) ? CriuKernelFactsPlan.CriuKeepsIt
        : CriuKernelFactsPlan.AgentWritesIt;

    /// <summary>
    /// The command that has CRIU make its cache in a private mount namespace whose <c>/run</c> is an
    /// empty tmpfs, and copies the file to <paramref name="output"/> (outside <c>/run</c>).
    /// </summary>
    public static HostCommand MakeCommand(string criuBinary, string output) =>
        new("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            "mount -t tmpfs -o size=4m,mode=0755 podmig-kdat /run && \"$0\" check >/dev/null 2>&1; cp /run/criu.kdat \"$1\"",
            criuBinary, output);

    /// <summary>Has CRIU make its cache and puts it at <paramref name="cacheFile"/>; returns its bytes. Throws <see cref="IOException"/> saying why not.</summary>
    public static byte[] Write(string criuBinary, string cacheFile, Func<HostCommand, HostCommandResult>? run = null)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(cacheFile))!;
        var scratch = Directory.CreateTempSubdirectory("podmig-kdat-");
        try
        {
            var made = Path.Combine(scratch.FullName, "criu.kdat");
            var result = (run ?? HostCommands.Run)(MakeCommand(criuBinary, made));
            var file = new FileInfo(made);
            if (!result.Succeeded || !file.Exists)
            {
                throw new IOException($"CRIU made no kernel-facts cache in a private /run ({result.ExitCode}): {result.Error.Trim()}");
            }

            if (file.Length is 0 or > MaximumCacheBytes)
            {
                throw new IOException($"the kernel-facts cache CRIU made has {file.Length} bytes, which is not a kdat");
            }

            var bytes = File.ReadAllBytes(made);
            // beside the final name, then renamed: a CRIU starting meanwhile reads the old file or the new one, never half of one
            WholeFile.Write(cacheFile, bytes, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            return bytes;
        }
        finally
        {
            scratch.Delete(recursive: true);
        }
    }

    /// <summary>Removes the cache if it still holds what this agent wrote.</summary>
    public static bool RemoveIfOurs(string cacheFile, byte[] written)
    {
        ArgumentNullException.ThrowIfNull(written);
        try
        {
            if (File.Exists(cacheFile) && File.ReadAllBytes(cacheFile).AsSpan().SequenceEqual(written))
            {
                File.Delete(cacheFile);
                return true;
            }
        }
        catch (IOException)
        {
            // replaced or removed meanwhile: not ours to remove any more
        }

        return false;
    }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var settings = options.Value;
        string? fileSystem = null;
        try
        {
            fileSystem = new DriveInfo(Path.GetDirectoryName(CacheFile)!).DriveFormat;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            // unknown: treated as not a tmpfs
        }

        var plan = Decide(settings.KeepCriuKernelFacts, fileSystem);
        if (plan != CriuKernelFactsPlan.AgentWritesIt)
        {
            LogPlan(plan, fileSystem ?? "unknown");
            return Task.CompletedTask;
        }

        // a CRIU run takes this long at most; the agent starts serving meanwhile
        _writing = Task.Run(() =>
        {
            try
            {
                _written = Write(settings.CriuBinary ?? "criu", CacheFile);
                LogWritten(CacheFile, _written.Length, fileSystem ?? "unknown");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                LogNotWritten(e.Message);
            }
        }, CancellationToken.None);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // (a write still under way ends within one CRIU run)
        await _writing.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        if (_written is { } written)
        {
            RemoveIfOurs(CacheFile, written);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "CRIU's kernel facts: {Plan} (/run is {FileSystem})")]
    private partial void LogPlan(CriuKernelFactsPlan plan, string fileSystem);

    [LoggerMessage(Level = LogLevel.Information, Message = "CRIU's kernel facts: /run is {FileSystem}, not a tmpfs, so CRIU keeps no cache there; wrote the one CRIU made on this kernel to {File} ({Bytes} bytes): each CRIU run skips its probes")]
    private partial void LogWritten(string file, int bytes, string fileSystem);

    [LoggerMessage(Level = LogLevel.Warning, Message = "CRIU's kernel facts: no cache could be made ({Reason}); every CRIU run probes the kernel, which adds to each freeze")]
    private partial void LogNotWritten(string reason);
}

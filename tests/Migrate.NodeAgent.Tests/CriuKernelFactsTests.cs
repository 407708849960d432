using System.Buffers.Binary;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>CRIU's kernel-facts cache, kept by the agent where /run is not a tmpfs.</summary>
public sealed class CriuKernelFactsTests : IDisposable
{
    /// <summary>The first field of CRIU's kdat (KDAT_MAGIC in criu/include/magic.h).</summary>
    private const uint KdatMagic = 0x57023458;

    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("podmig-kdat-test-");

    public void Dispose() => _root.Delete(recursive: true);

    [Theory]
    [InlineData(true, "tmpfs", CriuKernelFactsPlan.CriuKeepsIt)]
    [InlineData(true, "ext4", CriuKernelFactsPlan.AgentWritesIt)]
    [InlineData(true, "overlay", CriuKernelFactsPlan.AgentWritesIt)]
    [InlineData(true, null, CriuKernelFactsPlan.AgentWritesIt)]
    [InlineData(false, "ext4", CriuKernelFactsPlan.Off)]
    [InlineData(false, "tmpfs", CriuKernelFactsPlan.Off)]
    public void The_agent_writes_the_cache_only_where_CRIU_would_not_and_when_allowed(bool enabled, string? fileSystem, CriuKernelFactsPlan expected) =>
        Assert.Equal(expected, CriuKernelFacts.Decide(enabled, fileSystem));

    [Fact]
    public void CRIU_makes_its_cache_in_a_private_tmpfs_and_a_CRIU_run_whose_run_directory_is_not_a_tmpfs_loads_it()
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("unshare", "criu");
        var run = Directory.CreateDirectory(Path.Combine(_root.FullName, "run")).FullName;
        var cache = Path.Combine(run, "criu.kdat");

        var bytes = CriuKernelFacts.Write("criu", cache);

        Assert.Equal(bytes, File.ReadAllBytes(cache));
        Assert.Equal(KdatMagic, BinaryPrimitives.ReadUInt32LittleEndian(bytes));
        Assert.Equal([cache], Directory.GetFiles(run));

        // this directory (not a tmpfs, like this machine's /run) seen as /run by a CRIU run: it loads the facts instead of probing
        var log = Path.Combine(_root.FullName, "check.log");
        var check = HostCommands.Run(new HostCommand("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            "mount --bind \"$0\" /run && criu check -v4 --log-file \"$1\"", run, log));
        var text = File.Exists(log) ? File.ReadAllText(log) : "";
        Assert.True(text.Contains("Loaded kdat cache from /run/criu.kdat", StringComparison.Ordinal),
            $"CRIU did not load the cache (exit {check.ExitCode}, {check.Error.Trim()}): {string.Join(" | ", text.Split('\n').Where(l => l.Contains("kdat", StringComparison.Ordinal)))}");
        Assert.True(File.Exists(cache), "CRIU removed the cache as stale");
    }

    [Fact]
    public void A_CRIU_that_makes_no_cache_is_reported_and_nothing_is_put_in_place()
    {
        var cache = Path.Combine(_root.FullName, "criu.kdat");

        var e = Assert.Throws<IOException>(() => CriuKernelFacts.Write("criu", cache, _ => new HostCommandResult(1, "", "mount: permission denied")));

        Assert.Contains("made no kernel-facts cache", e.Message, StringComparison.Ordinal);
        Assert.Contains("permission denied", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(cache));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(CriuKernelFacts.MaximumCacheBytes + 1)]
    public void A_file_too_small_or_too_large_to_be_a_kdat_is_refused(long length)
    {
        var cache = Path.Combine(_root.FullName, "criu.kdat");

        var e = Assert.Throws<IOException>(() => CriuKernelFacts.Write("criu", cache, command =>
        {
            using (var made = File.Create(command.Arguments[^1]))
            {
                made.SetLength(length);
            }

            return new HostCommandResult(0, "", "");
        }));

        Assert.Contains("which is not a kdat", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(cache));
    }

    [Fact]
    public void Only_the_cache_this_agent_wrote_is_removed_at_its_stop()
    {
        var cache = Path.Combine(_root.FullName, "criu.kdat");
        byte[] ours = [0x58, 0x34, 0x02, 0x57, 1, 2, 3];
        File.WriteAllBytes(cache, [0x58, 0x34, 0x02, 0x57, 9, 9, 9]);

        Assert.False(CriuKernelFacts.RemoveIfOurs(cache, ours));
        Assert.True(File.Exists(cache));

        File.WriteAllBytes(cache, ours);
        Assert.True(CriuKernelFacts.RemoveIfOurs(cache, ours));
        Assert.False(File.Exists(cache));
        Assert.False(CriuKernelFacts.RemoveIfOurs(cache, ours));
    }
}

using System.Diagnostics;
using System.Globalization;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.Criu.Tests;

/// <summary>
/// Checkpoints taken as deltas on earlier ones, each holding hard links to the chain it needs:
/// real process trees, dumped and restored by real CRIU after the earlier checkpoints are deleted.
/// </summary>
public sealed class CheckpointChainTests(ITestOutputHelper output)
{
    private const ulong Seed = 91;
    private static readonly TimeSpan TickTimeout = TimeSpan.FromSeconds(20);

    private readonly CriuClient _criu = new();

    [Fact]
    public void A_chain_of_three_checkpoints_writes_only_changes_and_the_last_restores_after_the_first_two_are_deleted()
    {
        const int mib = 64;
        using var tree = IsolatedProcessTree.Start(Memcounter.Command(mib, Seed, dirtyPercentPerSecond: 2));
        tree.WaitForTick(t => t.Tick >= 3, TickTimeout, "three ticks");

        var first = Checkpoint(tree, "a", ancestor: null, leaveRunning: true);
        Wait(tree, 5);
        var second = Checkpoint(tree, "b", ancestor: first.Tip, leaveRunning: true);
        Wait(tree, 5);
        var third = Checkpoint(tree, "c", ancestor: second.Tip, leaveRunning: false); // the tree ends with this dump
        var last = tree.ReadTicks()[^1];

        output.WriteLine($"pages written: a {first.Pages}, b {second.Pages}, c {third.Pages}; linked sets: b {second.LinkedSets}, c {third.LinkedSets}; " +
                         $"own bytes: a {first.OwnBytes}, b {second.OwnBytes}, c {third.OwnBytes}");
        Assert.True(first.Pages >= (ulong)mib * 256, $"the first checkpoint must hold the {mib} MiB buffer, it wrote {first.Pages} pages");
        Assert.True(second.Pages * 5 < first.Pages, $"the delta wrote {second.Pages} pages, not far fewer than the full checkpoint's {first.Pages}");
        Assert.True(third.Pages * 5 < first.Pages, $"the second delta wrote {third.Pages} pages, not far fewer than {first.Pages}");
        Assert.Equal(2, second.LinkedSets); // a's round and final dump
        Assert.Equal(4, third.LinkedSets); // b's two and, through b, a's two
        Assert.True(third.OwnBytes * 5 < first.OwnBytes, $"c's own files ({third.OwnBytes} bytes) must be far smaller than a's ({first.OwnBytes})");

        // a's files are shared, not copied: c's links to them are the same inodes
        var aPages = Directory.EnumerateFiles(first.Tip, "pages-*.img").First();
        var linked = Path.Combine(third.Directory, "ancestors", "3", Path.GetFileName(aPages));
        Assert.Equal(Inode(aPages), Inode(linked));

        Directory.Delete(first.Directory, recursive: true);
        Directory.Delete(second.Directory, recursive: true);
        Assert.Equal("1", Stat("%h", linked)); // c is now the only holder

        var restore = _criu.Restore(new CriuOptions { ImagesDirectory = third.Tip, Root = tree.RootFilesystem }, asChild: true);
        tree.AdoptRestoredRoot(restore.Pid);
        var after = tree.WaitForTick(t => t.Tick > last.Tick, TickTimeout, "a tick after restoring the last delta");
        Assert.Equal(last.Tick + 1, after.Tick);
        var verified = tree.RequestVerification(TickTimeout);
        Assert.True(verified.VerifiedOk, $"buffer check after restoring through the chain: {verified.Verified}");
        Figures.Record(nameof(CheckpointChainTests), "64MiB full checkpoint pages", first.Pages, "pages");
        Figures.Record(nameof(CheckpointChainTests), "64MiB delta checkpoint pages", second.Pages, "pages");
    }

    [Fact]
    public void Linking_a_chain_shares_every_file_refuses_what_is_no_image_set_and_leaves_nothing_on_failure()
    {
        var root = Directory.CreateTempSubdirectory("migrate-chain-").FullName;
        try
        {
            var older = Set(root, "older", parent: null);
            var tip = Set(root, "tip", parent: "../older");
            var destination = Path.Combine(root, "new", "ancestors");
            Assert.Equal(2, AncestorChain.Link(tip, destination, maxSets: 4));
            Assert.Equal(Inode(Path.Combine(tip, "pages-1.img")), Inode(Path.Combine(destination, "1", "pages-1.img")));
            Assert.Equal(Inode(Path.Combine(older, "pages-1.img")), Inode(Path.Combine(destination, "2", "pages-1.img")));
            Assert.Equal(Path.Combine("..", "2"), new FileInfo(Path.Combine(destination, "1", "parent")).LinkTarget);
            Assert.False(Path.Exists(Path.Combine(destination, "2", "parent")));
            Assert.Equal([Path.Combine(destination, "1"), Path.Combine(destination, "2")], AncestorChain.Sets(Path.Combine(destination, "1")));

            var tooDeep = Assert.Throws<InvalidDataException>(() => AncestorChain.Link(tip, Path.Combine(root, "deep"), maxSets: 1));
            Assert.Contains("deeper than 1", tooDeep.Message, StringComparison.Ordinal);
            Assert.False(Path.Exists(Path.Combine(root, "deep")));

            Assert.Throws<IOException>(() => AncestorChain.Link(tip, destination, maxSets: 4)); // already there

            Directory.CreateDirectory(Path.Combine(older, "stray"));
            var stray = Assert.Throws<InvalidDataException>(() => AncestorChain.Link(tip, Path.Combine(root, "other"), maxSets: 4));
            Assert.Contains("not a regular file", stray.Message, StringComparison.Ordinal);
            Assert.False(Path.Exists(Path.Combine(root, "other")), "a failed link leaves nothing");

            var loop = Set(root, "loop", parent: "../loop");
            Assert.Throws<InvalidDataException>(() => AncestorChain.Link(loop, Path.Combine(root, "looped"), maxSets: 8));
            var empty = Directory.CreateDirectory(Path.Combine(root, "empty")).FullName;
            Assert.Contains("no pagemap", Assert.Throws<InvalidDataException>(() => AncestorChain.Sets(empty)).Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private sealed record Taken(string Directory, string Tip, ulong Pages, int LinkedSets, long OwnBytes);

    /// <summary>One checkpoint in its own directory: the chain of <paramref name="ancestor"/> linked in, one content-compared round, the final dump.</summary>
    private Taken Checkpoint(IsolatedProcessTree tree, string name, string? ancestor, bool leaveRunning)
    {
        var directory = Path.Combine(tree.Directory, "checkpoints", name);
        int linked = ancestor is null ? 0 : AncestorChain.Link(ancestor, Path.Combine(directory, "ancestors"), maxSets: 16);
        var session = new PreCopySession(_criu, new CriuOptions { Pid = tree.RootPid, ImagesDirectory = directory, LeaveRunning = leaveRunning ? true : null },
            PreCopyMethod.ContentComparison, ancestor: ancestor is null ? null : AncestorChain.SetDirectory(Path.Combine(directory, "ancestors"), 1));
        var round = session.PreDump();
        var final = session.Dump();
        // (parent links are not followed: each file once)
        long own = Directory.EnumerateFiles(directory, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint })
            .Where(f => !f.StartsWith(Path.Combine(directory, "ancestors") + "/", StringComparison.Ordinal))
            .Sum(f => new FileInfo(f).Length);
        return new Taken(directory, final.Directory, round.PagesWritten + final.PagesWritten, linked, own);
    }

    private static void Wait(IsolatedProcessTree tree, int ticks)
    {
        long now = tree.ReadTicks()[^1].Tick;
        tree.WaitForTick(t => t.Tick >= now + ticks, TickTimeout, $"{ticks} more ticks");
    }

    private static string Set(string root, string name, string? parent)
    {
        var directory = Directory.CreateDirectory(Path.Combine(root, name)).FullName;
        File.WriteAllBytes(Path.Combine(directory, CriuPagemap.FileName(1)), [1, 2, 3]);
        File.WriteAllBytes(Path.Combine(directory, CriuPagemap.PagesFileName(1)), [.. Enumerable.Repeat((byte)name.Length, 4096)]);
        if (parent is not null)
        {
            File.CreateSymbolicLink(Path.Combine(directory, "parent"), parent);
        }

        return directory;
    }

    private static string Inode(string path) => Stat("%d:%i", path);

    private static string Stat(string format, string path)
    {
        using var stat = Process.Start(new ProcessStartInfo("stat", ["-c", format, path]) { RedirectStandardOutput = true })!;
        var text = stat.StandardOutput.ReadToEnd().Trim();
        stat.WaitForExit();
        Assert.True(stat.ExitCode == 0, $"stat {path} failed");
        return text.ToString(CultureInfo.InvariantCulture);
    }
}

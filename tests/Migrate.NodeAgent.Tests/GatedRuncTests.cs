using System.Diagnostics;
using System.Text;
using Migrate.Api;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The gate a restore's runc, begun ahead, waits at: a real FIFO, with a shell in runc's place that
/// reads descriptors.json from its images directory as runc does before it starts CRIU (the real
/// runc goes through the gate in RestoreRuntimeTests and the end-to-end migrations).
/// </summary>
public sealed class GatedRuncTests : IDisposable
{
    private const string Descriptors = "[\"/dev/null\",\"pipe:[41]\",\"pipe:[42]\"]";

    // $1 the images directory, $2 where to put what it read and saw, $3 seconds to sleep first;
    // like runc: reads the descriptors to their end, then fails on what is not a JSON list
    private const string StandIn = """
        if [ "$3" = never ]; then exec sleep 600; fi
        sleep "$3" || exit 5
        cat "$1/descriptors.json" > "$2.read"
        ls "$1" > "$2.list"
        case "$(head -c 1 "$2.read")" in "[") exit 0 ;; *) exit 1 ;; esac
        """;

    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("podmig-gate-");

    public void Dispose() => _root.Delete(recursive: true);

    [Theory]
    [InlineData(true, true, false, false, null)]
    [InlineData(false, false, false, false, null)]
    [InlineData(true, true, true, true, null)]
    [InlineData(false, false, true, true, null)]
    [InlineData(true, false, false, false, "the images hold all of it")]
    [InlineData(false, true, false, false, "they leave it lazy")]
    [InlineData(true, false, true, false, "the images hold all of it")]
    [InlineData(true, true, true, false, "the source moved no address")]
    [InlineData(false, false, false, true, "the address moved")]
    public void A_runc_begun_ahead_fits_only_images_that_need_its_options(bool startedLazy, bool lazyNeeded, bool startedTcp, bool addressMoved, string? why)
    {
        var mismatch = GatedRunc.Mismatch(startedLazy, lazyNeeded, startedTcp, addressMoved);

        if (why is null)
        {
            Assert.Null(mismatch);
        }
        else
        {
            Assert.NotNull(mismatch);
            Assert.Contains(why, mismatch, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Runc_at_the_gate_reads_the_committed_descriptors_and_finds_the_images_linked()
    {
        var (images, round) = Images();
        using var gated = Start(delaySeconds: "0", out var output);

        Assert.True(gated.WaitAtGate(TimeSpan.FromSeconds(20)), "the stand-in never held the gate open");
        int exit = gated.Open(images, TimeSpan.FromSeconds(20));

        Assert.Equal(0, exit);
        Assert.True(gated.Opened);
        Assert.Equal(Descriptors, File.ReadAllText(output + ".read"));
        // what runc's CRIU finds there: the very files (links, not copies) and the parent set, from anywhere
        var core = Path.Combine(gated.ImagesDirectory, "core-1.img");
        Assert.Equal(FileStatus.Of(Path.Combine(images, "core-1.img"))!.Value.Inode, FileStatus.Of(core)!.Value.Inode);
        Assert.Equal(Path.GetFullPath(round), new FileInfo(Path.Combine(gated.ImagesDirectory, "parent")).LinkTarget);
        Assert.True(File.Exists(Path.Combine(gated.ImagesDirectory, "parent", "pages-1.img")));
        Assert.Equal(["core-1.img", "descriptors.json", "pagemap-1.img", "parent"], File.ReadAllLines(output + ".list").Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_runc_that_reaches_the_gate_after_it_opened_still_reads_every_byte()
    {
        var (images, _) = Images();
        using var gated = Start(delaySeconds: "1", out var output);

        // opened at once: the bytes wait in the pipe this process holds until the stand-in reads them
        int exit = gated.Open(images, TimeSpan.FromSeconds(20));

        Assert.Equal(0, exit);
        Assert.Equal(Descriptors, File.ReadAllText(output + ".read"));
    }

    [Fact]
    public void An_aborted_gate_has_runc_read_what_is_not_json_and_fail_with_no_images_linked()
    {
        using var gated = Start(delaySeconds: "0", out var output);
        Assert.True(gated.WaitAtGate(TimeSpan.FromSeconds(20)));

        Assert.True(gated.Abort(TimeSpan.FromSeconds(20)), "the stand-in did not end by itself");

        Assert.True(gated.Aborted);
        Assert.False(gated.Opened);
        Assert.Equal("abort\n", File.ReadAllText(output + ".read"));
        Assert.Equal(["descriptors.json"], File.ReadAllLines(output + ".list"));
        Assert.Equal([Path.Combine(gated.ImagesDirectory, "descriptors.json")], Directory.EnumerateFileSystemEntries(gated.ImagesDirectory));
    }

    [Fact]
    public void A_runc_that_never_reads_is_killed_when_the_limit_passes()
    {
        var (images, _) = Images();
        using var gated = Start(delaySeconds: "never", out var output);
        var clock = Stopwatch.StartNew();

        var error = Assert.Throws<IOException>(() => gated.Open(images, TimeSpan.FromSeconds(1)));

        Assert.Contains("did not read the images' descriptors within 1 seconds", error.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
        Assert.False(gated.Opened);
        Assert.False(File.Exists(output + ".read"));
        Assert.False(gated.WaitAtGate(TimeSpan.FromSeconds(1)), "the stand-in is still there");
    }

    [Fact]
    public void A_runc_that_failed_before_the_gate_is_not_waited_for_nor_taken_for_one_that_read()
    {
        var (images, _) = Images();
        using var gated = Start(delaySeconds: "not-a-number", out var output);

        Assert.False(gated.WaitAtGate(TimeSpan.FromSeconds(20)));
        var error = Assert.Throws<IOException>(() => gated.Open(images, TimeSpan.FromSeconds(20)));

        // not taken for a runc that read them: what it left is undone as for one never let through
        Assert.Contains("ended at its gate (exit status 5) before it read the images' descriptors", error.Message, StringComparison.Ordinal);
        Assert.False(gated.Opened);
        Assert.False(File.Exists(output + ".read"));
    }

    [Fact]
    public void Images_a_gate_cannot_carry_are_refused_with_the_reason()
    {
        var (images, _) = Images();
        File.WriteAllText(Path.Combine(images, "descriptors.json"), new string(' ', GatedRunc.MaximumDescriptorsBytes + 1));
        using var tooLarge = Start(delaySeconds: "0", out _);
        var large = Assert.Throws<IOException>(() => tooLarge.Open(images, TimeSpan.FromSeconds(20)));
        Assert.Contains("no descriptors.json of at most 65536 bytes", large.Message, StringComparison.Ordinal);
        Assert.False(tooLarge.Opened);
        Assert.True(tooLarge.Abort(TimeSpan.FromSeconds(20)));

        File.WriteAllText(Path.Combine(images, "descriptors.json"), Descriptors);
        Directory.CreateDirectory(Path.Combine(images, "subdirectory"));
        using var nested = Start(delaySeconds: "0", out _);
        var directory = Assert.Throws<IOException>(() => nested.Open(images, TimeSpan.FromSeconds(20)));
        Assert.Contains("the images hold a directory (subdirectory)", directory.Message, StringComparison.Ordinal);
        Assert.False(nested.Opened);
    }

    [Fact]
    public void A_runc_left_waiting_by_a_dead_restore_runtime_is_let_go_and_nothing_else_is_touched()
    {
        var work = Directory.CreateDirectory(Path.Combine(_root.FullName, "restore-left")).FullName;
        Assert.False(GatedRunc.ReleaseLeftover(work), "no gate there");
        var gate = Directory.CreateDirectory(GatedRunc.GateDirectory(work)).FullName;
        var fifo = Path.Combine(gate, GatedRunc.DescriptorsFile);
        using (var mkfifo = Process.Start("mkfifo", ["-m", "600", fifo]))
        {
            mkfifo.WaitForExit();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        Assert.False(GatedRunc.ReleaseLeftover(work), "nobody waits at the gate");

        // as runc would be had its holder died first: blocked in open(2), waiting for a writer
        var output = Path.Combine(work, "seen");
        using var waiting = Process.Start(new ProcessStartInfo("/bin/sh") { ArgumentList = { "-c", "cat \"$1\" > \"$2\"", "sh", fifo, output } })!;
        var clock = Stopwatch.StartNew();
        bool released = false;
        while (!released && clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            released = GatedRunc.ReleaseLeftover(work);
            Thread.Sleep(released ? 0 : 10);
        }

        Assert.True(released, "the waiting reader was never found");
        Assert.True(waiting.WaitForExit(20_000), "the reader still waits");
        Assert.Equal("abort\n", File.ReadAllText(output));
    }

    /// <summary>A committed image set (a few files, descriptors.json, a relative "parent" link) and the round it links to.</summary>
    private (string Images, string Round) Images()
    {
        var round = Directory.CreateDirectory(Path.Combine(_root.FullName, "containers", "main", "round-1")).FullName;
        File.WriteAllText(Path.Combine(round, "pages-1.img"), "round pages");
        var images = Directory.CreateDirectory(Path.Combine(_root.FullName, "containers", "main", "final")).FullName;
        File.WriteAllText(Path.Combine(images, "core-1.img"), "core");
        File.WriteAllText(Path.Combine(images, "pagemap-1.img"), "pagemap");
        File.WriteAllText(Path.Combine(images, "descriptors.json"), Descriptors, new UTF8Encoding(false));
        File.CreateSymbolicLink(Path.Combine(images, "parent"), "../round-1");
        return (images, round);
    }

    private GatedRunc Start(string delaySeconds, out string output)
    {
        var work = Directory.CreateDirectory(Path.Combine(_root.FullName, "restore-" + Guid.NewGuid().ToString("N")[..8])).FullName;
        var gate = GatedRunc.GateDirectory(work);
        output = Path.Combine(work, "seen");
        return GatedRunc.Start("/bin/sh", ["-c", StandIn, "sh", gate, output, delaySeconds], gate, lazy: false, tcpEstablished: false,
            new Dictionary<string, string>(StringComparer.Ordinal));
    }
}

using System.Diagnostics;
using Migrate.Api;
using Migrate.Criu;
using Migrate.Criu.Incremental;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// A frozen pod's file-system archives, made with the real tar beside the end of the final dump:
/// begun by CRIU's post-dump notification and nothing earlier, waited for when the freeze needs
/// them, made again from the start after a dump that failed.
/// </summary>
public sealed class FilesystemArchivesTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-fs-archives-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void The_archives_begin_at_the_post_dump_notification_and_nothing_earlier_and_are_waited_for_when_asked()
    {
        var (record, upper) = Record();
        File.WriteAllBytes(Path.Combine(upper, "state.bin"), new byte[256 * 1024]);
        var archive = Path.Combine(record.StagingDirectory, StagingLayout.RootfsArchive("main"));
        var clock = Stopwatch.StartNew();
        var archives = new FilesystemArchives(record, () => clock.Elapsed);

        foreach (var earlier in new[] { "pre-dump", "network-lock" })
        {
            Assert.True(archives.StartAt(new CriuNotification(earlier, 1)), "a notification is never refused");
        }

        Thread.Sleep(200);
        Assert.False(File.Exists(archive), "nothing is archived before the post-dump: CRIU may still be making its scratch directories");

        Assert.True(archives.StartAt(new CriuNotification(PreCopySession.PostDumpAction, 1)));
        Assert.True(SpinWait.SpinUntil(() => File.Exists(archive), TimeSpan.FromSeconds(20)), "the archive is made in the background once the post-dump came");
        Thread.Sleep(100);
        var archived = archives.Finish();

        Assert.Equal(new FileInfo(archive).Length, (long)Assert.Single(archived.RootfsBytes));
        Assert.True(archived.Overlap > TimeSpan.Zero, "the archive ran before it was asked for");
        Assert.Contains("./state.bin", Listing(archive));
    }

    [Fact]
    public void Without_a_post_dump_the_archives_are_made_when_asked_and_nothing_overlapped()
    {
        var (record, upper) = Record();
        File.WriteAllText(Path.Combine(upper, "written"), "after the image");
        var archives = new FilesystemArchives(record, () => TimeSpan.Zero);

        var archived = archives.Finish();

        Assert.Equal(TimeSpan.Zero, archived.Overlap);
        Assert.Contains("./written", Listing(Path.Combine(record.StagingDirectory, StagingLayout.RootfsArchive("main"))));
    }

    [Fact]
    public void A_settled_archive_is_made_again_from_the_start_at_the_next_post_dump()
    {
        var (record, upper) = Record();
        var clock = Stopwatch.StartNew();
        var archives = new FilesystemArchives(record, () => clock.Elapsed);
        archives.StartAt(new CriuNotification(PreCopySession.PostDumpAction, 1));
        archives.Settle();
        // what a plain dump after a failed lazy one may still change is in the archive made for it
        File.WriteAllText(Path.Combine(upper, "later"), "x");
        archives.StartAt(new CriuNotification(PreCopySession.PostDumpAction, 1));

        var archived = archives.Finish();

        Assert.Contains("./later", Listing(Path.Combine(record.StagingDirectory, StagingLayout.RootfsArchive("main"))));
        Assert.True(archived.RootfsBytes[0] > 0);
    }

    [Fact]
    public void A_failed_archive_fails_the_freeze_naming_what_it_archived()
    {
        var (record, upper) = Record();
        Directory.Delete(upper);
        var clock = Stopwatch.StartNew();
        var archives = new FilesystemArchives(record, () => clock.Elapsed);
        archives.StartAt(new CriuNotification(PreCopySession.PostDumpAction, 1));

        var error = Assert.Throws<IOException>(archives.Finish);

        Assert.Contains("the writable layer of container main", error.Message);
    }

    private (MigrationRecord Record, string Upper) Record()
    {
        var upper = Directory.CreateDirectory(Path.Combine(_directory, "upper")).FullName;
        // this test's own process stands for the container: its node's paths are opened as they are
        var container = new ContainerRecord("main", "c1", "img", Environment.ProcessId, "", "/", upper, 0, null, [], []);
        var record = new MigrationRecord
        {
            MigrationId = "m1",
            Namespace = "default",
            PodName = "p",
            PodUid = "u",
            NodeName = "node-a",
            SandboxId = "s",
            StagingDirectory = Path.Combine(_directory, "staging"),
            PreCopyMethod = Migrate.Criu.Incremental.PreCopyMethod.ContentComparison,
            Containers = [container],
        };
        return (record, upper);
    }

    private static string Listing(string archive)
    {
        using var tar = Process.Start(new ProcessStartInfo("tar", ["--list", "--file", archive]) { RedirectStandardOutput = true })!;
        string listing = tar.StandardOutput.ReadToEnd();
        tar.WaitForExit();
        Assert.Equal(0, tar.ExitCode);
        return listing;
    }
}

using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Migrate.Api;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The target agent hears of the restore runtime's reports (a replacement waiting for its images,
/// a restore done) through inotify, not only by its poll: the operator's handoff and cut-over wait on them.
/// </summary>
public sealed class IncomingReportWatchTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("incoming-watch-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    // paths under the incoming root, as the watcher names them
    [InlineData("m1/restore-main.waiting", true)]
    [InlineData("m1/restore-main.done", true)]
    [InlineData("m1/decision", true)]
    [InlineData("m1/restore-main/pages.log", true)]
    [InlineData("m1", false)]
    [InlineData("m1/files/containers/main/final/pages-1.img", false)]
    [InlineData("m1/files/rootfs.tar", false)]
    [InlineData("m1/files", true)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Only_the_runtime_s_reports_wake_the_agent(string? path, bool wakes) =>
        Assert.Equal(wakes, IncomingMigrations.IsReport(path));

    [Fact]
    public async Task A_replacement_waiting_and_its_restore_done_are_told_at_once_not_at_the_next_poll()
    {
        var incoming = Path.Combine(_root, "incoming");
        var options = Options.Create(new AgentOptions { NodeName = "node-t", StagingDirectory = Path.Combine(_root, "staging"), IncomingDirectory = incoming });
        var events = new MigrationEvents();
        using var subscription = events.Subscribe();
        // a poll too slow to be what tells
        using var service = new IncomingMigrations(options, events, NullLogger<IncomingMigrations>.Instance) { PollInterval = TimeSpan.FromMinutes(10) };
        const string id = "0b7f2f4e-3c1e-4a55-9d7a-2f6c1d0e9a11";
        var directory = Path.Combine(incoming, id);
        Directory.CreateDirectory(Path.Combine(directory, "files"));
        await service.StartAsync(CancellationToken.None);
        try
        {
            // the first look (at start) sees the migration; what comes after must come from the watch
            Assert.Equal(id, await NextAsync(subscription));

            await File.WriteAllTextAsync(Path.Combine(directory, StagingLayout.RestoreWaitingFile("main")), "4242");
            Assert.Equal(id, await NextAsync(subscription));
            Assert.True(service.Status(id, expected: true)!.Restores.Single().Waiting);

            // images written under files/ wake nothing
            await File.WriteAllBytesAsync(Path.Combine(directory, "files", "pages-1.img"), new byte[4096]);
            using (var quiet = new CancellationTokenSource(TimeSpan.FromMilliseconds(500)))
            {
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => subscription.Reader.ReadAsync(quiet.Token).AsTask());
            }

            // as podmig-runc writes it: beside, then renamed into place whole
            var done = Path.Combine(directory, StagingLayout.RestoredFile("main"));
            await File.WriteAllTextAsync(done + ".tmp", JsonSerializer.Serialize(new RestoreReport(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), 120), RestoreReportJson.Default.RestoreReport));
            File.Move(done + ".tmp", done);
            File.Delete(Path.Combine(directory, StagingLayout.RestoreWaitingFile("main")));
            Assert.Equal(id, await NextAsync(subscription));
            var restore = service.Status(id, expected: true)!.Restores.Single();
            Assert.True(restore.Restored);
            Assert.False(restore.Waiting);
            Assert.Equal(120u, restore.RestoreMillis);
        }
        finally
        {
            await service.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>The next migration told, within 30 seconds (the poll is ten minutes: only the watch can tell this soon).</summary>
    private static async Task<string> NextAsync(MigrationEvents.Subscription subscription)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        return await subscription.Reader.ReadAsync(timeout.Token);
    }
}

using System.Diagnostics;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>
/// The benchmark's workload checks its memory only when asked: with --verify-on-resume 0 a pause
/// does not start a full read of its buffer, and <see cref="Memcounter.RequestVerification"/>
/// reaches the real process through its root and gets one check.
/// </summary>
public sealed class MemcounterVerificationTests : IDisposable
{
    private const int SigStop = 19, SigCont = 18;
    private readonly string _directory = Directory.CreateTempSubdirectory("memcounter-verify-").FullName;

    [Fact]
    public async Task A_pause_starts_a_check_only_when_the_workload_verifies_on_resume_and_a_request_gets_one_check()
    {
        var quiet = Path.Combine(_directory, "quiet-verify-now");
        var resuming = Path.Combine(_directory, "resuming-verify-now");
        await using var asked = Start("quiet", ["--verify-on-resume", "0", "--verify-file", quiet]);
        await using var onResume = Start("resuming", ["--verify-file", resuming]);
        await WaitForTicksAsync(asked, 5);
        await WaitForTicksAsync(onResume, 5);

        // a pause of 600 ms, far beyond the 4 intervals and 200 ms memcounter takes for a freeze
        ChildProcess.Signal(asked.Pid, SigStop);
        ChildProcess.Signal(onResume.Pid, SigStop);
        int askedBefore = Ticks(asked).Count, onResumeBefore = Ticks(onResume).Count;
        await Task.Delay(600);
        ChildProcess.Signal(asked.Pid, SigCont);
        ChildProcess.Signal(onResume.Pid, SigCont);
        await WaitForTicksAsync(asked, askedBefore + 5);
        await WaitForTicksAsync(onResume, onResumeBefore + 5);

        Assert.Equal("ok", Ticks(onResume)[onResumeBefore].Verified);
        Assert.All(Ticks(asked).Skip(1), t => Assert.Equal("-", t.Verified));

        // asked through its root (here the host's): one check, and the file is taken away
        int seen = Ticks(asked).Count;
        Assert.Equal(1, Memcounter.RequestVerification(quiet));
        await WaitForTicksAsync(asked, seen + 5);
        var checks = Ticks(asked).Skip(seen).Where(t => t.Verified != "-").ToList();
        Assert.Equal("ok", Assert.Single(checks).Verified);
        Assert.False(File.Exists(quiet));
    }

    [Fact]
    public void A_request_nobody_can_take_is_an_error_that_names_the_file()
    {
        var missing = Path.Combine(_directory, "nobody-verify-now");
        var error = Assert.Throws<InvalidOperationException>(() => Memcounter.RequestVerification(missing));
        Assert.Contains(missing, error.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(missing));
        Assert.Throws<ArgumentException>(() => Memcounter.RequestVerification("relative/verify-now"));
        Assert.Throws<ArgumentException>(() => Memcounter.RequestVerification("/tmp/../etc/verify-now"));
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private ChildProcess Start(string name, string[] verification) =>
        ChildProcess.Start("memcounter-" + name, Memcounter.BinaryPath(),
            ["--mib", "8", "--interval-ms", "20", "--verify-every", "0", .. verification], Path.Combine(_directory, name + ".log"));

    private static IReadOnlyList<MemcounterTick> Ticks(ChildProcess process) =>
        Memcounter.Parse(File.ReadAllLines(process.LogPath));

    private static async Task WaitForTicksAsync(ChildProcess process, int count)
    {
        var clock = Stopwatch.StartNew();
        while (Ticks(process).Count < count)
        {
            Assert.False(process.HasExited, $"{process.Name} ended:\n{process.LogTail()}");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"{process.Name} did not reach {count} ticks within 30 s:\n{process.LogTail()}");
            await Task.Delay(20);
        }
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Migrate.Criu;
using Migrate.NodeAgent.Networking;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// An established TCP connection whose process is dumped and restored, with real CRIU (TCP repair),
/// iptables, bridge and veths: the two ends of seqstream check a sequence-numbered stream in both
/// directions, so a reset, a lost byte or a repeated one ends the test's peer with an error line.
/// </summary>
public sealed partial class ConnectionHandoverTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly L2Segment _segment = L2Segment.Create();
    private readonly string _directory = Directory.CreateTempSubdirectory("migrate-tcp-").FullName;
    private readonly List<Process> _started = [];
    private readonly List<int> _restored = [];
    private readonly CriuClient _criu = new();
    private readonly NamespaceStepRunner _steps = new();
    private readonly PodNetworkLock _lock = new();

    [Theory]
    [InlineData(1)]
    [InlineData(100)]
    public void Connections_survive_their_process_and_address_moving_to_another_namespace_of_the_segment(int connections)
    {
        var (source, peer, serverLog, clientLog) = StartPair(connections);
        var target = _segment.Add("target", 0);
        var address = new PodAddress(source.Interface, source.Cidr!, source.Mac);
        // the source's own route through its interface (a default route, as a CNI plugin makes): it must move too
        Prerequisites.Run("nsenter", "--net=" + source.NamespacePath, "ip", "route", "add", "default", "via", peer.Address!, "dev", source.Interface);
        var routes = AddressHandover.RoutesFromIpJson(Prerequisites.Run("nsenter", "--net=" + source.NamespacePath, "ip", "-j", "route", "show"), source.Interface);
        Assert.Equal([new PodRoute("default", peer.Address)], routes);
        var before = WaitForReceived(clientLog, 50);

        var laps = new List<string>();
        var clock = Stopwatch.StartNew();
        void Lap(string what) => laps.Add(string.Create(CultureInfo.InvariantCulture, $"{what} {clock.Elapsed.TotalMilliseconds:F0}"));
        _lock.Lock(source.NamespacePath);
        Lap("source locked");
        var images = Path.Combine(_directory, "images");
        _criu.Dump(new CriuOptions
        {
            Pid = _started[0].Id,
            ImagesDirectory = images,
            LogLevel = CriuLogLevel.Debug,
            TcpEstablished = true,
            NetworkLock = CriuNetworkLock.Skip,
            External = [$"net[{NamespaceInode(source.NamespacePath)}]:extRootNetNS"],
        });
        Lap("dumped");
        _steps.Run(source.NamespacePath, AddressHandover.Release(address), "release the address");
        Lap("released");
        _lock.Lock(target.NamespacePath);
        Lap("target locked");
        _steps.Run(target.NamespacePath, AddressHandover.Claim(address, routes), "claim the address");
        Lap("claimed");
        using (var netns = File.OpenHandle(target.NamespacePath))
        {
            var restored = _criu.Restore(new CriuOptions
            {
                ImagesDirectory = images,
                LogLevel = CriuLogLevel.Debug,
                TcpEstablished = true,
                NetworkLock = CriuNetworkLock.Skip,
                InheritedDescriptors = [new((int)netns.DangerousGetHandle(), "extRootNetNS")],
            });
            _restored.Add(restored.Pid);
            Lap("restored");
            Assert.Equal(NamespaceInode(target.NamespacePath), NamespaceInode($"/proc/{restored.Pid}/ns/net"));
        }

        _lock.Unlock(target.NamespacePath);
        Lap("target unlocked");
        var moved = clock.Elapsed;
        _steps.Run(target.NamespacePath, AddressHandover.Announce(address), "announce the address");
        Lap("announced");

        var after = WaitForReceived(clientLog, before.Received + (200 * (ulong)connections));
        output.WriteLine($"{connections} connection(s); before: {before}; after: {after}; ms since the source's lock: {string.Join(", ", laps)}");
        Assert.DoesNotContain("error", File.ReadAllText(clientLog), StringComparison.Ordinal);
        Assert.DoesNotContain("error", File.ReadAllText(serverLog), StringComparison.Ordinal);
        Assert.Null(AddressOf(source));
        Assert.Equal(source.Cidr, AddressOf(target));
        Assert.Contains($"default via {peer.Address} dev {target.Interface}", Prerequisites.Run("nsenter", "--net=" + target.NamespacePath, "ip", "route", "show"), StringComparison.Ordinal);
        Assert.False(_lock.IsLocked(target.NamespacePath));
        Figures.Record("ConnectionHandover", $"{connections} tcp: lock to unlocked", moved.TotalMilliseconds, "ms");
        Figures.Record("ConnectionHandover", $"{connections} tcp: peer's longest gap", after.MaxGap, "ms");
    }

    [Fact]
    public void A_rollback_after_the_lock_and_the_dump_leaves_the_connection_working_on_the_source()
    {
        var (source, _, serverLog, clientLog) = StartPair(1);
        var before = WaitForReceived(clientLog, 50);

        _lock.Lock(source.NamespacePath);
        Assert.True(_lock.IsLocked(source.NamespacePath));
        _lock.Lock(source.NamespacePath); // a repeated lock changes nothing
        _criu.Dump(new CriuOptions
        {
            Pid = _started[0].Id,
            ImagesDirectory = Path.Combine(_directory, "images"),
            LeaveRunning = true,
            TcpEstablished = true,
            NetworkLock = CriuNetworkLock.Skip,
            External = [$"net[{NamespaceInode(source.NamespacePath)}]:extRootNetNS"],
        });
        // locked: the peer's records are dropped, not refused, so nothing arrives and nothing breaks
        // (the peer reports once a second: the report read 1.2 s after the lock was written after it)
        Thread.Sleep(1200);
        var locked = LastReport(clientLog);
        Thread.Sleep(2000);
        Assert.InRange(LastReport(clientLog).Received - locked.Received, 0UL, 1UL);

        _lock.Unlock(source.NamespacePath);
        _lock.Unlock(source.NamespacePath); // a repeated unlock changes nothing
        Assert.False(_lock.IsLocked(source.NamespacePath));
        var after = WaitForReceived(clientLog, locked.Received + 200);
        output.WriteLine($"before: {before}; locked: {locked}; after: {after}");
        Assert.DoesNotContain("error", File.ReadAllText(clientLog), StringComparison.Ordinal);
        Assert.DoesNotContain("error", File.ReadAllText(serverLog), StringComparison.Ordinal);
    }

    [Fact]
    public void Without_the_lock_the_peer_sees_the_dumped_connection_reset()
    {
        // the control: what the lock prevents. The killed source's socket is closed in repair
        // mode (no FIN, no reset), but the namespace, with its address, still answers: the peer's
        // next record gets a reset.
        var (source, _, _, clientLog) = StartPair(1);
        WaitForReceived(clientLog, 50);
        _criu.Dump(new CriuOptions
        {
            Pid = _started[0].Id,
            ImagesDirectory = Path.Combine(_directory, "images"),
            TcpEstablished = true,
            NetworkLock = CriuNetworkLock.Skip,
            External = [$"net[{NamespaceInode(source.NamespacePath)}]:extRootNetNS"],
        });
        var clock = Stopwatch.StartNew();
        while (!File.ReadAllText(clientLog).Contains("error", StringComparison.Ordinal) && clock.Elapsed < Patience)
        {
            Thread.Sleep(50);
        }

        var log = File.ReadAllText(clientLog);
        output.WriteLine(log.Split('\n').LastOrDefault(l => l.Length > 0));
        Assert.Contains("error: connection", log, StringComparison.Ordinal);
    }

    private (SegmentMember Source, SegmentMember Peer, string ServerLog, string ClientLog) StartPair(int connections)
    {
        var source = _segment.Add("source", 2);
        var peer = _segment.Add("peer", 1);
        var binary = Workloads.Build("seqstream");
        var serverLog = Path.Combine(_directory, "server.log");
        var clientLog = Path.Combine(_directory, "client.log");
        _started.Add(L2Segment.Start(source, serverLog, binary, "--listen", "7000", "--connections", connections.ToString(CultureInfo.InvariantCulture)));
        WaitForText(serverLog, "listening");
        _started.Add(L2Segment.Start(peer, clientLog, binary, "--connect", source.Address + ":7000", "--connections", connections.ToString(CultureInfo.InvariantCulture)));
        WaitForText(serverLog, "connected");
        return (source, peer, serverLog, clientLog);
    }

    private static ulong NamespaceInode(string path)
    {
        var line = Prerequisites.Run("stat", "-L", "-c", "%i", path).Trim();
        return ulong.Parse(line, CultureInfo.InvariantCulture);
    }

    private static string? AddressOf(SegmentMember member)
    {
        var shown = Prerequisites.Run("ip", "-n", Path.GetFileName(member.NamespacePath), "-o", "-4", "address", "show", "dev", member.Interface);
        var match = Regex.Match(shown, @"inet (\S+)");
        return match.Success ? match.Groups[1].Value : null;
    }

    /// <summary>seqstream's once-a-second line: records sent and received over all connections, the longest time (ms) any connection received nothing.</summary>
    private readonly record struct Report(ulong Sent, ulong Received, long MaxGap);

    private static Report LastReport(string log)
    {
        var last = File.ReadAllLines(log).Select(l => ReportLine().Match(l)).LastOrDefault(m => m.Success);
        return last is null ? default : new Report(ulong.Parse(last.Groups[1].Value, CultureInfo.InvariantCulture), ulong.Parse(last.Groups[2].Value, CultureInfo.InvariantCulture),
            long.Parse(last.Groups[3].Value, CultureInfo.InvariantCulture));
    }

    private static Report WaitForReceived(string log, ulong received)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < Patience)
        {
            var text = File.ReadAllText(log);
            var report = LastReport(log);
            if (report.Received >= received || text.Contains("error", StringComparison.Ordinal))
            {
                Assert.DoesNotContain("error", text, StringComparison.Ordinal);
                return report;
            }

            Thread.Sleep(100);
        }

        throw new TimeoutException($"{log} did not report {received} records received within {Patience.TotalSeconds} s: {File.ReadAllText(log)}");
    }

    private static void WaitForText(string log, string text)
    {
        var clock = Stopwatch.StartNew();
        while (!(File.Exists(log) && File.ReadAllText(log).Contains(text, StringComparison.Ordinal)))
        {
            if (clock.Elapsed > Patience)
            {
                throw new TimeoutException($"{log} did not say '{text}' within {Patience.TotalSeconds} s: {(File.Exists(log) ? File.ReadAllText(log) : "(no file)")}");
            }

            Thread.Sleep(50);
        }
    }

    [GeneratedRegex(@"^sent (\d+) received (\d+) maxgap (\d+)$")]
    private static partial Regex ReportLine();

    public void Dispose()
    {
        // the restored server is not a child of this process (CRIU's service was its parent): signal it by PID
        foreach (var pid in _restored)
        {
            ChildProcess.Signal(pid, 9);
        }

        foreach (var process in _started)
        {
            if (!process.HasExited)
            {
                process.Kill();
                process.WaitForExit(5000);
            }

            process.Dispose();
        }

        for (int i = 0; i < 100 && _restored.Any(pid => Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z ", StringComparison.Ordinal)); i++)
        {
            Thread.Sleep(20);
        }

        _segment.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}

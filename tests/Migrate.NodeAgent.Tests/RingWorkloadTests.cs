using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The ring workload (tests/workloads/ring.c) as plain processes on the loopback: a token passed
/// round three members, each checking it is the previous one plus three, and a member whose
/// neighbour dies, or whose predecessor sends a wrong token, stopping with an error line.
/// </summary>
public sealed partial class RingWorkloadTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);
    private readonly string _directory = Directory.CreateTempSubdirectory("migrate-ring-").FullName;

    [Fact]
    public async Task Three_members_pass_the_token_round_and_the_neighbours_of_a_killed_member_stop_with_status_3()
    {
        var binary = Workloads.Build("ring");
        var ports = DistinctFreePorts(3);
        var nextFile = Path.Combine(_directory, "next");
        var members = new List<RingMember>();
        try
        {
            members.Add(RingMember.Start("first", binary, "--listen", Text(ports[0]), "--next", "127.0.0.1:" + Text(ports[1]), "--members", "3", "--start"));
            members.Add(RingMember.Start("second", binary, "--listen", Text(ports[1]), "--next-file", nextFile, "--members", "3"));
            members.Add(RingMember.Start("third", binary, "--listen", Text(ports[2]), "--next", "127.0.0.1:" + Text(ports[0]), "--members", "3"));
            // the second member learns its successor late, as a pod learns its peer's address: the ring waits for it
            await Task.Delay(300);
            await File.WriteAllTextAsync(nextFile, "127.0.0.1:" + Text(ports[2]) + "\n");

            var clock = Stopwatch.StartNew();
            while (members.Any(m => m.Reports().Count < 2) || clock.Elapsed < TimeSpan.FromSeconds(2))
            {
                Assert.True(clock.Elapsed < Patience, "no two report lines from every member:\n" + string.Join('\n', members.Select(m => m.Describe())));
                Assert.All(members, m => Assert.False(m.HasExited, m.Describe()));
                await Task.Delay(100);
            }

            for (var i = 0; i < members.Count; i++)
            {
                var member = members[i];
                output.WriteLine(member.Describe());
                Assert.DoesNotContain(member.Lines(), l => l.StartsWith("error", StringComparison.Ordinal));
                var reports = member.Reports();
                Assert.True(reports.Count >= 2, member.Describe());
                Assert.All(reports.Zip(reports.Skip(1)), pair => Assert.True(pair.Second.Last > pair.First.Last && pair.Second.Hops > pair.First.Hops, member.Describe()));
                // the starter sent 1: member i receives the tokens i, i+3, i+6, ... (the starter 3, 6, ...)
                Assert.All(reports, r => Assert.Equal((ulong)i, r.Last % 3));
            }

            members[1].Kill();
            foreach (var neighbour in new[] { members[0], members[2] })
            {
                var status = await neighbour.WaitForExitAsync(Patience);
                output.WriteLine(neighbour.Describe());
                Assert.Equal(3, status);
                // its own link to the killed member, as a rule; the other one if the other neighbour was quicker to stop
                Assert.Contains(neighbour.Lines(), l => ConnectionError().IsMatch(l));
            }
        }
        finally
        {
            foreach (var member in members)
            {
                member.Dispose();
            }
        }
    }

    [Fact]
    public async Task A_member_checks_the_tokens_of_its_predecessor_across_split_reads_and_stops_with_status_2_on_a_wrong_one()
    {
        var binary = Workloads.Build("ring");
        var port = DistinctFreePorts(1)[0];
        var successor = new TcpListener(IPAddress.Loopback, 0);
        successor.Start();
        var successorPort = ((IPEndPoint)successor.LocalEndpoint).Port;
        RingMember? member = null;
        try
        {
            member = RingMember.Start("member", binary, "--listen", Text(port), "--next", "127.0.0.1:" + Text(successorPort), "--members", "3", "--interval-ms", "10");
            using var timeout = new CancellationTokenSource(Patience);
            using var outgoing = await successor.AcceptTcpClientAsync(timeout.Token);
            using var predecessor = new TcpClient();
            await predecessor.ConnectAsync(IPAddress.Loopback, port, timeout.Token);
            var toMember = predecessor.GetStream();
            var fromMember = outgoing.GetStream();

            // the first token may be anything (this member is not the starter); it arrives in two pieces
            var token = Token(5);
            await toMember.WriteAsync(token.AsMemory(0, 3), timeout.Token);
            await toMember.FlushAsync(timeout.Token);
            await Task.Delay(200, timeout.Token);
            await toMember.WriteAsync(token.AsMemory(3), timeout.Token);
            var passed = new byte[8];
            await fromMember.ReadExactlyAsync(passed, timeout.Token);
            Assert.Equal(6UL, BinaryPrimitives.ReadUInt64BigEndian(passed));

            // the next one must be 5 + 3
            await toMember.WriteAsync(Token(7), timeout.Token);
            var status = await member.WaitForExitAsync(Patience);
            output.WriteLine(member.Describe());
            Assert.Equal(2, status);
            Assert.Contains("error: expected 8 got 7", member.Lines());
        }
        finally
        {
            member?.Dispose();
            successor.Stop();
            successor.Dispose();
        }
    }

    private static byte[] Token(ulong value)
    {
        var token = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(token, value);
        return token;
    }

    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static int[] DistinctFreePorts(int count) => [.. Enumerable.Range(0, count).Select(_ => Ports.Free())];

    /// <summary>ring's once-a-second line: tokens received, the last one, the longest time (ms) between two.</summary>
    private readonly record struct Report(ulong Hops, ulong Last, long MaxGap);

    [GeneratedRegex(@"^hops (\d+) last (\d+) maxgap (\d+)$")]
    private static partial Regex ReportLine();

    [GeneratedRegex(@"^error: (predecessor|successor) connection\b")]
    private static partial Regex ConnectionError();

    /// <summary>One ring process, its output kept in memory; killed by its PID when disposed.</summary>
    private sealed class RingMember : IDisposable
    {
        private readonly Process _process;
        private readonly List<string> _lines = [];

        private RingMember(string name, Process process)
        {
            Name = name;
            _process = process;
            Pid = process.Id;
        }

        public string Name { get; }

        public int Pid { get; }

        public bool HasExited => _process.HasExited;

        public static RingMember Start(string name, string binary, params string[] arguments)
        {
            var start = new ProcessStartInfo(binary) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in arguments)
            {
                start.ArgumentList.Add(argument);
            }

            var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {binary}");
            var member = new RingMember(name, process);
            process.OutputDataReceived += (_, e) => member.Add(e.Data);
            process.ErrorDataReceived += (_, e) => member.Add(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return member;
        }

        private void Add(string? line)
        {
            if (line is not null)
            {
                lock (_lines)
                {
                    _lines.Add(line);
                }
            }
        }

        public IReadOnlyList<string> Lines()
        {
            lock (_lines)
            {
                return [.. _lines];
            }
        }

        public IReadOnlyList<Report> Reports() =>
            [.. Lines().Select(l => ReportLine().Match(l)).Where(m => m.Success)
                .Select(m => new Report(ulong.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), ulong.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
                    long.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture)))];

        public string Describe() => $"{Name} (pid {Pid}{(_process.HasExited ? ", exited " + Text(_process.ExitCode) : "")}):\n" + string.Join('\n', Lines());

        /// <summary>Its exit status; fails if it has not exited within <paramref name="patience"/>.</summary>
        public async Task<int> WaitForExitAsync(TimeSpan patience)
        {
            using var timeout = new CancellationTokenSource(patience);
            try
            {
                await _process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"{Name} did not exit within {patience.TotalSeconds:0} s:\n{Describe()}");
            }

            return _process.ExitCode;
        }

        /// <summary>SIGKILL by its PID, and wait for it.</summary>
        public void Kill()
        {
            if (!_process.HasExited)
            {
                ChildProcess.Signal(Pid, 9);
            }

            _process.WaitForExit(5000);
        }

        public void Dispose()
        {
            Kill();
            _process.Dispose();
        }
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}

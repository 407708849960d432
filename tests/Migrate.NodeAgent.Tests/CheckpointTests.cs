using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Cri.V1;
using Migrate.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Checkpoints of pods run by a real containerd (with runc and CRIU), through the agent's gRPC API.
/// </summary>
[Collection(RealNodes.Name)]
public sealed class CheckpointTests(ITestOutputHelper output) : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("ckpt");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    internal static TestContainer Counter(string name, int mib = 8, params string[] extra) =>
        new(name, TestImages.Memcounter,
            ["/bin/memcounter", "--mib", mib.ToString(CultureInfo.InvariantCulture), "--seed", "7", "--interval-ms", "50", "--verify-every", "0", .. extra]);

    internal static BeginCheckpointRequest Begin(string migration, RunningTestPod pod, string node) =>
        new() { MigrationId = migration, Pod = new PodRef { Namespace = pod.Namespace, Name = pod.Name, Uid = pod.Uid }, NodeName = node };

    [Fact]
    public async Task A_frozen_pod_stops_counting_stays_running_for_the_runtime_and_resumes_where_it_stopped()
    {
        var pod = await _agent.RunPodAsync("counter", Counter("main"));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 5);
        var client = _agent.Client;

        var begun = await client.BeginCheckpointAsync(Begin("m-freeze", pod, _agent.NodeName));
        var dump = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-freeze" });

        var frozenAt = AgentOnNode.LastTick(pod, "main");
        await Task.Delay(1000);
        var whileFrozen = AgentOnNode.LastTick(pod, "main");
        Assert.Equal(MigrationPhase.Prepared, begun.Phase);
        Assert.Equal(frozenAt, whileFrozen);
        Assert.Equal(ContainerState.ContainerRunning, await _agent.ContainerStateAsync(pod.ContainerIds["main"]));
        Assert.Equal(MigrationPhase.Frozen, (await client.GetMigrationAsync(new MigrationRef { MigrationId = "m-freeze" })).Phase);
        Assert.True(dump.Containers.Single().ImageBytes > 8UL * 1024 * 1024, $"image of an 8 MiB counter holds {dump.Containers.Single().ImageBytes} bytes");

        // a retried call returns the recorded result and does not dump again
        var again = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-freeze" });
        Assert.Equal(dump, again);

        var resumed = await client.ResumeAsync(new ResumeRequest { MigrationId = "m-freeze" });
        var after = await AgentOnNode.WaitForTicksAsync(pod, "main", (int)frozenAt + 5);
        Assert.Equal(MigrationPhase.Resumed, resumed.Phase);
        Assert.Equal(Enumerable.Range(1, after.Count).Select(i => (long)i), after.Select(t => t.Tick));
        Assert.Single(after.Select(t => t.Pid).Distinct());
        Assert.Equal(resumed, await client.ResumeAsync(new ResumeRequest { MigrationId = "m-freeze" }));

        var staging = begun.StagingDirectory;
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(staging));
        // CRIU's log of the dump (written in the freeze) holds its steps, not its debug lines (Agent:CriuDebugLogs is off)
        var log = File.ReadAllLines(Assert.Single(Directory.EnumerateFiles(staging, "dump.log", SearchOption.AllDirectories)));
        Assert.Contains(log, l => l.EndsWith("Dumping finished successfully", StringComparison.Ordinal));
        Assert.DoesNotContain(log, l => l.Contains("page-pipe:", StringComparison.Ordinal));
        var cleaned = await client.CleanupAsync(new MigrationRef { MigrationId = "m-freeze" });
        Assert.Equal(MigrationPhase.Cleaned, cleaned.Phase);
        Assert.False(Directory.Exists(staging));
        Assert.Equal(MigrationPhase.Cleaned, (await client.CleanupAsync(new MigrationRef { MigrationId = "m-freeze" })).Phase);
        output.WriteLine($"8 MiB counter: dump {dump.DumpMillis} ms, frozen {dump.FrozenMillis} ms, staged {dump.StagedBytes} bytes");
        Figures.Record(nameof(CheckpointTests), "8MiB dump ms", dump.DumpMillis, "ms");
        Figures.Record(nameof(CheckpointTests), "8MiB frozen ms", dump.FrozenMillis, "ms");
    }

    [Fact]
    public async Task Both_containers_of_a_pod_freeze_together_and_resume_together()
    {
        var pod = await _agent.RunPodAsync("pair", Counter("left", 4), Counter("right", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "left", 3);
        await AgentOnNode.WaitForTicksAsync(pod, "right", 3);
        var client = _agent.Client;

        var begun = await client.BeginCheckpointAsync(Begin("m-pair", pod, _agent.NodeName));
        var dump = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-pair" });
        var left = AgentOnNode.LastTick(pod, "left");
        var right = AgentOnNode.LastTick(pod, "right");
        await Task.Delay(800);

        Assert.Equal(["left", "right"], begun.Containers.Select(c => c.Name).Order());
        Assert.Equal(["left", "right"], dump.Containers.Select(c => c.ContainerName).Order());
        Assert.Equal(left, AgentOnNode.LastTick(pod, "left"));
        Assert.Equal(right, AgentOnNode.LastTick(pod, "right"));
        foreach (var id in pod.ContainerIds.Values)
        {
            Assert.Equal(ContainerState.ContainerRunning, await _agent.ContainerStateAsync(id));
        }

        await client.ResumeAsync(new ResumeRequest { MigrationId = "m-pair" });
        var leftAfter = await AgentOnNode.WaitForTicksAsync(pod, "left", (int)left + 3);
        var rightAfter = await AgentOnNode.WaitForTicksAsync(pod, "right", (int)right + 3);
        Assert.Equal(left + 1, leftAfter[(int)left].Tick);
        Assert.Equal(right + 1, rightAfter[(int)right].Tick);
    }

    [Fact]
    public async Task Pre_copy_rounds_are_idempotent_numbered_and_each_writes_less()
    {
        var pod = await _agent.RunPodAsync("rounds", Counter("main", 32, "--dirty-percent-per-second", "1"));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 3);
        var client = _agent.Client;
        await client.BeginCheckpointAsync(Begin("m-rounds", pod, _agent.NodeName));

        var first = await client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-rounds", Round = 1 });
        var repeated = await client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-rounds", Round = 1 });
        var skipped = await AgentOnNode.ExpectErrorAsync(() => client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-rounds", Round = 3 }).ResponseAsync);
        var second = await client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-rounds", Round = 2 });
        var status = await client.GetMigrationAsync(new MigrationRef { MigrationId = "m-rounds" });

        Assert.Equal(first, repeated);
        Assert.Equal(StatusCode.FailedPrecondition, skipped.StatusCode);
        Assert.Contains("the next is 2", skipped.Status.Detail, StringComparison.Ordinal);
        Assert.True(first.PagesWritten >= 32UL * 256, $"round 1 wrote {first.PagesWritten} pages of a 32 MiB buffer");
        Assert.True(second.PagesWritten * 4 < first.PagesWritten, $"round 2 wrote {second.PagesWritten} pages, round 1 {first.PagesWritten}");
        Assert.Equal(MigrationPhase.PreCopying, status.Phase);
        Assert.Equal(2, status.PreCopyRounds);
        await client.ResumeAsync(new ResumeRequest { MigrationId = "m-rounds" });
    }
}

/// <summary>Tests that start containerd nodes run one at a time (two cores).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RealNodes
{
    public const string Name = "real containerd nodes";
}

/// <summary>Pre-copy against a plain (cold) final dump, side by side on one node.</summary>
[Collection(RealNodes.Name)]
public sealed class PreCopyTests(ITestOutputHelper output) : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("precopy");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    [Theory]
    [InlineData(16)]
    [InlineData(256)]
    public async Task After_pre_copy_the_final_dump_writes_far_fewer_pages_than_a_plain_dump(int mib)
    {
        // 0.5 % of the buffer rewritten per second: a process that holds a lot and changes little
        var cold = await _agent.RunPodAsync("cold", CheckpointTests.Counter("main", mib, "--dirty-percent-per-second", "0.5"));
        var warm = await _agent.RunPodAsync("warm", CheckpointTests.Counter("main", mib, "--dirty-percent-per-second", "0.5"));
        await AgentOnNode.WaitForTicksAsync(cold, "main", 3);
        await AgentOnNode.WaitForTicksAsync(warm, "main", 3);
        var client = _agent.Client;

        await client.BeginCheckpointAsync(CheckpointTests.Begin($"cold-{mib}", cold, _agent.NodeName));
        var plain = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = $"cold-{mib}" });
        await client.ResumeAsync(new ResumeRequest { MigrationId = $"cold-{mib}" });

        await client.BeginCheckpointAsync(CheckpointTests.Begin($"warm-{mib}", warm, _agent.NodeName));
        var round1 = await client.PreDumpAsync(new PreDumpRequest { MigrationId = $"warm-{mib}", Round = 1 });
        var round2 = await client.PreDumpAsync(new PreDumpRequest { MigrationId = $"warm-{mib}", Round = 2 });
        var final = await client.FinalDumpAsync(new FinalDumpRequest { MigrationId = $"warm-{mib}" });
        await client.ResumeAsync(new ResumeRequest { MigrationId = $"warm-{mib}" });

        ulong pages = (ulong)mib * 256;
        var plainDump = plain.Containers.Single();
        var finalDump = final.Containers.Single();
        output.WriteLine($"{mib} MiB plain: {plainDump.PagesWritten} pages, dump {plain.DumpMillis} ms, frozen {plain.FrozenMillis} ms, final image {plain.FinalImageBytes} B");
        output.WriteLine($"{mib} MiB pre-copy: rounds {round1.PagesWritten}+{round2.PagesWritten} pages in {round1.ElapsedMillis}+{round2.ElapsedMillis} ms; final {finalDump.PagesWritten} pages ({finalDump.PagesInParent} in parent), dump {final.DumpMillis} ms, frozen {final.FrozenMillis} ms, final image {final.FinalImageBytes} B, staged {final.StagedBytes} B");
        Assert.True(plainDump.PagesWritten >= pages, $"the plain dump wrote {plainDump.PagesWritten} pages of a {pages}-page buffer");
        Assert.True(finalDump.PagesWritten * 10 < plainDump.PagesWritten, $"after pre-copy the final dump wrote {finalDump.PagesWritten} pages, a plain one {plainDump.PagesWritten}");
        Assert.True(finalDump.PagesInParent >= pages * 9 / 10, $"only {finalDump.PagesInParent} pages were left to the pre-copy rounds");
        Assert.True(final.FinalImageBytes * 5 < plain.FinalImageBytes, $"final image {final.FinalImageBytes} B against a plain {plain.FinalImageBytes} B");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB plain dump ms", plain.DumpMillis, "ms");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB plain frozen ms", plain.FrozenMillis, "ms");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB plain final image", plain.FinalImageBytes, "B");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy round 1 ms", round1.ElapsedMillis, "ms");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy round 2 pages", round2.PagesWritten, "pages");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy final dump ms", final.DumpMillis, "ms");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy frozen ms", final.FrozenMillis, "ms");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy final pages", finalDump.PagesWritten, "pages");
        Figures.Record(nameof(PreCopyTests), $"{mib}MiB pre-copy final image", final.FinalImageBytes, "B");
    }
}

/// <summary>What an operator relies on when it retries: the agent's record survives a restart, and every step is observable.</summary>
[Collection(RealNodes.Name)]
public sealed class CheckpointRecordTests : IAsyncLifetime
{
    private AgentOnNode _agent = null!;

    public async Task InitializeAsync() => _agent = await AgentOnNode.StartAsync("record");

    public async Task DisposeAsync() => await _agent.DisposeAsync();

    [Fact]
    public async Task A_pod_frozen_before_its_images_were_committed_is_thawed_when_the_agent_restarts()
    {
        var pod = await _agent.RunPodAsync("survivor", CheckpointTests.Counter("main", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 3);
        await _agent.Client.BeginCheckpointAsync(CheckpointTests.Begin("m-restart", pod, _agent.NodeName));
        await _agent.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-restart" });
        long frozen = AgentOnNode.LastTick(pod, "main");

        // the agent dies while the pod is frozen; no target can restore it (nothing was committed): the restarted agent thaws it
        await _agent.RestartAgentAsync();
        var status = await _agent.Client.GetMigrationAsync(new MigrationRef { MigrationId = "m-restart" });
        var after = await AgentOnNode.WaitForTicksAsync(pod, "main", (int)frozen + 3);
        var resumed = await _agent.Client.ResumeAsync(new ResumeRequest { MigrationId = "m-restart" });

        Assert.Equal(MigrationPhase.Resumed, status.Phase);
        Assert.Contains("the agent restarted while the pod was frozen", status.Message, StringComparison.Ordinal);
        Assert.Equal(frozen + 1, after[(int)frozen].Tick);
        Assert.Equal(MigrationPhase.Resumed, resumed.Phase);
    }

    [Fact]
    public async Task Each_step_leaves_a_span_and_the_dump_records_its_metrics()
    {
        var spans = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == AgentTelemetry.Name,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = spans.Enqueue,
        };
        ActivitySource.AddActivityListener(listener);
        var measurements = new ConcurrentQueue<(string Name, double Value)>();
        using var meters = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == AgentTelemetry.Name)
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        meters.SetMeasurementEventCallback<double>((instrument, value, _, _) => measurements.Enqueue((instrument.Name, value)));
        meters.SetMeasurementEventCallback<long>((instrument, value, _, _) => measurements.Enqueue((instrument.Name, value)));
        meters.Start();

        var pod = await _agent.RunPodAsync("observed", CheckpointTests.Counter("main", 4));
        await AgentOnNode.WaitForTicksAsync(pod, "main", 2);
        await _agent.Client.BeginCheckpointAsync(CheckpointTests.Begin("m-observed", pod, _agent.NodeName));
        await _agent.Client.PreDumpAsync(new PreDumpRequest { MigrationId = "m-observed", Round = 1 });
        var dump = await _agent.Client.FinalDumpAsync(new FinalDumpRequest { MigrationId = "m-observed" });
        await _agent.Client.ResumeAsync(new ResumeRequest { MigrationId = "m-observed" });

        var names = spans.Select(s => s.OperationName).ToHashSet();
        foreach (var expected in new[] { "checkpoint.begin", "checkpoint.predump", "checkpoint.final_dump", "checkpoint.freeze", "criu.dump", "checkpoint.capture_filesystem", "checkpoint.resume" })
        {
            Assert.Contains(expected, names);
        }

        var final = spans.Single(s => s.OperationName == "checkpoint.final_dump");
        Assert.Equal("m-observed", final.GetTagItem("migration.id"));
        Assert.Contains(spans, s => s.OperationName == "criu.dump" && s.ParentSpanId == final.SpanId);
        Assert.Contains(measurements, m => m.Name == "podmig.agent.frozen.duration" && Math.Abs(m.Value - dump.FrozenMillis) < 0.5);
        Assert.Contains(measurements, m => m.Name == "podmig.agent.dump.duration" && m.Value > 0);
        Assert.Contains(measurements, m => m.Name == "podmig.agent.pages.written" && m.Value >= 1024);
    }
}

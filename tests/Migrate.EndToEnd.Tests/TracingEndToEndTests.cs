using k8s;
using Migrate.Operator.Reconciliation;
using Migrate.TestSupport;
using Migrate.TestSupport.Otlp;
using Xunit;
using Xunit.Abstractions;

namespace Migrate.EndToEnd.Tests;

/// <summary>A sandbox whose operator and agents export their spans over OTLP to a receiver in the test.</summary>
public sealed class TracedSandboxFixture : IAsyncLifetime
{
    public OtlpReceiver Receiver { get; private set; } = null!;

    public SandboxCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Receiver = await OtlpReceiver.StartAsync();
        Cluster = await SandboxCluster.StartAsync(new SandboxOptions { Environment = Receiver.Environment });
    }

    public async Task DisposeAsync()
    {
        await Cluster.DisposeAsync();
        await Receiver.DisposeAsync();
    }
}

/// <summary>
/// One trace per migration across three processes: the operator's steps, the source agent's
/// checkpoint and send, the target agent's receive, joined by W3C trace context in gRPC metadata.
/// </summary>
public sealed class TracingEndToEndTests(TracedSandboxFixture fixture, ITestOutputHelper output) : IClassFixture<TracedSandboxFixture>
{
    [Fact]
    public async Task A_migration_is_one_trace_with_spans_from_the_operator_and_both_agents()
    {
        var cluster = fixture.Cluster;
        await Sandbox.RunCounterAsync(cluster, "traced", "node-a", 16);
        await Sandbox.ApplyRequestAsync(cluster, "move-traced", "traced", "PreCopy", "node-b");
        var request = await Sandbox.WaitForFinalAsync(cluster, "move-traced");
        Assert.Equal(MigrationPhases.Succeeded, request!.Status!.Phase);
        var traceparent = request.Metadata.Annotations[Annotations.TraceContext];
        var traceId = traceparent.Split('-')[1];

        // the exporters send every 200 ms, each process on its own: wait for the target's receive span, the operator's
        // cut-over, and every parent of what arrived (an agent's server span can arrive before its caller's span)
        IReadOnlyList<ReceivedSpan> spans = [];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            spans = [.. fixture.Receiver.Spans.Where(s => s.TraceId == traceId)];
            var known = spans.Select(s => s.SpanId).ToHashSet(StringComparer.Ordinal);
            if (spans.Any(s => s.Name == "transfer.receive") && spans.Any(s => s.Name == "migration.CuttingOver")
                && spans.All(s => s.ParentSpanId.Length == 0 || known.Contains(s.ParentSpanId)))
            {
                break;
            }

            await Task.Delay(100);
        }

        foreach (var span in spans.OrderBy(s => s.Service).ThenBy(s => s.Node))
        {
            output.WriteLine($"{span.Service,-18} {span.Node,-7} {span.Name,-50} {span.SpanId} <- {span.ParentSpanId}");
        }

        Assert.Contains(spans, s => s.Service == "podmig-operator" && s.Name == "migration" && s.ParentSpanId.Length == 0);
        Assert.Contains(spans, s => s.Service == "podmig-operator" && s.Name == "migration.Checkpointing");
        Assert.Contains(spans, s => s.Service == "podmig-node-agent" && s.Node == "node-a" && s.Name == "checkpoint.final_dump");
        Assert.Contains(spans, s => s.Service == "podmig-node-agent" && s.Node == "node-a" && s.Name == "transfer.send");
        Assert.Contains(spans, s => s.Service == "podmig-node-agent" && s.Node == "node-b" && s.Name == "transfer.receive");

        // every span but the root has its parent in the same trace: nothing hangs loose
        var ids = spans.Select(s => s.SpanId).ToHashSet(StringComparer.Ordinal);
        Assert.All(spans.Where(s => s.ParentSpanId.Length > 0), s => Assert.Contains(s.ParentSpanId, ids));
        // each of the target's upload spans (a pre-copy round's, the final images') is a child of the source agent's send:
        // the context crossed agent to agent
        var uploads = spans.Where(s => s.Node == "node-b" && s.Name.EndsWith("ImageTransfer/Upload", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(uploads);
        Assert.All(uploads, u => Assert.Equal(("node-a", "transfer.send"), spans.Where(s => s.SpanId == u.ParentSpanId).Select(s => (s.Node, s.Name)).Single()));
        await cluster.Client.CoreV1.DeleteNamespacedPodAsync(request.Status.ReplacementPod, "default");
    }
}

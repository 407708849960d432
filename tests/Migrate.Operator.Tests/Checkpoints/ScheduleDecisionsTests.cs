using k8s.Models;
using Migrate.Api;
using Migrate.Operator.Checkpoints;
using Xunit;

namespace Migrate.Operator.Tests.Checkpoints;

/// <summary>Which pods a schedule checkpoints now, and what its retention removes: tables of checkpoints in, names out.</summary>
public sealed class ScheduleDecisionsTests
{
    private static readonly DateTime Now = new(2026, 12, 2, 12, 0, 0, DateTimeKind.Utc);

    /// <summary>A pod's checkpoint: name, minutes ago, phase, bytes, pinned.</summary>
    private static Checkpoint Ck(string name, int minutesAgo, string phase = "Ready", long bytes = 100, bool pinned = false, string pod = "app") => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name, NamespaceProperty = "default", CreationTimestamp = Now.AddMinutes(-minutesAgo),
            Labels = new Dictionary<string, string> { [Labels.Schedule] = "hourly", [Labels.Pod] = pod, [Labels.Pinned] = pinned ? "true" : "false" },
        },
        Spec = new CheckpointSpec { PodName = pod },
        Status = new CheckpointStatus { Phase = phase, CheckpointTime = phase == "Ready" ? Now.AddMinutes(-minutesAgo) : null, SizeBytes = phase == "Ready" ? bytes : null },
    };

    public static TheoryData<string, CheckpointRetention, Checkpoint[], string[]> Retention() => new()
    {
        { "no limits: nothing removed", new(), [Ck("a", 30), Ck("b", 20), Ck("c", 10)], [] },
        { "maxCount 2: the oldest goes", new() { MaxCount = 2 }, [Ck("a", 30), Ck("b", 20), Ck("c", 10)], ["a"] },
        { "maxCount 2, the oldest pinned: it stays and does not count", new() { MaxCount = 2 }, [Ck("a", 30, pinned: true), Ck("b", 20), Ck("c", 10), Ck("d", 5)], ["b"] },
        { "maxAge 15 min: older ones go", new() { MaxAgeSeconds = 900 }, [Ck("a", 30), Ck("b", 20), Ck("c", 10)], ["a", "b"] },
        { "maxAge: the newest Ready stays even when old", new() { MaxAgeSeconds = 60 }, [Ck("a", 30), Ck("b", 20)], ["a"] },
        { "maxTotalBytes 250: oldest first until the rest fit", new() { MaxTotalBytes = 250 }, [Ck("a", 30), Ck("b", 20), Ck("c", 10)], ["a"] },
        { "maxTotalBytes smaller than the newest: the newest still stays", new() { MaxTotalBytes = 50 }, [Ck("a", 30), Ck("b", 20)], ["a"] },
        { "failed ones: all but the newest go", new() { MaxCount = 5 }, [Ck("f1", 40, "Failed"), Ck("f2", 35, "Failed"), Ck("a", 30)], ["f1"] },
        { "one being taken is never removed", new() { MaxCount = 1 }, [Ck("a", 30), Ck("b", 20), Ck("c", 1, "Checkpointing")], ["a"] },
    };

    [Theory]
    [MemberData(nameof(Retention))]
    public void Retention_removes(string _, CheckpointRetention retention, Checkpoint[] checkpoints, string[] expected)
    {
        Assert.Equal(expected.Order(StringComparer.Ordinal), ScheduleDecisions.Expired(retention, checkpoints, Now).Select(c => c.Metadata.Name).Order(StringComparer.Ordinal));
    }

    public static TheoryData<string, int?, long?, Checkpoint[], string[]> AcrossPods() => new()
    {
        { "no namespace limits: nothing", null, null, [Ck("a1", 30, pod: "a"), Ck("b1", 20, pod: "b")], [] },
        { "maxCount 3 over two pods: the oldest non-newest go", 3, null,
            [Ck("a1", 50, pod: "a"), Ck("a2", 40, pod: "a"), Ck("a3", 5, pod: "a"), Ck("b1", 45, pod: "b"), Ck("b2", 10, pod: "b")], ["a1", "b1"] },
        { "each pod keeps its newest even past maxCount", 1, null, [Ck("a1", 50, pod: "a"), Ck("b1", 45, pod: "b"), Ck("c1", 40, pod: "c")], [] },
        { "maxTotalBytes 250: oldest first", null, 250, [Ck("a1", 50, pod: "a"), Ck("a2", 40, pod: "a"), Ck("b1", 30, pod: "b"), Ck("b2", 20, pod: "b")], ["a1", "b1"] },
        { "pinned and failed ones count toward nothing", 2, null,
            [Ck("a1", 50, pinned: true, pod: "a"), Ck("a2", 40, pod: "a"), Ck("f", 35, "Failed", pod: "b"), Ck("b1", 30, pod: "b")], [] },
    };

    [Theory]
    [MemberData(nameof(AcrossPods))]
    public void The_namespace_wide_retention_removes(string _, int? maxCount, long? maxTotalBytes, Checkpoint[] checkpoints, string[] expected)
    {
        var limits = maxCount is null && maxTotalBytes is null ? null : new NamespaceRetention { MaxCount = maxCount, MaxTotalBytes = maxTotalBytes };
        Assert.Equal(expected.Order(StringComparer.Ordinal), ScheduleDecisions.ExpiredAcrossPods(limits, checkpoints).Select(c => c.Metadata.Name).Order(StringComparer.Ordinal));
    }

    private static V1Pod Pod(string name, string phase = "Running", string app = "db") => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default", Labels = new Dictionary<string, string> { ["app"] = app } },
        Status = new V1PodStatus { Phase = phase },
    };

    private static CheckpointSchedule Schedule(bool suspend = false) => new()
    {
        Metadata = new V1ObjectMeta { Name = "hourly", NamespaceProperty = "default" },
        Spec = new CheckpointScheduleSpec
        {
            IntervalSeconds = 600, Suspend = suspend,
            Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "db" } },
        },
    };

    [Fact]
    public void Due_pods_match_run_and_have_no_recent_or_unfinished_checkpoint()
    {
        Checkpoint[] checkpoints = [Ck("recent", 5, pod: "db-0"), Ck("old", 15, pod: "db-1"), Ck("taking", 20, "Checkpointing", pod: "db-2")];
        V1Pod[] pods = [Pod("db-0"), Pod("db-1"), Pod("db-2"), Pod("db-3"), Pod("db-4", "Pending"), Pod("web-0", app: "web")];
        Assert.Equal(["db-1", "db-3"], ScheduleDecisions.Due(Schedule(), pods, checkpoints, Now).Select(p => p.Metadata.Name));
        Assert.Empty(ScheduleDecisions.Due(Schedule(suspend: true), pods, checkpoints, Now));
    }

    [Fact]
    public void Checkpoint_names_say_schedule_pod_and_time()
    {
        Assert.Equal("hourly-db-0-1796212800", ScheduleDecisions.NameFor(Schedule(), Pod("db-0"), Now));
    }
}

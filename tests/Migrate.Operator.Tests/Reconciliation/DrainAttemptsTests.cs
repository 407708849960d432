using k8s.Models;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>What a drain (NodeDrain or an eviction) makes for a pod: its own request, or for a pod of a migration group one group request for the whole group.</summary>
public sealed class DrainAttemptsTests
{
    [Fact]
    public void A_pod_without_a_group_gets_a_request_of_its_own_with_the_finalizer()
    {
        var request = DrainAttempts.NextFor("drain-d", Pod("db-0", group: null), [], new Dictionary<string, string> { [Labels.Drain] = "d" });
        Assert.Equal(("drain-d-db-0-1", "db-0", false), (request.Metadata.Name, request.Spec.PodName, request.Spec.IsGroup));
        Assert.Equal([Finalizers.Cleanup], request.Metadata.Finalizers);
    }

    [Fact]
    public void A_pod_of_a_group_gets_a_request_for_its_whole_group_avoiding_where_the_last_attempt_failed()
    {
        var failed = Request("drain-d-ring-1", selector: "ring", phase: MigrationPhases.RolledBack, target: "node-c");
        var request = DrainAttempts.NextFor("drain-d", Pod("ring-1", group: "ring"), [failed], new Dictionary<string, string> { [Labels.Drain] = "d" });
        Assert.Equal("drain-d-ring-2", request.Metadata.Name);
        Assert.Equal("", request.Spec.PodName);
        Assert.Equal(new Dictionary<string, string> { [Labels.MigrationGroup] = "ring" }, request.Spec.PodSelector);
        Assert.True(request.Spec.IsGroup);
        Assert.Equal(["node-c"], request.Spec.AvoidNodes);
        Assert.Null(request.Metadata.Finalizers);
    }

    [Fact]
    public void The_attempts_of_a_pod_of_a_group_are_the_group_requests_naming_its_group_only()
    {
        var requests = new[]
        {
            Request("own", podName: "ring-1"),
            Request("group-ring", selector: "ring"),
            Request("group-other", selector: "other"),
            Request("elsewhere", selector: "ring", ns: "prod"),
        };
        Assert.Equal(["group-ring"], DrainAttempts.AttemptsFor(Pod("ring-1", group: "ring"), requests).Select(r => r.Metadata.Name));
        Assert.Equal(["own"], DrainAttempts.AttemptsFor(Pod("ring-1", group: null), requests).Select(r => r.Metadata.Name));
    }

    private static V1Pod Pod(string name, string? group) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = "default",
            Labels = group is null ? null : new Dictionary<string, string> { [Labels.MigrationGroup] = group },
        },
    };

    private static MigrationRequest Request(string name, string? podName = null, string? selector = null, string ns = "default", string? phase = null, string? target = null) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns, CreationTimestamp = DateTime.UnixEpoch },
        Spec = new MigrationRequestSpec
        {
            PodName = podName ?? "",
            PodSelector = selector is null ? null : new Dictionary<string, string> { [Labels.MigrationGroup] = selector },
        },
        Status = phase is null ? null : new MigrationRequestStatus { Phase = phase, TargetNode = target },
    };
}

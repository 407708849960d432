using k8s.Models;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>The replacement pod the operator makes from its source, as a table of what it carries.</summary>
public sealed class ReplacementPodTests
{
    [Theory]
    [InlineData(true, "10.9.8.12", "10.9.8.12")]
    [InlineData(false, "10.9.8.12", null)]
    public void A_migration_keeping_the_address_pins_the_replacement_to_the_sources_address(bool keepAddress, string? podIp, string? pinned)
    {
        var source = new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = "web",
                Labels = new Dictionary<string, string> { ["app"] = "web" },
                // a pin left on a source that was itself a replacement is never carried over
                Annotations = new Dictionary<string, string> { [Annotations.PinnedAddress] = "10.9.8.99", ["team"] = "a" },
            },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "busybox" }] },
            Status = new V1PodStatus { PodIP = podIp },
        };
        var request = new MigrationRequest
        {
            Metadata = new V1ObjectMeta { Name = "move-web", NamespaceProperty = "default", Uid = "0f3a9c2e-1111-4222-8333-944455556666" },
            Spec = new MigrationRequestSpec { PodName = "web" },
            Status = new MigrationRequestStatus { SourceNode = "node-a" },
        };
        // what admission decided (asked for, or the network's default)
        request.Status.SetCondition(ConditionTypes.KeepsAddress, keepAddress ? "True" : "False", "Requested", "", 1, DateTime.UtcNow);

        var replacement = MigrationExecutor.Replacement(source, request, "web-x1", "node-b");

        Assert.Equal(pinned, replacement.Metadata.Annotations.TryGetValue(Annotations.PinnedAddress, out var value) ? value : null);
        Assert.Equal("a", replacement.Metadata.Annotations["team"]);
        Assert.Equal("node-b", replacement.Spec.NodeName);
    }

    [Fact]
    public void A_replacement_that_keeps_the_address_is_not_made_before_the_source_has_one()
    {
        var source = new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "web" },
            Spec = new V1PodSpec { NodeName = "node-a", Containers = [new V1Container { Name = "main", Image = "busybox" }] },
            Status = new V1PodStatus(),
        };
        var request = new MigrationRequest
        {
            Metadata = new V1ObjectMeta { Name = "move-web", NamespaceProperty = "default", Uid = "0f3a9c2e-1111-4222-8333-944455556666" },
            Spec = new MigrationRequestSpec { PodName = "web" },
            Status = new MigrationRequestStatus { SourceNode = "node-a" },
        };
        request.Status.SetCondition(ConditionTypes.KeepsAddress, "True", "Requested", "", 1, DateTime.UtcNow);

        var e = Assert.Throws<TransientActionException>(() => MigrationExecutor.Replacement(source, request, "web-x1", "node-b"));
        Assert.Contains("no IP in its status yet", e.Message, StringComparison.Ordinal);
    }
}

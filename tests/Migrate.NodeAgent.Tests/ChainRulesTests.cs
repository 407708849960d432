using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>Whether a checkpoint is taken as a delta on an earlier one, as a table.</summary>
public sealed class ChainRulesTests
{
    private static readonly PodRef Pod = new() { Namespace = "default", Name = "app", Uid = "uid-app" };

    public static TheoryData<string, string?> Cases() => new()
    {
        { "the earlier one of the same pod and containers", null },
        { "exported", "an export holds one full dump" },
        { "kernel tracking", "tracked by the kernel" },
        { "not kept here", "checkpoint p is not kept on this node" },
        { "still being taken", "checkpoint p is not kept on this node" },
        { "deleted", "checkpoint p is not kept on this node" },
        { "another pod", "is of another pod (default/web)" },
        { "a recreated pod of the same name", "is of another pod (default/app)" },
        { "other containers", "has other containers (main, sidecar)" },
        { "chain at its limit", "already holds 4 checkpoint(s), the most allowed (4)" },
        { "chain one below its limit", null },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Decides_when_a_checkpoint_is_a_full_one(string name, string? reason)
    {
        var parent = new KeptCheckpoint { CheckpointId = "p", Ready = true, ChainLength = 2, Pod = new PodRef { Namespace = "default", Name = "app", Uid = "uid-app" } };
        parent.Containers.Add(new KeptContainer { Name = "main" });
        bool exporting = name == "exported", contentComparison = name != "kernel tracking";
        switch (name)
        {
            case "not kept here": parent = null; break;
            case "still being taken": parent.Ready = false; break;
            case "deleted": parent.Deleted = true; break;
            case "another pod": parent.Pod.Name = "web"; break;
            case "a recreated pod of the same name": parent.Pod.Uid = "uid-before"; break;
            case "other containers": parent.Containers.Add(new KeptContainer { Name = "sidecar" }); break;
            case "chain at its limit": parent.ChainLength = 4; break;
            case "chain one below its limit": parent.ChainLength = 3; break;
        }

        var why = ChainRules.WhyFull(parent, "p", Pod, ["main"], exporting, contentComparison, maxChain: 4);

        if (reason is null)
        {
            Assert.Null(why);
        }
        else
        {
            Assert.Contains(reason, why, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("containers/app/ancestors/1/pages-1.img", true)]
    [InlineData("containers/app/round-1/pages-1.img", false)]
    [InlineData("containers/ancestors/final/pages-1.img", false)] // a container named "ancestors"
    [InlineData("containers/ancestors/ancestors/2/pagemap-1.img", true)]
    [InlineData("rootfs/app.tar", false)]
    public void Files_linked_from_the_chain_are_not_the_checkpoint_s_own(string path, bool linked) =>
        Assert.Equal(linked, ChainRules.IsLinkedFromChain(path));

    [Fact]
    public void The_tip_of_a_kept_container_is_its_lazy_memory_when_there_is_one()
    {
        var images = Directory.CreateTempSubdirectory("migrate-tip-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(images, StagingLayout.FinalImages("app")));
            Assert.Equal(Path.Combine(images, StagingLayout.FinalImages("app")), ChainRules.TipOf(images, "app"));
            Directory.CreateDirectory(Path.Combine(images, StagingLayout.LazyMemoryImages("app")));
            Assert.Equal(Path.Combine(images, StagingLayout.LazyMemoryImages("app")), ChainRules.TipOf(images, "app"));
        }
        finally
        {
            Directory.Delete(images, recursive: true);
        }
    }
}

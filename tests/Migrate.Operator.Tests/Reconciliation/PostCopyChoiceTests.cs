using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>Which requests may leave memory on their source (PostCopy, Hybrid), as a table.</summary>
public sealed class PostCopyChoiceTests
{
    public static TheoryData<string, string?, bool, bool, bool, string?> Rows() => new()
    {
        // row, mode, keeps its name, group member, target restores lazily, refusal (null: admitted)
        { "PostCopy to a lazy target", "PostCopy", false, false, true, null },
        { "Hybrid to a lazy target", "Hybrid", false, false, true, null },
        { "PreCopy is not this choice's to refuse, whatever the rest", "PreCopy", true, true, false, null },
        { "Cold likewise", "Cold", true, true, false, null },
        { "an unset mode likewise", null, true, true, false, null },
        { "Auto is never refused: it leaves memory on the source only where it may", "Auto", true, true, false, null },
        { "PostCopy to a target without lazy pages", "PostCopy", false, false, false, "node node-b's CRIU cannot restore lazily" },
        { "Hybrid to a target without lazy pages", "Hybrid", false, false, false, "node node-b's CRIU cannot restore lazily" },
        { "PostCopy for a StatefulSet pod keeping its name", "PostCopy", true, false, true, "ended on its source before its replacement exists" },
        { "Hybrid for a StatefulSet pod keeping its name", "Hybrid", true, false, true, "ended on its source before its replacement exists" },
        { "PostCopy for a member of a group", "PostCopy", false, true, true, "not taken by group migrations" },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void Post_copy_is_admitted_only_where_the_source_can_keep_the_pages_until_they_are_fetched(string row, string? mode, bool keepsName, bool groupMember,
        bool targetLazyPages, string? refusal)
    {
        var why = PostCopyChoice.WhyNot(mode, keepsName, groupMember, "node-b", targetLazyPages);
        if (refusal is null)
        {
            Assert.True(why is null, $"{row}: {why}");
        }
        else
        {
            Assert.True(why?.Contains(refusal, StringComparison.Ordinal) == true, $"{row}: {why}");
            Assert.EndsWith("use mode PreCopy.", why, StringComparison.Ordinal);
        }
    }
}

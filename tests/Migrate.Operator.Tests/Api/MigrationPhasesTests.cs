using Migrate.Api;
using Xunit;

namespace Migrate.Operator.Tests.Api;

/// <summary>What a watcher that looks now and then may say a request went through between two looks.</summary>
public sealed class MigrationPhasesTests
{
    [Theory]
    [InlineData("Transferring", "Succeeded", "Restoring,CuttingOver")]
    [InlineData("Pending", "Transferring", "Checkpointing")]
    [InlineData(null, "Checkpointing", "Pending")]
    [InlineData(null, "Pending", "")]
    [InlineData("Checkpointing", "Transferring", "")]      // the next phase: nothing in between
    [InlineData("Restoring", "RolledBack", "")]            // a rollback may leave from anywhere: nothing inferred
    [InlineData("Checkpointing", "Failed", "")]
    [InlineData("Restoring", "Transferring", "")]          // backwards: nothing
    [InlineData("Unknown", "Succeeded", "")]               // a phase this version does not know: nothing
    public void Only_the_phases_of_a_successful_migration_between_two_looks_are_inferred(string? seen, string now, string passed)
    {
        Assert.Equal(passed.Length == 0 ? [] : passed.Split(','), MigrationPhases.Passed(seen, now));
    }
}

using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>A drain's phase from what is left on its node.</summary>
public sealed class DrainPhaseTests
{
    [Theory]
    [InlineData(0, 0, 0, "Drained")]
    [InlineData(0, 2, 0, "Draining")] // the pods are gone, their requests end a moment later (this was "Blocked")
    [InlineData(3, 2, 0, "Draining")]
    [InlineData(3, 0, 1, "Draining")]
    [InlineData(3, 1, 3, "Blocked")]
    [InlineData(2, 0, 2, "Blocked")]
    public void The_phase_follows_the_pods_left_the_migrations_running_and_the_pods_blocked(int remaining, int inFlight, int blocked, string phase)
    {
        Assert.Equal(phase, DrainController.PhaseOf(remaining, inFlight, blocked));
    }
}

using System.Globalization;
using Migrate.Agent.V1;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>A pod's restore time from its containers' reports, as a table.</summary>
public sealed class RestoreTimesTests
{
    private const long At = 1_800_000_000_000;

    public static TheoryData<string, string, long?> Rows() => new()
    {
        // row; each container as "ENDED/MILLIS" (its processes ran ENDED ms after At, "?" unreported; its restore took MILLIS ms) or "-" (not restored); the pod's restore time
        { "nothing restored yet", "", null },
        { "one container: its own time", "0/48", 48 },
        { "two one after the other: from the first's start to the second's end", "0/48 30/20", 78 },
        { "two at once: the longer", "0/48 0/61", 61 },
        { "the longer began first and ended first: from the earliest start to the latest end", "10/20 0/60", 70 },
        { "a report without the time its processes ran: its length alone", "?/48", 48 },
        { "beside timed ones: the longer of the two", "0/20 ?/48", 48 },
        { "a container not restored yet counts for nothing", "0/48 -", 48 },
        { "an agent that gave no length (0): that container counts for nothing", "0/0 5/10", 10 },
        { "only reports without a length: none", "0/0", null },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void A_pods_restore_spans_its_containers_restores(string row, string containers, long? expected)
    {
        var restores = containers.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select((c, i) => c == "-"
            ? new RestoreState { Container = $"c{i}" }
            : new RestoreState
            {
                Container = $"c{i}",
                Restored = true,
                RestoredUnixMillis = c.Split('/')[0] == "?" ? 0 : At + long.Parse(c.Split('/')[0], CultureInfo.InvariantCulture),
                RestoreMillis = uint.Parse(c.Split('/')[1], CultureInfo.InvariantCulture),
            }).ToList();
        var span = RestoreTimes.SpanMillis(restores);
        Assert.True(expected == span, $"{row}: {span}, expected {expected}");
    }
}

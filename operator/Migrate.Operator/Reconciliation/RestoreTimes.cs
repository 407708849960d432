using Migrate.Agent.V1;

namespace Migrate.Operator.Reconciliation;

/// <summary>How long a pod's restore took on its node, by what the node's restore runtime reported for each container.</summary>
public static class RestoreTimes
{
    /// <summary>
    /// From the first container's restore beginning on the committed images to the last container's
    /// processes running, on the node's clock (a pod's containers restore one after another, so the
    /// longest single one is not the pod's); a container reported without the time its processes ran
    /// counts with its length alone. Null when no container reported a length.
    /// </summary>
    public static long? SpanMillis(IEnumerable<RestoreState> restores)
    {
        ArgumentNullException.ThrowIfNull(restores);
        var reported = restores.Where(r => r.Restored && r.RestoreMillis > 0).ToList();
        var timed = reported.Where(r => r.RestoredUnixMillis > 0).ToList();
        long? span = timed.Count == 0 ? null : timed.Max(r => r.RestoredUnixMillis) - timed.Min(r => r.RestoredUnixMillis - r.RestoreMillis);
        long? untimed = reported.Where(r => r.RestoredUnixMillis <= 0).Select(r => (long?)r.RestoreMillis).Max();
        return span is null || untimed is null ? span ?? untimed : Math.Max(span.Value, untimed.Value);
    }
}

using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Migrate.Operator;

/// <summary>The operator's spans and metrics (OpenTelemetry picks them up by name).</summary>
public static class OperatorTelemetry
{
    public const string Name = "Migrate.Operator";

    public static readonly ActivitySource Source = new(Name);

    private static readonly Meter Meter = new(Name);

    /// <summary>Requests that reached a final phase, tagged by outcome (Succeeded, Failed, RolledBack) and reason.</summary>
    public static readonly Counter<long> Outcomes = Meter.CreateCounter<long>("podmig.operator.migrations", "{migration}", "MigrationRequests that reached a final phase");

    /// <summary>Time from freezing the source to the replacement running.</summary>
    public static readonly Histogram<double> Downtime = Meter.CreateHistogram<double>("podmig.operator.downtime", "ms", "Downtime of successful migrations");

    /// <summary>Time of each phase, tagged by phase.</summary>
    public static readonly Histogram<double> PhaseDuration = Meter.CreateHistogram<double>("podmig.operator.phase.duration", "ms", "Time spent in each phase");
}

using System.Globalization;
using Migrate.Agent.V1;
using Migrate.Api;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Which mode a request runs (status.mode) and why (condition ModeChosen). A named mode runs as
/// named. Auto, the default, takes the fastest mode that is safe for the pod where it runs:
/// <list type="bullet">
/// <item>on the CRI path, Cold (that path takes one checkpoint while frozen);</item>
/// <item>elsewhere pre-copy rounds first, which stop once they no longer shrink what is written
/// between them (the agent's <c>PreCopyRounds</c>);</item>
/// <item>when they end, what they leave is sent while the pod is frozen (PreCopy) if that is
/// estimated to fit in <see cref="PreCopyLimits.FrozenSendLimitMillis"/>, at the rate the rounds
/// themselves ran (a round is a dump and a transfer, like the freeze); otherwise, where the pod
/// may leave memory on its source (<see cref="PostCopyChoice.Obstacle"/>), it is left there for
/// the running replacement to fetch (Hybrid): the pod writes faster than the rounds can shrink
/// what is left, and sending it frozen would stretch the pause by as much.</item>
/// </list>
/// Pure: facts in, the choice out.
/// </summary>
public static class ModeChoice
{
    /// <summary>A mode and why: <see cref="Decided"/> false while Auto waits for its rounds.</summary>
    public sealed record Choice(string Mode, bool Decided, string Reason, string Message);

    /// <summary>The mode a request runs: status.mode once admitted; else (an operator before status.mode) spec.mode, Auto read as PreCopy.</summary>
    public static string Effective(MigrationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return request.Status?.Mode is { Length: > 0 } mode ? mode
            : request.Spec.Mode is null or "" or MigrationModes.Auto ? MigrationModes.PreCopy : request.Spec.Mode;
    }

    /// <summary>Whether the request is Auto still waiting for its rounds, so that its end may yet leave memory on the source.</summary>
    public static bool Pending(MigrationRequestStatus? status) =>
        status?.Condition(ConditionTypes.ModeChosen) is { Status: "Unknown", Reason: ModeReasons.AwaitingRounds };

    /// <summary>Whether the source's agent must be ready to serve pages left on it (the target's agent told where to fetch them).</summary>
    public static bool MayLeaveMemoryOnSource(MigrationRequest request) =>
        MigrationModes.LeavesMemoryOnSource(Effective(request)) || Pending(request?.Status);

    /// <param name="requested">spec.mode.</param>
    /// <param name="checkpointPath">The path admission took.</param>
    /// <param name="postCopyObstacle">What keeps the pod from leaving memory on its source (<see cref="PostCopyChoice.Obstacle"/>), or null.</param>
    /// <param name="limitMillis">spec.preCopy.frozenSendLimitMillis.</param>
    public static Choice AtAdmission(string? requested, string checkpointPath, string? postCopyObstacle, int limitMillis)
    {
        if (requested is { Length: > 0 } named && named != MigrationModes.Auto)
        {
            return new Choice(named, true, ModeReasons.Requested, $"Mode {named}, as the request asks.");
        }

        if (checkpointPath == CheckpointPaths.Cri)
        {
            return new Choice(MigrationModes.Cold, true, ModeReasons.CriPath,
                "Auto: Cold, the CRI path's only mode (the runtime takes one checkpoint while the pod is frozen).");
        }

        if (postCopyObstacle is { } obstacle)
        {
            return new Choice(MigrationModes.PreCopy, true, ModeReasons.PostCopyUnavailable,
                $"Auto: PreCopy; what its rounds leave is sent while the pod is frozen, as leaving memory on the source (mode Hybrid) {obstacle}.");
        }

        return new Choice(MigrationModes.PreCopy, false, ModeReasons.AwaitingRounds,
            $"Auto: pre-copy rounds first. When they end, what they leave is sent while the pod is frozen if that takes at most {limitMillis} ms (PreCopy), " +
            "else left on the source for the running replacement to fetch (Hybrid).");
    }

    /// <summary>
    /// Auto at the end of its rounds: how to send what they leave. The estimate is the pages the last
    /// round found written (what the freeze will find, as the workload goes on writing at the pace
    /// that kept the rounds from shrinking), at the rounds' own rate: bytes sent over the time
    /// they took, pre-dumps included, as the freeze too dumps before it sends.
    /// </summary>
    public static Choice AfterRounds(PreCopyProgress progress, int limitMillis)
    {
        ArgumentNullException.ThrowIfNull(progress);
        ulong bytes = progress.LastRoundPages * 4096;
        double? millis = progress is { BytesSent: > 0, RoundsMillis: > 0 } ? bytes * (double)progress.RoundsMillis / progress.BytesSent : null;
        string left = $"the last of {progress.Rounds} round(s) found {Mib(bytes)} written";
        if (millis is not { } estimate)
        {
            return new Choice(MigrationModes.PreCopy, true, ModeReasons.RoundsConverged,
                $"Auto: PreCopy; {left}, sent while the pod is frozen (the rounds gave no rate to judge it by).");
        }

        string rate = $"{Mib((ulong)(progress.BytesSent * 1000.0 / progress.RoundsMillis))}/s";
        return estimate <= Math.Max(0, limitMillis)
            ? new Choice(MigrationModes.PreCopy, true, ModeReasons.RoundsConverged,
                $"Auto: PreCopy; {left}, about {estimate:0} ms of sending at the rounds' {rate}, within the {limitMillis} ms limit, so it is sent while the pod is frozen.")
            : new Choice(MigrationModes.Hybrid, true, ModeReasons.WritesOutpaceRounds,
                $"Auto: Hybrid; {left}, about {estimate:0} ms of sending at the rounds' {rate}, over the {limitMillis} ms limit, so it is left on the source and the running replacement fetches it.");
    }

    private static string Mib(ulong bytes) => (bytes / 1048576.0).ToString("0.0", CultureInfo.InvariantCulture) + " MiB";
}

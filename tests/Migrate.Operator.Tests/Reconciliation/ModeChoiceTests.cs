using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests.Reconciliation;

/// <summary>Which mode a request runs, as tables: named modes as named, Auto from the path, the pod's obstacles and its rounds.</summary>
public sealed class ModeChoiceTests
{
    private const string Lazy = "runs the replacement before its memory is in place, and node node-b's CRIU cannot restore lazily";

    public static TheoryData<string, string?, string, string?, string, bool, string, string> Admissions() => new()
    {
        // row, spec.mode, path, post-copy obstacle, mode, decided, reason, said
        { "a named mode runs as named", "Hybrid", CheckpointPaths.RuntimeClass, null, "Hybrid", true, ModeReasons.Requested, "Mode Hybrid, as the request asks." },
        { "a named mode, even with an obstacle (admission refused the impossible ones before)", "PreCopy", CheckpointPaths.RuntimeClass, Lazy, "PreCopy", true, ModeReasons.Requested, "as the request asks" },
        { "Cold named on the CRI path", "Cold", CheckpointPaths.Cri, null, "Cold", true, ModeReasons.Requested, "Mode Cold" },
        { "Auto on the CRI path: Cold", "Auto", CheckpointPaths.Cri, null, "Cold", true, ModeReasons.CriPath, "the CRI path's only mode" },
        { "unset is Auto", null, CheckpointPaths.Cri, null, "Cold", true, ModeReasons.CriPath, "Auto: Cold" },
        { "Auto where memory cannot stay on the source: PreCopy, decided, saying why", "Auto", CheckpointPaths.RuntimeClass, Lazy, "PreCopy", true, ModeReasons.PostCopyUnavailable,
            "leaving memory on the source (mode Hybrid) runs the replacement before its memory is in place, and node node-b's CRIU cannot restore lazily." },
        { "Auto where it may: rounds first, the rest decided when they end", "Auto", CheckpointPaths.RuntimeClass, null, "PreCopy", false, ModeReasons.AwaitingRounds,
            "if that takes at most 500 ms (PreCopy), else left on the source for the running replacement to fetch (Hybrid)" },
    };

    [Theory]
    [MemberData(nameof(Admissions))]
    public void At_admission_a_named_mode_is_kept_and_Auto_takes_what_the_path_and_the_pod_allow(string row, string? requested, string path, string? obstacle,
        string mode, bool decided, string reason, string said)
    {
        var choice = ModeChoice.AtAdmission(requested, path, obstacle, 500);
        Assert.True((mode, decided, reason) == (choice.Mode, choice.Decided, choice.Reason), $"{row}: {choice}");
        Assert.Contains(said, choice.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, ulong, ulong, uint, int, string, string> Ends() => new()
    {
        // row, pages the last round found, bytes the rounds sent, their milliseconds, limit, mode, said
        { "little written: 4 MiB at 100 MB/s is 42 ms, sent frozen", 1024, 200_000_000, 2_000, 500, "PreCopy", "4.0 MiB written, about 42 ms of sending at the rounds' 95.4 MiB/s, within the 500 ms limit" },
        { "just within the limit", 12_207, 200_000_000, 2_000, 500, "PreCopy", "about 500 ms" },
        { "just over it: left on the source", 12_208, 200_000_000, 2_000, 500, "Hybrid", "about 500 ms of sending at the rounds' 95.4 MiB/s, over the 500 ms limit" },
        { "a fast writer: 195 MiB written, 2 s to send frozen", 50_000, 200_000_000, 2_000, 500, "Hybrid", "195.3 MiB written, about 2048 ms" },
        { "the same on a slow link the rounds measured (10 MB/s): 42 ms become 420", 1024, 20_000_000, 2_000, 500, "PreCopy", "about 419 ms" },
        { "and 3 MiB more is over the limit there", 1800, 20_000_000, 2_000, 500, "Hybrid", "about 737 ms" },
        { "limit 0: anything written stays on the source", 1, 200_000_000, 2_000, 0, "Hybrid", "over the 0 ms limit" },
        { "limit 0, nothing written: nothing to leave", 0, 200_000_000, 2_000, 0, "PreCopy", "0.0 MiB written" },
        { "no rate measured (nothing sent): sent frozen, the safe way", 50_000, 0, 2_000, 500, "PreCopy", "the rounds gave no rate to judge it by" },
        { "no time measured (an agent before rounds_millis): likewise", 50_000, 200_000_000, 0, 500, "PreCopy", "the rounds gave no rate to judge it by" },
    };

    [Theory]
    [MemberData(nameof(Ends))]
    public void When_Autos_rounds_end_what_they_left_is_sent_frozen_within_the_limit_and_left_on_the_source_above_it(string row, ulong pages, ulong sent, uint millis,
        int limit, string mode, string said)
    {
        var choice = ModeChoice.AfterRounds(new PreCopyProgress { Rounds = 3, LastRoundPages = pages, BytesSent = sent, RoundsMillis = millis, Converged = true }, limit);
        Assert.True(choice.Decided, row);
        Assert.True(mode == choice.Mode, $"{row}: {choice.Message}");
        Assert.Equal(mode == "Hybrid" ? ModeReasons.WritesOutpaceRounds : ModeReasons.RoundsConverged, choice.Reason);
        Assert.Contains(said, choice.Message, StringComparison.Ordinal);
        Assert.Contains("the last of 3 round(s) found", choice.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, string?, string?, string?, string, bool> Effective() => new()
    {
        // row, spec.mode, status.mode, ModeChosen's reason (Unknown when AwaitingRounds), the mode run, whether the target's agent must be told where pages may be left
        { "admitted PreCopy", "PreCopy", "PreCopy", ModeReasons.Requested, "PreCopy", false },
        { "admitted PostCopy", "PostCopy", "PostCopy", ModeReasons.Requested, "PostCopy", true },
        { "Auto awaiting its rounds: PreCopy so far, but pages may yet be left", "Auto", "PreCopy", ModeReasons.AwaitingRounds, "PreCopy", true },
        { "Auto settled on PreCopy", "Auto", "PreCopy", ModeReasons.RoundsConverged, "PreCopy", false },
        { "Auto settled on Hybrid", "Auto", "Hybrid", ModeReasons.WritesOutpaceRounds, "Hybrid", true },
        { "Auto where it may not", "Auto", "PreCopy", ModeReasons.PostCopyUnavailable, "PreCopy", false },
        { "admitted by an operator without status.mode: spec.mode", "Hybrid", null, null, "Hybrid", true },
        { "likewise Auto, read as PreCopy", "Auto", null, null, "PreCopy", false },
    };

    [Theory]
    [MemberData(nameof(Effective))]
    public void The_mode_run_is_status_mode_and_an_undecided_Auto_keeps_post_copy_open(string row, string? spec, string? status, string? reason, string mode, bool mayLeave)
    {
        var request = new MigrationRequest { Spec = new MigrationRequestSpec { PodName = "db-0", Mode = spec! }, Status = new MigrationRequestStatus { Mode = status } };
        if (reason is not null)
        {
            request.Status.SetCondition(ConditionTypes.ModeChosen, reason == ModeReasons.AwaitingRounds ? "Unknown" : "True", reason, "", 1, DateTime.UnixEpoch);
        }

        Assert.True((mode, mayLeave) == (ModeChoice.Effective(request), ModeChoice.MayLeaveMemoryOnSource(request)), row);
    }
}

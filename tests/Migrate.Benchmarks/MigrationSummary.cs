using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Migrate.Benchmarks;

/// <summary>Median, min and max of one figure over the repetitions.</summary>
public sealed record Spread(double Median, double Min, double Max)
{
    public static Spread Of(IEnumerable<double> values)
    {
        var sorted = values.Where(v => !double.IsNaN(v)).Order().ToList();
        if (sorted.Count == 0)
        {
            return new Spread(double.NaN, double.NaN, double.NaN);
        }

        double median = sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
        return new Spread(median, sorted[0], sorted[^1]);
    }

    public string Text(string format = "0") => double.IsNaN(Median) ? "-" :
        string.Create(CultureInfo.InvariantCulture, $"{Median.ToString(format, CultureInfo.InvariantCulture)} ({Min.ToString(format, CultureInfo.InvariantCulture)}-{Max.ToString(format, CultureInfo.InvariantCulture)})");

    public JsonObject ToJson() => new() { ["median"] = Round(Median), ["min"] = Round(Min), ["max"] = Round(Max) };

    private static double? Round(double v) => double.IsNaN(v) ? null : Math.Round(v, 1);
}

/// <summary>One size, workload and method over its repetitions.</summary>
/// <remarks>
/// Pause: the pause the workload itself saw (its last tick before the move to its first after, by
/// its own clock). Disagreement: how far the method's own downtime figure is from it (|downtime - pause|).
/// </remarks>
public sealed record SummaryRow(int Mib, string Workload, string Method, int Runs, int Continued, Spread Total, Spread Downtime, Spread Checkpoint, Spread Transfer,
    Spread Restore, Spread MBps, Spread ImageMB, Spread Rounds, Spread Pause, Spread Disagreement, Spread PostCopyMB, Spread RestoreToRunning, string? RanAs = null)
{
    /// <summary>The method as the table shows it: Auto with the modes it ran as and how often ("Auto: PreCopy 3").</summary>
    public string Label => RanAs is null ? Method : $"{Method}: {RanAs}";
}

/// <summary>A goal of the issue, met or missed, with the figures it was judged on.</summary>
public sealed record Goal(string Text, bool Met, string Figures);

/// <summary>The migration benchmark's results: rows, ratios against the manual pipeline, goals; as a table, JSON and Markdown.</summary>
public sealed class MigrationSummary
{
    private MigrationSummary(IReadOnlyList<MigrationSample> samples, IReadOnlyList<SummaryRow> rows, IReadOnlyList<string> failures)
    {
        Samples = samples;
        Rows = rows;
        Failures = failures;
    }

    /// <summary>Runs that did not complete, with why (none are left out silently).</summary>
    public IReadOnlyList<string> Failures { get; }

    public IReadOnlyList<MigrationSample> Samples { get; }

    public IReadOnlyList<SummaryRow> Rows { get; }

    public static MigrationSummary From(IReadOnlyList<MigrationSample> samples, IReadOnlyList<string> failures)
    {
        var rows = samples.GroupBy(s => (s.Mib, s.Workload, s.Method))
            .OrderBy(g => g.Key.Mib).ThenBy(g => Array.FindIndex(MigrationBenchmark.Workloads, w => w.Name == g.Key.Workload)).ThenBy(g => Array.IndexOf(MigrationBenchmark.Methods, g.Key.Method))
            .Select(g => new SummaryRow(g.Key.Mib, g.Key.Workload, g.Key.Method, g.Count(), g.Count(s => s.StateContinued),
                Spread.Of(g.Select(s => s.TotalMs)), Spread.Of(g.Select(s => s.DowntimeMs)), Spread.Of(g.Select(s => s.CheckpointMs)),
                Spread.Of(g.Select(s => s.TransferMs)), Spread.Of(g.Select(s => s.RestoreMs)), Spread.Of(g.Select(s => s.TransferMBps ?? double.NaN)),
                Spread.Of(g.Select(s => s.ImageBytes / 1e6)), Spread.Of(g.Select(s => (double)s.Rounds)),
                Spread.Of(g.Select(s => s.PauseMs ?? double.NaN)), Spread.Of(g.Select(s => s.PauseMs is { } pause ? Math.Abs(s.DowntimeMs - pause) : double.NaN)),
                Spread.Of(g.Select(s => s.PostCopyBytes / 1e6)), Spread.Of(g.Select(s => s.RestoreToRunningMs ?? double.NaN)),
                g.Key.Method == "Auto" ? string.Join(", ", g.GroupBy(s => s.RanAs ?? "?").OrderBy(m => m.Key, StringComparer.Ordinal).Select(m => $"{m.Key} {m.Count()}")) : null))
            .ToList();
        return new MigrationSummary(samples, rows, failures);
    }

    public SummaryRow? Row(int mib, string workload, string method) => Rows.FirstOrDefault(r => r.Mib == mib && r.Workload == workload && r.Method == method);

    /// <summary>Ours / manual, by medians.</summary>
    public double Ratio(SummaryRow ours, Func<SummaryRow, Spread> figure) =>
        Row(ours.Mib, ours.Workload, "Manual") is { } manual ? figure(ours).Median / figure(manual).Median : double.NaN;

    public IReadOnlyList<Goal> Goals()
    {
        var goals = new List<Goal>();
        foreach (var row in Rows.Where(r => r.Method is not ("Manual" or "Podman")))
        {
            double ratio = Ratio(row, r => r.Total);
            goals.Add(new Goal($"total time <= 1.0x manual ({row.Mib} MiB {row.Workload}, {row.Method})", ratio <= 1.0, F($"{ratio:0.00}x")));
        }

        foreach (var row in Rows.Where(r => MigrationBenchmark.LiveModes.Contains(r.Method)))
        {
            // the downtime that counts is the one the workload saw
            double limit = row.Workload == "idle" ? 0.3 : 0.6;
            double ratio = Ratio(row, r => r.Pause);
            goals.Add(new Goal(F($"{row.Method} downtime seen by the pod <= {limit:0.0}x manual's ({row.Mib} MiB {row.Workload})"), ratio <= limit,
                F($"{row.Pause.Median:0} vs {Row(row.Mib, row.Workload, "Manual")?.Pause.Median ?? double.NaN:0} ms = {ratio:0.00}x")));
        }

        foreach (var row in Rows.Where(r => r.Method is not ("Manual" or "Podman")))
        {
            goals.Add(new Goal(F($"status.downtimeMillis within 100 ms of the pause the pod saw ({row.Mib} MiB {row.Workload}, {row.Method})"), row.Disagreement.Max <= 100,
                F($"off by {row.Disagreement.Median:0} ms (at most {row.Disagreement.Max:0})")));
        }

        foreach (var row in Rows.Where(r => r.Method is not ("Manual" or "Podman") && !double.IsNaN(r.RestoreToRunning.Median)))
        {
            // the restore alone: from the final images on the target to the processes running, against runc restore of the manual pipeline's images
            double ratio = Ratio(row, r => r.RestoreToRunning);
            goals.Add(new Goal($"restore to running <= 1.1x runc restore ({row.Mib} MiB {row.Workload}, {row.Method})", ratio <= 1.1,
                F($"{row.RestoreToRunning.Median:0} vs {Row(row.Mib, row.Workload, "Manual")?.RestoreToRunning.Median ?? double.NaN:0} ms = {ratio:0.00}x")));
        }

        foreach (var cold in Rows.Where(r => r.Method == "Cold"))
        {
            var manual = Row(cold.Mib, cold.Workload, "Manual");
            double ratio = manual is null ? double.NaN : cold.MBps.Median / manual.MBps.Median;
            goals.Add(new Goal($"transfer >= 0.8x tar over raw TCP ({cold.Mib} MiB {cold.Workload}, Cold)", ratio >= 0.8,
                F($"{cold.MBps.Median:0} vs {manual?.MBps.Median ?? double.NaN:0} MB/s = {ratio:0.00}x")));
        }

        foreach (var big in Rows.Where(r => r.Mib == 1024 && MigrationBenchmark.LiveModes.Contains(r.Method)))
        {
            int limit = big.Workload == "idle" ? 300 : 500;
            goals.Add(new Goal(F($"1 GiB {big.Workload} workload paused <= {limit} ms in {big.Method} (as it saw it)"), big.Pause.Median <= limit, F($"{big.Pause.Median:0} ms")));
        }

        foreach (var huge in Rows.Where(r => r.Mib == 4096 && MigrationBenchmark.LiveModes.Contains(r.Method)))
        {
            // a pod four times as big: its pause may grow by half at most
            if (Row(1024, huge.Workload, huge.Method) is { } big)
            {
                double ratio = huge.Pause.Median / big.Pause.Median;
                goals.Add(new Goal(F($"4 GiB {huge.Workload} workload paused <= 1.5x the 1 GiB one in {huge.Method} (as it saw it)"), ratio <= 1.5,
                    F($"{huge.Pause.Median:0} vs {big.Pause.Median:0} ms = {ratio:0.00}x")));
            }
        }

        return goals;
    }

    private static string F(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>A ratio for JSON: null when it has no value (no manual run to divide by).</summary>
    private static double? Finite(double ratio) => double.IsFinite(ratio) ? Math.Round(ratio, 3) : null;

    private static readonly string[] Header = ["size", "workload", "method", "total ms", "downtime ms", "pause seen by the pod ms", "checkpoint ms", "transfer ms", "restore ms", "restore to running ms", "MB/s", "images MB", "left on source MB", "rounds", "total / manual", "pause / manual", "state"];

    private IEnumerable<string[]> Cells() => Rows.Select(r => new[]
    {
        F($"{r.Mib} MiB"), r.Workload, r.Label, r.Total.Text(), r.Downtime.Text(), r.Pause.Text(), r.Checkpoint.Text(), r.Transfer.Text(), r.Restore.Text(), r.RestoreToRunning.Text(), r.MBps.Text(),
        r.ImageMB.Text("0.0"), r.Method is "PostCopy" or "Hybrid" or "Auto" ? r.PostCopyMB.Text("0.0") : "-", r.Method is "PreCopy" or "Hybrid" or "Auto" ? r.Rounds.Text() : "-",
        r.Method == "Manual" ? "1" : F($"{Ratio(r, x => x.Total):0.00}"), r.Method == "Manual" ? "1" : F($"{Ratio(r, x => x.Pause):0.00}"),
        F($"{r.Continued}/{r.Runs} continued"),
    });

    public void Print()
    {
        var cells = Cells().Prepend(Header).ToList();
        var widths = Enumerable.Range(0, Header.Length).Select(i => cells.Max(c => c[i].Length)).ToArray();
        Console.WriteLine();
        Console.WriteLine("  medians (min-max) over the repetitions; ratios are each method / manual by medians");
        foreach (var row in cells)
        {
            Console.WriteLine("  " + string.Join("  ", row.Select((c, i) => i < 3 ? c.PadRight(widths[i]) : c.PadLeft(widths[i]))));
        }

        Console.WriteLine();
        foreach (var goal in Goals())
        {
            Console.WriteLine($"  {(goal.Met ? "met   " : "MISSED")}  {goal.Text}: {goal.Figures}");
        }

        foreach (var failure in Failures)
        {
            Console.WriteLine($"  FAILED RUN  {failure}");
        }
    }

    public JsonObject ToJson(JsonObject machine, int[] sizes, int repetitions, string? podman) => new()
    {
        ["machine"] = machine.DeepClone(),
        ["date"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture),
        ["settings"] = new JsonObject
        {
            ["sizesMib"] = new JsonArray([.. sizes.Select(s => (JsonNode)s)]),
            ["repetitions"] = repetitions,
            ["workloads"] = new JsonArray([.. MigrationBenchmark.Workloads.Select(w => (JsonNode)new JsonObject { ["name"] = w.Name, ["dirtyPercentPerSecond"] = w.DirtyPercent })]),
            ["podman"] = podman is null ? "not installed: not measured" : podman,
        },
        ["samples"] = JsonSerializer.SerializeToNode(Samples),
        ["summary"] = new JsonArray([.. Rows.Select(r => (JsonNode)new JsonObject
        {
            ["mib"] = r.Mib,
            ["workload"] = r.Workload,
            ["method"] = r.Method,
            ["ranAs"] = r.RanAs,
            ["runs"] = r.Runs,
            ["stateContinued"] = r.Continued,
            ["totalMs"] = r.Total.ToJson(),
            ["downtimeMs"] = r.Downtime.ToJson(),
            ["pauseSeenByPodMs"] = r.Pause.ToJson(),
            ["downtimeOffFromPauseMs"] = r.Disagreement.ToJson(),
            ["checkpointMs"] = r.Checkpoint.ToJson(),
            ["transferMs"] = r.Transfer.ToJson(),
            ["restoreMs"] = r.Restore.ToJson(),
            ["restoreToRunningMs"] = r.RestoreToRunning.ToJson(),
            ["transferMBps"] = r.MBps.ToJson(),
            ["imageMB"] = r.ImageMB.ToJson(),
            ["preCopyRounds"] = r.Rounds.ToJson(),
            ["postCopyMB"] = r.PostCopyMB.ToJson(),
            ["totalRatioToManual"] = r.Method == "Manual" ? null : Finite(Ratio(r, x => x.Total)),
            ["downtimeRatioToManual"] = r.Method == "Manual" ? null : Finite(Ratio(r, x => x.Downtime)),
            ["pauseRatioToManual"] = r.Method == "Manual" ? null : Finite(Ratio(r, x => x.Pause)),
        })]),
        ["failedRuns"] = new JsonArray([.. Failures.Select(f => (JsonNode)f)]),
        ["goals"] = new JsonArray([.. Goals().Select(g => (JsonNode)new JsonObject { ["goal"] = g.Text, ["met"] = g.Met, ["figures"] = g.Figures })]),
    };

    public string ToMarkdown(JsonObject machine, int[] sizes, int repetitions, string? podman, TimeSpan duration, string plot = "benchmarks.png")
    {
        var md = new StringBuilder();
        md.AppendLine("# Benchmarks: live migration against the manual CRIU pipeline");
        md.AppendLine();
        md.AppendLine(plot == "benchmarks.png"
            ? "Written by `make bench` (`hack/bench.sh migration`); every figure of the run is in `artifacts/bench/migration.json`."
            : F($"Written by `hack/bench.sh migration --sizes {string.Join(',', sizes)} --doc {plot[..^4]}`; every figure of the run is in `artifacts/bench/{plot[..^4]}.json`."));
        md.AppendLine("This file holds the results of a real run on the machine below; rerun to refresh it.");
        md.AppendLine();
        md.AppendLine("## Machine and run");
        md.AppendLine();
        md.AppendLine(F($"- {machine["cpus"]} CPUs ({machine["cpu"]}), Linux {machine["kernel"]}, .NET {machine["runtime"]}; run on {DateTime.UtcNow:yyyy-MM-dd} in {duration.TotalMinutes:0.0} minutes"));
        md.AppendLine(F($"- the sandbox cluster (`hack/sandbox`): two containerd nodes on this one machine (loopback between agents), the real operator and agents"));
        md.AppendLine(F($"- workloads: memcounter holding {string.Join(", ", sizes.Select(s => s + " MiB"))}, idle after start-up or dirtying 5% of its memory per second; {repetitions} repetitions of each method, interleaved"));
        md.AppendLine("- **Manual**: what a user would script on the same nodes: `runc checkpoint` of the pod's container, `tar` of the images streamed over TCP to the target node's address into `tar -x`, `runc restore --detach` into a pod sandbox made on the target beforehand (with the image's root file system in place, as the target has the image for our migration too). Stop-and-copy: frozen from the first step to the last, so its downtime is its total time.");
        md.AppendLine("- **Cold**, **PreCopy**, **PostCopy** and **Hybrid**: a `MigrationRequest` with that mode, timed from its creation to `Succeeded` as observed by polling every 10 ms; downtime is the operator's `status.downtimeMillis` (from the freeze before the final dump until the replacement pod runs); checkpoint, transfer and restore are the times spent in the phases Checkpointing (with pre-copy rounds), Transferring and Restoring. A lazy restore stays in Restoring (the source frozen) until the last page is in place, so for PostCopy and Hybrid the restore column includes fetching the pages left on the source (`status.postCopyBytes`, the \"left on source\" column) while the replacement already runs; the time the workload then waits on pages it touches is not in its pause, it slows the ticks after it.");
        md.AppendLine("- **Restore to running**: ours is the operator's `status.restoreMillis`, the target's restore runtime's own figure from its taking up the committed final images to the replacement's processes running (across the pod's containers; lazily restored memory arrives after, within the restore column); Manual's is its `runc restore --detach` of the same pod's images, which returns once the process runs with all its memory in place; Podman's its `podman container restore --import`.");
        md.AppendLine("- **Auto**: a `MigrationRequest` naming no mode (the default), which the operator resolves into `status.mode` (condition `ModeChosen`): pre-copy rounds, then what the last one found written sent frozen if that takes at most 2000 ms at the rounds' own rate (PreCopy), else left on the source (Hybrid). The method column says what it ran as, and how often.");
        md.AppendLine(F($"- **Podman**: {(podman is null ? "not installed on this machine, so its `container checkpoint --export` / `container restore --import` pipeline is not measured" : "podman 5.4 (Debian trixie's, unpacked by `hack/install-prereqs.sh`, with the same runc and CRIU) runs the same memcounter image in one storage root; `podman container checkpoint --export --compress none`, the archive copied over TCP to the target node's address as Manual copies its images, `podman container restore --import` into a second storage root. Stop-and-copy, so its downtime is its total time. Its `--pre-checkpoint` flow needs soft-dirty tracking, which this kernel lacks")}."));
        md.AppendLine(F($"- **Pause seen by the pod**: memcounter ticks every {MigrationBenchmark.TickIntervalMs} ms and stamps each tick with its own clock when the tick begins; the pause is the time from its last tick before the move to its first tick after it (consecutive ticks). It is the downtime the workload itself observed, and the one the goals judge; Manual's and Podman's downtime columns are their frozen time, ours is the operator's `status.downtimeMillis`."));
        md.AppendLine("- State: every run checks that the moved process's ticks go on from the source's last one (+1, consecutive) and that no memory verification fails (memcounter verifies its buffer's checksum on the first tick after a pause of several intervals).");
        md.AppendLine();
        md.AppendLine("## Results");
        md.AppendLine();
        md.AppendLine("Medians with (min-max); ratios are each method / manual by medians. MB/s is the copy step's rate (Manual and Podman: tar over TCP; Cold: agent to agent, the bulk lane with mutual TLS and an XXH3-128 checksum per file); PreCopy, Hybrid and Auto move most bytes while the pod runs, PostCopy after the replacement runs, so they have none.");
        md.AppendLine();
        md.AppendLine("| " + string.Join(" | ", Header) + " |");
        md.AppendLine("|" + string.Concat(Header.Select(_ => " --- |")));
        foreach (var row in Cells())
        {
            md.AppendLine("| " + string.Join(" | ", row) + " |");
        }

        md.AppendLine();
        md.AppendLine($"![downtime and total time against memory size]({plot})");
        md.AppendLine();
        md.AppendLine("## Goals");
        md.AppendLine();
        foreach (var goal in Goals())
        {
            md.AppendLine($"- {(goal.Met ? "met" : "**missed**")}: {goal.Text}: {goal.Figures}");
        }

        if (Failures.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("Runs that failed (left out of the table above):");
            md.AppendLine();
            foreach (var failure in Failures)
            {
                md.AppendLine($"- {failure}");
            }
        }

        md.AppendLine();
        md.AppendLine("## Published figures, for comparison");
        md.AppendLine();
        md.AppendLine("- Stop-and-copy pod migration through a patched kubelet and containerd: 2.1 s downtime for a pod with no memory, 4.0 s with 1 GB (about 2.5 s per GB).");
        md.AppendLine("- QEMU's pre-copy live migration keeps an idle guest's downtime near 30 ms.");
        md.AppendLine();
        md.AppendLine("Both are other machines and other setups: quoted beside ours, not measured here.");
        return md.ToString();
    }
}

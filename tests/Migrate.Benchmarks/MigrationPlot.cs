using ScottPlot;
using SkiaSharp;

namespace Migrate.Benchmarks;

/// <summary>
/// The benchmark's picture (ScottPlot): downtime (left) and total time (right) against the
/// workload's memory, medians of each method; solid lines for idle workloads, dashed for
/// dirtying ones.
/// </summary>
public static class MigrationPlot
{
    private const int Width = 760;
    private const int Height = 520;

    public static void Write(MigrationSummary summary, string path)
    {
        ArgumentNullException.ThrowIfNull(summary);
        using var downtime = Panel(summary, "Pause seen by the pod (last tick before the move to first after)", r => r.Pause.Median);
        using var total = Panel(summary, "Total time (request to done)", r => r.Total.Median);
        using var surface = SKSurface.Create(new SKImageInfo(Width * 2, Height));
        surface.Canvas.Clear(SKColors.White);
        surface.Canvas.DrawBitmap(downtime, 0, 0);
        surface.Canvas.DrawBitmap(total, Width, 0);
        using var image = surface.Snapshot();
        using var png = image.Encode(SKEncodedImageFormat.Png, 100);
        using var file = File.Create(path);
        png.SaveTo(file);
    }

    private static SKBitmap Panel(MigrationSummary summary, string title, Func<SummaryRow, double> figure)
    {
        var plot = new Plot();
        var sizes = summary.Rows.Select(r => r.Mib).Distinct().Order().ToArray();
        var colors = new Dictionary<string, Color>
        {
            ["Manual"] = Colors.FireBrick,
            ["Podman"] = Colors.DarkOrange,
            ["Cold"] = Colors.SteelBlue,
            ["PreCopy"] = Colors.SeaGreen,
            ["PostCopy"] = Colors.MediumPurple,
            ["Hybrid"] = Colors.Teal,
            ["Auto"] = Colors.Black,
        };
        foreach (var method in MigrationBenchmark.Methods)
        {
            foreach (var (workload, _) in MigrationBenchmark.Workloads)
            {
                var rows = sizes.Select(s => summary.Row(s, workload, method)).Where(r => r is not null).Select(r => r!).ToList();
                if (rows.Count == 0)
                {
                    continue;
                }

                var line = plot.Add.Scatter(rows.Select(r => Math.Log2(r.Mib)).ToArray(), rows.Select(r => figure(r) / 1000).ToArray());
                line.Color = colors[method];
                line.LineWidth = 2;
                line.MarkerSize = 7;
                line.LinePattern = workload == "idle" ? LinePattern.Solid : LinePattern.Dashed;
                line.LegendText = $"{method switch { "Manual" => "manual runc", "Podman" => "podman", _ => "ours " + method }}, {workload}";
            }
        }

        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            sizes.Select(s => Math.Log2(s)).ToArray(), sizes.Select(s => s >= 1024 ? $"{s / 1024} GiB" : $"{s} MiB").ToArray());
        plot.Axes.Margins(0.08, 0.1);
        plot.Axes.SetLimitsY(0, double.NaN);
        plot.Title(title);
        plot.XLabel("memory held by the workload");
        plot.YLabel("seconds (median)");
        plot.ShowLegend(Alignment.UpperLeft);
        var bytes = plot.GetImage(Width, Height).GetImageBytes(ImageFormat.Png);
        return SKBitmap.Decode(bytes);
    }
}

using System.Globalization;
using System.Text;

namespace Migrate.Benchmarks;

/// <summary>The pieces the benchmarks' Markdown pages share: the figures table and the list of failed runs.</summary>
internal static class MarkdownParts
{
    public static void AppendFigures(StringBuilder text, IReadOnlyList<(string Name, double Value, string Unit)> figures)
    {
        text.AppendLine("| figure | value |");
        text.AppendLine("| --- | --- |");
        foreach (var (name, value, unit) in figures)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {value:0.###} {unit} |");
        }
    }

    public static void AppendFailures(StringBuilder text, IReadOnlyList<string> failures)
    {
        if (failures.Count == 0)
        {
            return;
        }

        text.AppendLine();
        text.AppendLine("Failed runs:");
        foreach (var failure in failures)
        {
            text.AppendLine("- " + failure);
        }
    }
}

using System.Globalization;

namespace Migrate.Kubectl;

/// <summary>
/// What the plugin prints. On a terminal the transfer progress is one line redrawn in place (a bar
/// of bytes sent over the image size, throughput, pre-copy rounds); otherwise every update is a
/// line of its own, with no control characters, for logs and scripts.
/// </summary>
public sealed class Output(TextWriter writer, bool interactive)
{
    private const int BarWidth = 30;
    private bool _progressShown;

    public bool Interactive => interactive;

    public void Line(string text)
    {
        EndProgress();
        writer.WriteLine(text);
        writer.Flush();
    }

    public void Phase(string phase, string message) => Line($"{phase}: {message}".TrimEnd(' ', ':'));

    public void Progress(string phase, double sent, double total, double? bytesPerSecond, int rounds)
    {
        double fraction = total > 0 ? Math.Clamp(sent / total, 0, 1) : 0;
        var figures = string.Create(CultureInfo.InvariantCulture, $"{sent / 1e6:0.0}/{total / 1e6:0.0} MB {fraction * 100,3:0}%")
            + (bytesPerSecond is { } rate ? string.Create(CultureInfo.InvariantCulture, $", {rate / 1e6:0.0} MB/s") : "")
            + (rounds > 0 ? $", pre-copy round {rounds}" : "");
        if (!interactive)
        {
            writer.WriteLine($"  {phase}: {figures}");
            writer.Flush();
            return;
        }

        int filled = (int)Math.Round(fraction * BarWidth);
        writer.Write($"\r  {phase,-13} [{new string('#', filled)}{new string('-', BarWidth - filled)}] {figures}\u001b[K");
        writer.Flush();
        _progressShown = true;
    }

    public void EndProgress()
    {
        if (_progressShown)
        {
            writer.WriteLine();
            _progressShown = false;
        }
    }

    public void Table(IReadOnlyList<string> header, IReadOnlyList<string[]> rows)
    {
        var widths = header.Select((h, i) => Math.Max(h.Length, rows.Count == 0 ? 0 : rows.Max(r => r[i].Length))).ToArray();
        foreach (var row in rows.Prepend([.. header]))
        {
            Line(string.Join("   ", row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd());
        }
    }
}

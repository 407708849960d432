using System.Globalization;

namespace Migrate.TestSupport;

/// <summary>
/// Measurements tests take along the way (dump time, image size, ...). They are not asserted on
/// (timings are noisy); `make test` prints the file at the end so the figures are on record.
/// </summary>
public static class Figures
{
    private static readonly Lock Gate = new();

    public static string FilePath =>
        Environment.GetEnvironmentVariable("MIGRATE_FIGURES_FILE")
        ?? Path.Combine(RepositoryLayout.Artifacts, "test-results", "figures.txt");

    public static void Record(string test, string name, double value, string unit)
    {
        var line = string.Create(CultureInfo.InvariantCulture, $"{test}\t{name}\t{value:0.###}\t{unit}");
        lock (Gate)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(FilePath)!);
            File.AppendAllLines(FilePath, [line]);
        }
    }
}

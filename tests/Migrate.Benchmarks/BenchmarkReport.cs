using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>Collects figures, prints them as a table and writes them as JSON (artifacts/bench/results.json).</summary>
public sealed class BenchmarkReport
{
    private readonly JsonObject _root = new()
    {
        ["machine"] = new JsonObject
        {
            ["cpus"] = Environment.ProcessorCount,
            ["kernel"] = File.ReadAllText("/proc/sys/kernel/osrelease").Trim(),
            ["cpu"] = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim(),
            ["runtime"] = Environment.Version.ToString(),
        },
        ["date"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture),
    };

    private readonly List<(string Section, string Name, string Value)> _rows = [];

    public static string Directory => Path.Combine(RepositoryLayout.Artifacts, "bench");

    /// <summary>The machine the figures come from (CPUs, kernel, CPU model, .NET).</summary>
    public JsonObject Machine => (JsonObject)_root["machine"]!;

    public void Add(string section, string name, double value, string unit)
    {
        var obj = _root[section] as JsonObject ?? new JsonObject();
        _root[section] = obj;
        obj[name] = new JsonObject { ["value"] = Math.Round(value, 3), ["unit"] = unit };
        _rows.Add((section, name, string.Create(CultureInfo.InvariantCulture, $"{value:0.###} {unit}")));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {section,-12} {name,-44} {value,12:0.###} {unit}"));
    }

    public void Write()
    {
        System.IO.Directory.CreateDirectory(Directory);
        var path = Path.Combine(Directory, "results.json");
        File.WriteAllText(path, _root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine();
        Console.WriteLine($"{_rows.Count} figures written to {path}");
    }

    public static (double P50, double P99, double Max) Percentiles(List<double> samples)
    {
        samples.Sort();
        double At(double q) => samples[Math.Min(samples.Count - 1, (int)Math.Ceiling(q * samples.Count) - 1)];
        return (At(0.50), At(0.99), samples[^1]);
    }
}

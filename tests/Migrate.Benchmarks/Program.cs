using Migrate.Benchmarks;

// make bench: hack/bench.sh runs this with the benchmarks to run (default: all).
var which = args.Where(a => !a.StartsWith("--", StringComparison.Ordinal) && !char.IsDigit(a[0])).DefaultIfEmpty("all").ToArray();
var results = new BenchmarkReport();
if (which.Contains("all") || which.Contains("emulator"))
{
    await EmulatorBenchmark.RunAsync(results);
}

if (which.Contains("all") || which.Contains("runtime"))
{
    await RuntimeBenchmark.RunAsync(results);
}

if (which.Contains("all") || which.Contains("transfer"))
{
    await TransferBenchmark.RunAsync(results);
}

if (which.Contains("all") || which.Contains("migration"))
{
    await MigrationBenchmark.RunAsync(results, args);
}

if (which.Contains("all") || which.Contains("controller"))
{
    await ControllerBenchmark.RunAsync(results, args);
}

if (which.Contains("all") || which.Contains("scale"))
{
    await ScaleBenchmark.RunAsync(results, args);
}

if (which.Contains("all") || which.Contains("groups"))
{
    await GroupBenchmark.RunAsync(results, args);
}

if (which.Contains("all") || which.Contains("checkpoint"))
{
    await CheckpointBenchmark.RunAsync(results, args);
}

if (which.Contains("all") || which.Contains("connections"))
{
    await ConnectionBenchmark.RunAsync(results, args);
}

results.Write();
return 0;

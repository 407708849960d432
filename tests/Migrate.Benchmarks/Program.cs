using Migrate.Benchmarks;

// make bench: hack/bench.sh runs this with the benchmarks to run (default: all).
var which = args.Length == 0 ? ["all"] : args;
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

results.Write();
return 0;

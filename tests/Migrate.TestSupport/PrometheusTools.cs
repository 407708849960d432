namespace Migrate.TestSupport;

/// <summary>Bookworm's Prometheus and promtool, which hack/install-prereqs.sh unpacks into their own prefix.</summary>
public static class PrometheusTools
{
    private static string BinDirectory => Prerequisites.InstallPrefix("prometheus", "usr", "bin");

    public static string Prometheus => Require("prometheus");

    public static string Promtool => Require("promtool");

    private static string Require(string program)
    {
        var path = Path.Combine(BinDirectory, program);
        return File.Exists(path) ? path : throw new InvalidOperationException($"{program} is not installed ({path} is missing); run 'sudo hack/install-prereqs.sh'");
    }
}

namespace Migrate.TestSupport;

/// <summary>Paths inside the repository, found from the running test assembly.</summary>
public static class RepositoryLayout
{
    private static readonly Lazy<string> LazyRoot = new(FindRoot);

    /// <summary>The directory holding Migrate.Operator.sln.</summary>
    public static string Root => LazyRoot.Value;

    /// <summary>Build output and caches (git-ignored).</summary>
    public static string Artifacts => Path.Combine(Root, "artifacts");

    public static string InRepository(params string[] parts) => Path.Combine([Root, .. parts]);

    /// <summary>The native podmig-runc that <c>make build</c> (hack/build-native.sh) publishes.</summary>
    public static string RestoreRuntime
    {
        get
        {
            var path = Path.Combine(Artifacts, "native", "podmig-runc");
            return File.Exists(path) ? path : throw new InvalidOperationException($"{path} is missing: run 'make build' (or hack/build-native.sh) first");
        }
    }

    /// <summary>
    /// The entry assembly of one of this repository's programs (project Migrate.NodeAgent, assembly
    /// migrate-node-agent), from the same build (configuration and runtime) as the running code.
    /// </summary>
    public static string Program(string project, string assembly)
    {
        var pivot = Path.GetFileName(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory));
        var path = Path.Combine(Artifacts, "bin", project, pivot, assembly + ".dll");
        return File.Exists(path) ? path : throw new InvalidOperationException($"{path} is missing: run 'make build' first");
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Migrate.Operator.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no Migrate.Operator.sln above {AppContext.BaseDirectory}");
    }
}

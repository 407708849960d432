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

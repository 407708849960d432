using Migrate.TestSupport;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>make kubectl-migrate: one self-contained executable, installed under PREFIX, that runs without .NET installed.</summary>
public sealed class PluginPackagingTests
{
    [Fact]
    public void Make_installs_the_plugin_as_one_executable_that_needs_no_dotnet()
    {
        var prefix = Directory.CreateTempSubdirectory("plugin-prefix-").FullName;
        try
        {
            var (code, output) = Run("make", ["-s", "kubectl-migrate", $"PREFIX={prefix}"], RepositoryLayout.Root, null);
            Assert.True(code == 0, output);
            var installed = Assert.Single(Directory.GetFiles(Path.Combine(prefix, "bin")));
            Assert.Equal("kubectl-migrate", Path.GetFileName(installed));
            Assert.True(File.GetUnixFileMode(installed).HasFlag(UnixFileMode.UserExecute));

            // a PATH without dotnet, from a directory without the build: the file carries its runtime
            var (helpCode, help) = Run(installed, ["--help"], prefix, new Dictionary<string, string> { ["PATH"] = "/nonexistent", ["DOTNET_ROOT"] = "/nonexistent" });
            Assert.Equal(0, helpCode);
            Assert.Contains("kubectl migrate pod NAME [--to NODE] [--mode auto|cold|precopy|postcopy|hybrid]", help, StringComparison.Ordinal);
            var (usageCode, usage) = Run(installed, ["pod"], prefix, new Dictionary<string, string> { ["PATH"] = "/nonexistent", ["KUBECONFIG"] = "/nonexistent/config" });
            Assert.Equal((2, "error: pod needs a pod name"), (usageCode, usage.Split('\n')[0]));
        }
        finally
        {
            Directory.Delete(prefix, recursive: true);
        }
    }

    private static (int Code, string Output) Run(string program, string[] args, string directory, IReadOnlyDictionary<string, string>? environment)
    {
        var (code, stdout, stderr) = Prerequisites.Capture(program, args, directory, environment);
        return (code, stdout + stderr);
    }
}

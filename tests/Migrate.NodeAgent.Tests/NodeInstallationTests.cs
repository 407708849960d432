using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>What deploy/node/ puts on a node, checked with the real containerd and the real install script.</summary>
public sealed class NodeInstallationTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("podmig-node-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Containerd_reads_the_drop_in_as_the_podmig_handler_with_the_restore_annotations()
    {
        var main = Path.Combine(_root, "config.toml");
        File.WriteAllText(main, $"""
            version = 2
            root = "{_root}/root"
            state = "{_root}/state"
            imports = ["{RepositoryLayout.InRepository("deploy", "node", "containerd-podmig.toml")}"]
            """);

        var merged = Prerequisites.Run("containerd", "--config", main, "config", "dump");

        Assert.Contains("""[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.podmig]""", merged, StringComparison.Ordinal);
        Assert.Contains("""BinaryName = "/usr/local/bin/podmig-runc" """.TrimEnd(), merged, StringComparison.Ordinal);
        Assert.Contains("""pod_annotations = ["podmigration.io/*", "podmig.io/*"]""", merged, StringComparison.Ordinal);
        Assert.Contains("""runtime_type = "io.containerd.runc.v2" """.TrimEnd(), merged, StringComparison.Ordinal);
    }

    [Fact]
    public void Install_adds_the_binary_the_drop_in_and_one_imports_line_and_uninstall_takes_them_away()
    {
        var config = Path.Combine(_root, "etc", "containerd", "config.toml");
        Directory.CreateDirectory(Path.GetDirectoryName(config)!);
        File.WriteAllText(config, "version = 2\n[debug]\n  level = \"info\"\n");
        var binary = Path.Combine(_root, "podmig-runc");
        File.WriteAllText(binary, "#!/bin/sh\n");
        var script = RepositoryLayout.InRepository("deploy", "node", "install.sh");

        RunScript(script, "install", binary);
        RunScript(script, "install", binary);
        var installed = File.ReadAllText(config);
        bool binaryThere = File.Exists(Path.Combine(_root, "usr", "local", "bin", "podmig-runc"));
        bool dropInThere = File.Exists(Path.Combine(_root, "etc", "containerd", "conf.d", "podmig.toml"));
        RunScript(script, "uninstall", binary);

        Assert.True(binaryThere);
        Assert.True(dropInThere);
        Assert.Equal(1, installed.Split('\n').Count(l => l.Contains("conf.d/*.toml", StringComparison.Ordinal)));
        Assert.StartsWith("imports = ", installed, StringComparison.Ordinal);
        Assert.Equal("version = 2\n[debug]\n  level = \"info\"\n", File.ReadAllText(config));
        Assert.False(File.Exists(Path.Combine(_root, "usr", "local", "bin", "podmig-runc")));
        Assert.False(File.Exists(Path.Combine(_root, "etc", "containerd", "conf.d", "podmig.toml")));
    }

    private void RunScript(string script, string verb, string binary)
    {
        var start = new System.Diagnostics.ProcessStartInfo(script) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(verb);
        start.Environment["HOST_ROOT"] = _root;
        start.Environment["PODMIG_RUNC_BINARY"] = binary;
        using var process = System.Diagnostics.Process.Start(start)!;
        var error = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"install.sh {verb}: {error}");
    }
}

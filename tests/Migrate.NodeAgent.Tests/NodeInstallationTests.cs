using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>What deploy/node/ puts on a node, checked with the real containerd and the real install script.</summary>
public sealed class NodeInstallationTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("podmig-node-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Theory]
    [InlineData("1.6", 2, "io.containerd.grpc.v1.cri")]
    [InlineData("1.7", 2, "io.containerd.grpc.v1.cri")]
    [InlineData("2.1", 3, "io.containerd.cri.v1.runtime")]
    [InlineData("2.1", 2, "io.containerd.cri.v1.runtime")] // a 2.x host whose main config is still version 2: migrated with its drop-in
    public void Each_containerd_release_reads_the_drop_in_install_sh_picks_as_the_podmig_handler(string release, int mainVersion, string criPlugin)
    {
        var main = Path.Combine(_root, "etc", "containerd", "config.toml");
        Directory.CreateDirectory(Path.GetDirectoryName(main)!);
        File.WriteAllText(main, $"""
            version = {mainVersion}
            root = "{_root}/root"
            state = "{_root}/state"
            """);
        var binary = Path.Combine(_root, "podmig-runc");
        File.WriteAllText(binary, "#!/bin/sh\n");
        RunScript(RepositoryLayout.InRepository("deploy", "node", "install.sh"), "install", binary);
        var dropIn = Path.Combine(_root, "etc", "containerd", "conf.d", "podmig.toml");
        Assert.Contains($"version = {mainVersion}", File.ReadAllText(dropIn), StringComparison.Ordinal);
        // (the imports line install.sh wrote names the host's /etc/containerd/conf.d: here, the drop-in itself)
        File.WriteAllText(main, File.ReadAllText(main).Replace("/etc/containerd/conf.d/*.toml", dropIn, StringComparison.Ordinal));

        // (2.x writes TOML strings in single quotes)
        var merged = Prerequisites.Run(ContainerdRelease.Get(release).Containerd, "--config", main, "config", "dump").Replace('\'', '"');

        Assert.Contains($"""[plugins."{criPlugin}".containerd.runtimes.podmig]""", merged, StringComparison.Ordinal);
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
        var ipam = new FileInfo(Path.Combine(_root, "opt", "cni", "bin", "podmig-ipam"));
        var ipamTarget = ipam.LinkTarget;
        // a plugin of the same name that is not ours is left alone by uninstall
        var other = Path.Combine(_root, "other-cni");
        Directory.CreateDirectory(Path.Combine(other, "opt", "cni", "bin"));
        File.CreateSymbolicLink(Path.Combine(other, "opt", "cni", "bin", "podmig-ipam"), "/usr/local/bin/someone-elses");
        RunScript(script, "uninstall", binary);
        RunScript(script, "uninstall", binary, cniRoot: other);

        Assert.True(binaryThere);
        Assert.True(dropInThere);
        Assert.Equal("/usr/local/bin/podmig-runc", ipamTarget);
        Assert.False(File.Exists(ipam.FullName) || Directory.Exists(ipam.FullName) || new FileInfo(ipam.FullName).LinkTarget is not null);
        Assert.Equal("/usr/local/bin/someone-elses", new FileInfo(Path.Combine(other, "opt", "cni", "bin", "podmig-ipam")).LinkTarget);
        Assert.Equal(1, installed.Split('\n').Count(l => l.Contains("conf.d/*.toml", StringComparison.Ordinal)));
        Assert.StartsWith("imports = ", installed, StringComparison.Ordinal);
        Assert.Equal("version = 2\n[debug]\n  level = \"info\"\n", File.ReadAllText(config));
        Assert.False(File.Exists(Path.Combine(_root, "usr", "local", "bin", "podmig-runc")));
        Assert.False(File.Exists(Path.Combine(_root, "etc", "containerd", "conf.d", "podmig.toml")));
    }

    private void RunScript(string script, string verb, string binary, string? cniRoot = null)
    {
        var start = new System.Diagnostics.ProcessStartInfo(script) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(verb);
        start.Environment["HOST_ROOT"] = cniRoot ?? _root;
        start.Environment["PODMIG_RUNC_BINARY"] = binary;
        using var process = System.Diagnostics.Process.Start(start)!;
        var error = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"install.sh {verb}: {error}");
    }
}

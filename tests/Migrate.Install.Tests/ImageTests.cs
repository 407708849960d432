using System.Text.RegularExpressions;
using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>
/// The container images, as far as they can be checked without a builder (none runs on these
/// machines): what the Dockerfiles copy exists, their entry points are what the projects build,
/// users and images agree with the manifests, and make images says why it cannot build here.
/// </summary>
public sealed partial class ImageTests
{
    private static readonly string[] Dockerfiles = ["operator/Dockerfile", "node-agent/Dockerfile"];

    private static string Read(string path) => File.ReadAllText(RepositoryLayout.InRepository(path.Split('/')));

    [Fact]
    public void Every_file_a_Dockerfile_copies_from_the_repository_exists()
    {
        foreach (var dockerfile in Dockerfiles)
        {
            foreach (Match copy in Copy().Matches(Read(dockerfile)))
            {
                var sources = copy.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries)[..^1];
                foreach (var source in sources.Where(s => s != "."))
                {
                    Assert.True(File.Exists(RepositoryLayout.InRepository(source.Split('/'))), $"{dockerfile} copies {source}, which does not exist");
                }
            }
        }
    }

    [Fact]
    public void Entry_points_users_and_image_names_agree_with_the_projects_and_the_manifests()
    {
        var operatorFile = Read("operator/Dockerfile");
        var agentFile = Read("node-agent/Dockerfile");
        Assert.Contains("FROM mcr.microsoft.com/dotnet/aspnet:10.0", operatorFile, StringComparison.Ordinal);
        Assert.Contains($"/app/{AssemblyName("operator/Migrate.Operator/Migrate.Operator.csproj")}.dll", operatorFile, StringComparison.Ordinal);
        Assert.Contains($"/opt/podmig/agent/{AssemblyName("node-agent/Migrate.NodeAgent/Migrate.NodeAgent.csproj")}\"]", agentFile, StringComparison.Ordinal);
        Assert.Contains($"/opt/podmig/node/{AssemblyName("node-agent/Migrate.RestoreRuntime/Migrate.RestoreRuntime.csproj")}", agentFile, StringComparison.Ordinal);
        Assert.Matches(@"FROM debian:sid", agentFile); // CRIU 4.2 (sid): 4.1 cannot dump sockets on kernels 6.16 and later
        Assert.Matches(@"apt-get install [^\n]*\bcriu\b[^\n]*\blibcriu2\b[^\n]*\brunc\b[^\n]*\biptables\b[^\n]*\biproute2\b[^\n]*\biputils-arping\b", agentFile);

        // the operator's image user is the non-root user the Deployment runs it as
        Assert.Equal("USER 65532:65532", UserLine().Match(operatorFile).Value);
        var chart = new HelmChart(RepositoryLayout.InRepository("charts", "pod-migration")).Render("podmig", "podmig-system");
        var deployment = ChartTests.Object(chart, "Deployment", "podmig-operator");
        var podSecurity = (Dictionary<string, object?>)((Dictionary<string, object?>)((Dictionary<string, object?>)deployment["spec"]!)["template"]!)["spec"]!;
        Assert.Equal(65532.0, ((Dictionary<string, object?>)podSecurity["securityContext"]!)["runAsUser"]);

        // make images tags what deploy/ and the chart run
        var (_, tags) = Run("hack/images.sh", ["--tags"]);
        var images = chart.Manifests.Where(o => DeployManifests.Kind(o) is "Deployment" or "DaemonSet")
            .Select(o => (string)((Dictionary<string, object?>)((List<object?>)((Dictionary<string, object?>)((Dictionary<string, object?>)((Dictionary<string, object?>)o["spec"]!)["template"]!)["spec"]!)["containers"]!)[0]!)["image"]!)
            .Order(StringComparer.Ordinal);
        Assert.Equal(images, tags.Split('\n', StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Make_images_builds_or_names_every_builder_it_tried()
    {
        var (code, output) = Run("make", ["-s", "images"]);
        if (code == 0)
        {
            Assert.Contains("built ghcr.io/pod-migration/operator:", output, StringComparison.Ordinal);
            return;
        }

        Assert.Contains("no container image builder works on this machine; tried: docker", output, StringComparison.Ordinal);
        Assert.Contains("podman", output, StringComparison.Ordinal);
        Assert.Contains("buildah", output, StringComparison.Ordinal);
    }

    [Fact]
    public void The_node_installer_changes_a_node_once_and_then_leaves_it_alone()
    {
        var root = Directory.CreateTempSubdirectory("podmig-host-").FullName;
        try
        {
            var binary = Path.Combine(root, "podmig-runc-build");
            File.WriteAllText(binary, "#!/bin/sh\n");
            var environment = new Dictionary<string, string> { ["HOST_ROOT"] = root, ["PODMIG_RESTART_CONTAINERD"] = "false" };
            var node = Path.Combine(root, "node");
            Directory.CreateDirectory(node);
            foreach (var file in new[] { "install.sh", "install-node.sh", "containerd-podmig.toml", "containerd-podmig-v3.toml" })
            {
                File.Copy(RepositoryLayout.InRepository("deploy", "node", file), Path.Combine(node, file));
            }

            File.Copy(binary, Path.Combine(node, "podmig-runc"));
            var (first, firstOutput) = Run(Path.Combine(node, "install-node.sh"), [], environment);
            Assert.True(first == 0, firstOutput);
            Assert.Contains("node configuration changed", firstOutput, StringComparison.Ordinal);
            Assert.Contains("restart containerd on this node", firstOutput, StringComparison.Ordinal);
            Assert.True(File.Exists(Path.Combine(root, "etc", "containerd", "conf.d", "podmig.toml")));
            var (second, secondOutput) = Run(Path.Combine(node, "install-node.sh"), [], environment);
            Assert.True(second == 0, secondOutput);
            Assert.Contains("node configuration unchanged; containerd not restarted", secondOutput, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static string AssemblyName(string project) =>
        Regex.Match(Read(project), "<AssemblyName>([^<]+)</AssemblyName>").Groups[1].Value is { Length: > 0 } name ? name : throw new InvalidDataException($"{project} sets no AssemblyName");

    /// <summary>A repository script (relative path) or a program on PATH, run from the repository root.</summary>
    private static (int Code, string Output) Run(string program, string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var path = program.Contains('/', StringComparison.Ordinal) && !Path.IsPathRooted(program) ? RepositoryLayout.InRepository(program.Split('/')) : program;
        var (code, stdout, stderr) = Prerequisites.Capture(path, args, RepositoryLayout.InRepository(), environment);
        return (code, stdout + stderr);
    }

    [GeneratedRegex(@"^COPY (?!--from)([^\n]+)$", RegexOptions.Multiline)]
    private static partial Regex Copy();

    [GeneratedRegex(@"^USER [^\n]+$", RegexOptions.Multiline)]
    private static partial Regex UserLine();
}

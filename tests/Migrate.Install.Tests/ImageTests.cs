using System.Text.RegularExpressions;
using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>
/// The container images: make images builds them here and containerd runs them; the Dockerfiles
/// copy what make images puts in the build context, their entry points are what the projects
/// build, and users and image names agree with the manifests.
/// </summary>
[Collection(ImageBuild.Name)]
public sealed partial class ImageTests(BuiltImages built)
{
    private static readonly string[] Dockerfiles = ["operator/Dockerfile", "node-agent/Dockerfile"];

    /// <summary>The OCI archives make images writes (artifacts/images/NAME.tar), in the order hack/images.sh --tags names them.</summary>
    private static readonly string[] ImageArchives = ["operator", "node-agent"];

    private static string Read(string path) => File.ReadAllText(RepositoryLayout.InRepository(path.Split('/')));

    [Fact]
    public void Every_directory_a_Dockerfile_copies_is_one_make_images_fills()
    {
        var script = Read("hack/images.sh");
        foreach (var dockerfile in Dockerfiles)
        {
            var text = Read(dockerfile);
            var copies = Copy().Matches(text).Select(m => m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries)[0]).ToList();
            Assert.NotEmpty(copies);
            foreach (var source in copies)
            {
                // COPY ${AGENT}/ ...: the build argument's default names a directory of the build context
                var argument = Regex.Match(source, @"^\$\{([A-Z]+)\}").Groups[1].Value;
                Assert.True(argument.Length > 0, $"{dockerfile} copies {source}, not a directory of the build context");
                var directory = Regex.Match(text, $"^ARG {argument}=([a-z-]+)$", RegexOptions.Multiline).Groups[1].Value;
                Assert.True(directory.Length > 0, $"{dockerfile} gives ${{{argument}}} no default");
                Assert.True(script.Contains($"$context/{directory}", StringComparison.Ordinal) || script.Contains($".csproj:{directory}", StringComparison.Ordinal),
                    $"hack/images.sh does not fill the build context's {directory}/, which {dockerfile} copies");
            }
        }
    }

    [Fact]
    public void Entry_points_users_and_image_names_agree_with_the_projects_and_the_manifests()
    {
        var operatorFile = Read("operator/Dockerfile");
        var agentFile = Read("node-agent/Dockerfile");
        Assert.Contains($"ENTRYPOINT [\"/app/{AssemblyName("operator/Migrate.Operator/Migrate.Operator.csproj")}\"]", operatorFile, StringComparison.Ordinal);
        Assert.Contains($"/opt/podmig/agent/{AssemblyName("node-agent/Migrate.NodeAgent/Migrate.NodeAgent.csproj")}\"]", agentFile, StringComparison.Ordinal);
        Assert.Contains($"/opt/podmig/node/{AssemblyName("node-agent/Migrate.RestoreRuntime/Migrate.RestoreRuntime.csproj")}", agentFile, StringComparison.Ordinal);
        Assert.Matches(@"ARG BASE=docker.io/library/debian:sid-slim\nFROM \$\{BASE\}", agentFile); // CRIU 4.2 (sid): 4.1 cannot dump sockets on kernels 6.16 and later
        Assert.Matches(@"apt-get (\$\{APT_OPTIONS\} )?install [^\n]*\bcriu\b[^\n]*\blibcriu2\b[^\n]*\brunc\b[^\n]*\biptables\b[^\n]*\biproute2\b[^\n]*\biputils-arping\b", agentFile);

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

    /// <summary>
    /// make images from this checkout: both images built by buildah on a debootstrapped base,
    /// written as OCI archives under the names deploy/ runs, imported into a real containerd 2.1
    /// and run through CRI: each program starts from its image and says its version, and the
    /// agent's image has CRIU 4.2 and runc.
    /// </summary>
    [Fact]
    public async Task Make_images_builds_both_images_and_containerd_runs_them()
    {
        var (code, output) = (built.ExitCode, built.Output);
        Assert.True(code == 0, output);
        var (tagsCode, tags) = Run("hack/images.sh", ["--tags"]);
        Assert.True(tagsCode == 0, tags);
        var names = tags.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var archives = ImageArchives.Select(a => RepositoryLayout.InRepository("artifacts", "images", a + ".tar")).ToList();
        Assert.Contains($"built {names[0]} ", output, StringComparison.Ordinal);
        foreach (var (archive, name) in archives.Zip(names))
        {
            Assert.Contains(name, output, StringComparison.Ordinal);
            Assert.Equal(name, OciArchiveName(archive));
        }

        await using var node = await ContainerdNode.StartAsync("images", release: ContainerdRelease.Get("2.1"));
        TestImages.ImportInto(node); // the sandbox's pause image
        foreach (var archive in archives)
        {
            node.ImportImage(archive);
        }

        // each container says what it has and then stays up (the pod is stopped as a kubelet stops one: running containers killed)
        var pod = await TestPods.RunAsync(node, "default", "images", [
            new TestContainer("operator", names[0], ["/bin/sh", "-c", "/app/migrate-operator --version; ls /usr/lib/x86_64-linux-gnu/libssl.so.3; exec sleep 600"]),
            new TestContainer("agent", names[1], ["/bin/sh", "-c", "/opt/podmig/agent/migrate-node-agent --version; exec sleep 600"]),
            new TestContainer("tools", names[1], ["/bin/sh", "-c",
                "criu --version | head -n 1; runc --version | head -n 1; ls -l /opt/podmig/node/podmig-runc; ls -l /opt/podmig/node/install-node.sh; " +
                "ls /usr/lib/x86_64-linux-gnu/libssl.so.3; exec sleep 600"]),
        ]);
        try
        {
            var version = names[0][(names[0].LastIndexOf(':') + 1)..];
            // the operator and the agent talk TLS: .NET loads the image's OpenSSL when they first do
            var operatorLines = await AllLinesAsync(pod, "operator", 2);
            Assert.StartsWith($"migrate-operator {version}", operatorLines[0], StringComparison.Ordinal);
            Assert.Equal("/usr/lib/x86_64-linux-gnu/libssl.so.3", operatorLines[1]);
            Assert.StartsWith($"migrate-node-agent {version}", await FirstLineAsync(pod, "agent"), StringComparison.Ordinal);
            var tools = await AllLinesAsync(pod, "tools", 5);
            Assert.Matches(@"^Version: 4\.([2-9]|\d\d)", tools[0]);
            Assert.StartsWith("runc version 1.", tools[1], StringComparison.Ordinal);
            Assert.Matches(@"^-rwx.* /opt/podmig/node/podmig-runc$", tools[2]);
            Assert.Matches(@"^-rwx.* /opt/podmig/node/install-node.sh$", tools[3]);
            Assert.Equal("/usr/lib/x86_64-linux-gnu/libssl.so.3", tools[4]);
        }
        finally
        {
            await TestPods.RemoveAsync(node, pod);
        }
    }

    /// <summary>The image name an OCI archive's index gives its one manifest (org.opencontainers.image.ref.name).</summary>
    private static string OciArchiveName(string archive)
    {
        using var reader = new System.Formats.Tar.TarReader(File.OpenRead(archive));
        while (reader.GetNextEntry() is { } entry)
        {
            if (entry.Name.TrimStart('.', '/') == "index.json" && entry.DataStream is { } data)
            {
                using var index = System.Text.Json.JsonDocument.Parse(data);
                var manifest = Assert.Single(index.RootElement.GetProperty("manifests").EnumerateArray());
                return manifest.GetProperty("annotations").GetProperty("org.opencontainers.image.ref.name").GetString()!;
            }
        }

        throw new InvalidDataException($"{archive} has no index.json");
    }

    private static async Task<string> FirstLineAsync(RunningTestPod pod, string container) => (await AllLinesAsync(pod, container, 1))[0];

    private static async Task<IReadOnlyList<string>> AllLinesAsync(RunningTestPod pod, string container, int count)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            var lines = pod.LogLines(container);
            if (lines.Count >= count)
            {
                return lines;
            }

            await Task.Delay(200);
        }

        throw new TimeoutException($"container {container} wrote fewer than {count} lines in 60 s: {string.Join(" | ", pod.LogLines(container))}");
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
    internal static (int Code, string Output) Run(string program, string[] args, IReadOnlyDictionary<string, string>? environment = null)
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

/// <summary>
/// The image build publishes three programs and builds two images, once for the collection (the
/// images' own tests and the sandbox that runs the agents from them): it runs alone, not beside
/// the sandboxes of the other tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ImageBuild : ICollectionFixture<BuiltImages>
{
    public const string Name = "image build";
}

/// <summary><c>make images</c> from this checkout, run once: its exit code and output.</summary>
public sealed class BuiltImages : IAsyncLifetime
{
    public int ExitCode { get; private set; }

    public string Output { get; private set; } = "";

    public Task InitializeAsync()
    {
        Prerequisites.RequireRoot();
        (ExitCode, Output) = ImageTests.Run("make", ["-s", "images"]);
        return Task.CompletedTask;
    }

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>Fails, with make's output, when the build did.</summary>
    public void AssertBuilt() => Assert.True(ExitCode == 0, "make images failed:\n" + Output);
}

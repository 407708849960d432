using Migrate.NodeAgent.Checkpointing;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>Which runtimes take the CRI path, and which checkpoint registries are accepted, as tables.</summary>
public sealed class CriCheckpointSupportTests
{
    public static TheoryData<string, string, string?, bool, bool, string?> Runtimes() => new()
    {
        { "containerd", "v2.1.9", "127.0.0.1:5000/ck", true, true, null },
        { "containerd", "2.0.0~rc1", "registry.example/podmig", true, true, null },
        { "containerd", "v2.1.9", null, false, true, "no checkpoint registry is configured" },
        { "containerd", "v2.1.9", "https://registry.example/podmig", false, true, "without a scheme" },
        { "containerd", "1.7.24~ds1-1", "127.0.0.1:5000/ck", false, false, "containerd 2.0 is the first that can" },
        { "containerd", "v1.6.20", "127.0.0.1:5000/ck", false, false, "containerd 2.0 is the first that can" },
        { "cri-o", "1.28.1", "127.0.0.1:5000/ck", false, false, "not one whose CRI checkpoint and restore this agent drives" },
        { "containerd", "devel", "127.0.0.1:5000/ck", false, false, "cannot be read" },
        { "docker", "24.0.0", "127.0.0.1:5000/ck", false, false, "not one whose CRI checkpoint and restore this agent drives" },
    };

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void A_runtime_takes_the_CRI_path_from_containerd_2_0_with_a_registry(string name, string version, string? registry, bool supported, bool restores, string? reason)
    {
        var info = CriCheckpointSupport.Evaluate(name, version, registry);
        Assert.Equal((supported, restores), (info.Supported, info.RuntimeRestores));
        Assert.Equal($"{name} {version}", info.Runtime);
        if (reason is null)
        {
            Assert.Empty(info.Reason);
        }
        else
        {
            Assert.Contains(reason, info.Reason, StringComparison.Ordinal);
        }
    }

    public static TheoryData<string, string?, string?> Registries() => new()
    {
        { "127.0.0.1:5000/podmig-checkpoints", "http://127.0.0.1:5000/", "podmig-checkpoints/ns/pod" },
        { "localhost:5000/a/b/", "http://localhost:5000/", "a/b/ns/pod" },
        { "[::1]:5000/ck", "http://[::1]:5000/", "ck/ns/pod" },
        { "registry.example/podmig", "https://registry.example/", "podmig/ns/pod" },
        { "registry.example:8443/podmig_x.y-z", "https://registry.example:8443/", "podmig_x.y-z/ns/pod" },
        { "registry.example", null, "must name a host and a repository path" },
        { "registry.example/", null, "must name a host and a repository path" },
        { "/podmig", null, "must name a host and a repository path" },
        { "http://registry.example/podmig", null, "without a scheme" },
        { "registry.example/Podmig", null, "'Podmig' cannot be part of an image repository" },
        { "registry.example/a//b", null, "'' cannot be part of an image repository" },
        { "user@registry.example/podmig", null, "is not a host[:port]" },
    };

    [Theory]
    [MemberData(nameof(Registries))]
    public void A_checkpoint_registry_is_a_host_and_a_repository_path(string value, string? baseAddress, string? repositoryOrError)
    {
        if (baseAddress is null)
        {
            var e = Assert.Throws<ArgumentException>(() => CheckpointRegistry.Parse(value));
            Assert.Contains(repositoryOrError!, e.Message, StringComparison.Ordinal);
            return;
        }

        var registry = CheckpointRegistry.Parse(value);
        Assert.Equal(baseAddress, registry.BaseAddress.ToString());
        Assert.Equal(repositoryOrError, registry.RepositoryFor("ns", "pod"));
    }
}

using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// podmig-ipam, the real binary (podmig-runc run as a CNI IPAM plugin), driven the way a container
/// runtime drives it: environment, configuration on stdin, result or error on stdout.
/// </summary>
public sealed class PodmigIpamTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-ipam-").FullName;
    private readonly string _namespace = "pmt-ipam-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));
    private readonly ECDsa _operatorKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);

    public PodmigIpamTests()
    {
        Prerequisites.RequireRoot();
        Prerequisites.Run("ip", "netns", "add", _namespace);
        // the operator's public key where the node's agent would publish it
        File.WriteAllText(PinKeyFile, _operatorKey.ExportSubjectPublicKeyInfoPem());
    }

    private string PinKeyFile => Path.Combine(_directory, "pin-key.pem");

    private string Store => Path.Combine(_directory, "flat");

    [Fact]
    public void Addresses_come_from_one_store_and_a_pinned_one_is_shared_with_its_source_until_either_is_removed()
    {
        Assert.Equal("10.77.0.10/24", Add("c1").Address);
        Assert.Equal("10.77.0.11/24", Add("c2").Address);
        Assert.Equal(0, Run("DEL", "c1", Config()).Exit);
        Assert.Equal("10.77.0.12/24", Add("c3").Address); // an address just given up is reused last
        Assert.Equal(0, Run("DEL", "c1", Config()).Exit); // deleting twice changes nothing
        Assert.Equal("10.77.0.12/24", Add("c3").Address); // a retried ADD gets what it has

        // the replacement of c2 by a migration keeping its address: both hold it; the replacement's namespace stays silent
        var pinned = Add("c4", pin: "10.77.0.11", restoreFrom: "m1");
        Assert.Equal("10.77.0.11/24", pinned.Address);
        Assert.Equal("c2 eth0\nc4 eth0\n", File.ReadAllText(Path.Combine(Store, "10.77.0.11")));
        Assert.Equal("8", Prerequisites.Run("ip", "netns", "exec", _namespace, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore").Trim());

        // a rollback removes the replacement: the source keeps its address
        Assert.Equal(0, Run("DEL", "c4", Config()).Exit);
        Assert.Equal("c2 eth0\n", File.ReadAllText(Path.Combine(Store, "10.77.0.11")));
        // a move removes the source: the replacement keeps it
        Add("c5", pin: "10.77.0.11", restoreFrom: "m2");
        Assert.Equal(0, Run("DEL", "c2", Config()).Exit);
        Assert.Equal("c5 eth0\n", File.ReadAllText(Path.Combine(Store, "10.77.0.11")));
        Assert.Equal(0, Run("CHECK", "c5", Config()).Exit);
    }

    [Theory]
    [InlineData("not json", 6, "")]
    [InlineData("""{"cniVersion":"0.4.0","name":"flat"}""", 7, "no ipam object")]
    [InlineData("""{"cniVersion":"0.4.0","name":"flat","ipam":{"type":"podmig-ipam","subnet":"10.77.0.0/33"}}""", 7, "is not an IPv4 subnet")]
    [InlineData("""{"cniVersion":"0.4.0","name":"../up","ipam":{"type":"podmig-ipam","subnet":"10.77.0.0/24"}}""", 7, "not a network name")]
    [InlineData("PIN-NO-RESTORE", 7, "honoured only on a pod restored by a migration")]
    [InlineData("PIN-OUTSIDE", 7, "the pinned address 10.78.0.5 is not one this network hands out")]
    [InlineData("PIN-GARBAGE", 7, "is not an IPv4 address")]
    [InlineData("PIN-NO-TOKEN", 7, "10.77.0.15 on pod default/c9 is refused: no pinned-address token")]
    [InlineData("PIN-FORGED", 7, "is refused: the pinned-address token's signature is not the operator's")]
    [InlineData("PIN-OTHER-POD", 7, "is refused: the pinned-address token is for 10.77.0.15 on pod default/c8 of migration m1, not 10.77.0.15 on pod default/c9 of migration m1")]
    [InlineData("PIN-OTHER-ADDRESS", 7, "the pinned-address token is for 10.77.0.16 on pod default/c9 of migration m1, not 10.77.0.15")]
    [InlineData("PIN-OTHER-MIGRATION", 7, "of migration m0, not 10.77.0.15 on pod default/c9 of migration m1")]
    [InlineData("PIN-EXPIRED", 7, "is refused: the pinned-address token expired at")]
    [InlineData("PIN-NO-KEY", 7, "this node has no operator key in")]
    [InlineData("PIN-NO-POD", 4, "CNI_ARGS names no K8S_POD_NAMESPACE and K8S_POD_NAME")]
    public void A_bad_configuration_or_pin_is_refused_with_a_CNI_error_and_changes_nothing(string config, int code, string message)
    {
        var now = DateTimeOffset.UtcNow;
        string Pin(string address, string migration, string pod, DateTimeOffset expires, ECDsa? key = null) =>
            Migrate.Api.PinToken.Mint(key ?? _operatorKey, new Migrate.Api.PinClaims(address, migration, "default", pod, expires.ToUnixTimeSeconds()));
        using var forger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string? cniArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=c9;K8S_POD_INFRA_CONTAINER_ID=c9";
        config = config switch
        {
            "PIN-NO-RESTORE" => Config("c9", pin: "10.77.0.20", restoreFrom: null),
            "PIN-OUTSIDE" => Config("c9", pin: "10.78.0.5", restoreFrom: "m1"),
            "PIN-GARBAGE" => Config("c9", pin: "10.77.0.5; rm -rf /", restoreFrom: "m1"),
            "PIN-NO-TOKEN" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: ""),
            "PIN-FORGED" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: Pin("10.77.0.15", "m1", "c9", now.AddHours(1), forger)),
            "PIN-OTHER-POD" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: Pin("10.77.0.15", "m1", "c8", now.AddHours(1))),
            "PIN-OTHER-ADDRESS" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: Pin("10.77.0.16", "m1", "c9", now.AddHours(1))),
            "PIN-OTHER-MIGRATION" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: Pin("10.77.0.15", "m0", "c9", now.AddHours(1))),
            "PIN-EXPIRED" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", token: Pin("10.77.0.15", "m1", "c9", now.AddMinutes(-1))),
            "PIN-NO-KEY" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1", keyFile: Path.Combine(_directory, "absent.pem")),
            "PIN-NO-POD" => Config("c9", pin: "10.77.0.15", restoreFrom: "m1"),
            _ => config,
        };
        if (message.StartsWith("CNI_ARGS", StringComparison.Ordinal))
        {
            cniArgs = null;
        }

        var (exit, output) = Run("ADD", "c9", config, cniArgs: cniArgs);
        Assert.Equal(1, exit);
        using var error = JsonDocument.Parse(output);
        Assert.Equal(code, error.RootElement.GetProperty("code").GetInt32());
        Assert.Contains(message, error.RootElement.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.False(Directory.Exists(Store) && Directory.EnumerateFiles(Store).Any(f => Path.GetFileName(f).StartsWith("10.", StringComparison.Ordinal)), "nothing was allocated");
        Assert.Equal("0", Prerequisites.Run("ip", "netns", "exec", _namespace, "sysctl", "-n", "net.ipv4.conf.all.arp_ignore").Trim());
    }

    [Theory]
    [InlineData("file", "cannot enter the network namespace at")]
    [InlineData("absent", "no network namespace at")]
    public void A_pinned_address_whose_namespace_cannot_be_kept_silent_is_refused_and_changes_nothing(string what, string message)
    {
        // the silence is set from a thread inside CNI_NETNS: a path that is no namespace must not leave the host's own setting changed
        var hostBefore = File.ReadAllText("/proc/sys/net/ipv4/conf/all/arp_ignore").Trim();
        var path = Path.Combine(_directory, what);
        if (what == "file")
        {
            File.WriteAllText(path, "not a namespace");
        }

        var (exit, output) = Run("ADD", "c9", Config("c9", pin: "10.77.0.15", restoreFrom: "m1"), netns: path);
        Assert.Equal(1, exit);
        using var error = JsonDocument.Parse(output);
        Assert.Equal(11, error.RootElement.GetProperty("code").GetInt32());
        var said = error.RootElement.GetProperty("msg").GetString();
        Assert.Contains($"could not keep the pinned address silent in {path}", said, StringComparison.Ordinal);
        Assert.Contains(message, said, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Store) && Directory.EnumerateFiles(Store).Any(f => Path.GetFileName(f).StartsWith("10.", StringComparison.Ordinal)), "nothing was allocated");
        Assert.Equal(hostBefore, File.ReadAllText("/proc/sys/net/ipv4/conf/all/arp_ignore").Trim());
    }

    [Theory]
    [InlineData("c1 x", "eth0", 4, "CNI_CONTAINERID")]
    [InlineData("c1\nforged eth0", "eth0", 4, "CNI_CONTAINERID")]
    [InlineData("c1", "eth0 x", 4, "CNI_IFNAME")]
    [InlineData("c1", "a-very-long-interface", 4, "CNI_IFNAME")]
    public void A_container_id_or_interface_that_is_not_a_plain_name_is_refused_and_changes_nothing(string container, string @interface, int code, string message)
    {
        var (exit, output) = Run("ADD", container, Config(), @interface);
        Assert.Equal(1, exit);
        using var error = JsonDocument.Parse(output);
        Assert.Equal(code, error.RootElement.GetProperty("code").GetInt32());
        Assert.Contains(message, error.RootElement.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.False(Directory.Exists(Store) && Directory.EnumerateFiles(Store).Any(f => Path.GetFileName(f).StartsWith("10.", StringComparison.Ordinal)), "nothing was allocated");
    }

    [Fact]
    public void A_CNI_version_it_does_not_speak_is_refused()
    {
        var (exit, output) = Run("ADD", "c1", Config().Replace("\"0.4.0\"", "\"0.2.0\"", StringComparison.Ordinal));
        Assert.Equal(1, exit);
        using var error = JsonDocument.Parse(output);
        Assert.Equal(1, error.RootElement.GetProperty("code").GetInt32());
    }

    [Fact]
    public void It_says_which_CNI_versions_it_speaks()
    {
        var (exit, output) = Run("VERSION", "", "");
        Assert.Equal(0, exit);
        using var version = JsonDocument.Parse(output);
        Assert.Contains("0.4.0", version.RootElement.GetProperty("supportedVersions").EnumerateArray().Select(v => v.GetString()));
    }

    public void Dispose()
    {
        _operatorKey.Dispose();
        _ = Prerequisites.Capture("ip", ["netns", "delete", _namespace]);
        Directory.Delete(_directory, recursive: true);
    }

    private (string Address, string Gateway) Add(string container, string? pin = null, string? restoreFrom = null)
    {
        var (exit, output) = Run("ADD", container, Config(container, pin, restoreFrom));
        Assert.True(exit == 0, output);
        using var result = JsonDocument.Parse(output);
        var ip = result.RootElement.GetProperty("ips")[0];
        Assert.Equal("4", ip.GetProperty("version").GetString());
        return (ip.GetProperty("address").GetString()!, ip.GetProperty("gateway").GetString()!);
    }

    /// <summary>
    /// A configuration as the runtime passes it for pod default/<paramref name="pod"/>. A pin carries
    /// the operator's token for exactly that pin unless <paramref name="token"/> says otherwise ("" for none).
    /// </summary>
    private string Config(string pod = "c0", string? pin = null, string? restoreFrom = null, string? token = null, string? keyFile = null)
    {
        var annotations = new Dictionary<string, string>();
        if (pin is not null)
        {
            annotations[Migrate.Api.Annotations.PinnedAddress] = pin;
            token ??= Migrate.Api.PinToken.Mint(_operatorKey, new Migrate.Api.PinClaims(pin, restoreFrom ?? "", "default", pod, DateTimeOffset.UtcNow.AddHours(1).ToUnixTimeSeconds()));
            if (token.Length > 0)
            {
                annotations[Migrate.Api.Annotations.PinnedAddressToken] = token;
            }
        }

        if (restoreFrom is not null)
        {
            annotations[Migrate.Api.Annotations.RestoreFrom] = restoreFrom;
        }

        return JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["cniVersion"] = "0.4.0",
            ["name"] = "flat",
            ["ipam"] = new Dictionary<string, string>
            {
                ["type"] = "podmig-ipam", ["subnet"] = "10.77.0.0/24", ["rangeStart"] = "10.77.0.10", ["rangeEnd"] = "10.77.0.20", ["dataDir"] = _directory,
                ["pinKeyFile"] = keyFile ?? PinKeyFile,
            },
            ["runtimeConfig"] = new Dictionary<string, object> { ["io.kubernetes.cri.pod-annotations"] = annotations },
        });
    }

    /// <summary>Runs the plugin as a runtime would for pod default/<paramref name="container"/> (CNI_ARGS as containerd sets them, unless given).</summary>
    private (int Exit, string Output) Run(string command, string container, string config, string @interface = "eth0", string? cniArgs = "", string? netns = null)
    {
        var start = new ProcessStartInfo(RepositoryLayout.RestoreRuntime) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.Environment["CNI_COMMAND"] = command;
        start.Environment["CNI_CONTAINERID"] = container;
        start.Environment["CNI_IFNAME"] = @interface;
        start.Environment["CNI_NETNS"] = netns ?? "/run/netns/" + _namespace;
        start.Environment["CNI_PATH"] = "/usr/lib/cni";
        if (cniArgs is not null)
        {
            start.Environment["CNI_ARGS"] = cniArgs.Length > 0 ? cniArgs : $"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container};K8S_POD_INFRA_CONTAINER_ID={container}";
        }

        using var process = Process.Start(start)!;
        process.StandardInput.Write(config);
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output);
    }
}

using System.Globalization;
using System.Security.Cryptography;

namespace Migrate.TestSupport;

/// <summary>
/// The sandbox's pod network: every node's pods on one bridge (one layer-2 segment, as on-premises
/// clusters with a flat network run) and one address range for the whole cluster, handed out by
/// the project's own IPAM plugin (podmig-ipam, a link to podmig-runc) from a store all nodes
/// share. A migration that keeps its pod's address pins the replacement to it (annotation
/// podmigration.io/pinned-address), which the plugin honours. The CNI binary directory holds the
/// system's plugins (links) and podmig-ipam.
/// </summary>
public sealed class PodNetwork : IDisposable
{
    /// <summary>Addresses .10 to .200 go to pods; the rest of the /24 is for test clients on the segment.</summary>
    public const int FirstPodHost = 10;
    public const int LastPodHost = 200;

    private PodNetwork(string name, string bridge, string prefix, string directory)
    {
        Name = name;
        Bridge = bridge;
        Prefix = prefix;
        Directory = directory;
    }

    /// <summary>The CNI network's name (the same on every node: the address store is kept per name).</summary>
    public string Name { get; }

    public string Bridge { get; }

    /// <summary>The subnet's first three octets with the dot ("10.231.17.").</summary>
    public string Prefix { get; }

    public string Subnet => Prefix + "0/24";

    public string Directory { get; }

    public string BinDirectory => Path.Combine(Directory, "bin");

    public string AddressDirectory => Path.Combine(Directory, "addresses");

    /// <summary>The machine's own address on the segment, .254 (<see cref="AddHostAddress"/>): where pods reach the API server.</summary>
    public string HostAddress => Prefix + "254";

    /// <summary>An address on the segment no pod gets (<paramref name="host"/> above <see cref="LastPodHost"/>), with its prefix length.</summary>
    public string ClientAddress(int host) => host is > LastPodHost and < 254
        ? Prefix + host.ToString(CultureInfo.InvariantCulture) + "/24"
        : throw new ArgumentOutOfRangeException(nameof(host), host, $"client addresses are .{LastPodHost + 1} to .253");

    /// <summary>
    /// Gives the machine <see cref="HostAddress"/> on the bridge, as a node has an address on its
    /// pod network: processes on the machine (the operator, kubectl) reach pods by their addresses,
    /// and pods reach what listens there.
    /// </summary>
    public void AddHostAddress() => Prerequisites.Run("ip", "addr", "add", HostAddress + "/24", "dev", Bridge);

    public static PodNetwork Create(string directory, string restoreRuntime)
    {
        Prerequisites.RequireRoot();
        var systemPlugins = File.Exists("/usr/lib/cni/bridge") ? "/usr/lib/cni" : File.Exists("/opt/cni/bin/bridge") ? "/opt/cni/bin"
            : throw new InvalidOperationException("CNI plugins are missing (containernetworking-plugins); run 'sudo hack/install-prereqs.sh'");
        if (!File.Exists(restoreRuntime))
        {
            throw new InvalidOperationException($"{restoreRuntime} (podmig-runc, which is also podmig-ipam) is missing; run 'make build'");
        }

        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        var prefix = $"10.{200 + RandomNumberGenerator.GetInt32(50)}.{RandomNumberGenerator.GetInt32(250)}.";
        var network = new PodNetwork("podmig-flat-" + id, "pmn-" + id, prefix, directory);
        if (System.IO.Directory.Exists(directory))
        {
            // an earlier sandbox's, in a directory named by the user: its addresses are no one's now
            System.IO.Directory.Delete(directory, recursive: true);
        }

        System.IO.Directory.CreateDirectory(network.BinDirectory);
        System.IO.Directory.CreateDirectory(network.AddressDirectory);
        foreach (var plugin in System.IO.Directory.EnumerateFiles(systemPlugins))
        {
            File.CreateSymbolicLink(Path.Combine(network.BinDirectory, Path.GetFileName(plugin)), plugin);
        }

        File.CreateSymbolicLink(Path.Combine(network.BinDirectory, "podmig-ipam"), restoreRuntime);
        Prerequisites.Run("ip", "link", "add", network.Bridge, "type", "bridge");
        Prerequisites.Run("ip", "link", "set", network.Bridge, "up");
        return network;
    }

    /// <summary>The conflist a node of this network uses; <paramref name="pinKeyFile"/> is where the node's agent writes the operator's public key.</summary>
    public string ConfigList(string pinKeyFile) => $$"""
        {
          "cniVersion": "0.4.0",
          "name": "{{Name}}",
          "plugins": [
            {
              "type": "bridge",
              "bridge": "{{Bridge}}",
              "isGateway": false,
              "ipMasq": false,
              "capabilities": { "io.kubernetes.cri.pod-annotations": true },
              "ipam": {
                "type": "podmig-ipam",
                "subnet": "{{Subnet}}",
                "rangeStart": "{{Prefix}}{{FirstPodHost}}",
                "rangeEnd": "{{Prefix}}{{LastPodHost}}",
                "dataDir": "{{AddressDirectory}}",
                "pinKeyFile": "{{pinKeyFile}}"
              }
            }
          ]
        }
        """;

    /// <summary>Deletes the bridge and the directory. Safe to repeat.</summary>
    public void Dispose()
    {
        RemoveBridge(Bridge);
        if (System.IO.Directory.Exists(Directory))
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
    }

    /// <summary>Deletes a pod network's bridge left by a sandbox that could not stop.</summary>
    public static void RemoveBridge(string bridge)
    {
        if (bridge.StartsWith("pmn-", StringComparison.Ordinal))
        {
            _ = Prerequisites.Capture("ip", ["link", "delete", bridge]);
        }
    }
}

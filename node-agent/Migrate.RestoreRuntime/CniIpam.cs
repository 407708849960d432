using System.Net;
using System.Text;
using System.Text.Json;
using Migrate.NodeAgent;
using Migrate.NodeAgent.Networking;

namespace Migrate.RestoreRuntime;

/// <summary>
/// podmig-ipam: a CNI IPAM plugin (this program, run under that name by the container runtime)
/// handing out a network's addresses from a store every node shares, so that an address can move
/// between nodes with its pod. A pod restored by a migration that keeps its address (annotation
/// <see cref="Annotations.PinnedAddress"/> beside <see cref="Annotations.RestoreFrom"/>, passed by
/// the runtime when the plugin declares the <c>io.kubernetes.cri.pod-annotations</c> capability)
/// gets the source's address while the source still holds it; its namespace is told never to
/// answer ARP (<c>arp_ignore</c> 8) until the agent claims the address at the freeze, so the
/// segment keeps sending the address's traffic to the source until then.
/// The pin is honoured only with the operator's signature on it (<see cref="Annotations.PinnedAddressToken"/>),
/// checked with the operator's public key in pinKeyFile (written there by the node's agent).
/// Configuration (the network's "ipam" object): subnet, rangeStart, rangeEnd, gateway, dataDir, pinKeyFile.
/// </summary>
public static partial class CniIpam
{
    private const string Capability = "io.kubernetes.cri.pod-annotations";
    private static readonly string[] Versions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

    public static int Run(Func<string, string?> environment, TextReader input, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        string version = "1.0.0";
        try
        {
            var command = environment("CNI_COMMAND") ?? "";
            if (command == "VERSION")
            {
                output.Write(Json(w =>
                {
                    w.WriteString("cniVersion", "1.0.0");
                    w.WriteStartArray("supportedVersions");
                    foreach (var v in Versions)
                    {
                        w.WriteStringValue(v);
                    }

                    w.WriteEndArray();
                }));
                return 0;
            }

            using var config = JsonDocument.Parse(input.ReadToEnd());
            var root = config.RootElement;
            version = Text(root, "cniVersion") ?? "0.4.0";
            if (!Versions.Contains(version))
            {
                var asked = version;
                version = "1.0.0";
                throw new CniException(1, $"CNI version '{asked}' is not one this plugin speaks ({string.Join(", ", Versions)})");
            }

            var network = Text(root, "name") ?? throw new CniException(7, "the network configuration has no name");
            var ipam = root.TryGetProperty("ipam", out var i) && i.ValueKind == JsonValueKind.Object ? i : throw new CniException(7, "the network configuration has no ipam object");
            var dataDirectory = Text(ipam, "dataDir") ?? "/var/lib/cni/podmig-ipam";
            // both are written into the store's lines: nothing but a plain name gets there
            var containerId = environment("CNI_CONTAINERID") is { Length: > 0 and <= 256 } id && PlainName().IsMatch(id) ? id
                : throw new CniException(4, "CNI_CONTAINERID is not set or not a plain name (letters, digits, '_', '.', '-')");
            var @interface = environment("CNI_IFNAME") is { Length: > 0 and <= 15 } name && PlainName().IsMatch(name) ? name
                : throw new CniException(4, "CNI_IFNAME is not set or not an interface name");
            AddressRange range;
            try
            {
                range = AddressRange.Parse(Text(ipam, "subnet"), Text(ipam, "rangeStart"), Text(ipam, "rangeEnd"), Text(ipam, "gateway"));
            }
            catch (ArgumentException e)
            {
                throw new CniException(7, e.Message);
            }

            using var store = AddressStore.Open(dataDirectory, network, TimeSpan.FromSeconds(30));
            var who = new AddressHolder(containerId, @interface);
            switch (command)
            {
                case "ADD":
                    var pinned = Pinned(root, environment, Text(ipam, "pinKeyFile") ?? DefaultPinKeyFile, DateTimeOffset.UtcNow);
                    var decision = AddressPool.Allocate(range, store.Held(), who, pinned, store.LastAllocated());
                    if (decision.Address is not { } address)
                    {
                        throw new CniException(pinned is null ? 11 : 7, decision.Refusal!);
                    }

                    if (pinned is not null)
                    {
                        // the source answers for the address until the handover: this sandbox never does before it
                        Silence(environment("CNI_NETNS"));
                    }

                    store.Add(address, who, remember: pinned is null);
                    output.Write(Result(version, address, range));
                    return 0;
                case "DEL":
                    store.Remove(containerId, @interface);
                    return 0;
                case "CHECK":
                    if (!store.Held().Values.Any(h => h.Contains(who)))
                    {
                        throw new CniException(11, $"container {containerId} holds no address of network {network}");
                    }

                    return 0;
                default:
                    throw new CniException(4, $"CNI_COMMAND '{command}' is not one this plugin knows (ADD, DEL, CHECK, VERSION)");
            }
        }
        catch (Exception e) when (e is CniException or JsonException or IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
        {
            // CNI's codes: 4 invalid environment, 6 decoding failure, 7 invalid network config, 11 try again later
            var (code, message) = e switch
            {
                CniException cni => (cni.Code, cni.Message),
                JsonException => (6, e.Message),
                ArgumentException or InvalidOperationException => (7, e.Message),
                _ => (11, e.Message),
            };
            output.Write(Json(w =>
            {
                w.WriteString("cniVersion", version);
                w.WriteNumber("code", code);
                w.WriteString("msg", "podmig-ipam: " + message);
            }));
            return 1;
        }
    }

    /// <summary>Where the node's agent writes the operator's public key (its DaemonSet mounts /var/lib/podmig from the host).</summary>
    public const string DefaultPinKeyFile = "/var/lib/podmig/pin-key.pem";

    /// <summary>
    /// The pinned address, honoured only on a pod a migration restores and only with the operator's
    /// signature on that address for that pod and migration (<see cref="PinToken"/>), checked with
    /// the public key in <paramref name="keyFile"/>.
    /// </summary>
    private static IPAddress? Pinned(JsonElement root, Func<string, string?> environment, string keyFile, DateTimeOffset now)
    {
        if (!root.TryGetProperty("runtimeConfig", out var runtime) || !runtime.TryGetProperty(Capability, out var annotations)
            || annotations.ValueKind != JsonValueKind.Object || Text(annotations, Annotations.PinnedAddress) is not { } text)
        {
            return null;
        }

        if (Text(annotations, Annotations.RestoreFrom) is not { } migration)
        {
            throw new CniException(7, $"annotation {Annotations.PinnedAddress} is honoured only on a pod restored by a migration ({Annotations.RestoreFrom})");
        }

        if (!IPAddress.TryParse(text, out var address) || address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            throw new CniException(7, $"annotation {Annotations.PinnedAddress} '{text}' is not an IPv4 address");
        }

        var (ns, pod) = PodOf(environment("CNI_ARGS"));
        if (ns is null || pod is null)
        {
            throw new CniException(4, $"CNI_ARGS names no K8S_POD_NAMESPACE and K8S_POD_NAME: the pinned address {text} cannot be checked against its pod");
        }

        if (!File.Exists(keyFile))
        {
            throw new CniException(7, $"the pinned address {text} cannot be checked: this node has no operator key in {keyFile} (ipam pinKeyFile; the node's agent writes it)");
        }

        using var key = OperatorSignature.LoadKey(keyFile);
        return PinToken.Refusal(key, Text(annotations, Annotations.PinnedAddressToken), now, text, migration, ns, pod) is { } refusal
            ? throw new CniException(7, $"annotation {Annotations.PinnedAddress} {text} on pod {ns}/{pod} is refused: {refusal}")
            : address;
    }

    /// <summary>The pod's namespace and name from CNI_ARGS ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;...", as CRI runtimes pass them).</summary>
    internal static (string? Namespace, string? Pod) PodOf(string? cniArgs)
    {
        string? ns = null;
        string? pod = null;
        foreach (var pair in (cniArgs ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (key, value) = pair.IndexOf('=', StringComparison.Ordinal) is > 0 and var equals ? (pair[..equals], pair[(equals + 1)..]) : (pair, "");
            switch (key)
            {
                case "K8S_POD_NAMESPACE" when value.Length > 0:
                    ns = value;
                    break;
                case "K8S_POD_NAME" when value.Length > 0:
                    pod = value;
                    break;
            }
        }

        return (ns, pod);
    }

    private static void Silence(string? namespacePath)
    {
        if (string.IsNullOrEmpty(namespacePath))
        {
            throw new CniException(4, "CNI_NETNS is not set: the pinned address cannot be kept silent until its handover");
        }

        try
        {
            // from a thread inside the namespace (the sysctl written there): no nsenter and sysctl processes in the sandbox's creation
            new NamespaceStepRunner().Run(namespacePath, [new NamespaceStep(AddressHandover.Silence())], "keep the pinned address silent");
        }
        catch (Exception e) when (e is IOException or ArgumentException or System.ComponentModel.Win32Exception)
        {
            throw new CniException(11, $"could not keep the pinned address silent in {namespacePath}: {e.Message}");
        }
    }

    private static string Result(string version, IPAddress address, AddressRange range) => Json(w =>
    {
        w.WriteString("cniVersion", version);
        w.WriteStartArray("ips");
        w.WriteStartObject();
        if (!version.StartsWith("1.", StringComparison.Ordinal))
        {
            w.WriteString("version", "4");
        }

        w.WriteString("address", $"{address}/{range.Prefix}");
        if (range.Gateway is { } gateway)
        {
            w.WriteString("gateway", AddressRange.ToAddress(gateway).ToString());
        }

        w.WriteEndObject();
        w.WriteEndArray();
    });

    private static string? Text(JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;

    private static string Json(Action<Utf8JsonWriter> write)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            write(writer);
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    [System.Text.RegularExpressions.GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    private static partial System.Text.RegularExpressions.Regex PlainName();

    private sealed class CniException(int code, string message) : Exception(message)
    {
        public int Code { get; } = code;
    }
}

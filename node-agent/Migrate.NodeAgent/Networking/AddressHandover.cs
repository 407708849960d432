using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace Migrate.NodeAgent.Networking;

/// <summary>A pod's address as it moves with the pod: the interface inside the pod's namespace, the address with its prefix, and the interface's MAC.</summary>
public sealed partial record PodAddress
{
    public PodAddress(string @interface, string cidr, string? mac)
    {
        if (!InterfaceName().IsMatch(@interface ?? ""))
        {
            throw new ArgumentException($"'{@interface}' is not an interface name (1 to 15 letters, digits, '.', '-' or '_')", nameof(@interface));
        }

        var parts = (cidr ?? "").Split('/');
        if (parts.Length != 2 || !IPAddress.TryParse(parts[0], out var address) || !int.TryParse(parts[1], out int prefix)
            || prefix < 0 || prefix > (address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128))
        {
            throw new ArgumentException($"'{cidr}' is not an address with its prefix length (such as 10.1.2.3/24)", nameof(cidr));
        }

        if (mac is not null && !MacAddress().IsMatch(mac))
        {
            throw new ArgumentException($"'{mac}' is not a MAC address (six hexadecimal pairs separated by ':')", nameof(mac));
        }

        Interface = @interface!;
        Cidr = cidr!;
        Address = address;
        Mac = mac?.ToLowerInvariant();
    }

    public string Interface { get; }

    public string Cidr { get; }

    public IPAddress Address { get; }

    public string? Mac { get; }

    [GeneratedRegex("^[A-Za-z0-9_.-]{1,15}$")]
    private static partial Regex InterfaceName();

    [GeneratedRegex("^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
    private static partial Regex MacAddress();
}

/// <summary>A route of the pod's through the interface whose address moves (not the one the kernel makes for the address's subnet): its destination ("default" or a prefix) and gateway, if any.</summary>
public sealed partial record PodRoute
{
    public PodRoute(string destination, string? gateway)
    {
        var parts = (destination ?? "").Split('/');
        if (destination != "default" && (parts.Length != 2 || !IPAddress.TryParse(parts[0], out _) || !int.TryParse(parts[1], out int prefix) || prefix is < 0 or > 128))
        {
            throw new ArgumentException($"'{destination}' is not a route destination (default or an address with its prefix length)", nameof(destination));
        }

        if (gateway is not null && !IPAddress.TryParse(gateway, out _))
        {
            throw new ArgumentException($"'{gateway}' is not a gateway address", nameof(gateway));
        }

        Destination = destination!;
        Gateway = gateway;
    }

    public string Destination { get; }

    public string? Gateway { get; }
}

/// <summary>
/// The plans that move a pod's address from its source namespace to its replacement's, so that
/// established connections restored on the target find their address there. Never two holders:
/// the source releases the address (and takes its link down, so that its bridge port stops
/// answering and forgets the MAC) before the target claims it; the target claims it with the
/// source's MAC (neighbours' ARP caches stay right) while its namespace is locked, and announces it
/// once the sockets are restored and the lock lifted (an unsolicited ARP, which also teaches every
/// switch of the segment the MAC's new port). A rollback runs the same plans the other way.
/// </summary>
public static class AddressHandover
{
    /// <summary>
    /// The source gives the address up: its link down, then the address off it, in one <c>ip -batch</c>
    /// (one process in the freeze, not two; a flush of an address already gone succeeds). Repeating
    /// it changes nothing.
    /// </summary>
    public static IReadOnlyList<NamespaceStep> Release(PodAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        int full = address.Address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        return
        [
            new(new("ip", "-batch", "-")
            {
                Input = $"link set dev {address.Interface} down\naddress flush dev {address.Interface} to {address.Address}/{full}\n",
            }),
        ];
    }

    /// <summary>
    /// The target takes the address (its namespace must be locked): the link down, the source's MAC,
    /// the address (in place of any its sandbox was given) in one <c>ip -batch</c>; ARP answered
    /// again; the link up and the pod's own routes back in a second. Three processes in the downtime,
    /// whatever the routes. Repeating it changes nothing.
    /// </summary>
    public static IReadOnlyList<NamespaceStep> Claim(PodAddress address, IReadOnlyList<PodRoute>? routes = null)
    {
        ArgumentNullException.ThrowIfNull(address);
        var batch = new System.Text.StringBuilder();
        if (address.Mac is { } mac)
        {
            batch.Append("link set dev ").Append(address.Interface).Append(" down\n");
            batch.Append("link set dev ").Append(address.Interface).Append(" address ").Append(mac).Append('\n');
        }

        batch.Append("address replace ").Append(address.Cidr).Append(" dev ").Append(address.Interface).Append('\n');
        var up = new System.Text.StringBuilder().Append("link set dev ").Append(address.Interface).Append(" up\n");
        foreach (var route in routes ?? [])
        {
            // taking the link down removed every route through it but the subnet's: the pod's own come back
            up.Append("route replace ").Append(route.Destination);
            if (route.Gateway is { } via)
            {
                up.Append(" via ").Append(via);
            }

            up.Append(" dev ").Append(address.Interface).Append('\n');
        }

        return
        [
            new(IpBatch with { Input = batch.ToString() }),
            // a sandbox made for the address (podmig-ipam) was kept from answering ARP until now
            new(Speak()),
            new(IpBatch with { Input = up.ToString() }),
        ];
    }

    /// <summary>The program <see cref="Claim"/> runs twice, each time with a batch of commands on its standard input: started ahead (<see cref="CommandsAhead"/>), it only reads them then.</summary>
    public static HostCommand IpBatch { get; } = new("ip", "-batch", "-");

    /// <summary>The routes through <paramref name="interface"/> in <c>ip -j route show</c>'s output, but those the kernel makes for an address's own subnet.</summary>
    public static IReadOnlyList<PodRoute> RoutesFromIpJson(string json, string @interface)
    {
        using var document = System.Text.Json.JsonDocument.Parse(json);
        var routes = new List<PodRoute>();
        foreach (var route in document.RootElement.EnumerateArray())
        {
            string? Text(string name) => route.TryGetProperty(name, out var v) && v.ValueKind == System.Text.Json.JsonValueKind.String ? v.GetString() : null;
            if (Text("dev") != @interface || Text("protocol") == "kernel" || Text("dst") is not { } destination)
            {
                continue;
            }

            routes.Add(new PodRoute(destination, Text("gateway")));
        }

        return routes;
    }

    /// <summary>Keeps a namespace from answering ARP on any interface (the effective value is the larger of "all" and the interface's own).</summary>
    public static HostCommand Silence() => new("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=8");

    /// <summary>Lets a namespace answer ARP again (the kernel's default).</summary>
    public static HostCommand Speak() => new("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0");

    /// <summary>Tells the segment where the address is now (after the lock is lifted): unsolicited ARP for IPv4, unsolicited neighbour advertisement for IPv6 (sent by the kernel when the address is added).</summary>
    public static IReadOnlyList<NamespaceStep> Announce(PodAddress address) =>
        address.Address.AddressFamily == AddressFamily.InterNetwork
            ? [new(new("arping", "-q", "-U", "-c", "1", "-I", address.Interface, address.Address.ToString()))]
            : [];
}

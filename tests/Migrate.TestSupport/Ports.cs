using System.Net;
using System.Net.Sockets;

namespace Migrate.TestSupport;

/// <summary>
/// Ports for the servers tests start. A port the kernel hands out for "port 0" lies in its
/// ephemeral range, where any outgoing connection (a gRPC client, kubectl, containerd) may take it
/// again between our check and the server's bind; that race once failed a CI run. These ports are
/// taken below that range instead, where the kernel never assigns one on its own, at a random place
/// (test processes run side by side), each checked as bindable on every address, and none handed
/// out twice in one process.
/// </summary>
public static class Ports
{
    private const int Lowest = 20000;
    private static readonly HashSet<int> Given = [];

    /// <summary>A TCP port that no server of this process was given and that is free at the moment of asking.</summary>
    public static int Free()
    {
        var (ephemeralLow, _) = EphemeralRange();
        int highest = Math.Max(Lowest + 1000, ephemeralLow) - 1;
        lock (Given)
        {
            for (int attempt = 0; attempt < 1000; attempt++)
            {
                int port = Random.Shared.Next(Lowest, highest + 1);
                if (!Given.Contains(port) && Bindable(port))
                {
                    Given.Add(port);
                    return port;
                }
            }
        }

        throw new InvalidOperationException($"no free TCP port found between {Lowest} and {highest}");
    }

    /// <summary>The kernel's ephemeral port range (net.ipv4.ip_local_port_range), Linux's default where it cannot be read.</summary>
    public static (int Low, int High) EphemeralRange()
    {
        try
        {
            var parts = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            return (int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (IOException)
        {
            return (32768, 60999);
        }
    }

    private static bool Bindable(int port)
    {
        try
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(IPAddress.Any, port));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}

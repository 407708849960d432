using Migrate.Criu;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>Plain-language reasons for the CRIU failures a pod's own state causes (CRIU's words follow them).</summary>
public static class CriuFailures
{
    private static readonly (string Marker, string Reason)[] Known =
    [
        ("External socket is used", "a process has a unix socket connected to a process outside the pod (a node daemon, say), and that connection cannot move"),
        ("ghost file", "a process keeps a deleted file open that is larger than CRIU's limit for such files"),
        ("Connected TCP socket", "a process has an established TCP connection, which cannot survive the change of pod IP"),
        // CRIU before 4.2 on kernels 6.16 and later, which refuse SO_PASSCRED (1:16) and SO_PASSSEC (1:34) on IP sockets
        ("Can't get 1:16 opt", "a process holds an IPv4 or IPv6 socket, and this node's CRIU (older than 4.2) cannot dump one on a kernel 6.16 or later: install CRIU 4.2 or newer on the node"),
        ("Can't get 1:34 opt", "a process holds an IPv4 or IPv6 socket, and this node's CRIU (older than 4.2) cannot dump one on a kernel 6.16 or later: install CRIU 4.2 or newer on the node"),
        ("Unsupported", "a process uses a kernel object CRIU cannot checkpoint"),
    ];

    /// <summary>A sentence saying what in the pod made CRIU fail, or null when the failure is not one of the known kinds.</summary>
    public static string? Explain(CriuException error)
    {
        ArgumentNullException.ThrowIfNull(error);
        foreach (var line in error.LogTail.Append(error.LoggedError ?? ""))
        {
            foreach (var (marker, reason) in Known)
            {
                if (line.Contains(marker, StringComparison.OrdinalIgnoreCase))
                {
                    return reason;
                }
            }
        }

        return null;
    }
}

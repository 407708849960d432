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

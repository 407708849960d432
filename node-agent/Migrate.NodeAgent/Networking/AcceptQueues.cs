using System.Globalization;

namespace Migrate.NodeAgent.Networking;

/// <summary>
/// Connections a pod's listening sockets hold that no process accepted yet ("in flight": the
/// handshake done by the kernel, the socket in the listener's queue). CRIU cannot dump them, so a
/// migration that keeps its connections locks the pod's network first (no new ones arrive), lets
/// the still-running pod accept what is queued, and only then freezes it.
/// </summary>
public static class AcceptQueues
{
    private const string Listen = "0A";

    /// <summary>How many connections wait in the accept queues of the listening sockets of a /proc/PID/net/tcp or tcp6 table.</summary>
    public static int Waiting(string table)
    {
        ArgumentNullException.ThrowIfNull(table);
        int waiting = 0;
        foreach (var line in table.Split('\n').Skip(1))
        {
            // sl local_address rem_address st tx_queue:rx_queue ... (for a listener, rx_queue is its accept queue)
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 5 || fields[3] != Listen)
            {
                continue;
            }

            var queues = fields[4].Split(':');
            if (queues.Length == 2 && int.TryParse(queues[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int queued))
            {
                waiting += queued;
            }
        }

        return waiting;
    }

    /// <summary>Waits until no connection waits in the network namespace of <paramref name="pid"/> (read through /proc/PID/net), at most <paramref name="limit"/>; returns how many still do.</summary>
    public static int Drain(int pid, TimeSpan limit)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            int waiting = Read(pid, "tcp") + Read(pid, "tcp6");
            if (waiting == 0 || clock.Elapsed >= limit)
            {
                return waiting;
            }

            Thread.Sleep(2);
        }
    }

    private static int Read(int pid, string table)
    {
        try
        {
            return Waiting(File.ReadAllText(string.Create(CultureInfo.InvariantCulture, $"/proc/{pid}/net/{table}")));
        }
        catch (IOException)
        {
            return 0; // no such table (IPv6 off) or the process is gone: nothing to wait for here
        }
    }
}

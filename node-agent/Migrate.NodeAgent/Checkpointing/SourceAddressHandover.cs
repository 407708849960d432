using System.Globalization;
using Migrate.NodeAgent.Networking;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The source node's part of moving a pod's address with it: what the address is (read at Begin),
/// the lock and the short drain of queued connections before the freeze, the release after the
/// dump (with network.json staged for the target), and, on rollback, the address given back. The
/// flags on <see cref="AddressMoveRecord"/> say which steps were taken; the caller persists them
/// through <c>save</c> before each step that changes the pod, so an agent restarted mid-way knows
/// what to undo.
/// </summary>
public sealed class SourceAddressHandover(NamespaceStepRunner namespaces)
{
    /// <summary>How long the still-running pod may take to accept connections the kernel already completed.</summary>
    public static TimeSpan InFlightDrainLimit { get; } = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// The address the pod in <paramref name="pid"/>'s network namespace would keep, with its routes,
    /// or why it has none to keep (not exactly one IPv4 address). Throws <see cref="IOException"/>
    /// when the namespace cannot be read.
    /// </summary>
    public static (AddressMoveRecord? Move, string? Refusal) Read(int pid)
    {
        var path = string.Create(CultureInfo.InvariantCulture, $"/proc/{pid}/ns/net");
        // both read from one thread inside the namespace: two processes, not four under nsenter
        var (shown, routes) = Networking.NetworkNamespaceThread.Run(path,
            () => (HostCommands.Run(new HostCommand("ip", "-j", "address", "show")), HostCommands.Run(new HostCommand("ip", "-j", "route", "show"))));
        if (!shown.Succeeded)
        {
            throw new IOException($"its addresses could not be read: {shown.Error.Trim()}");
        }

        var (address, refusal) = AddressMove.FromIpJson(shown.Output);
        if (address is null)
        {
            return (null, refusal);
        }

        if (!routes.Succeeded)
        {
            throw new IOException($"its routes could not be read: {routes.Error.Trim()}");
        }

        return (new AddressMoveRecord
        {
            Interface = address.Interface,
            Cidr = address.Cidr,
            Mac = address.Mac,
            NamespacePath = path,
            Routes = [.. AddressHandover.RoutesFromIpJson(routes.Output, address.Interface).Select(r => new MovedRoute(r.Destination, r.Gateway))],
        }, null);
    }

    /// <summary>
    /// The lock made ready while the pod runs (<see cref="PreparedNetworkChange"/>), for <see cref="Lock"/>;
    /// null, and the reason, when it cannot be (the lock is then made whole when it is needed, and fails
    /// then if it must).
    /// </summary>
    public (PreparedNetworkChange? Lock, string? Reason) PrepareLock(AddressMoveRecord move)
    {
        ArgumentNullException.ThrowIfNull(move);
        try
        {
            return new PodNetworkLock(namespaces).Prepare(move.NamespacePath) is { } prepared ? (prepared, null) : (null, "its runner starts no programs ahead");
        }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
        {
            return (null, e.Message);
        }
    }

    /// <summary>
    /// Locks the pod's network (from here no packet reaches or leaves its sockets until the target, or
    /// a rollback here, lifts the lock), with <paramref name="prepared"/> when it was made ready, then
    /// lets the still-running pod accept the connections the kernel completed before (CRIU cannot dump
    /// them); returns how many were left in the queues.
    /// </summary>
    public int Lock(AddressMoveRecord move, int pid, Action save, PreparedNetworkChange? prepared = null)
    {
        ArgumentNullException.ThrowIfNull(move);
        ArgumentNullException.ThrowIfNull(save);
        move.Locked = true;
        save();
        if (prepared is not null)
        {
            prepared.Apply();
        }
        else
        {
            new PodNetworkLock(namespaces).Lock(move.NamespacePath);
        }

        return AcceptQueues.Drain(pid, InFlightDrainLimit);
    }

    /// <summary>After the dump: stages network.json for the target, then takes the address off the pod's interface.</summary>
    public void Release(AddressMoveRecord move, string stagingDirectory, IEnumerable<string> containers, Action save)
    {
        ArgumentNullException.ThrowIfNull(move);
        ArgumentNullException.ThrowIfNull(save);
        new AddressMove(move.Interface, move.Cidr, move.Mac, [.. containers], move.Routes).Write(Path.Combine(stagingDirectory, AddressMove.FileName));
        move.Released = true;
        save();
        namespaces.Run(move.NamespacePath, AddressHandover.Release(move.ToAddress()), "release the pod's address");
    }

    /// <summary>
    /// Rollback: the address back on the pod's interface (with its MAC and routes), the lock lifted,
    /// the segment told where the address is. Each step is tried whatever the one before did (a pod
    /// whose address could not be put back is at least unlocked); throws <see cref="IOException"/>
    /// naming every step that failed.
    /// </summary>
    public void GiveBack(AddressMoveRecord move, Action save)
    {
        ArgumentNullException.ThrowIfNull(move);
        ArgumentNullException.ThrowIfNull(save);
        if (!(move.Locked || move.Released))
        {
            return;
        }

        var address = move.ToAddress();
        var failures = new List<string>();
        if (move.Released && Attempt(() => namespaces.Run(move.NamespacePath, AddressHandover.Claim(address, move.ToRoutes()), "take the pod's address back"), failures))
        {
            move.Released = false;
        }

        if (Attempt(() => new PodNetworkLock(namespaces).Unlock(move.NamespacePath), failures))
        {
            move.Locked = false;
        }

        save();
        if (!move.Released)
        {
            _ = Attempt(() => namespaces.Run(move.NamespacePath, AddressHandover.Announce(address), "announce the pod's address"), failures);
        }

        if (failures.Count > 0)
        {
            throw new IOException(string.Join("; ", failures));
        }
    }

    private static bool Attempt(Action step, List<string> failures)
    {
        try
        {
            step();
            return true;
        }
        catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            failures.Add(e.Message);
            return false;
        }
    }
}

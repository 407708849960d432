using Microsoft.Win32.SafeHandles;
using Migrate.Criu;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// A Linux write lease (fcntl F_SETLEASE, F_WRLCK) on a file this process alone has open: the kernel
/// grants it only while no other descriptor of the file is open, and breaks it when anyone opens the
/// file again (to read or to write). Unbroken, it proves nobody else could have changed the file
/// meanwhile: nothing writes to a file without opening it (a process holding the inode's descriptor
/// from before the lease would have kept the kernel from granting it). The opener waits until the
/// holder lets go (<see cref="Release"/>) or the kernel's lease-break-time passes
/// (/proc/sys/fs/lease-break-time, 45 s by default), so a holder looks often and lets go at once.
/// The break's signal is SIGURG, whose default is to be ignored: the holder learns of a break by
/// asking (<see cref="Held"/>), never by a signal.
/// </summary>
internal static class WriteLease
{
    /// <summary>Takes the lease on <paramref name="handle"/>'s file; false where the kernel refuses it (another descriptor open, a file system without leases, leases turned off).</summary>
    public static bool TryTake(SafeFileHandle handle) =>
        Posix.Fcntl(handle, Posix.FSetSig, Posix.SigUrg) == 0
        && Posix.Fcntl(handle, Posix.FSetLease, Posix.FWrLck) == 0;

    /// <summary>Whether the lease is still held and nobody has asked for the file since it was taken (F_GETLEASE says F_WRLCK only then; during or after a break it says what the opener wants).</summary>
    public static bool Held(SafeFileHandle handle)
    {
        try
        {
            return Posix.Fcntl(handle, Posix.FGetLease, 0) == Posix.FWrLck;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>Lets go of the lease, so an opener waiting on its break goes on at once (closing the file does as much).</summary>
    public static void Release(SafeFileHandle handle)
    {
        try
        {
            Posix.Fcntl(handle, Posix.FSetLease, Posix.FUnLck);
        }
        catch (ObjectDisposedException)
        {
        }
    }
}

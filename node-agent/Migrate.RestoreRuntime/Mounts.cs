using System.Runtime.InteropServices;
using Migrate.Criu;

namespace Migrate.RestoreRuntime;

/// <summary>
/// mount(2) and umount2(2) called directly: putting back a writable layer unmounts and mounts the
/// container's overlay inside the downtime, and a <c>umount</c> and a <c>mount</c> process cost two
/// process starts there (10-40 ms on a busy node) for two system calls.
/// </summary>
internal static unsafe class Mounts
{
    /// <summary>Unmounts <paramref name="target"/>; throws with the kernel's reason when it cannot.</summary>
    public static void Unmount(string target)
    {
        if (Posix.Umount2(target, 0) != 0)
        {
            throw new IOException($"umount {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Mounts an overlay at <paramref name="target"/> with <paramref name="options"/> (lowerdir=...,upperdir=...,workdir=...); throws with the kernel's reason when it cannot.</summary>
    public static void MountOverlay(string target, string options)
    {
        if (Posix.Mount("overlay", target, "overlay", 0, options) != 0)
        {
            throw new IOException($"mount -t overlay at {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Mounts a tmpfs at <paramref name="target"/> with <paramref name="options"/> (size=...,mode=...); throws with the kernel's reason when it cannot.</summary>
    public static void MountTmpfs(string target, string options)
    {
        if (Posix.Mount("tmpfs", target, "tmpfs", 0, options) != 0)
        {
            throw new IOException($"mount -t tmpfs -o '{options}' at {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Whether something is mounted at <paramref name="path"/> (by its real path: mountinfo names mount points with their links resolved).</summary>
    public static bool IsMountPoint(string path)
    {
        var real = RealPath(path);
        return real is not null && Migrate.NodeAgent.Checkpointing.MountInfoEntry.Read("/proc/self/mountinfo").Any(m => m.MountPoint == real);
    }

    /// <summary><paramref name="path"/> with every link resolved (realpath(3)); null when it does not exist.</summary>
    public static string? RealPath(string path)
    {
        nint resolved = Posix.RealPath(path, 0);
        if (resolved == 0)
        {
            return null;
        }

        try
        {
            return Marshal.PtrToStringUTF8(resolved);
        }
        finally
        {
            NativeMemory.Free((void*)resolved);
        }
    }

    /// <summary>Binds <paramref name="source"/> (with the mounts below it) at <paramref name="target"/>; throws with the kernel's reason when it cannot.</summary>
    public static void BindRecursive(string source, string target)
    {
        const nuint Bind = 0x1000, Recursive = 0x4000;
        if (Posix.Mount(source, target, "", Bind | Recursive, "") != 0)
        {
            throw new IOException($"mount --rbind {source} {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>Detaches the mount at <paramref name="target"/> (lazily: what holds it keeps it); nothing when nothing is mounted there.</summary>
    public static void DetachIfMounted(string target)
    {
        const int Detach = 2, NotMounted = 22;
        if (Posix.Umount2(target, Detach) != 0 && Marshal.GetLastPInvokeError() != NotMounted)
        {
            throw new IOException($"umount -l {target} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

}

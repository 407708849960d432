using System.Runtime.InteropServices;

namespace Migrate.Criu;

/// <summary>
/// The libc calls on files and descriptors that .NET does not wrap, declared once for every
/// project of the node (the agent, the restore runtime and this library): raw descriptors (a
/// directory's, a FIFO's, an inotify instance's), hard links, device nodes, file attributes
/// set without following links, mounts and real paths. Each returns what libc returns; the caller reads
/// <see cref="Marshal.GetLastPInvokeError"/> on failure.
/// </summary>
public static unsafe partial class Posix
{
    public const int ORdOnly = 0x0;
    public const int OWrOnly = 0x1;
    public const int ORdWr = 0x2;
    public const int ONonBlock = 0x800;
    public const int ODirectory = 0x10000;
    public const int OCloExec = 0x80000;

    /// <summary>The file type bits of a FIFO in a mode (S_IFIFO).</summary>
    public const uint SIfIfo = 0x1000;

    /// <summary>The ioctl that tells how many bytes wait unread in a pipe or FIFO.</summary>
    public const nuint FionRead = 0x541B;

    public const int EIntr = 4;

    /// <summary>inotify's event for a file opened, and its instance's non-blocking flag.</summary>
    public const int InOpen = 0x20;
    public const int InNonBlock = 0x800;

    /// <summary>utimensat's directory for paths relative to the working directory, and its flag not to follow a last link.</summary>
    public const int AtFdCwd = -100;
    public const int AtSymlinkNoFollow = 0x100;

    private const string Libc = "libc.so.6";

    [LibraryImport(Libc, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Open(string path, int flags);

    [LibraryImport(Libc, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Libc, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport(Libc, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport(Libc, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, int* value);

    [LibraryImport(Libc, EntryPoint = "syncfs", SetLastError = true)]
    public static partial int SyncFs(int fd);

    [LibraryImport(Libc, EntryPoint = "link", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Link(string existing, string created);

    [LibraryImport(Libc, EntryPoint = "mknod", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Mknod(string path, uint mode, ulong device);

    [LibraryImport(Libc, EntryPoint = "mkdir", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Mkdir(string path, uint mode);

    [LibraryImport(Libc, EntryPoint = "lchown", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Lchown(string path, uint owner, uint group);

    [LibraryImport(Libc, EntryPoint = "chmod", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Chmod(string path, uint mode);

    [LibraryImport(Libc, EntryPoint = "utimensat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Utimensat(int directory, string path, Timespec[] times, int flags);

    [LibraryImport(Libc, EntryPoint = "inotify_init1", SetLastError = true)]
    public static partial int InotifyInit(int flags);

    [LibraryImport(Libc, EntryPoint = "inotify_add_watch", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int InotifyAddWatch(int fd, string path, int mask);

    /// <summary>A struct timespec, as utimensat takes two of them (access, then modification).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public readonly struct Timespec(long seconds, long nanoseconds)
    {
        public readonly long Seconds = seconds;
        public readonly long Nanoseconds = nanoseconds;
    }

    [LibraryImport(Libc, EntryPoint = "mount", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Mount(string source, string target, string fileSystemType, nuint flags, string data);

    [LibraryImport(Libc, EntryPoint = "umount2", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Umount2(string target, int flags);

    /// <summary>statx's mask bits for the link count and the allocated blocks.</summary>
    public const uint StatxNlink = 0x4;
    public const uint StatxBlocks = 0x400;

    /// <summary>statx(2) into a buffer of at least 256 bytes (struct statx: the link count at byte 16, the size at 40, the 512-byte blocks allocated at 48).</summary>
    [LibraryImport(Libc, EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Statx(int directory, string path, int flags, uint mask, byte* buffer);

    /// <summary>A file's hard link count and the bytes allocated to it, not following a last link.</summary>
    public static (uint Links, long AllocatedBytes) LinksAndAllocation(string path)
    {
        byte* buffer = stackalloc byte[256];
        if (Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxNlink | StatxBlocks, buffer) != 0)
        {
            throw new IOException($"statx {path}: errno {Marshal.GetLastPInvokeError()}");
        }

        return (*(uint*)(buffer + 16), (long)(*(ulong*)(buffer + 48)) * 512);
    }

    /// <summary>fcntl's commands for a file lease and for the signal its break sends, a lease's kinds, and the signal chosen for it (SIGURG: ignored unless handled).</summary>
    public const int FSetSig = 10;
    public const int FSetLease = 1024;
    public const int FGetLease = 1025;
    public const int FWrLck = 1;
    public const int FUnLck = 2;
    public const int SigUrg = 23;

    /// <summary>fcntl(2) with an integer argument, on a descriptor .NET holds.</summary>
    [LibraryImport(Libc, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(Microsoft.Win32.SafeHandles.SafeFileHandle fd, int command, int argument);

    /// <summary>realpath(3) into memory it allocates: the caller frees a non-zero result with <see cref="NativeMemory.Free"/>.</summary>
    [LibraryImport(Libc, EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial nint RealPath(string path, nint resolved);
}

using System.Runtime.InteropServices;

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>The few libc calls .NET does not wrap: child reaping, sockets and spawning (files and descriptors: <see cref="Posix"/>).</summary>
    internal static partial class Libc
    {
        internal const int WNoHang = 1;
        internal const int ECHILD = 10;
        internal const int EINTR = 4;

        [LibraryImport(Libraries.Libc, EntryPoint = "waitpid", SetLastError = true)]
        internal static partial int WaitPid(int pid, out int status, int options);

        [LibraryImport(Libraries.Libc, EntryPoint = "kill", SetLastError = true)]
        internal static partial int Kill(int pid, int signal);

        internal const int AfUnix = 1;
        internal const int SockStream = 1;
        internal const int SockSeqPacket = 5;
        internal const int SockCloExec = 0x80000;
        internal const int FGetFd = 1;
        internal const int FSetFd = 2;
        internal const int FdCloExec = 1;

        [LibraryImport(Libraries.Libc, EntryPoint = "socketpair", SetLastError = true)]
        internal static unsafe partial int SocketPair(int domain, int type, int protocol, int* fds);

        [LibraryImport(Libraries.Libc, EntryPoint = "fcntl", SetLastError = true)]
        internal static partial int Fcntl(int fd, int command, int argument);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawn_file_actions_init")]
        internal static partial int SpawnFileActionsInit(nint actions);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawn_file_actions_destroy")]
        internal static partial int SpawnFileActionsDestroy(nint actions);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawn_file_actions_adddup2")]
        internal static partial int SpawnFileActionsAddDup2(nint actions, int fd, int newFd);

        /// <summary>glibc 2.34 and later: the child closes every descriptor from <paramref name="from"/> up.</summary>
        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawn_file_actions_addclosefrom_np")]
        internal static partial int SpawnFileActionsAddCloseFrom(nint actions, int from);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawn_file_actions_addopen", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SpawnFileActionsAddOpen(nint actions, int fd, string path, int flags, int mode);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawnattr_init")]
        internal static partial int SpawnAttrInit(nint attributes);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawnattr_destroy")]
        internal static partial int SpawnAttrDestroy(nint attributes);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawnattr_setflags")]
        internal static partial int SpawnAttrSetFlags(nint attributes, short flags);

        [LibraryImport(Libraries.Libc, EntryPoint = "posix_spawnp")]
        internal static unsafe partial int SpawnP(out int pid, byte* file, nint actions, nint attributes, byte** argv, byte** envp);

        [LibraryImport(Libraries.Libc, EntryPoint = "strerror")]
        internal static partial nint StrError(int errnum);

        internal static string Describe(int errno) =>
            Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";
    }
}

using System.Runtime.InteropServices;

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>The few libc calls .NET does not wrap: directory descriptors and child reaping.</summary>
    internal static partial class Libc
    {
        internal const int ORdOnly = 0x0;
        internal const int ODirectory = 0x10000;
        internal const int OCloExec = 0x80000;
        internal const int WNoHang = 1;
        internal const int ECHILD = 10;
        internal const int EINTR = 4;

        [LibraryImport(Libraries.Libc, EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
        internal static partial int Open(string path, int flags);

        [LibraryImport(Libraries.Libc, EntryPoint = "close", SetLastError = true)]
        internal static partial int Close(int fd);

        [LibraryImport(Libraries.Libc, EntryPoint = "waitpid", SetLastError = true)]
        internal static partial int WaitPid(int pid, out int status, int options);

        [LibraryImport(Libraries.Libc, EntryPoint = "kill", SetLastError = true)]
        internal static partial int Kill(int pid, int signal);

        [LibraryImport(Libraries.Libc, EntryPoint = "strerror")]
        internal static partial nint StrError(int errnum);

        internal static string Describe(int errno) =>
            Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";
    }
}

using System.Runtime.InteropServices;

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>
    /// What write tracking needs from the kernel: ptrace (to make a traced process call
    /// userfaultfd(2) once), pidfd_getfd(2) (to take that descriptor out), the userfaultfd ioctls and
    /// the PAGEMAP_SCAN ioctl of /proc/PID/pagemap. Values from the kernel's UAPI headers
    /// (linux/ptrace.h, linux/userfaultfd.h, linux/fs.h of Linux 6.7 and later), x86_64.
    /// </summary>
    internal static partial class Tracking
    {
        internal const int PtraceGetRegs = 12;
        internal const int PtraceSetRegs = 13;
        internal const int PtraceDetach = 17;
        internal const int PtraceSyscall = 24;
        internal const int PtraceSeize = 0x4206;
        internal const int PtraceInterrupt = 0x4207;
        internal const long PtraceOptionTraceSysGood = 1;

        /// <summary>waitpid: also wait for threads that are not the caller's children by clone.</summary>
        internal const int WAll = 0x40000000;

        internal const long SysClose = 3;
        internal const long SysUserfaultfd = 323;
        internal const long SysPidfdOpen = 434;
        internal const long SysPidfdGetfd = 438;

        /// <summary>userfaultfd(2) flags: O_CLOEXEC, O_NONBLOCK, and UFFD_USER_MODE_ONLY (allowed without privilege).</summary>
        internal const long UserfaultfdFlags = 0x80000 | 0x800 | 1;

        internal const ulong UffdApi = 0xAA;
        internal const ulong UffdFeatureWpUnpopulated = 1UL << 13;
        internal const ulong UffdFeatureWpAsync = 1UL << 15;
        internal const ulong UffdRegisterModeWp = 1UL << 1;
        internal const ulong UffdWriteProtectModeWp = 1UL << 0;

        // _IOWR(0xAA, nr, size): direction 3 << 30, size << 16, type << 8, nr
        internal const ulong UffdioApi = (3UL << 30) | (24UL << 16) | (0xAAUL << 8) | 0x3F;
        internal const ulong UffdioRegister = (3UL << 30) | (32UL << 16) | (0xAAUL << 8) | 0x00;
        internal const ulong UffdioWriteProtect = (3UL << 30) | (24UL << 16) | (0xAAUL << 8) | 0x06;

        // _IOWR('f', 16, struct pm_scan_arg): 96 bytes
        internal const ulong PagemapScan = (3UL << 30) | (96UL << 16) | ((ulong)'f' << 8) | 16;
        internal const ulong ScanWpMatching = 1UL << 0;
        internal const ulong ScanCheckWpAsync = 1UL << 1;
        internal const ulong PageIsWpAllowed = 1UL << 0;
        internal const ulong PageIsWritten = 1UL << 1;

        /// <summary>struct user_regs_struct of x86_64: 27 registers.</summary>
        internal const int RegisterCount = 27;
        internal const int RegRax = 10;
        internal const int RegRsi = 13;
        internal const int RegRdi = 14;
        internal const int RegOrigRax = 15;
        internal const int RegRip = 16;

        [StructLayout(LayoutKind.Sequential)]
        internal struct UffdioApiArg
        {
            public ulong Api;
            public ulong Features;
            public ulong Ioctls;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct UffdioRegisterArg
        {
            public ulong Start;
            public ulong Length;
            public ulong Mode;
            public ulong Ioctls;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct UffdioWriteProtectArg
        {
            public ulong Start;
            public ulong Length;
            public ulong Mode;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct PageRegion
        {
            public ulong Start;
            public ulong End;
            public ulong Categories;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct PmScanArg
        {
            public ulong Size;
            public ulong Flags;
            public ulong Start;
            public ulong End;
            public ulong WalkEnd;
            public ulong Vector;
            public ulong VectorLength;
            public ulong MaxPages;
            public ulong CategoryInverted;
            public ulong CategoryMask;
            public ulong CategoryAnyOfMask;
            public ulong ReturnMask;
        }

        [LibraryImport(Libraries.Libc, EntryPoint = "ptrace", SetLastError = true)]
        internal static partial long Ptrace(long request, int pid, nint address, nint data);

        [LibraryImport(Libraries.Libc, EntryPoint = "waitpid", SetLastError = true)]
        internal static partial int WaitPid(int pid, out int status, int options);

        [LibraryImport(Libraries.Libc, EntryPoint = "syscall", SetLastError = true)]
        internal static partial long Syscall(long number, long a, long b, long c);

        [LibraryImport(Libraries.Libc, EntryPoint = "ioctl", SetLastError = true)]
        internal static unsafe partial int Ioctl(int fd, ulong request, void* argument);

        [LibraryImport(Libraries.Libc, EntryPoint = "mmap", SetLastError = true)]
        internal static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

        [LibraryImport(Libraries.Libc, EntryPoint = "munmap", SetLastError = true)]
        internal static partial int Munmap(nint address, nuint length);

        internal const int ProtReadWrite = 0x1 | 0x2;
        internal const int MapPrivateAnonymous = 0x02 | 0x20;
        internal const int ProtRead = 0x1;
        internal const int MapShared = 0x01;
        internal static readonly nint MapFailed = -1;

        [LibraryImport(Libraries.Libc, EntryPoint = "madvise", SetLastError = true)]
        internal static partial int Madvise(nint address, nuint length, int advice);

        /// <summary>MADV_POPULATE_READ (Linux 5.14): the range's page tables filled, as reads would fill them.</summary>
        internal const int MadvisePopulateRead = 22;

        [LibraryImport(Libraries.Libc, EntryPoint = "tgkill", SetLastError = true)]
        internal static partial int TgKill(int pid, int tid, int signal);
    }
}

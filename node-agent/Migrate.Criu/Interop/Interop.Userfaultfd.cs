using System.Runtime.InteropServices;

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>
    /// What filling a lazily restored process's memory needs from the kernel: the userfaultfd
    /// messages and ioctls (linux/userfaultfd.h), poll(2), and recvmsg(2) with SCM_RIGHTS to take the
    /// descriptors a restore sends. x86_64 layouts.
    /// </summary>
    internal static partial class Userfaultfd
    {
        // _IOWR(0xAA, nr, size) = 3 << 30 | size << 16 | 0xAA << 8 | nr; _IOR = 2 << 30 | ...
        internal const ulong UffdioUnregister = (2UL << 30) | (16UL << 16) | (0xAAUL << 8) | 0x01;
        internal const ulong UffdioWake = (2UL << 30) | (16UL << 16) | (0xAAUL << 8) | 0x02;
        internal const ulong UffdioCopy = (3UL << 30) | (40UL << 16) | (0xAAUL << 8) | 0x03;
        internal const ulong UffdioZeropage = (3UL << 30) | (32UL << 16) | (0xAAUL << 8) | 0x04;

        internal const byte EventPagefault = 0x12;
        internal const byte EventFork = 0x13;
        internal const byte EventRemap = 0x14;
        internal const byte EventRemove = 0x15;
        internal const byte EventUnmap = 0x16;

        internal const short PollIn = 0x1;
        internal const short PollErr = 0x8;
        internal const short PollHup = 0x10;
        internal const short PollNval = 0x20;

        internal const int EIntr = 4;
        internal const int EInval = 22;
        internal const int EAgain = 11;
        internal const int ENoMem = 12;
        internal const int EExist = 17;
        internal const int ENoEnt = 2;
        internal const int ESrch = 3;
        internal const int ENoSpc = 28;

        [StructLayout(LayoutKind.Sequential)]
        internal struct UffdRange
        {
            public ulong Start;
            public ulong Length;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Copy
        {
            public ulong Destination;
            public ulong Source;
            public ulong Length;
            public ulong Mode;
            public long Copied;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Zeropage
        {
            public UffdRange Range;
            public ulong Mode;
            public long Zeroed;
        }

        /// <summary>struct uffd_msg: the event, then a union of 24 bytes (the fields each event uses).</summary>
        [StructLayout(LayoutKind.Explicit, Size = 32)]
        internal struct Message
        {
            [FieldOffset(0)] public byte Event;
            [FieldOffset(8)] public ulong Word0;   // pagefault.flags, fork.ufd (low 32 bits), remap.from, remove.start
            [FieldOffset(16)] public ulong Word1;  // pagefault.address, remap.to, remove.end
            [FieldOffset(24)] public ulong Word2;  // remap.len
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct PollFd
        {
            public int Fd;
            public short Events;
            public short ReturnedEvents;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct IoVector
        {
            public nint Base;
            public nuint Length;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct MessageHeader
        {
            public nint Name;
            public uint NameLength;
            public nint Vectors;
            public nuint VectorCount;
            public nint Control;
            public nuint ControlLength;
            public int Flags;
        }

        internal const int SolSocket = 1;
        internal const int ScmRights = 1;

        /// <summary>CMSG_SPACE(sizeof(int)) on x86_64: a 16-byte header and the descriptor, 8-byte aligned.</summary>
        internal const int ControlSpace = 24;

        [LibraryImport(Libraries.Libc, EntryPoint = "poll", SetLastError = true)]
        internal static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMillis);

        [LibraryImport(Libraries.Libc, EntryPoint = "read", SetLastError = true)]
        internal static unsafe partial nint Read(int fd, void* buffer, nuint count);

        [LibraryImport(Libraries.Libc, EntryPoint = "recvmsg", SetLastError = true)]
        internal static unsafe partial nint ReceiveMessage(int fd, MessageHeader* message, int flags);

        [LibraryImport(Libraries.Libc, EntryPoint = "close", SetLastError = true)]
        internal static partial int Close(int fd);
    }
}

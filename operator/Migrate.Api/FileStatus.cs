using System.Runtime.InteropServices;

namespace Migrate.Api;

/// <summary>
/// What <c>statx(2)</c> says of a path: its type and permission bits, owner, size, times, the device
/// it is on and (for a device node) the device it names, and the mount it belongs to.
/// </summary>
public readonly partial record struct FileStatus(uint Mode, uint Links, uint Owner, uint Group, long Size, ulong Inode,
    long ModifiedSeconds, uint ModifiedNanoseconds, long ChangeSeconds, uint ChangeNanoseconds,
    uint DeviceMajor, uint DeviceMinor, uint NodeMajor, uint NodeMinor, ulong MountId)
{
    public const uint TypeMask = 0xF000;
    public const uint Socket = 0xC000;
    public const uint SymbolicLink = 0xA000;
    public const uint Regular = 0x8000;
    public const uint BlockDevice = 0x6000;
    public const uint Directory = 0x4000;
    public const uint CharacterDevice = 0x2000;
    public const uint Fifo = 0x1000;

    /// <summary>The file type bits (<see cref="Regular"/>, <see cref="Directory"/>, ...).</summary>
    public uint Type => Mode & TypeMask;

    /// <summary>The permission bits, with set-user-ID, set-group-ID and sticky.</summary>
    public uint Permissions => Mode & 0xFFF;

    /// <summary>The device the file is on, as one number (major in the upper half).</summary>
    public ulong Device => ((ulong)DeviceMajor << 32) | DeviceMinor;

    /// <summary>The status of <paramref name="path"/>, not following a final symbolic link; null if it cannot be read.</summary>
    public static FileStatus? Of(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var stat = default(StatxBuffer);
        // AT_FDCWD, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS | STATX_MNT_ID
        if (NativeMethods.Statx(-100, path, 0x100 | 0x800, 0x7FF | 0x1000, ref stat) != 0)
        {
            return null;
        }

        return new FileStatus(stat.Mode, stat.Links, stat.Owner, stat.Group, stat.Size, stat.Inode, stat.ModifiedSeconds, stat.ModifiedNanoseconds,
            stat.ChangeSeconds, stat.ChangeNanoseconds, stat.DeviceMajor, stat.DeviceMinor, stat.NodeMajor, stat.NodeMinor, stat.MountId);
    }

    /// <summary><c>struct statx</c> (the kernel's layout, the same on every architecture), 256 bytes.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private struct StatxBuffer
    {
        [FieldOffset(16)]
        public uint Links;

        [FieldOffset(20)]
        public uint Owner;

        [FieldOffset(24)]
        public uint Group;

        [FieldOffset(28)]
        public ushort Mode;

        [FieldOffset(32)]
        public ulong Inode;

        [FieldOffset(40)]
        public long Size;

        [FieldOffset(96)]
        public long ChangeSeconds;

        [FieldOffset(104)]
        public uint ChangeNanoseconds;

        [FieldOffset(112)]
        public long ModifiedSeconds;

        [FieldOffset(120)]
        public uint ModifiedNanoseconds;

        [FieldOffset(128)]
        public uint NodeMajor;

        [FieldOffset(132)]
        public uint NodeMinor;

        [FieldOffset(136)]
        public uint DeviceMajor;

        [FieldOffset(140)]
        public uint DeviceMinor;

        [FieldOffset(144)]
        public ulong MountId;
    }

    private static partial class NativeMethods
    {
        [LibraryImport("libc.so.6", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Statx(int directory, string path, int flags, uint mask, ref StatxBuffer buffer);
    }
}

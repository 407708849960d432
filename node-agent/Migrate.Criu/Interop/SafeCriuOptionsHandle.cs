using System.Runtime.InteropServices;

namespace Migrate.Criu;

/// <summary>Owns one libcriu <c>criu_opts</c> object; released with <c>criu_local_free_opts</c>.</summary>
internal sealed class SafeCriuOptionsHandle : SafeHandle
{
    public SafeCriuOptionsHandle()
        : base(nint.Zero, ownsHandle: true)
    {
    }

    public override bool IsInvalid => handle == nint.Zero;

    /// <summary>Allocates a fresh options object with libcriu's defaults.</summary>
    public static SafeCriuOptionsHandle Create()
    {
        NativeLibraryResolver.EnsureRegistered();
        nint raw = 0;
        int rc = Interop.Criu.InitOptions(ref raw);
        if (rc != 0 || raw == 0)
        {
            throw new CriuException(CriuOperation.Configure, rc, 0, "libcriu could not allocate its options object", null, null);
        }

        var result = new SafeCriuOptionsHandle();
        result.SetHandle(raw);
        return result;
    }

    protected override bool ReleaseHandle()
    {
        Interop.Criu.FreeOptions(handle);
        return true;
    }
}

/// <summary>An open directory file descriptor (O_DIRECTORY), closed on dispose.</summary>
internal sealed class SafeDirectoryHandle : SafeHandle
{
    public SafeDirectoryHandle()
        : base(-1, ownsHandle: true)
    {
    }

    public override bool IsInvalid => handle < 0;

    public int Descriptor => (int)handle;

    public static SafeDirectoryHandle Open(string path)
    {
        int fd = Posix.Open(path, Posix.ORdOnly | Posix.ODirectory | Posix.OCloExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new DirectoryNotFoundException($"cannot open directory '{path}': {Interop.Libc.Describe(errno)}");
        }

        var result = new SafeDirectoryHandle();
        result.SetHandle(fd);
        return result;
    }

    protected override bool ReleaseHandle() => Posix.Close((int)handle) == 0;
}

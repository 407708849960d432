using System.Runtime.InteropServices;
using System.Text;

namespace Migrate.TestSupport;

/// <summary>Extended attributes set on a test's files (setxattr(2): no attr package needed).</summary>
public static partial class ExtendedAttributes
{
    /// <summary>Sets <paramref name="name"/> to <paramref name="value"/> on <paramref name="path"/>; throws with the kernel's reason when it cannot.</summary>
    public static void Set(string path, string name, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        if (SetXattr(path, name, bytes, (nuint)bytes.Length, 0) != 0)
        {
            throw new IOException($"setxattr {name} on {path} failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "setxattr", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int SetXattr(string path, string name, byte[] value, nuint size, int flags);
}

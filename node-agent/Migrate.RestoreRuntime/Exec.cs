using System.Runtime.InteropServices;
using System.Text;

namespace Migrate.RestoreRuntime;

/// <summary>Replaces this process with another program (execvp): a pass-through call costs one exec, nothing else.</summary>
internal static unsafe partial class Exec
{
    // the soname, not "libc": the runtime finds it at the first try instead of probing dozens of
    // names and directories (about 90 failed opens in every call the handler passes through)
    [LibraryImport("libc.so.6", EntryPoint = "execvp", SetLastError = true)]
    private static partial int ExecVp(byte* file, byte** argv);

    /// <summary>Runs <paramref name="program"/> (searched on PATH) with <paramref name="arguments"/> in place of this process; returns only on failure.</summary>
    public static int Replace(string program, IReadOnlyList<string> arguments)
    {
        var all = new List<string> { program };
        all.AddRange(arguments);
        var buffers = all.Select(a => Encoding.UTF8.GetBytes(a + "\0")).ToArray();
        var handles = buffers.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
        try
        {
            var argv = stackalloc byte*[all.Count + 1];
            for (int i = 0; i < all.Count; i++)
            {
                argv[i] = (byte*)handles[i].AddrOfPinnedObject();
            }

            argv[all.Count] = null;
            ExecVp(argv[0], argv);
            return Marshal.GetLastPInvokeError();
        }
        finally
        {
            foreach (var handle in handles)
            {
                handle.Free();
            }
        }
    }
}

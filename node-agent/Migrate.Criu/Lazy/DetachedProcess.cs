using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace Migrate.Criu.Lazy;

/// <summary>
/// Starts helper processes that must outlive their starter (CRIU's lazy-pages daemon and the page
/// server beside it) in a session of their own, with chosen descriptors of the starter at chosen
/// numbers. .NET's Process cannot hand a child a descriptor, so this is posix_spawn.
/// </summary>
public static class DetachedProcess
{
    private const short SpawnSetSid = 0x80; // POSIX_SPAWN_SETSID (glibc)
    private const int SpawnStructBytes = 1024; // more than glibc's posix_spawn_file_actions_t and posix_spawnattr_t
    private const int OWriteOnly = 0x1;
    private const int OReadWrite = 0x2;
    private const int OCreate = 0x40;
    private const int OAppend = 0x400;

    /// <summary>Two connected stream sockets, close-on-exec (a child gets one only through <see cref="Spawn"/>).</summary>
    public static (Socket First, Socket Second) SocketPair()
    {
        Span<int> fds = stackalloc int[2];
        unsafe
        {
            fixed (int* pointer = fds)
            {
                if (Interop.Libc.SocketPair(Interop.Libc.AfUnix, Interop.Libc.SockStream | Interop.Libc.SockCloExec, 0, pointer) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    throw new IOException($"socketpair failed: {Interop.Libc.Describe(errno)}");
                }
            }
        }

        return (new Socket(new SafeSocketHandle(fds[0], ownsHandle: true)), new Socket(new SafeSocketHandle(fds[1], ownsHandle: true)));
    }

    /// <summary>
    /// Starts <paramref name="program"/> (looked up on PATH) in a new session: stdin from /dev/null,
    /// stdout and stderr appended to <paramref name="outputPath"/> (or /dev/null), and each
    /// <paramref name="descriptors"/> entry's value (a descriptor of this process) as the key's number
    /// in the child; no other descriptor. Returns the child's PID; whoever outlives it reaps it.
    /// </summary>
    public static int Spawn(string program, IReadOnlyList<string> arguments, IReadOnlyDictionary<int, int>? descriptors = null, string? outputPath = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(program);
        ArgumentNullException.ThrowIfNull(arguments);
        var strings = new List<nint>();
        nint actions = Marshal.AllocHGlobal(SpawnStructBytes);
        nint attributes = Marshal.AllocHGlobal(SpawnStructBytes);
        bool actionsReady = false, attributesReady = false;
        try
        {
            Check(Interop.Libc.SpawnFileActionsInit(actions), "posix_spawn_file_actions_init");
            actionsReady = true;
            Check(Interop.Libc.SpawnAttrInit(attributes), "posix_spawnattr_init");
            attributesReady = true;
            Check(Interop.Libc.SpawnAttrSetFlags(attributes, SpawnSetSid), "posix_spawnattr_setflags");
            Check(Interop.Libc.SpawnFileActionsAddOpen(actions, 0, "/dev/null", OReadWrite, 0), "stdin");
            var output = outputPath ?? "/dev/null";
            Check(Interop.Libc.SpawnFileActionsAddOpen(actions, 1, output, OWriteOnly | OCreate | OAppend, 0x180), "stdout");
            Check(Interop.Libc.SpawnFileActionsAddDup2(actions, 1, 2), "stderr");
            foreach (var (number, descriptor) in descriptors ?? new Dictionary<int, int>())
            {
                // dup2 onto a new number clears close-on-exec there; the starter's own copy keeps it
                Check(Interop.Libc.SpawnFileActionsAddDup2(actions, descriptor, number), $"descriptor {number}");
            }

            // nothing else the starter holds without close-on-exec (a runtime's pipes, say) reaches the child
            int closeFrom = descriptors is { Count: > 0 } ? descriptors.Keys.Max() + 1 : 3;
            Check(Interop.Libc.SpawnFileActionsAddCloseFrom(actions, closeFrom), "closefrom");

            var argv = new nint[arguments.Count + 2];
            argv[0] = Utf8(program, strings);
            for (int i = 0; i < arguments.Count; i++)
            {
                argv[i + 1] = Utf8(arguments[i], strings);
            }

            // the starter's environment, with the variables given set (or replaced)
            var variables = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (System.Collections.DictionaryEntry variable in Environment.GetEnvironmentVariables())
            {
                variables[(string)variable.Key] = (string?)variable.Value ?? "";
            }

            foreach (var (name, value) in environment ?? new Dictionary<string, string>())
            {
                variables[name] = value;
            }

            var envp = new nint[variables.Count + 1];
            int e = 0;
            foreach (var (name, value) in variables)
            {
                envp[e++] = Utf8($"{name}={value}", strings);
            }

            unsafe
            {
                fixed (nint* argvPointer = argv)
                fixed (nint* envpPointer = envp)
                {
                    int rc = Interop.Libc.SpawnP(out int pid, (byte*)argv[0], actions, attributes, (byte**)argvPointer, (byte**)envpPointer);
                    if (rc != 0)
                    {
                        throw new IOException($"could not start {program}: {Interop.Libc.Describe(rc)}");
                    }

                    return pid;
                }
            }
        }
        finally
        {
            if (actionsReady)
            {
                _ = Interop.Libc.SpawnFileActionsDestroy(actions);
            }

            if (attributesReady)
            {
                _ = Interop.Libc.SpawnAttrDestroy(attributes);
            }

            Marshal.FreeHGlobal(actions);
            Marshal.FreeHGlobal(attributes);
            foreach (var s in strings)
            {
                Marshal.FreeHGlobal(s);
            }
        }
    }

    /// <summary>Reaps <paramref name="pid"/> if it is this process's child and has exited; its exit code, or null while it runs (or if it is not a child).</summary>
    public static int? TryReap(int pid)
    {
        int rc = Interop.Libc.WaitPid(pid, out int status, Interop.Libc.WNoHang);
        if (rc != pid)
        {
            return null;
        }

        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
    }

    /// <summary>Sends SIGSTOP to <paramref name="pid"/>; false if it no longer exists.</summary>
    public static bool Pause(int pid) => pid > 0 && Interop.Libc.Kill(pid, 19) == 0;

    /// <summary>Sends SIGKILL to <paramref name="pid"/>; false if it no longer exists.</summary>
    public static bool Kill(int pid) => pid > 0 && Interop.Libc.Kill(pid, 9) == 0;

    private static nint Utf8(string value, List<nint> allocated)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        nint pointer = Marshal.AllocHGlobal(bytes.Length + 1);
        Marshal.Copy(bytes, 0, pointer, bytes.Length);
        Marshal.WriteByte(pointer, bytes.Length, 0);
        allocated.Add(pointer);
        return pointer;
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0)
        {
            throw new IOException($"{what}: {Interop.Libc.Describe(rc)}");
        }
    }
}

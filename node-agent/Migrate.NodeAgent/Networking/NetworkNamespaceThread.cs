using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;

namespace Migrate.NodeAgent.Networking;

/// <summary>
/// Work done inside a pod's network namespace by this process: on a thread of its own that enters
/// the namespace (<c>setns</c>) and ends with the work, so nothing else ever runs there. The
/// programs it starts are born in the namespace (a child takes its parent thread's namespaces), as
/// under <c>nsenter --net</c>, without nsenter's own process: on a machine where every exec costs
/// milliseconds, half the processes of the lock, the release and the claim, which sit in the freeze
/// and the restore.
/// </summary>
public static partial class NetworkNamespaceThread
{
    private const int CloneNewNet = 0x40000000;

    /// <summary>Runs <paramref name="work"/> inside the network namespace at <paramref name="namespacePath"/> and returns what it returned, or throws what it threw.</summary>
    public static T Run<T>(string namespacePath, Func<T> work)
    {
        ArgumentException.ThrowIfNullOrEmpty(namespacePath);
        ArgumentNullException.ThrowIfNull(work);
        T result = default!;
        ExceptionDispatchInfo? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                Enter(namespacePath);
                result = work();
            }
            catch (Exception e)
            {
                failure = ExceptionDispatchInfo.Capture(e);
            }
        })
        { IsBackground = true, Name = "podmig network namespace" };
        thread.Start();
        thread.Join();
        failure?.Throw();
        return result;
    }

    /// <summary>The inode of the network namespace the calling thread is in (as <c>/proc/thread-self/ns/net</c> names it).</summary>
    public static string Current() => new FileInfo("/proc/thread-self/ns/net").LinkTarget ?? "";

    private static void Enter(string namespacePath)
    {
        using var handle = File.OpenHandle(namespacePath, FileMode.Open, FileAccess.Read);
        if (SetNs((int)handle.DangerousGetHandle(), CloneNewNet) != 0)
        {
            throw new IOException($"cannot enter the network namespace at {namespacePath}: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "setns", SetLastError = true)]
    private static partial int SetNs(int fd, int nstype);
}

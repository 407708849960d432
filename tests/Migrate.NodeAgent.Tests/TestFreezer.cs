using Migrate.Criu.Lazy;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;

namespace Migrate.NodeAgent.Tests;

/// <summary>A freezer cgroup of its own for a test tree (the v1 freezer hierarchy, or cgroup v2).</summary>
internal sealed class TestFreezer : IDisposable
{
    private TestFreezer(CgroupFreezer freezer) => Freezer = freezer;

    public CgroupFreezer Freezer { get; }

    public static TestFreezer Create(IsolatedProcessTree tree)
    {
        var root = Directory.Exists("/sys/fs/cgroup/freezer") ? "/sys/fs/cgroup/freezer" : "/sys/fs/cgroup";
        var directory = Directory.CreateDirectory(Path.Combine(root, "podmig-test-" + Guid.NewGuid().ToString("n")[..8])).FullName;
        var freezer = new TestFreezer(CgroupFreezer.FromPath(directory));
        try
        {
            foreach (var pid in new[] { tree.RootPid }.Concat(IsolatedProcessTree.Descendants(tree.RootPid)))
            {
                File.WriteAllText(Path.Combine(directory, "cgroup.procs"), pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }

            return freezer;
        }
        catch
        {
            freezer.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Kills the frozen tree and waits until its root is gone. Every process of it gets SIGKILL while
    /// frozen (it dies once thawed): killing the root alone would let the others run between the thaw
    /// and the namespace's end, and write to files the dump recorded.
    /// </summary>
    public void KillFrozenTree(int rootPid)
    {
        foreach (var pid in Freezer.Processes().Append(rootPid).Distinct())
        {
            DetachedProcess.Kill(pid);
        }

        Freezer.Thaw();
        for (int i = 0; i < 500 && Directory.Exists($"/proc/{rootPid}"); i++)
        {
            Thread.Sleep(10);
        }
    }

    public void Dispose()
    {
        Freezer.Thaw();
        // what is left in the cgroup is this test's tree (or its restored copy)
        foreach (var pid in Freezer.Processes())
        {
            DetachedProcess.Kill(pid);
        }

        for (int i = 0; i < 100; i++)
        {
            try
            {
                Directory.Delete(Freezer.Directory);
                return;
            }
            catch (IOException)
            {
                Thread.Sleep(50); // processes still on their way out
            }
        }
    }
}

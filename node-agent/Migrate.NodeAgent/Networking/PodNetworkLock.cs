namespace Migrate.NodeAgent.Networking;

/// <summary>Locks and unlocks a pod's network namespace with <see cref="NetworkLockRules"/> (its families at once: they are independent).</summary>
public sealed class PodNetworkLock(NamespaceStepRunner? runner = null)
{
    private readonly NamespaceStepRunner _runner = runner ?? new NamespaceStepRunner();

    public void Lock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Lock(), $"lock the network of {namespacePath}");

    /// <summary>
    /// The lock made ready while the pod still runs (<see cref="PreparedNetworkLock"/>); null when this
    /// lock's runner cannot start programs ahead (a runner of tests): <see cref="Lock"/> then does it all.
    /// </summary>
    public PreparedNetworkLock? Prepare(string namespacePath) =>
        _runner.StartAhead(namespacePath, NetworkLockRules.Lock()) is { } started ? new PreparedNetworkLock(namespacePath, started) : null;

    public void Unlock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Unlock(), $"unlock the network of {namespacePath}");

    /// <summary>Whether the namespace's incoming IPv4 traffic is locked now.</summary>
    public bool IsLocked(string namespacePath) => _runner.Succeeds(namespacePath, NetworkLockRules.IsLocked());
}

/// <summary>
/// A pod's network lock made ready before the downtime: each family asked whether it is locked already
/// (an earlier migration's rollback may have left it so), and the restore tool of each that is not
/// started inside the namespace, waiting for its transaction on its standard input. <see cref="Apply"/>
/// gives it the transaction, so that when the pod's peers lose it, the lock costs one commit per family,
/// not the tools' starts and the checks (42-70 ms in the sandbox under load). Disposed without
/// <see cref="Apply"/>, the tools read an empty input and end having changed nothing, as they do when
/// the agent dies meanwhile.
/// </summary>
public sealed class PreparedNetworkLock(string namespacePath, IReadOnlyList<StartedHostCommand> restores) : IDisposable
{
    /// <summary>How long a family's commit may take once given.</summary>
    public static readonly TimeSpan CommitLimit = TimeSpan.FromSeconds(10);

    /// <summary>The families that were not locked when it was made ready (the tools waiting).</summary>
    public int Waiting => restores.Count;

    /// <summary>The waiting tools' process IDs.</summary>
    public IEnumerable<int> Tools => restores.Select(r => r.Pid);

    /// <summary>Locks: every family's transaction given at once, then each waited for; throws naming each that failed.</summary>
    public void Apply()
    {
        foreach (var restore in restores)
        {
            restore.Give(restore.Command.Input ?? "");
        }

        var failures = restores
            .Select(r => (r.Command, Result: r.Collect(CommitLimit)))
            .Where(r => !r.Result.Succeeded)
            .Select(r => $"'{r.Command}' failed ({r.Result.ExitCode}): {r.Result.Error.Trim()}")
            .ToList();
        if (failures.Count > 0)
        {
            throw new IOException($"cannot lock the network of {namespacePath}: {string.Join("; ", failures)}");
        }
    }

    public void Dispose()
    {
        foreach (var restore in restores)
        {
            restore.Dispose();
        }
    }
}

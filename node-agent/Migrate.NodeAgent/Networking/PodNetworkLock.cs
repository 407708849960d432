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
    public PreparedNetworkLock? Prepare(string namespacePath)
    {
        var steps = NetworkLockRules.Lock();
        return _runner.StartAhead(namespacePath, steps) is { } started ? new PreparedNetworkLock(_runner, namespacePath, steps, started) : null;
    }

    public void Unlock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Unlock(), $"unlock the network of {namespacePath}");

    /// <summary>Whether the namespace's incoming IPv4 traffic is locked now.</summary>
    public bool IsLocked(string namespacePath) => _runner.Succeeds(namespacePath, NetworkLockRules.IsLocked());
}

/// <summary>
/// A pod's network lock made ready before the downtime: each family asked whether it is locked already
/// (an earlier migration's rollback may have left it so), and the restore tool of each that is not
/// started inside the namespace, waiting for its transaction on its standard input. <see cref="Apply"/>
/// gives it the transaction, so that when the pod's peers lose it, the lock costs one commit per family,
/// not the tools' starts and the checks (42-70 ms in the sandbox under load). A family found locked is
/// asked again at <see cref="Apply"/> (it may have been unlocked since) and locked then if it is not.
/// Disposed without <see cref="Apply"/>, the tools read an empty input and end having changed nothing,
/// as they do when the agent dies meanwhile.
/// </summary>
public sealed class PreparedNetworkLock(NamespaceStepRunner runner, string namespacePath, IReadOnlyList<NamespaceStep> steps, IReadOnlyList<StartedHostCommand?> restores)
    : IDisposable
{
    /// <summary>How long a family's commit may take once given (<c>-w</c> waits for the node's xtables lock, which others hold briefly).</summary>
    public static readonly TimeSpan CommitLimit = TimeSpan.FromSeconds(30);

    private string What => $"lock the network of {namespacePath}";

    /// <summary>The families that were not locked when it was made ready (the tools waiting).</summary>
    public int Waiting => restores.Count(r => r is not null);

    /// <summary>The waiting tools' process IDs.</summary>
    public IEnumerable<int> Tools => restores.OfType<StartedHostCommand>().Select(r => r.Pid);

    /// <summary>
    /// Locks: every waiting family's transaction given at once, and each family found locked asked again
    /// (locked now if it no longer is); throws, after all ended, the first failure in the families' order.
    /// </summary>
    public void Apply()
    {
        foreach (var restore in restores)
        {
            restore?.Give(restore.Command.Input!);
        }

        NamespaceStepRunner.AllAtOnce(steps.Count, i =>
        {
            if (restores[i] is not { } restore)
            {
                runner.Run(namespacePath, [steps[i]], What);
            }
            else if (restore.Collect(CommitLimit) is { Succeeded: false } failed)
            {
                throw new IOException(NamespaceStepRunner.Failure(What, restore.Command, failed));
            }
        });
    }

    public void Dispose()
    {
        foreach (var restore in restores)
        {
            restore?.Dispose();
        }
    }
}

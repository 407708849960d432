namespace Migrate.NodeAgent.Networking;

/// <summary>Locks and unlocks a pod's network namespace with <see cref="NetworkLockRules"/> (its families at once: they are independent).</summary>
public sealed class PodNetworkLock(NamespaceStepRunner? runner = null)
{
    private readonly NamespaceStepRunner _runner = runner ?? new NamespaceStepRunner();

    public void Lock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Lock(), LockWhat(namespacePath));

    /// <summary>
    /// The lock made ready while the pod still runs (<see cref="PreparedNetworkChange"/>); null when this
    /// lock's runner cannot start programs ahead (a runner of tests): <see cref="Lock"/> then does it all.
    /// </summary>
    public PreparedNetworkChange? Prepare(string namespacePath) => Ahead(namespacePath, NetworkLockRules.Lock(), LockWhat(namespacePath));

    public void Unlock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Unlock(), UnlockWhat(namespacePath));

    /// <summary>
    /// The unlock made ready before the namespace is locked, or while it is (the replacement's, while it
    /// waits for its images): each family's restore tool started, waiting for its transaction, which it
    /// reads the tables for only once given it; null as for <see cref="Prepare"/>.
    /// </summary>
    public PreparedNetworkChange? PrepareUnlock(string namespacePath) => Ahead(namespacePath, NetworkLockRules.Unlock(), UnlockWhat(namespacePath));

    /// <summary>Whether the namespace's incoming IPv4 traffic is locked now.</summary>
    public bool IsLocked(string namespacePath) => _runner.Succeeds(namespacePath, NetworkLockRules.IsLocked());

    private static string LockWhat(string namespacePath) => $"lock the network of {namespacePath}";

    private static string UnlockWhat(string namespacePath) => $"unlock the network of {namespacePath}";

    private PreparedNetworkChange? Ahead(string namespacePath, IReadOnlyList<NamespaceStep> steps, string what) =>
        _runner.StartAhead(namespacePath, steps) is { } started ? new PreparedNetworkChange(_runner, namespacePath, steps, started, what) : null;
}

/// <summary>
/// A change of a pod's network lock made ready ahead of the moment it is needed: each family asked
/// whether its work is done already where the step says how (a lock: an earlier migration's rollback
/// may have left it locked), and the restore tool of each that is not started inside the namespace,
/// waiting for its transaction on its standard input. <see cref="Apply"/> gives it the transaction, so
/// that the change costs one commit per family, not the tools' starts and the checks (42-70 ms in the
/// sandbox under load). A family found done is asked again at <see cref="Apply"/> (it may have changed
/// since) and changed then if it must be. A tool that fails is taken for the family's work found done
/// when the step's <see cref="NamespaceStep.FailsOnlyIf"/> check says so (an unlock of a family that is
/// not locked). Disposed without <see cref="Apply"/>, the tools read an empty input and end having
/// changed nothing, as they do when their starter dies meanwhile.
/// </summary>
public sealed class PreparedNetworkChange(NamespaceStepRunner runner, string namespacePath, IReadOnlyList<NamespaceStep> steps, IReadOnlyList<StartedHostCommand?> restores,
    string what) : IDisposable
{
    /// <summary>How long a family's commit may take once given (<c>-w</c> waits for the node's xtables lock, which others hold briefly).</summary>
    public static readonly TimeSpan CommitLimit = TimeSpan.FromSeconds(30);

    /// <summary>The families whose work was not found done when it was made ready (the tools waiting).</summary>
    public int Waiting => restores.Count(r => r is not null);

    /// <summary>The waiting tools' process IDs.</summary>
    public IEnumerable<int> Tools => restores.OfType<StartedHostCommand>().Select(r => r.Pid);

    /// <summary>
    /// Every waiting family's transaction given at once, and each family found done asked again (changed
    /// now if it must be); throws, after all ended, the first failure in the families' order.
    /// </summary>
    public void Apply()
    {
        foreach (var restore in restores)
        {
            restore?.Give(restore.Command.Input!);
        }

        NamespaceStepRunner.AllAtOnce(steps.Count, i =>
        {
            var step = steps[i];
            if (restores[i] is not { } restore)
            {
                runner.Run(namespacePath, [step], what);
            }
            else if (restore.Collect(CommitLimit) is { Succeeded: false } failed && !step.MayFail
                && (step.FailsOnlyIf is not { } still || runner.Succeeds(namespacePath, still)))
            {
                throw new IOException(NamespaceStepRunner.Failure(what, restore.Command, failed));
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

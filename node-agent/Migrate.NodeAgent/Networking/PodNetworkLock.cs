namespace Migrate.NodeAgent.Networking;

/// <summary>Locks and unlocks a pod's network namespace with <see cref="NetworkLockRules"/> (its families at once: they are independent).</summary>
public sealed class PodNetworkLock(NamespaceStepRunner? runner = null)
{
    private readonly NamespaceStepRunner _runner = runner ?? new NamespaceStepRunner();

    public void Lock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Lock(), $"lock the network of {namespacePath}");

    public void Unlock(string namespacePath) => _runner.RunIndependent(namespacePath, NetworkLockRules.Unlock(), $"unlock the network of {namespacePath}");

    /// <summary>Whether the namespace's incoming IPv4 traffic is locked now.</summary>
    public bool IsLocked(string namespacePath) => _runner.Succeeds(namespacePath, NetworkLockRules.IsLocked());
}

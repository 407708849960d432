namespace Migrate.NodeAgent.Networking;

/// <summary>
/// The rules that silence a pod's network namespace while its sockets are dumped, moved and
/// restored: every packet in or out is dropped except on loopback. Dropped, not refused: a peer's
/// packets are lost and retransmitted later by TCP, and nothing leaves the namespace, so neither a
/// reset nor a FIN from the frozen or killed source reaches a peer, and the target answers nothing
/// until its sockets are back. Applied with iptables-restore and ip6tables-restore inside the
/// pod's namespace, one transaction per family (all of a lock or none of it, in two processes
/// rather than twenty: the lock is taken while the pod is frozen), in chains of its own, so that a
/// lock or an unlock touches nothing else and can be repeated.
/// </summary>
public static class NetworkLockRules
{
    public const string InputChain = "PODMIG-LOCK-IN";
    public const string OutputChain = "PODMIG-LOCK-OUT";

    /// <summary>The tool of each family, with the restore tool that applies a transaction.</summary>
    public static readonly IReadOnlyList<(string Tool, string Restore)> Families = [("iptables", "iptables-restore"), ("ip6tables", "ip6tables-restore")];

    /// <summary>The transaction that locks a namespace: declaring a chain in --noflush mode creates or empties it; then its rules and the jumps to it.</summary>
    public const string LockTransaction = $"""
        *filter
        :{InputChain} - [0:0]
        :{OutputChain} - [0:0]
        -A {InputChain} -i lo -j RETURN
        -A {InputChain} -j DROP
        -A {OutputChain} -o lo -j RETURN
        -A {OutputChain} -j DROP
        -I INPUT 1 -j {InputChain}
        -I OUTPUT 1 -j {OutputChain}
        COMMIT

        """;

    /// <summary>The transaction that lifts a lock.</summary>
    public const string UnlockTransaction = $"""
        *filter
        -D INPUT -j {InputChain}
        -D OUTPUT -j {OutputChain}
        -F {InputChain}
        -X {InputChain}
        -F {OutputChain}
        -X {OutputChain}
        COMMIT

        """;

    /// <summary>
    /// The steps that lock a namespace; on a locked namespace they change nothing. Each family is checked
    /// first: on a locked one the transaction would add a second jump, which the unlock's single removal
    /// would leave behind (and a lock can be left by an earlier migration whose rollback could not lift it).
    /// </summary>
    public static IReadOnlyList<NamespaceStep> Lock() =>
    [
        .. Families.Select(f => new NamespaceStep(
            new HostCommand(f.Restore, "-w", "--noflush") { Input = LockTransaction },
            UnlessSucceeds: Jump(f.Tool))),
    ];

    /// <summary>
    /// The steps that lift a lock; on a namespace that is not locked they change nothing. The removal
    /// is tried at once (one transaction: all of it or nothing); only when it fails is the namespace
    /// asked whether it is locked, and the failure stands if it is.
    /// </summary>
    public static IReadOnlyList<NamespaceStep> Unlock() =>
    [
        .. Families.Select(f => new NamespaceStep(
            new HostCommand(f.Restore, "-w", "--noflush") { Input = UnlockTransaction },
            FailsOnlyIf: Jump(f.Tool))),
    ];

    /// <summary>The check whose success means the namespace's incoming IPv4 traffic is locked.</summary>
    public static HostCommand IsLocked() => Jump("iptables");

    private static HostCommand Jump(string tool) => new(tool, "-w", "-C", "INPUT", "-j", InputChain);
}

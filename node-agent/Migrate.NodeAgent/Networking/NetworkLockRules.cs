namespace Migrate.NodeAgent.Networking;

/// <summary>
/// The rules that silence a pod's network namespace while its sockets are dumped, moved and
/// restored: every packet in or out is dropped except on loopback. Dropped, not refused: a peer's
/// packets are lost and retransmitted later by TCP, and nothing leaves the namespace, so neither a
/// reset nor a FIN from the frozen or killed source reaches a peer, and the target answers nothing
/// until its sockets are back. Applied with iptables and ip6tables inside the pod's namespace, in
/// chains of their own, so that a lock or an unlock touches nothing else and can be repeated.
/// </summary>
public static class NetworkLockRules
{
    public const string InputChain = "PODMIG-LOCK-IN";
    public const string OutputChain = "PODMIG-LOCK-OUT";

    /// <summary>The tools a lock runs: IPv4 and IPv6.</summary>
    public static readonly IReadOnlyList<string> Tools = ["iptables", "ip6tables"];

    /// <summary>The steps that lock a namespace; repeating them on a locked namespace changes nothing.</summary>
    public static IReadOnlyList<NamespaceStep> Lock() =>
    [
        .. Tools.SelectMany(tool => new NamespaceStep[]
        {
            new(new(tool, "-w", "-N", InputChain), MayFail: true),
            new(new(tool, "-w", "-F", InputChain)),
            new(new(tool, "-w", "-A", InputChain, "-i", "lo", "-j", "RETURN")),
            new(new(tool, "-w", "-A", InputChain, "-j", "DROP")),
            new(new(tool, "-w", "-N", OutputChain), MayFail: true),
            new(new(tool, "-w", "-F", OutputChain)),
            new(new(tool, "-w", "-A", OutputChain, "-o", "lo", "-j", "RETURN")),
            new(new(tool, "-w", "-A", OutputChain, "-j", "DROP")),
            new(new(tool, "-w", "-I", "INPUT", "1", "-j", InputChain), UnlessSucceeds: new(tool, "-w", "-C", "INPUT", "-j", InputChain)),
            new(new(tool, "-w", "-I", "OUTPUT", "1", "-j", OutputChain), UnlessSucceeds: new(tool, "-w", "-C", "OUTPUT", "-j", OutputChain)),
        }),
    ];

    /// <summary>The steps that lift a lock; on a namespace that is not locked they change nothing.</summary>
    public static IReadOnlyList<NamespaceStep> Unlock() =>
    [
        .. Tools.SelectMany(tool => new NamespaceStep[]
        {
            new(new(tool, "-w", "-D", "INPUT", "-j", InputChain), MayFail: true),
            new(new(tool, "-w", "-D", "OUTPUT", "-j", OutputChain), MayFail: true),
            new(new(tool, "-w", "-F", InputChain), MayFail: true),
            new(new(tool, "-w", "-X", InputChain), MayFail: true),
            new(new(tool, "-w", "-F", OutputChain), MayFail: true),
            new(new(tool, "-w", "-X", OutputChain), MayFail: true),
        }),
    ];

    /// <summary>The check whose success means the namespace's incoming IPv4 traffic is locked.</summary>
    public static HostCommand IsLocked() => new("iptables", "-w", "-C", "INPUT", "-j", InputChain);
}

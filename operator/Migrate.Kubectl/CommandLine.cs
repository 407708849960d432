using System.Globalization;

namespace Migrate.Kubectl;

/// <summary>A usage error: the message and exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>A failure the user should read: the message and exit code 1.</summary>
public sealed class CommandException(string message) : Exception(message);

/// <summary>
/// kubectl-migrate's arguments: the subcommand, its positional arguments and flags, with the
/// flags kubectl users expect (--kubeconfig, --context, -n/--namespace, -A/--all-namespaces) in
/// either "--flag value" or "--flag=value" form, anywhere on the line.
/// </summary>
public sealed class CommandLine
{
    private static readonly HashSet<string> Valued = ["kubeconfig", "context", "namespace", "to", "mode", "max-parallel", "timeout", "reason", "name", "as", "export", "digest", "checkpoint-path", "selector"];
    private static readonly HashSet<string> Switches = ["all-namespaces", "wait", "no-wait", "help"];

    public string Command { get; private init; } = "";

    public IReadOnlyList<string> Arguments { get; private init; } = [];

    public IReadOnlyDictionary<string, string> Flags { get; private init; } = new Dictionary<string, string>();

    public string? Flag(string name) => Flags.TryGetValue(name, out var value) ? value : null;

    public bool Has(string name) => Flags.ContainsKey(name);

    public int IntFlag(string name, int fallback) =>
        Flag(name) is not { } text ? fallback
        : int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int value) && value > 0 ? value
        : throw new UsageException($"--{name} must be a positive whole number, not '{text}'");

    public static CommandLine Parse(IReadOnlyList<string> args)
    {
        var positional = new List<string>();
        var flags = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (arg is "-n" or "-A" or "-h" or "-l")
            {
                arg = arg switch { "-n" => "--namespace", "-A" => "--all-namespaces", "-l" => "--selector", _ => "--help" };
            }
            else if (arg.StartsWith("-n", StringComparison.Ordinal) && !arg.StartsWith("--", StringComparison.Ordinal))
            {
                flags["namespace"] = arg[2..].TrimStart('=');
                continue;
            }

            if (!arg.StartsWith("--", StringComparison.Ordinal))
            {
                positional.Add(arg);
                continue;
            }

            var name = arg[2..];
            string? value = null;
            int equals = name.IndexOf('=', StringComparison.Ordinal);
            if (equals >= 0)
            {
                (name, value) = (name[..equals], name[(equals + 1)..]);
            }

            if (Valued.Contains(name))
            {
                value ??= i + 1 < args.Count ? args[++i] : throw new UsageException($"--{name} needs a value");
                flags[name] = value;
            }
            else if (Switches.Contains(name))
            {
                flags[name] = value ?? "true";
            }
            else
            {
                throw new UsageException($"unknown flag --{name}");
            }
        }

        return new CommandLine { Command = positional.FirstOrDefault() ?? "", Arguments = positional.Skip(1).ToList(), Flags = flags };
    }

    public const string Usage = """
        kubectl migrate: move running pods between nodes without losing their state (pod-migration).

        Usage:
          kubectl migrate pod NAME [--to NODE] [--mode auto|cold|precopy|postcopy|hybrid] [--checkpoint-path auto|runtimeclass|cri] [--wait | --no-wait] [--timeout SECONDS]
          kubectl migrate list [-A]
          kubectl migrate describe NAME
          kubectl migrate cancel NAME
          kubectl migrate drain NODE [--max-parallel N] [--reason TEXT] [--wait | --no-wait]
          kubectl migrate checkpoint POD [--name NAME] [--export PATH] [--wait | --no-wait]
          kubectl migrate checkpoint POD POD... | -l KEY=VALUE[,...] [--name NAME] [--wait | --no-wait]
          kubectl migrate checkpoints [-A]
          kubectl migrate import PATH [--name NAME] [--to NODE] [--digest sha256:...] [--wait | --no-wait]
          kubectl migrate restore CHECKPOINT [--to NODE] [--as POD] [--name NAME] [--wait | --no-wait]

        pod       creates a MigrationRequest for the pod; with --wait (the default on a terminal) follows it:
                  phase, bytes transferred of the image size, throughput, pre-copy rounds, then a summary.
                  --checkpoint-path cri: by the runtime's own CRI checkpoint and restore (containerd 2.x
                  nodes with a checkpoint registry; cold only); runtimeclass: the project's own; auto
                  (the default): the operator's choice.
        list      MigrationRequests of the namespace (-A: of all namespaces).
        describe  one MigrationRequest: its figures, conditions and events.
        cancel    deletes a MigrationRequest: one in flight is rolled back and the pod runs on where it was.
        drain     creates a NodeDrain: opted-in pods (label podmigration.io/migrate=true) move, others are evicted.
        checkpoint  creates a Checkpoint of the running pod (frozen, dumped, thawed; kept on its node);
                  --export PATH also writes it to the archive storage at PATH (see import). Several pods, or
                  -l with labels: one group Checkpoint, every pod frozen at one instant (docs/groups.md);
                  each pod's checkpoint is a member Checkpoint NAME-POD, restored by its own restore.
        import    creates a Checkpoint from an export in the archive storage (perhaps another cluster's),
                  checked and kept on --to NODE or the operator's choice; restore it like any other.
        checkpoints Checkpoints of the namespace (-A: of all namespaces): node, phase, size, freeze, when taken.
        restore   creates a Restore: a new pod (named --as, else the Restore's name) resumed from the checkpoint,
                  on --to NODE or the operator's choice.

        Flags: --kubeconfig PATH, --context NAME, -n/--namespace NS, as for kubectl.
        Exit codes: 0 done, 1 failed (the message says why), 2 bad usage.
        """;
}

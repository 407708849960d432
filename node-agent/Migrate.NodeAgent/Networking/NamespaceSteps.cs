namespace Migrate.NodeAgent.Networking;

/// <summary>One command of a plan run inside a pod's network namespace, and how its outcome is read.</summary>
/// <param name="Command">The command, as run inside the namespace.</param>
/// <param name="MayFail">A failure is expected when the step's work is already done (a chain that exists, an address already gone).</param>
/// <param name="UnlessSucceeds">A check that, when it succeeds, makes the step unnecessary (the rule is already in place).</param>
/// <param name="OnlyIfSucceeds">A check that, when it fails, makes the step unnecessary (there is nothing to remove).</param>
public sealed record NamespaceStep(HostCommand Command, bool MayFail = false, HostCommand? UnlessSucceeds = null, HostCommand? OnlyIfSucceeds = null);

/// <summary>Runs plans of <see cref="NamespaceStep"/> inside a network namespace named by a path (<c>/proc/PID/ns/net</c>, <c>/run/netns/NAME</c>).</summary>
public sealed class NamespaceStepRunner(Func<HostCommand, HostCommandResult>? run = null)
{
    private readonly Func<HostCommand, HostCommandResult> _run = run ?? HostCommands.Run;

    /// <summary>Whether <paramref name="command"/> succeeds inside the namespace.</summary>
    public bool Succeeds(string namespacePath, HostCommand command) => _run(command.InNetworkNamespace(namespacePath)).Succeeded;

    /// <summary>Runs every step in order; the first unexpected failure stops the plan with an error naming <paramref name="what"/>, the command and its output.</summary>
    public void Run(string namespacePath, IEnumerable<NamespaceStep> steps, string what)
    {
        if (!File.Exists(namespacePath))
        {
            throw new ArgumentException($"cannot {what}: no network namespace at {namespacePath}", nameof(namespacePath));
        }

        foreach (var step in steps)
        {
            if ((step.UnlessSucceeds is { } present && Succeeds(namespacePath, present))
                || (step.OnlyIfSucceeds is { } needed && !Succeeds(namespacePath, needed)))
            {
                continue;
            }

            var command = step.Command.InNetworkNamespace(namespacePath);
            var result = _run(command);
            if (!result.Succeeded && !step.MayFail)
            {
                throw new IOException($"cannot {what}: '{command}' failed ({result.ExitCode}): {result.Error.Trim()}");
            }
        }
    }
}

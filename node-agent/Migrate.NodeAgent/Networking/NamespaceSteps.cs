namespace Migrate.NodeAgent.Networking;

/// <summary>One command of a plan run inside a pod's network namespace, and how its outcome is read.</summary>
/// <param name="Command">The command, as run inside the namespace.</param>
/// <param name="MayFail">A failure is expected when the step's work is already done (a chain that exists, an address already gone).</param>
/// <param name="UnlessSucceeds">A check that, when it succeeds, makes the step unnecessary (the rule is already in place).</param>
/// <param name="OnlyIfSucceeds">A check that, when it fails, makes the step unnecessary (there is nothing to remove).</param>
/// <param name="FailsOnlyIf">
/// A check run only after the command failed: the failure stands when it succeeds, and is taken for
/// the step's work found done when it fails (an atomic removal tried first, asked about only when it
/// did not go through: one command instead of two when there is something to remove).
/// </param>
public sealed record NamespaceStep(HostCommand Command, bool MayFail = false, HostCommand? UnlessSucceeds = null, HostCommand? OnlyIfSucceeds = null,
    HostCommand? FailsOnlyIf = null);

/// <summary>Runs plans of <see cref="NamespaceStep"/> inside a network namespace named by a path (<c>/proc/PID/ns/net</c>, <c>/run/netns/NAME</c>).</summary>
public sealed class NamespaceStepRunner(Func<HostCommand, HostCommandResult>? run = null)
{
    private readonly Func<HostCommand, HostCommandResult> _run = run ?? HostCommands.Run;

    /// <summary>Whether <paramref name="command"/> succeeds inside the namespace.</summary>
    public bool Succeeds(string namespacePath, HostCommand command) => _run(command.InNetworkNamespace(namespacePath)).Succeeded;

    /// <summary>
    /// Runs steps that do not depend on each other (each with its own condition) at once, each as
    /// <see cref="Run"/> would: the lock's two families are two processes each, and the lock is the
    /// start of the pod's downtime. Every step is run; the first unexpected failure, in the steps'
    /// order, is thrown after all of them ended.
    /// </summary>
    public void RunIndependent(string namespacePath, IReadOnlyList<NamespaceStep> steps, string what)
    {
        ArgumentNullException.ThrowIfNull(steps);
        var failures = new Exception?[steps.Count];
        void RunStep(int i)
        {
            try
            {
                Run(namespacePath, [steps[i]], what);
            }
            catch (Exception e) when (e is IOException or ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                failures[i] = e;
            }
        }

        // threads of their own, not the pool's: at once even when the pool is busy
        var others = Enumerable.Range(1, Math.Max(0, steps.Count - 1)).Select(i => new Thread(() => RunStep(i)) { IsBackground = true, Name = "podmig namespace step" }).ToList();
        others.ForEach(t => t.Start());
        if (steps.Count > 0)
        {
            RunStep(0);
        }

        others.ForEach(t => t.Join());
        if (failures.FirstOrDefault(f => f is not null) is { } failure)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

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
            if (!result.Succeeded && !step.MayFail && (step.FailsOnlyIf is not { } still || Succeeds(namespacePath, still)))
            {
                throw new IOException($"cannot {what}: '{command}' failed ({result.ExitCode}): {result.Error.Trim()}");
            }
        }
    }
}

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

/// <summary>
/// Runs plans of <see cref="NamespaceStep"/> inside a network namespace named by a path
/// (<c>/proc/PID/ns/net</c>, <c>/run/netns/NAME</c>): each plan on a thread that entered the
/// namespace (<see cref="NetworkNamespaceThread"/>), its commands started from there.
/// </summary>
/// <param name="run">How a command is run once inside the namespace (tests); by default it is started as a process.</param>
public sealed partial class NamespaceStepRunner(Func<HostCommand, HostCommandResult>? run = null)
{
    private readonly Func<HostCommand, HostCommandResult>? _run = run;

    /// <summary>Whether <paramref name="command"/> succeeds inside the namespace.</summary>
    public bool Succeeds(string namespacePath, HostCommand command) => Inside(namespacePath, exec => exec(command).Succeeded);

    /// <summary>
    /// Runs steps that do not depend on each other (each with its own condition) at once, each as
    /// <see cref="Run"/> would: the lock's two families are two processes each, and the lock is the
    /// start of the pod's downtime. Every step is run; the first unexpected failure, in the steps'
    /// order, is thrown after all of them ended.
    /// </summary>
    public void RunIndependent(string namespacePath, IReadOnlyList<NamespaceStep> steps, string what)
    {
        ArgumentNullException.ThrowIfNull(steps);
        AllAtOnce(steps.Count, i => Run(namespacePath, [steps[i]], what));
    }

    /// <summary>
    /// For a plan whose commands act once given their input (<see cref="HostCommand.Input"/>): each
    /// command started inside the namespace now, ahead of the moment it is needed, each on a thread of its
    /// own, or null where the step's <see cref="NamespaceStep.UnlessSucceeds"/> check succeeds now (its work
    /// is done), in the steps' order. The caller gives each its input (<see cref="StartedHostCommand.Finish"/>)
    /// and disposes them. Null when this runner runs commands another way (<c>run</c>, in tests): nothing
    /// was started.
    /// </summary>
    public IReadOnlyList<StartedHostCommand?>? StartAhead(string namespacePath, IReadOnlyList<NamespaceStep> steps)
    {
        ArgumentNullException.ThrowIfNull(steps);
        if (steps.FirstOrDefault(s => s.Command.Input is null) is { } silent)
        {
            throw new ArgumentException($"'{silent.Command}' reads no input: started ahead, nothing would ever make it act", nameof(steps));
        }

        if (_run is not null)
        {
            return null;
        }

        var started = new StartedHostCommand?[steps.Count];
        try
        {
            AllAtOnce(steps.Count, i => started[i] = NetworkNamespaceThread.Run(namespacePath,
                () => steps[i].UnlessSucceeds is { } done && HostCommands.Run(done).Succeeded ? null : StartedHostCommand.Start(steps[i].Command)));
        }
        catch
        {
            foreach (var command in started)
            {
                command?.Dispose();
            }

            throw;
        }

        return started;
    }

    /// <summary>The error of a step's command that failed.</summary>
    public static string Failure(string what, HostCommand command, HostCommandResult result)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(result);
        return $"cannot {what}: '{command}' failed ({result.ExitCode}): {result.Error.Trim()}";
    }

    /// <summary>
    /// <paramref name="work"/> for 0 to <paramref name="count"/> - 1 at once, each on a thread of its own (not
    /// the pool's: at once even when the pool is busy); whatever each throws is caught on its thread, and the
    /// first failure in that order is thrown here after all ended.
    /// </summary>
    internal static void AllAtOnce(int count, Action<int> work)
    {
        var failures = new Exception?[count];
        void One(int i)
        {
            try
            {
                work(i);
            }
            catch (Exception e)
            {
                // (not let loose on a thread of its own, where it would end the process)
                failures[i] = e;
            }
        }

        var others = Enumerable.Range(1, Math.Max(0, count - 1)).Select(i => new Thread(() => One(i)) { IsBackground = true, Name = "podmig namespace step" }).ToList();
        others.ForEach(t => t.Start());
        if (count > 0)
        {
            One(0);
        }

        others.ForEach(t => t.Join());
        if (failures.FirstOrDefault(f => f is not null) is { } failure)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>Runs every step in order; the first unexpected failure stops the plan with an error naming <paramref name="what"/>, the command and its output.</summary>
    /// <remarks><paramref name="ahead"/>: commands started ahead for this plan; a step whose command is one of them is given its input instead of starting its program.</remarks>
    public void Run(string namespacePath, IEnumerable<NamespaceStep> steps, string what, CommandsAhead? ahead = null)
    {
        ArgumentNullException.ThrowIfNull(steps);
        if (!File.Exists(namespacePath))
        {
            throw new ArgumentException($"cannot {what}: no network namespace at {namespacePath}", nameof(namespacePath));
        }

        Inside(namespacePath, exec =>
        {
            foreach (var step in steps)
            {
                if ((step.UnlessSucceeds is { } present && exec(present).Succeeded)
                    || (step.OnlyIfSucceeds is { } needed && !exec(needed).Succeeded))
                {
                    continue;
                }

                var result = ahead?.TryRun(step.Command) ?? exec(step.Command);
                if (!result.Succeeded && !step.MayFail && (step.FailsOnlyIf is not { } still || exec(still).Succeeded))
                {
                    throw new IOException(Failure(what, step.Command, result));
                }
            }

            return true;
        });
    }

    /// <summary>Does <paramref name="work"/> with a way to run commands inside the namespace.</summary>
    private T Inside<T>(string namespacePath, Func<Func<HostCommand, HostCommandResult>, T> work) =>
        _run is { } injected ? work(injected) : NetworkNamespaceThread.Run(namespacePath, () => work(c => WriteSysctl(c) ?? HostCommands.Run(c)));

    /// <summary>
    /// <c>sysctl -qw net.KEY=VALUE</c> done as the program does it: VALUE written to /proc/sys/net/KEY,
    /// from the thread inside the namespace (net sysctls are the opening thread's namespace's), without
    /// its process. Null for any other command, or a key with characters other than letters, digits
    /// and underscores between its dots (the program itself is then run).
    /// </summary>
    public static HostCommandResult? WriteSysctl(HostCommand command)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (command.Program != "sysctl" || command.Input is not null || command.Arguments is not ["-qw", var assignment]
            || assignment.Split('=', 2) is not [var key, var value] || !SysctlKey().IsMatch(key) || value.Contains('\n', StringComparison.Ordinal))
        {
            return null;
        }

        try
        {
            File.WriteAllText("/proc/sys/" + key.Replace('.', '/'), value);
            return new HostCommandResult(0, "", "");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new HostCommandResult(255, "", $"sysctl: cannot set {key}: {e.Message}");
        }
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^net(\.[A-Za-z0-9_]+)+$")]
    private static partial System.Text.RegularExpressions.Regex SysctlKey();
}

/// <summary>
/// Commands started inside a namespace before the plan that needs them is known, waiting for their
/// input (<see cref="NamespaceStepRunner.StartAhead"/>): when the plan runs, a step whose command is
/// the same program with the same arguments takes the next one and gives it its input, instead of
/// starting the program then (the restore's address claim: two <c>ip -batch -</c>, 10-15 ms each to
/// start on a busy node, started while the replacement waits for its images). Those left when it is
/// disposed get an empty input and end having done nothing.
/// </summary>
public sealed class CommandsAhead : IDisposable
{
    /// <summary>How long a command given its input may take to end.</summary>
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    private readonly Queue<StartedHostCommand> _waiting;

    private CommandsAhead(IEnumerable<StartedHostCommand> started) => _waiting = new Queue<StartedHostCommand>(started);

    /// <summary>The commands still waiting.</summary>
    public int Waiting
    {
        get
        {
            lock (_waiting)
            {
                return _waiting.Count;
            }
        }
    }

    /// <summary><paramref name="count"/> of <paramref name="command"/> started inside the namespace now; null when the runner starts nothing ahead (tests).</summary>
    public static CommandsAhead? Start(NamespaceStepRunner runner, string namespacePath, HostCommand command, int count)
    {
        ArgumentNullException.ThrowIfNull(runner);
        ArgumentNullException.ThrowIfNull(command);
        var started = runner.StartAhead(namespacePath, [.. Enumerable.Repeat(new NamespaceStep(command with { Input = "" }), count)]);
        return started is null ? null : new CommandsAhead(started.OfType<StartedHostCommand>());
    }

    /// <summary>What <paramref name="command"/> did, run by a command started ahead; null when none waits for it (it is run as usual).</summary>
    public HostCommandResult? TryRun(HostCommand command)
    {
        ArgumentNullException.ThrowIfNull(command);
        StartedHostCommand? taken = null;
        lock (_waiting)
        {
            if (command.Input is not null && _waiting.TryPeek(out var next)
                && next.Command.Program == command.Program && next.Command.Arguments.SequenceEqual(command.Arguments, StringComparer.Ordinal))
            {
                taken = _waiting.Dequeue();
            }
        }

        if (taken is null)
        {
            return null;
        }

        using (taken)
        {
            return taken.Finish(command.Input!, Limit);
        }
    }

    public void Dispose()
    {
        lock (_waiting)
        {
            while (_waiting.TryDequeue(out var left))
            {
                left.Dispose();
            }
        }
    }
}

using System.Diagnostics;
using System.Globalization;

namespace Migrate.NodeAgent;

/// <summary>A program of the node and its arguments, run without a shell; <see cref="Input"/>, when set, is its standard input.</summary>
public sealed record HostCommand(string Program, IReadOnlyList<string> Arguments)
{
    public HostCommand(string program, params string[] arguments)
        : this(program, (IReadOnlyList<string>)arguments)
    {
    }

    public string? Input { get; init; }

    /// <summary>The same command run inside the network namespace at <paramref name="namespacePath"/> (nsenter).</summary>
    public HostCommand InNetworkNamespace(string namespacePath) => new("nsenter", ["--net=" + namespacePath, Program, .. Arguments]) { Input = Input };

    public override string ToString() => Arguments.Count == 0 ? Program : Program + " " + string.Join(' ', Arguments);
}

/// <summary>What a finished command said.</summary>
public sealed record HostCommandResult(int ExitCode, string Output, string Error)
{
    public bool Succeeded => ExitCode == 0;
}

/// <summary>Runs host commands to their end, capturing what they print (the agent's networking and archives, podmig-runc).</summary>
public static class HostCommands
{
    /// <summary>Kills a program this process started, with what it started, and waits for its end (one that ended meanwhile is only waited for).</summary>
    public static void KillAndWait(Process process)
    {
        ArgumentNullException.ThrowIfNull(process);
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // it ended meanwhile
        }

        process.WaitForExit();
    }

    /// <summary>Runs <paramref name="command"/> to its end and returns its exit code and output.</summary>
    public static HostCommandResult Run(HostCommand command)
    {
        ArgumentNullException.ThrowIfNull(command);
        using var process = Start(command, redirectInput: command.Input is not null);
        if (command.Input is { } input)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }

        return Collect(process);
    }

    /// <summary><paramref name="command"/> started with its output captured (and its standard input a pipe when <paramref name="redirectInput"/>).</summary>
    internal static Process Start(HostCommand command, bool redirectInput)
    {
        var start = new ProcessStartInfo(command.Program)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = redirectInput,
            UseShellExecute = false,
        };
        foreach (var argument in command.Arguments)
        {
            start.ArgumentList.Add(argument);
        }

        return Process.Start(start) ?? throw new InvalidOperationException($"could not start {command.Program}");
    }

    /// <summary>What a started process prints until it ends, and how it ended.</summary>
    private static HostCommandResult Collect(Process process)
    {
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return new HostCommandResult(process.ExitCode, output, error.Result);
    }
}

/// <summary>
/// A command started before its input is known, so that its start (the program's loading, its
/// libraries, its own set-up) is done ahead of the moment it is needed: <see cref="Finish"/> gives it
/// its input and waits for its end. Dropped unfinished, it reads the end of its input having been
/// given none, and is killed if it does not end within a second.
/// </summary>
public sealed class StartedHostCommand : IDisposable
{
    private readonly Process _process;
    private readonly Task<string> _output;
    private readonly Task<string> _error;
    private bool _finished;

    private StartedHostCommand(HostCommand command, Process process)
    {
        Command = command;
        _process = process;
        // read from the start: a program that prints much before it reads would otherwise never end
        _output = process.StandardOutput.ReadToEndAsync();
        _error = process.StandardError.ReadToEndAsync();
    }

    public HostCommand Command { get; }

    public int Pid => _process.Id;

    /// <summary>Starts <paramref name="command"/> (its <see cref="HostCommand.Input"/> is not used: it is given in <see cref="Finish"/>), from the calling thread.</summary>
    public static StartedHostCommand Start(HostCommand command)
    {
        ArgumentNullException.ThrowIfNull(command);
        return new StartedHostCommand(command, HostCommands.Start(command, redirectInput: true));
    }

    /// <summary>Writes <paramref name="input"/> and closes the standard input (the program's cue); see <see cref="Collect"/>.</summary>
    public void Give(string input)
    {
        ArgumentNullException.ThrowIfNull(input);
        _finished = true;
        try
        {
            _process.StandardInput.Write(input);
            _process.StandardInput.Close();
        }
        catch (IOException)
        {
            // it ended before reading: Collect says how
        }
    }

    /// <summary>
    /// Waits, at most <paramref name="limit"/>, for the program to end and its output to close; one that
    /// does not is killed (with what it started) and reported as failed.
    /// </summary>
    public HostCommandResult Collect(TimeSpan limit)
    {
        _finished = true;
        var waited = Stopwatch.StartNew();
        if (!_process.WaitForExit(limit) || !Task.WaitAll([_output, _error], Max(TimeSpan.Zero, limit - waited.Elapsed)))
        {
            Kill();
            return new HostCommandResult(-1, "", string.Create(CultureInfo.InvariantCulture, $"did not end within {limit.TotalSeconds:0.#} s; killed"));
        }

        return new HostCommandResult(_process.ExitCode, _output.Result, _error.Result);
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>Gives <paramref name="input"/> and waits for the end (<see cref="Give"/>, <see cref="Collect"/>).</summary>
    public HostCommandResult Finish(string input, TimeSpan limit)
    {
        Give(input);
        return Collect(limit);
    }

    public void Dispose()
    {
        if (!_finished)
        {
            _finished = true;
            try
            {
                _process.StandardInput.Close();
            }
            catch (IOException)
            {
                // it has ended already
            }

            if (!_process.WaitForExit(TimeSpan.FromSeconds(1)))
            {
                Kill();
            }
        }

        _process.Dispose();
    }

    private void Kill() => HostCommands.KillAndWait(_process);
}

using System.Diagnostics;

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
    /// <summary>Runs <paramref name="command"/> to its end and returns its exit code and output.</summary>
    public static HostCommandResult Run(HostCommand command)
    {
        var start = new ProcessStartInfo(command.Program)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = command.Input is not null,
            UseShellExecute = false,
        };
        foreach (var argument in command.Arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {command.Program}");
        if (command.Input is { } input)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }

        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return new HostCommandResult(process.ExitCode, output, error.Result);
    }
}

namespace Migrate.Criu;

/// <summary>The CRIU operations this library performs.</summary>
public enum CriuOperation
{
    Configure,
    Version,
    Check,
    FeatureCheck,
    PreDump,
    Dump,
    Restore,
}

/// <summary>
/// A CRIU operation failed. Carries libcriu's return code, the errno CRIU reported, and the tail
/// of CRIU's log file, which is where CRIU says why.
/// </summary>
public sealed class CriuException : Exception
{
    public CriuException(CriuOperation operation, int returnCode, int errno, string summary, string? logPath, IReadOnlyList<string>? logTail)
        : base(Compose(operation, returnCode, errno, summary, logTail))
    {
        Operation = operation;
        ReturnCode = returnCode;
        Errno = errno;
        Summary = summary;
        LogPath = logPath;
        LogTail = logTail ?? [];
    }

    public CriuOperation Operation { get; }

    /// <summary>libcriu's return code (negative errno-style values, see criu.h).</summary>
    public int ReturnCode { get; }

    /// <summary>The errno CRIU reported (best effort: libcriu keeps it in a process-wide variable).</summary>
    public int Errno { get; }

    /// <summary>What went wrong, in one line, without the log.</summary>
    public string Summary { get; }

    public string? LogPath { get; }

    /// <summary>The last lines of CRIU's log (errors first if the log is long).</summary>
    public IReadOnlyList<string> LogTail { get; }

    /// <summary>The most specific error line of the log: the last one CRIU marked as an error, skipping
    /// its closing "... FAILED." summary.</summary>
    public string? LoggedError => FindLoggedError(LogTail);

    /// <summary>What libcriu's return codes mean (criu.h).</summary>
    public static string DescribeReturnCode(int returnCode) => returnCode switch
    {
        -52 => "CRIU reported failure (EBADE)",
        -111 => "could not start or connect to the criu binary (ECONNREFUSED)",
        -70 => "lost communication with criu (ECOMM)",
        -22 => "this criu does not support the request (EINVAL)",
        -74 => "unexpected response from criu (EBADMSG)",
        _ => $"return code {returnCode}",
    };

    internal static string? FindLoggedError(IReadOnlyList<string>? logTail) =>
        logTail?.LastOrDefault(line => line.Contains("Error (", StringComparison.Ordinal)
                                       && !line.TrimEnd().EndsWith("FAILED.", StringComparison.Ordinal));

    private static string Compose(CriuOperation operation, int returnCode, int errno, string summary, IReadOnlyList<string>? logTail)
    {
        var text = $"CRIU {operation} failed: {summary}";
        if (returnCode != 0)
        {
            text += $" [{DescribeReturnCode(returnCode)}";
            text += errno != 0 ? $", errno {errno}: {Interop.Libc.Describe(errno)}]" : "]";
        }

        var error = FindLoggedError(logTail);
        if (error is not null)
        {
            text += $" -- {error.Trim()}";
        }

        return text;
    }
}

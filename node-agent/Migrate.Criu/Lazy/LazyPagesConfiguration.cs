using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Migrate.Criu.Lazy;

/// <summary>
/// What a libcriu call needs to run with lazy pages, which libcriu cannot ask for: a CRIU
/// configuration file saying so (read by the CRIU process libcriu starts, through
/// <c>CRIU_CONFIG_FILE</c>), and a small script as that call's service binary which sets the
/// variable for this call only. A dump also gets a page-server socket whose peer is already
/// closed: CRIU's lazy dump serves the pages it did not write on it, finds the session over at
/// once, and finishes (the caller captures those pages itself from the frozen tree).
/// </summary>
internal sealed class LazyPagesConfiguration : IDisposable
{
    private readonly string _configFile;
    private readonly Socket? _pageServerSocket;

    private LazyPagesConfiguration(string configFile, string serviceBinary, Socket? pageServerSocket)
    {
        _configFile = configFile;
        ServiceBinary = serviceBinary;
        _pageServerSocket = pageServerSocket;
    }

    /// <summary>The script to give libcriu as its service binary for this call.</summary>
    public string ServiceBinary { get; }

    public static LazyPagesConfiguration Create(string workDirectory, string? criuBinary, bool forDump)
    {
        var name = Path.Combine(workDirectory, ".criu-lazy-" + Guid.NewGuid().ToString("n")[..12]);
        if (name.Contains('\'', StringComparison.Ordinal) || (criuBinary?.Contains('\'', StringComparison.Ordinal) ?? false))
        {
            throw new ArgumentException($"a lazy-pages call cannot name a path with a quote in it ({workDirectory}, {criuBinary})");
        }

        var lines = "lazy-pages\n";
        Socket? socket = null;
        try
        {
            if (forDump)
            {
                var (first, second) = DetachedProcess.SocketPair();
                first.Dispose();
                socket = second;
                int fd = (int)second.SafeHandle.DangerousGetHandle();
                // CRIU is started by libcriu with fork and exec: this one descriptor must survive the exec
                if (Interop.Libc.Fcntl(fd, Interop.Libc.FSetFd, 0) != 0)
                {
                    throw new IOException($"could not hand the page-server socket to CRIU: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
                }

                lines += string.Create(CultureInfo.InvariantCulture, $"ps-socket {fd}\n");
            }

            var config = name + ".conf";
            var script = name + ".sh";
            File.WriteAllText(config, lines);
            File.WriteAllText(script, $"#!/bin/sh\nCRIU_CONFIG_FILE='{config}'\nexport CRIU_CONFIG_FILE\nexec '{criuBinary ?? "criu"}' \"$@\"\n");
            File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            return new LazyPagesConfiguration(config, script, socket);
        }
        catch
        {
            socket?.Dispose();
            File.Delete(name + ".conf");
            File.Delete(name + ".sh");
            throw;
        }
    }

    public void Dispose()
    {
        _pageServerSocket?.Dispose();
        File.Delete(_configFile);
        File.Delete(ServiceBinary);
    }
}

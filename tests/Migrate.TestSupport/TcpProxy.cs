using System.Net;
using System.Net.Sockets;

namespace Migrate.TestSupport;

/// <summary>
/// A TCP forwarder on loopback in front of a server, for fault injection: it can cut a
/// connection after a number of client bytes (the link breaking mid-stream). Counts what it forwards.
/// </summary>
public sealed class TcpProxy : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;
    private long _cutAfter = long.MaxValue;
    private long _cutAnyAfter = long.MaxValue;
    private long _forwarded;

    public TcpProxy(IPEndPoint target)
    {
        _target = target;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _accepting = AcceptAsync();
    }

    public string Address => $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>Client-to-server bytes forwarded over all connections.</summary>
    public long ForwardedBytes => Interlocked.Read(ref _forwarded);

    public int Connections { get; private set; }

    public int ConnectionsCut { get; private set; }

    /// <summary>The next connection is cut (both ways) once it has forwarded this many client bytes.</summary>
    public void CutNextConnectionAfter(long bytes) => Interlocked.Exchange(ref _cutAfter, bytes);

    /// <summary>Whichever connection first forwards this many client bytes is cut (both ways); later ones are not.</summary>
    public void CutFirstConnectionPassing(long bytes) => Interlocked.Exchange(ref _cutAnyAfter, bytes);

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            Connections++;
            long cut = Interlocked.Exchange(ref _cutAfter, long.MaxValue);
            _ = ForwardAsync(client, cut);
        }
    }

    private async Task ForwardAsync(Socket client, long cutAfter)
    {
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using (client)
        {
            try
            {
                await server.ConnectAsync(_target, _stop.Token);
                using var both = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                var up = PumpAsync(client, server, cutAfter, count: true, both);
                var down = PumpAsync(server, client, long.MaxValue, count: false, both);
                await Task.WhenAny(up, down);
                both.Cancel();
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                // a cut or closed connection
            }
        }
    }

    private async Task PumpAsync(Socket from, Socket to, long cutAfter, bool count, CancellationTokenSource both)
    {
        var buffer = new byte[64 * 1024];
        long sent = 0;
        try
        {
            while (true)
            {
                int read = await from.ReceiveAsync(buffer, both.Token);
                if (read == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                if (sent + read > cutAfter || (count && sent + read > Interlocked.Read(ref _cutAnyAfter) && Interlocked.Exchange(ref _cutAnyAfter, long.MaxValue) != long.MaxValue))
                {
                    ConnectionsCut++;
                    from.Close();
                    to.Close();
                    return;
                }

                await to.SendAsync(buffer.AsMemory(0, read), both.Token);
                sent += read;
                if (count)
                {
                    Interlocked.Add(ref _forwarded, read);
                }
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // the other direction ended the connection
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _accepting;
        _stop.Dispose();
    }
}

using k8s;

namespace Migrate.TestSupport;

/// <summary>
/// What the sandbox's stand-ins for kube-controller-manager's controllers share: a pass over the
/// API every few hundred milliseconds on a task of its own, a failed pass (the emulator stopping,
/// a call timing out, a write racing another) logged and tried again, and a stop that waits for
/// the pass under way.
/// </summary>
public abstract class SandboxController : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly TimeSpan _interval;
    private readonly string _name;
    private Task _loop = Task.CompletedTask;

    protected SandboxController(IKubernetes client, string name, TimeSpan interval)
    {
        Client = client ?? throw new ArgumentNullException(nameof(client));
        _name = name;
        _interval = interval;
    }

    protected IKubernetes Client { get; }

    /// <summary>One look at the cluster and the writes it calls for.</summary>
    protected abstract Task PassAsync(CancellationToken cancellationToken);

    /// <summary>Starts the passes (called once, by the subclass's factory).</summary>
    protected void Run() => _loop = Task.Run(() => LoopAsync(_stop.Token));

    private async Task LoopAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                await PassAsync(cancellationToken);
                await Task.Delay(_interval, cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested)
            {
                Console.Error.WriteLine($"sandbox {_name} controller: {e.GetType().Name}: {e.Message}");
                await Task.Delay(_interval, CancellationToken.None);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop.ContinueWith(_ => { }, TaskScheduler.Default);
        _stop.Dispose();
        GC.SuppressFinalize(this);
    }
}

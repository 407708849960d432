using Migrate.Operator.Reconciliation;

namespace Migrate.Operator.Kubernetes;

/// <summary>
/// The workers of one controller: each takes a key from the queue (one key never in two workers),
/// reconciles it, and puts it back after the delay the reconcile asked for, or after its failure
/// delay when the reconcile threw. Whatever one key throws, the other keys and the operator go on:
/// the error is logged and handed to <see cref="OnError"/> (which records it on the object). Only
/// the leader works; losing leadership cancels the passes under way at once, and gaining it
/// queues every key again.
/// </summary>
public sealed partial class ControllerLoop(string name, WorkQueue<ObjectKey> queue, Func<ObjectKey, CancellationToken, Task<TimeSpan?>> reconcile,
    Func<IEnumerable<ObjectKey>> allKeys, ILeaderGate leader, ILogger logger, int workers = 4)
{
    /// <summary>Called (best effort) with a key whose pass threw, how many times in a row, and the error.</summary>
    public Func<ObjectKey, int, Exception, CancellationToken, Task>? OnError { get; init; }

    /// <summary>How often leadership is looked at to queue every key when it is gained.</summary>
    public TimeSpan LeadershipCheck { get; init; } = TimeSpan.FromMilliseconds(250);

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var tasks = Enumerable.Range(0, workers).Select(_ => WorkAsync(cancellationToken)).ToList();
        tasks.Add(FollowLeadershipAsync(cancellationToken));
        try
        {
            await Task.WhenAll(tasks);
        }
        finally
        {
            queue.ShutDown();
        }
    }

    private async Task FollowLeadershipAsync(CancellationToken cancellationToken)
    {
        bool leading = false;
        while (!cancellationToken.IsCancellationRequested)
        {
            if (leader.IsLeader && !leading)
            {
                foreach (var key in allKeys())
                {
                    queue.Add(key);
                }
            }

            leading = leader.IsLeader;
            try
            {
                await Task.Delay(LeadershipCheck, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task WorkAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            ObjectKey key;
            try
            {
                key = await queue.TakeAsync(cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            try
            {
                if (!leader.IsLeader)
                {
                    continue; // queued again when this replica leads
                }

                using var pass = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, leader.Leading);
                var again = await reconcile(key, pass.Token);
                queue.Forget(key);
                if (again is { } delay)
                {
                    queue.AddAfter(key, delay);
                }
            }
            catch (Exception e) when (e is LeadershipLostException || (e is OperationCanceledException && (cancellationToken.IsCancellationRequested || !leader.IsLeader)))
            {
                // stopped, or no longer the leader: the new leader takes over from the stored state
            }
            catch (Exception e)
            {
                var delay = queue.AddRateLimited(key);
                int failures = queue.Failures(key);
                var what = key.ToString();
                if (e is TransientActionException)
                {
                    LogTransient(name, what, e.Message, delay.TotalMilliseconds);
                }
                else
                {
                    LogFailed(e, name, what, failures, delay.TotalMilliseconds);
                }

                if (OnError is { } onError && leader.IsLeader)
                {
                    try
                    {
                        await onError(key, failures, e, cancellationToken);
                    }
                    catch (Exception recording) when (recording is not OperationCanceledException)
                    {
                        LogNotRecorded(name, key.ToString(), recording.Message);
                    }
                }
            }
            finally
            {
                queue.Done(key);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "{Controller} {Key}: {Message}; again in {Millis:0} ms")]
    private partial void LogTransient(string controller, string key, string message, double millis);

    [LoggerMessage(Level = LogLevel.Error, Message = "{Controller} {Key}: the pass failed ({Failures} in a row); again in {Millis:0} ms")]
    private partial void LogFailed(Exception error, string controller, string key, int failures, double millis);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Controller} {Key}: could not record the failure on the object ({Message})")]
    private partial void LogNotRecorded(string controller, string key, string message);
}

using System.Collections.Concurrent;
using Grpc.Core;
using Migrate.Agent.Contracts.Groups;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The holds of group members' checkpoint takes on this node: the operator's decision for each
/// (ContinueCheckpoint; the first word said counts, and may come before the take is held), and the
/// waits of takes that reached their hold. Kept in memory only: an agent that restarts has thawed
/// every pod it held and discarded what it dumped.
/// </summary>
public sealed class CheckpointGates
{
    private readonly ConcurrentDictionary<string, TaskCompletionSource<string>> _decisions = new(StringComparer.Ordinal);

    /// <summary>Records the decision for a checkpoint; returns the one that counts (an earlier word wins).</summary>
    public string Decide(string checkpointId, string decision)
    {
        if (!CheckpointHolds.IsDecision(decision))
        {
            throw new CheckpointException(StatusCode.InvalidArgument,
                $"ContinueCheckpoint: decision must be \"{CheckpointHolds.Thaw}\" or \"{CheckpointHolds.Abort}\", not \"{(decision.Length <= 40 ? decision : decision[..40] + "...")}\"");
        }

        var gate = Gate(checkpointId);
        gate.TrySetResult(decision);
        return gate.Task.Result;
    }

    /// <summary>The decision said for a checkpoint, if any.</summary>
    public string? Decision(string checkpointId) =>
        _decisions.TryGetValue(checkpointId, out var gate) && gate.Task.IsCompletedSuccessfully ? gate.Task.Result : null;

    /// <summary>
    /// Waits for the decision: returns when it is Thaw; throws (Aborted) when it is Abort, and
    /// (DeadlineExceeded) when none came within <paramref name="timeout"/>.
    /// </summary>
    public async Task WaitAsync(string checkpointId, TimeSpan timeout, CancellationToken cancellationToken)
    {
        string decision;
        try
        {
            decision = await Gate(checkpointId).Task.WaitAsync(timeout, cancellationToken);
        }
        catch (TimeoutException)
        {
            throw new CheckpointException(StatusCode.DeadlineExceeded,
                $"the group did not decide within {timeout.TotalSeconds:0.#} seconds whether its cut stands (another member is not dumped yet, or the operator is gone); the pod was thawed and the images discarded");
        }

        if (decision == CheckpointHolds.Abort)
        {
            throw new CheckpointException(StatusCode.Aborted, "the group checkpoint was rolled back (another member failed); the pod was thawed and the images discarded");
        }
    }

    /// <summary>Forgets a checkpoint's decision (its take ended, or it was deleted).</summary>
    public void Forget(string checkpointId) => _decisions.TryRemove(checkpointId, out _);

    private TaskCompletionSource<string> Gate(string checkpointId) =>
        _decisions.GetOrAdd(checkpointId, _ => new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously));
}

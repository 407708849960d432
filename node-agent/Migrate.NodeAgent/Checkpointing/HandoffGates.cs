using System.Collections.Concurrent;
using Grpc.Core;
using Migrate.Agent.Contracts.Groups;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// The holds of group members' handoffs on this node: how far the operator let each migration go
/// (ContinueHandoff), and the waits of handoffs that reached a hold. Kept in memory only: an agent
/// that restarts has thawed every pod it held (nothing was committed), so no hold outlives it.
/// </summary>
public sealed class HandoffGates
{
    private readonly ConcurrentDictionary<string, Gate> _gates = new(StringComparer.Ordinal);

    /// <summary>Lets the migration's handoff through <paramref name="through"/> (GroupHolds.Dump or Commit); going back is ignored.</summary>
    public void Continue(string migrationId, string through)
    {
        int reach = GroupHolds.Reach(through);
        if (reach <= 0)
        {
            throw new CheckpointException(StatusCode.InvalidArgument, $"ContinueHandoff: through must be \"{GroupHolds.Dump}\" or \"{GroupHolds.Commit}\", not \"{through}\"");
        }

        _gates.GetOrAdd(migrationId, _ => new Gate()).Raise(reach);
    }

    /// <summary>How far the migration was let through, as a ContinueHandoff word (empty: not at all).</summary>
    public string Through(string migrationId) => (_gates.TryGetValue(migrationId, out var gate) ? gate.Reach : 0) switch
    {
        >= 2 => GroupHolds.Commit,
        1 => GroupHolds.Dump,
        _ => "",
    };

    /// <summary>Waits until the hold is passed; a hold not passed within <paramref name="timeout"/> fails the handoff.</summary>
    public async Task WaitAsync(string migrationId, string hold, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var gate = _gates.GetOrAdd(migrationId, _ => new Gate());
        int needed = GroupHolds.Needs(hold);
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var changed = gate.Changed(needed);
            if (changed is null)
            {
                return;
            }

            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
            {
                throw new CheckpointException(StatusCode.DeadlineExceeded,
                    $"the group did not continue past hold {hold} within {timeout.TotalSeconds:0.#} seconds (another member is not ready, or the operator is gone)");
            }

            try
            {
                await changed.WaitAsync(left, cancellationToken);
            }
            catch (TimeoutException)
            {
                // the loop says so
            }
        }
    }

    /// <summary>Forgets the migration (its handoff ended).</summary>
    public void Forget(string migrationId) => _gates.TryRemove(migrationId, out _);

    private sealed class Gate
    {
        private readonly Lock _lock = new();
        private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public int Reach { get; private set; }

        public void Raise(int reach)
        {
            TaskCompletionSource raised;
            lock (_lock)
            {
                if (reach <= Reach)
                {
                    return;
                }

                Reach = reach;
                raised = _changed;
                _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            raised.TrySetResult();
        }

        /// <summary>Null when the gate is open as far as <paramref name="needed"/>; else a task that completes at the next raise.</summary>
        public Task? Changed(int needed)
        {
            lock (_lock)
            {
                return Reach >= needed ? null : _changed.Task;
            }
        }
    }
}

using Migrate.Cri;
using Migrate.Cri.V1;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Fencing after a node failure: the operator restored these pods on another node from a
/// checkpoint, so what this node still has of them is stopped and removed through CRI (every
/// sandbox labelled with the pod's UID, whatever its state), and nothing of them runs here again.
/// </summary>
public sealed partial class PodFence(CriClient cri, ILogger<PodFence> logger)
{
    public async Task<(IReadOnlyList<string> Removed, IReadOnlyList<string> Absent)> FenceAsync(IEnumerable<string> podUids, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(podUids);
        var removed = new List<string>();
        var absent = new List<string>();
        foreach (var uid in podUids.Where(u => u.Length > 0).Distinct(StringComparer.Ordinal))
        {
            var filter = new PodSandboxFilter();
            filter.LabelSelector[PodLocator.UidLabel] = uid;
            var sandboxes = await cri.Runtime.ListPodSandboxAsync(new ListPodSandboxRequest { Filter = filter }, cancellationToken: cancellationToken);
            if (sandboxes.Items.Count == 0)
            {
                absent.Add(uid);
                continue;
            }

            foreach (var sandbox in sandboxes.Items)
            {
                // StopPodSandbox kills every container of the sandbox; RemovePodSandbox removes them with it
                await cri.Runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = sandbox.Id }, cancellationToken: cancellationToken);
                await cri.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = sandbox.Id }, cancellationToken: cancellationToken);
                LogFenced(sandbox.Metadata?.Namespace ?? "", sandbox.Metadata?.Name ?? "", uid, sandbox.Id);
            }

            removed.Add(uid);
        }

        return (removed, absent);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Fenced pod {Namespace}/{Name} ({Uid}): restored elsewhere after a node failure; its sandbox {Sandbox} on this node was stopped and removed")]
    private partial void LogFenced(string @namespace, string name, string uid, string sandbox);
}

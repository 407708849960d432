using Migrate.Agent.V1;
using Migrate.Api;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Whether a checkpoint is taken as a delta on an earlier one: decisions only, from what the
/// agent knows (the earlier checkpoint's description, the pod found, how this node pre-copies).
/// </summary>
public static class ChainRules
{
    /// <summary>
    /// Why the checkpoint must be a full one although <paramref name="parentId"/> was asked for as its
    /// parent; null when it can be a delta on it.
    /// </summary>
    /// <param name="parent">The earlier checkpoint's description on this node (null: not kept here).</param>
    /// <param name="parentId">The checkpoint asked for.</param>
    /// <param name="pod">The pod being checkpointed, as found.</param>
    /// <param name="containers">Its containers being checkpointed.</param>
    /// <param name="exporting">The checkpoint is also exported (an export holds one full dump).</param>
    /// <param name="contentComparison">This node finds changed memory by comparing contents (kernel-tracked pre-copy cannot start from another checkpoint).</param>
    /// <param name="maxChain">The longest chain allowed, in checkpoints.</param>
    public static string? WhyFull(KeptCheckpoint? parent, string parentId, PodRef pod, IReadOnlyCollection<string> containers, bool exporting, bool contentComparison, int maxChain)
    {
        ArgumentNullException.ThrowIfNull(pod);
        ArgumentNullException.ThrowIfNull(containers);
        if (exporting)
        {
            return "it is exported, and an export holds one full dump";
        }

        if (!contentComparison)
        {
            return "this node's pre-copy is tracked by the kernel, which cannot continue from another checkpoint";
        }

        if (parent is not { Ready: true } || parent.Deleted)
        {
            return $"checkpoint {parentId} is not kept on this node";
        }

        if (parent.Pod is null || parent.Pod.Namespace != pod.Namespace || parent.Pod.Name != pod.Name
            || (parent.Pod.Uid.Length > 0 && pod.Uid.Length > 0 && parent.Pod.Uid != pod.Uid))
        {
            return $"checkpoint {parentId} is of another pod ({parent.Pod?.Namespace}/{parent.Pod?.Name})";
        }

        var before = parent.Containers.Select(c => c.Name).Order(StringComparer.Ordinal);
        if (!before.SequenceEqual(containers.Order(StringComparer.Ordinal), StringComparer.Ordinal))
        {
            return $"checkpoint {parentId} has other containers ({string.Join(", ", parent.Containers.Select(c => c.Name))})";
        }

        uint length = Math.Max(parent.ChainLength, 1u);
        if (length >= maxChain)
        {
            return $"the chain ending at checkpoint {parentId} already holds {length} checkpoint(s), the most allowed ({maxChain})";
        }

        return null;
    }

    /// <summary>The image set of a kept container that ends its memory: the lazy memory's set when there is one, else the final dump.</summary>
    public static string TipOf(string imagesDirectory, string container)
    {
        var memory = Path.Combine(imagesDirectory, StagingLayout.LazyMemoryImages(container));
        return Directory.Exists(memory) ? memory : Path.Combine(imagesDirectory, StagingLayout.FinalImages(container));
    }

    /// <summary>Whether a manifest path is a file linked from the chain (not the checkpoint's own).</summary>
    public static bool IsLinkedFromChain(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var parts = path.Split('/');
        return parts.Length > 3 && path.StartsWith(StagingLayout.AncestorImages(parts[1]) + "/", StringComparison.Ordinal);
    }
}

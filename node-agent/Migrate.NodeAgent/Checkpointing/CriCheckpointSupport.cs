using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using Migrate.Agent.V1;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>Where checkpoint images are published: a registry host and a repository path under it.</summary>
/// <param name="Host">host[:port], as image references name it.</param>
/// <param name="Repository">The path under which each pod's checkpoint images go (no leading or trailing '/').</param>
/// <param name="BaseAddress">The registry's API root: http for a loopback host (containerd pulls from those over plain HTTP), https otherwise.</param>
public sealed partial record CheckpointRegistry(string Host, string Repository, Uri BaseAddress)
{
    /// <summary>
    /// "host[:port]/path" (Agent:CheckpointRegistry). Refused with an ArgumentException naming the
    /// fault: a scheme, no path, or a path component an image reference cannot carry.
    /// </summary>
    public static CheckpointRegistry Parse(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.Contains("://", StringComparison.Ordinal))
        {
            throw new ArgumentException($"checkpoint registry '{value}' must be host[:port]/path, without a scheme (loopback hosts are reached over plain HTTP, others over HTTPS)");
        }

        int slash = value.IndexOf('/', StringComparison.Ordinal);
        if (slash <= 0 || slash == value.Length - 1)
        {
            throw new ArgumentException($"checkpoint registry '{value}' must name a host and a repository path: host[:port]/path");
        }

        var host = value[..slash];
        var path = value[(slash + 1)..].TrimEnd('/');
        if (!Uri.TryCreate("http://" + host + "/", UriKind.Absolute, out var probe) || probe.PathAndQuery != "/" || !string.IsNullOrEmpty(probe.UserInfo))
        {
            throw new ArgumentException($"checkpoint registry '{value}': '{host}' is not a host[:port]");
        }

        foreach (var component in path.Split('/'))
        {
            if (!RepositoryComponent().IsMatch(component))
            {
                throw new ArgumentException($"checkpoint registry '{value}': '{component}' cannot be part of an image repository (lower-case letters and digits, separated by '.', '_' or '-')");
            }
        }

        bool loopback = probe.IsLoopback || (IPAddress.TryParse(probe.Host, out var address) && IPAddress.IsLoopback(address));
        return new CheckpointRegistry(host, path, new Uri((loopback ? "http://" : "https://") + host + "/"));
    }

    /// <summary>The repository a pod's checkpoint images go to: the configured path, then namespace and pod (both DNS names, valid components).</summary>
    public string RepositoryFor(string ns, string pod) => $"{Repository}/{ns}/{pod}";

    [GeneratedRegex("^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")]
    private static partial Regex RepositoryComponent();
}

/// <summary>
/// Whether a node can take the container runtime's own checkpoints and restore them (the CRI path):
/// its runtime must implement CRI CheckpointContainer and the restore of a container created from a
/// checkpoint image (containerd from 2.0; the agent freezes the pod through containerd's task service,
/// so CRI-O is not offered), and a checkpoint registry must be configured.
/// </summary>
public static partial class CriCheckpointSupport
{
    public static CriCheckpointInfo Evaluate(string runtimeName, string runtimeVersion, string? registry)
    {
        var info = new CriCheckpointInfo { Runtime = $"{runtimeName} {runtimeVersion}".Trim(), Registry = registry ?? "" };
        var version = ParseVersion(runtimeVersion);
        var (minimum, label) = runtimeName switch
        {
            "containerd" => (new Version(2, 0), "containerd 2.0"),
            _ => ((Version?)null, ""),
        };
        if (minimum is null)
        {
            // CRI-O restores CRI checkpoints too, but the agent freezes a pod for them through containerd's task service
            info.Reason = $"runtime '{info.Runtime}' is not one whose CRI checkpoint and restore this agent drives (containerd >= 2.0)";
        }
        else if (version is null)
        {
            info.Reason = $"the version of runtime '{info.Runtime}' cannot be read";
        }
        else if (version < minimum)
        {
            info.Reason = $"{info.Runtime} cannot restore a CRI checkpoint ({label} is the first that can)";
        }
        else if (string.IsNullOrEmpty(registry))
        {
            info.RuntimeRestores = true;
            info.Reason = "no checkpoint registry is configured (Agent:CheckpointRegistry): the runtime restores CRI checkpoints from checkpoint images";
        }
        else
        {
            info.RuntimeRestores = true;
            try
            {
                _ = CheckpointRegistry.Parse(registry);
                info.Supported = true;
            }
            catch (ArgumentException e)
            {
                info.Reason = e.Message;
            }
        }

        return info;
    }

    /// <summary>"v2.1.9", "2.1.9~ds1-1", "1.28.1" -> major.minor; null when there is no leading number.</summary>
    internal static Version? ParseVersion(string text)
    {
        var match = LeadingVersion().Match(text ?? "");
        return match.Success
            ? new Version(int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture), int.Parse(match.Groups[2].Value, CultureInfo.InvariantCulture))
            : null;
    }

    [GeneratedRegex(@"^v?(\d{1,6})\.(\d{1,6})")]
    private static partial Regex LeadingVersion();
}

using System.ComponentModel.DataAnnotations;

namespace Migrate.NodeAgent;

/// <summary>Settings of the node agent (configuration section "Agent", environment PODMIG_AGENT__*).</summary>
public sealed class AgentOptions
{
    public const string Section = "Agent";

    /// <summary>The Kubernetes node this agent serves; defaults to the host name.</summary>
    [Required]
    public string NodeName { get; set; } = Environment.MachineName;

    /// <summary>Address and port the gRPC API listens on (HTTP/2).</summary>
    [Required]
    public string ListenAddress { get; set; } = "127.0.0.1:7070";

    /// <summary>The CRIU executable; null means <c>criu</c> on PATH.</summary>
    public string? CriuBinary { get; set; }

    /// <summary>The node's CRI socket (containerd's by default).</summary>
    [Required]
    public string CriSocket { get; set; } = "/run/containerd/containerd.sock";

    /// <summary>Where migrations stage their images, one directory (mode 0700) per migration.</summary>
    [Required]
    public string StagingDirectory { get; set; } = "/var/lib/podmig/migrations";
}

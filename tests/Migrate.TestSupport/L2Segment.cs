using System.Globalization;
using System.Security.Cryptography;

namespace Migrate.TestSupport;

/// <summary>A network namespace on an <see cref="L2Segment"/>: its path, its interface (eth0) and, when it has one, its address.</summary>
public sealed record SegmentMember(string Name, string NamespacePath, string Interface, string Mac, string? Cidr)
{
    public string? Address => Cidr?.Split('/')[0];
}

/// <summary>
/// One flat layer-2 segment on this machine: a Linux bridge of its own and named network
/// namespaces (/run/netns) plugged into it by veth pairs, each with eth0 inside, addresses from a
/// /24 of 10.251.0.0/16 chosen at random. The shape of a pod network whose nodes share one L2
/// segment, small enough for a test. Dispose deletes the namespaces (and with them the veths) and the bridge.
/// </summary>
public sealed class L2Segment : IDisposable
{
    private readonly List<SegmentMember> _members = [];
    private readonly string _id;
    private readonly int _subnet;
    private readonly bool _ownsBridge;
    private bool _disposed;

    private L2Segment(string id, int subnet, string? bridge = null)
    {
        _id = id;
        _subnet = subnet;
        _ownsBridge = bridge is null;
        Bridge = bridge ?? "pmt" + id;
    }

    public string Bridge { get; }

    public IReadOnlyList<SegmentMember> Members => _members;

    public static L2Segment Create()
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("ip", "nsenter", "setsid");
        var segment = new L2Segment(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3)), RandomNumberGenerator.GetInt32(1, 255));
        try
        {
            Prerequisites.Run("ip", "link", "add", segment.Bridge, "type", "bridge");
            Prerequisites.Run("ip", "link", "set", segment.Bridge, "up");
        }
        catch
        {
            segment.Dispose();
            throw;
        }

        return segment;
    }

    /// <summary>
    /// Namespaces plugged into a bridge that exists already (a sandbox node's pod bridge, say),
    /// with addresses given in full; Dispose deletes the namespaces and leaves the bridge.
    /// </summary>
    public static L2Segment OnBridge(string bridge)
    {
        Prerequisites.RequireRoot();
        Prerequisites.RequirePrograms("ip", "nsenter", "setsid");
        if (!Directory.Exists(Path.Combine("/sys/class/net", bridge, "bridge")))
        {
            throw new InvalidOperationException($"{bridge} is not a bridge of this machine");
        }

        return new L2Segment(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3)), 0, bridge);
    }

    /// <summary>A namespace on the segment, with address .<paramref name="host"/> of the segment's /24 and its link up, or, with host 0, no address and its link down.</summary>
    public SegmentMember Add(string name, int host) =>
        Add(name, host == 0 ? null : string.Create(CultureInfo.InvariantCulture, $"10.251.{_subnet}.{host}/24"));

    /// <summary>A namespace on the segment with the address <paramref name="cidr"/> and its link up, or, with none, no address and its link down.</summary>
    public SegmentMember Add(string name, string? cidr)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        string netns = $"pmt{_id}-{name}";
        string outside = $"pmt{_id}{_members.Count}";
        string inside = outside + "p";
        Prerequisites.Run("ip", "netns", "add", netns);
        var member = new SegmentMember(name, "/run/netns/" + netns, "eth0", "", cidr);
        _members.Add(member);
        Prerequisites.Run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside);
        Prerequisites.Run("ip", "link", "set", inside, "netns", netns);
        Prerequisites.Run("ip", "link", "set", outside, "master", Bridge);
        Prerequisites.Run("ip", "link", "set", outside, "up");
        Prerequisites.Run("ip", "-n", netns, "link", "set", inside, "name", "eth0");
        Prerequisites.Run("ip", "-n", netns, "link", "set", "lo", "up");
        if (member.Cidr is { } address)
        {
            Prerequisites.Run("ip", "-n", netns, "address", "add", address, "dev", "eth0");
            Prerequisites.Run("ip", "-n", netns, "link", "set", "eth0", "up");
        }

        var link = Prerequisites.Run("ip", "-n", netns, "-o", "link", "show", "eth0");
        member = member with { Mac = link.Split(' ').SkipWhile(w => w != "link/ether").Skip(1).First() };
        _members[^1] = member;
        return member;
    }

    /// <summary>
    /// Starts <paramref name="program"/> as its own session inside <paramref name="member"/>'s
    /// namespace, stdin from /dev/null and output appended to <paramref name="log"/>. The process's
    /// PID is the program's own (the shell, nsenter and setsid each exec the next); stop it with
    /// the returned object, which also reaps it (never with waitpid: this process's runtime reaps
    /// the children it started and fails hard if another call took one first).
    /// </summary>
    public static System.Diagnostics.Process Start(SegmentMember member, string log, string program, params string[] arguments)
    {
        var command = string.Join(' ', new[] { "exec", "nsenter", "--net=" + member.NamespacePath, "setsid", program }.Concat(arguments).Select(Quote));
        var start = new System.Diagnostics.ProcessStartInfo("sh") { UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add($"{command} <{Quote("/dev/null")} >>{Quote(log)} 2>&1");
        return System.Diagnostics.Process.Start(start) ?? throw new InvalidOperationException("could not start sh");
    }

    private static string Quote(string word) => "'" + word.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (var member in _members)
        {
            Prerequisites.Capture("ip", ["netns", "del", Path.GetFileName(member.NamespacePath)]);
        }

        if (_ownsBridge)
        {
            Prerequisites.Capture("ip", ["link", "del", Bridge]);
        }
    }
}

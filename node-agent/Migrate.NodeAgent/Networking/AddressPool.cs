using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Migrate.NodeAgent.Networking;

/// <summary>
/// The addresses a pod network hands out: an IPv4 subnet, the part of it pods get (first to last),
/// and the gateway, which no pod gets.
/// </summary>
public sealed record AddressRange
{
    private AddressRange(IPAddress network, int prefix, uint first, uint last, uint? gateway)
    {
        Network = network;
        Prefix = prefix;
        First = first;
        Last = last;
        Gateway = gateway;
    }

    public IPAddress Network { get; }

    public int Prefix { get; }

    public uint First { get; }

    public uint Last { get; }

    public uint? Gateway { get; }

    /// <summary>The range of a CNI IPAM configuration: subnet (required), rangeStart, rangeEnd, gateway.</summary>
    public static AddressRange Parse(string? subnet, string? rangeStart = null, string? rangeEnd = null, string? gateway = null)
    {
        var parts = (subnet ?? "").Split('/');
        if (parts.Length != 2 || !IPAddress.TryParse(parts[0], out var address) || address.AddressFamily != AddressFamily.InterNetwork
            || !int.TryParse(parts[1], out int prefix) || prefix is < 8 or > 30)
        {
            throw new ArgumentException($"subnet '{subnet}' is not an IPv4 subnet with a prefix of 8 to 30 bits (such as 10.88.0.0/16)");
        }

        uint mask = uint.MaxValue << (32 - prefix);
        uint network = ToNumber(address) & mask;
        uint broadcast = network | ~mask;
        uint first = rangeStart is null ? network + 1 : Within(rangeStart, "rangeStart");
        uint last = rangeEnd is null ? broadcast - 1 : Within(rangeEnd, "rangeEnd");
        if (first > last)
        {
            throw new ArgumentException($"rangeStart {rangeStart} comes after rangeEnd {rangeEnd}");
        }

        uint? gw = gateway is null ? network + 1 : Within(gateway, "gateway");
        return new AddressRange(ToAddress(network), prefix, first, last, gw);

        uint Within(string text, string what)
        {
            if (!IPAddress.TryParse(text, out var a) || a.AddressFamily != AddressFamily.InterNetwork)
            {
                throw new ArgumentException($"{what} '{text}' is not an IPv4 address");
            }

            uint n = ToNumber(a);
            if ((n & mask) != network || n == network || n == broadcast)
            {
                throw new ArgumentException($"{what} {text} is not a host address of subnet {subnet}");
            }

            return n;
        }
    }

    /// <summary>Whether a pod may have <paramref name="address"/>: in the range and not the gateway.</summary>
    public bool Assignable(IPAddress address) =>
        address.AddressFamily == AddressFamily.InterNetwork && ToNumber(address) is var n && n >= First && n <= Last && n != Gateway;

    public string Describe() => $"{Network}/{Prefix} ({ToAddress(First)} to {ToAddress(Last)})";

    public static uint ToNumber(IPAddress address) => BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes());

    public static IPAddress ToAddress(uint number)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, number);
        return new IPAddress(bytes);
    }
}

/// <summary>A pod sandbox's interface holding an address: the container id the runtime gave the sandbox, and the interface name in it.</summary>
public sealed record AddressHolder(string ContainerId, string Interface)
{
    public override string ToString() => $"{ContainerId} {Interface}";
}

/// <summary>What <see cref="AddressPool.Allocate"/> decided: an address (shared when another sandbox holds it too), or why none.</summary>
public sealed record AddressDecision(IPAddress? Address, bool Shared, string? Refusal)
{
    public static AddressDecision Refuse(string why) => new(null, false, why);
}

/// <summary>
/// Which address a pod sandbox gets, from the addresses held now. An address normally has one
/// holder. The one exception is a migration that keeps its pod's address: the replacement's
/// sandbox is made while the source still runs and is pinned to the source's address, so both
/// hold it until one of them is removed (the source after a move, the replacement after a
/// rollback) and the other keeps it. Which of the two has it live on its interface is the
/// handover's business (<see cref="AddressHandover"/>), never both.
/// </summary>
public static class AddressPool
{
    public static AddressDecision Allocate(AddressRange range, IReadOnlyDictionary<uint, IReadOnlyList<AddressHolder>> held, AddressHolder who, IPAddress? pinned, uint? lastAllocated)
    {
        ArgumentNullException.ThrowIfNull(range);
        ArgumentNullException.ThrowIfNull(held);
        ArgumentNullException.ThrowIfNull(who);
        // the same sandbox asking again (a retried ADD) gets what it has
        foreach (var (number, holders) in held)
        {
            if (holders.Contains(who))
            {
                return new AddressDecision(AddressRange.ToAddress(number), holders.Count > 1, null);
            }
        }

        if (pinned is not null)
        {
            if (!range.Assignable(pinned))
            {
                return AddressDecision.Refuse($"the pinned address {pinned} is not one this network hands out ({range.Describe()}, gateway excluded)");
            }

            return new AddressDecision(pinned, held.TryGetValue(AddressRange.ToNumber(pinned), out var others) && others.Count > 0, null);
        }

        // the next free address after the last one handed out: an address just given up is reused last
        uint size = range.Last - range.First + 1;
        uint start = lastAllocated is { } last && last >= range.First && last < range.Last ? last + 1 : range.First;
        for (uint i = 0; i < size; i++)
        {
            uint candidate = range.First + ((start - range.First + i) % size);
            if (candidate != range.Gateway && !(held.TryGetValue(candidate, out var holders) && holders.Count > 0))
            {
                return new AddressDecision(AddressRange.ToAddress(candidate), false, null);
            }
        }

        return AddressDecision.Refuse($"every address of {range.Describe()} is held");
    }
}

using System.Text.Json;
using System.Text.Json.Serialization;

namespace Migrate.NodeAgent.Networking;

/// <summary>
/// What a migration that keeps its pod's address stages for the target (network.json, sent and
/// verified with the images): the address, its interface and MAC in the source pod, and the
/// containers to restore before the target's network lock is lifted.
/// </summary>
public sealed record AddressMove(string Interface, string Cidr, string? Mac, IReadOnlyList<string> Containers, IReadOnlyList<MovedRoute>? Routes = null)
{
    public const string FileName = "network.json";

    /// <summary>The address, validated (a file that names no valid address is refused here).</summary>
    public PodAddress ToAddress() => new(Interface, Cidr, Mac);

    /// <summary>The pod's routes through the interface, validated.</summary>
    public IReadOnlyList<PodRoute> ToRoutes() => [.. (Routes ?? []).Select(r => new PodRoute(r.Destination, r.Gateway))];

    public static AddressMove? Read(string path) =>
        File.Exists(path) ? JsonSerializer.Deserialize(File.ReadAllText(path), AddressMoveJson.Default.AddressMove) : null;

    public void Write(string path) => File.WriteAllText(path, JsonSerializer.Serialize(this, AddressMoveJson.Default.AddressMove));

    /// <summary>
    /// The address that moves, from <c>ip -j address show</c> in the pod's namespace: the one
    /// interface (loopback aside) with a global IPv4 address. Null, with the reason, when there is
    /// none or more than one: which of them would be the pod's address is then not this agent's guess.
    /// </summary>
    public static (PodAddress? Address, string? Refusal) FromIpJson(string json)
    {
        using var document = JsonDocument.Parse(json);
        var found = new List<PodAddress>();
        foreach (var link in document.RootElement.EnumerateArray())
        {
            var name = link.TryGetProperty("ifname", out var n) ? n.GetString() ?? "" : "";
            if (name == "lo")
            {
                continue;
            }

            var mac = link.TryGetProperty("address", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString() : null;
            if (!link.TryGetProperty("addr_info", out var addresses))
            {
                continue;
            }

            foreach (var address in addresses.EnumerateArray())
            {
                if (address.TryGetProperty("family", out var f) && f.GetString() == "inet"
                    && (!address.TryGetProperty("scope", out var s) || s.GetString() == "global")
                    && address.TryGetProperty("local", out var local) && address.TryGetProperty("prefixlen", out var prefix))
                {
                    found.Add(new PodAddress(name, $"{local.GetString()}/{prefix.GetInt32()}", mac));
                }
            }
        }

        return found.Count switch
        {
            1 => (found[0], null),
            0 => (null, "the pod's network namespace has no IPv4 address to keep"),
            _ => (null, $"the pod's network namespace has {found.Count} IPv4 addresses ({string.Join(", ", found.Select(a => $"{a.Cidr} on {a.Interface}"))}); only a pod with one can keep it"),
        };
    }
}

/// <summary>A route as network.json carries it.</summary>
public sealed record MovedRoute(string Destination, string? Gateway);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(AddressMove))]
internal sealed partial class AddressMoveJson : JsonSerializerContext;

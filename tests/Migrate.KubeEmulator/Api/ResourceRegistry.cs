using System.Collections.Immutable;

namespace Migrate.KubeEmulator.Api;

/// <summary>Every resource type served right now: the built-ins plus those CRDs define.</summary>
public sealed class ResourceRegistry
{
    private readonly Lock _gate = new();
    private ImmutableArray<ResourceType> _types;

    public ResourceRegistry(IEnumerable<ResourceType> builtIns)
    {
        _types = [.. builtIns];
    }

    /// <summary>Raised after the set of types changed (a CRD was established or removed).</summary>
    public event Action? Changed;

    public ImmutableArray<ResourceType> All => _types;

    public ResourceType? Find(string group, string version, string plural) =>
        _types.FirstOrDefault(t => t.Group == group && t.Version == version && t.Plural == plural);

    /// <summary>Any served version of a group/resource (the first registered, which is the preferred one).</summary>
    public ResourceType? FindAnyVersion(string group, string plural) =>
        _types.FirstOrDefault(t => t.Group == group && t.Plural == plural);

    public ResourceType? FindByKind(string group, string version, string kind) =>
        _types.FirstOrDefault(t => t.Group == group && t.Version == version && t.Kind == kind);

    /// <summary>The groups in discovery order (core first), each with its versions, preferred first.</summary>
    public IReadOnlyList<(string Group, IReadOnlyList<string> Versions)> Groups()
    {
        var result = new List<(string, IReadOnlyList<string>)>();
        foreach (var group in _types.Select(t => t.Group).Distinct())
        {
            result.Add((group, _types.Where(t => t.Group == group).Select(t => t.Version).Distinct().ToList()));
        }

        return result;
    }

    /// <summary>Replaces the types a CRD defines (none to remove them).</summary>
    public void SetDefinedBy(string definition, IReadOnlyList<ResourceType> types)
    {
        lock (_gate)
        {
            _types = [.. _types.Where(t => t.DefinedBy != definition), .. types];
        }

        Changed?.Invoke();
    }
}

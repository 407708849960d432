using System.Collections.Immutable;
using Migrate.KubeEmulator.Schema;

namespace Migrate.KubeEmulator.Api;

/// <summary>A printer column of a resource's table view (CRD additionalPrinterColumns, or built in).</summary>
public sealed record PrinterColumn(string Name, string Type, string JsonPath, string Description = "", int Priority = 0, string Format = "");

/// <summary>
/// One kind of object the server serves: where it lives in the URL space, how it is stored, which
/// subresources it has. Built-in kinds come from <see cref="BuiltInResources"/>; custom ones from
/// CustomResourceDefinitions.
/// </summary>
public sealed record ResourceType
{
    public required string Group { get; init; }

    public required string Version { get; init; }

    public required string Kind { get; init; }

    public required string Plural { get; init; }

    public required string Singular { get; init; }

    public required bool Namespaced { get; init; }

    public ImmutableArray<string> ShortNames { get; init; } = [];

    public ImmutableArray<string> Categories { get; init; } = [];

    /// <summary>Has a status subresource: status is written only through it.</summary>
    public bool HasStatus { get; init; }

    /// <summary>Subresources other than status (log, eviction, binding, token, finalize).</summary>
    public ImmutableArray<string> Subresources { get; init; } = [];

    /// <summary>Verbs of the main resource; create-only kinds (reviews) have just "create".</summary>
    public ImmutableArray<string> Verbs { get; init; } = DefaultVerbs;

    /// <summary>Not stored: the request is answered and forgotten (access reviews, token reviews).</summary>
    public bool Ephemeral { get; init; }

    /// <summary>Schema of a custom resource version (validation, defaulting, pruning).</summary>
    public StructuralSchema? Schema { get; init; }

    /// <summary>The CRD's openAPIV3Schema as written (served in OpenAPI documents for kubectl explain).</summary>
    public System.Text.Json.Nodes.JsonObject? SourceSchema { get; init; }

    public ImmutableArray<PrinterColumn> PrinterColumns { get; init; } = [];

    /// <summary>For custom resources: the CRD's name.</summary>
    public string? DefinedBy { get; init; }

    public static readonly ImmutableArray<string> DefaultVerbs =
        ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

    public string GroupVersion => Group.Length == 0 ? Version : $"{Group}/{Version}";

    /// <summary>Storage key: version independent (every served version of a group/resource shares objects).</summary>
    public string StorageKey => $"{Group}/{Plural}";

    /// <summary>"pods", "deployments.apps": how error messages name the resource.</summary>
    public string QualifiedResource => Group.Length == 0 ? Plural : $"{Plural}.{Group}";

    public string ListKind => Kind + "List";

    public bool IsCustom => DefinedBy is not null;
}

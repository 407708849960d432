namespace Migrate.Api;

/// <summary>Condition types of a MigrationRequest's status.</summary>
public static class ConditionTypes
{
    /// <summary>True once admitted: the pod can move from source to target.</summary>
    public const string Validated = "Validated";

    /// <summary>True while the request moves through its phases.</summary>
    public const string Progressing = "Progressing";

    /// <summary>True while the source's processes are frozen.</summary>
    public const string Frozen = "Frozen";

    /// <summary>True while a failed migration is being undone.</summary>
    public const string RollingBack = "RollingBack";

    /// <summary>Set at admission when the replacement takes the source pod's name (a StatefulSet pod that opted in).</summary>
    public const string KeepsName = "KeepsName";

    /// <summary>True once a pod that keeps its name was ended and deleted so that its replacement can take the name.</summary>
    public const string SourceRetired = "SourceRetired";

    /// <summary>The outcome: True when migrated, False when it failed or was rolled back.</summary>
    public const string Ready = "Ready";
}

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

    /// <summary>Set at admission when the replacement keeps the pod's address (asked for, or the default where the network can move it).</summary>
    public const string KeepsAddress = "KeepsAddress";

    /// <summary>True once a pod that keeps its name was ended and deleted so that its replacement can take the name.</summary>
    public const string SourceRetired = "SourceRetired";

    /// <summary>The outcome: True when migrated, False when it failed or was rolled back.</summary>
    public const string Ready = "Ready";

    /// <summary>
    /// Which mode runs (status.mode) and why: True once decided, Unknown while mode Auto waits for
    /// its pre-copy rounds to end before it decides how to send what they leave.
    /// </summary>
    public const string ModeChosen = "ModeChosen";
}

/// <summary>The reasons of condition ModeChosen.</summary>
public static class ModeReasons
{
    /// <summary>The request named its mode.</summary>
    public const string Requested = "Requested";

    /// <summary>Auto on the CRI path, which takes one checkpoint while frozen: Cold.</summary>
    public const string CriPath = "CriPath";

    /// <summary>Auto where the pod may not leave memory on its source: PreCopy.</summary>
    public const string PostCopyUnavailable = "PostCopyUnavailable";

    /// <summary>Auto, waiting for its rounds to end (the condition is Unknown).</summary>
    public const string AwaitingRounds = "AwaitingRounds";

    /// <summary>Auto: what the rounds left is sent while frozen within the limit: PreCopy.</summary>
    public const string RoundsConverged = "RoundsConverged";

    /// <summary>Auto: the pod writes faster than rounds shrink what is left; it is left on the source: Hybrid.</summary>
    public const string WritesOutpaceRounds = "WritesOutpaceRounds";
}

/// <summary>
/// Reasons of a MigrationRequest's status and conditions (CamelCase; each comes with a one-sentence
/// message). The admission reasons are final at once; the others end a migration in flight.
/// </summary>
public static class Reasons
{
    // progress
    public const string Validated = "Validated";
    public const string Queued = "Queued";
    public const string Migrated = "Migrated";
    public const string RolledBack = "RolledBack";

    // admission: the request fails at once and nothing is touched
    public const string PodNotFound = "PodNotFound";
    public const string PodNotRunning = "PodNotRunning";
    public const string PodOwnedByStatefulSet = "PodOwnedByStatefulSet";
    public const string PodOwnedByDaemonSet = "PodOwnedByDaemonSet";
    public const string PodAlreadyMigrating = "PodAlreadyMigrating";
    public const string SourceHasNoAgent = "SourceHasNoAgent";
    public const string TargetNotFound = "TargetNotFound";
    public const string TargetIsSource = "TargetIsSource";
    public const string TargetNotReady = "TargetNotReady";
    public const string TargetUnschedulable = "TargetUnschedulable";
    public const string TargetHasNoAgent = "TargetHasNoAgent";
    public const string TargetIncompatible = "TargetIncompatible";

    /// <summary>spec.checkpointPath CRI, and the pod or a node cannot take it.</summary>
    public const string CriPathUnavailable = "CriPathUnavailable";
    public const string AddressCannotMove = "AddressCannotMove";

    // keepAddress left unset, the network could move the address but the pod has not exactly one IPv4 address (condition KeepsAddress False)
    public const string PodAddressCannotMove = "PodAddressCannotMove";
    public const string NoEligibleTarget = "NoEligibleTarget";

    // a migration in flight ends (rolled back unless said otherwise)
    public const string Deleted = "Deleted";
    public const string TimedOut = "TimedOut";
    public const string PhaseTimedOut = "PhaseTimedOut";
    public const string SourcePodGone = "SourcePodGone";
    public const string TargetNodeGone = "TargetNodeGone";
    public const string TargetNodeNotReady = "TargetNodeNotReady";
    public const string SourceAgentUnreachable = "SourceAgentUnreachable";
    public const string TargetAgentUnreachable = "TargetAgentUnreachable";
    public const string SourceAgentRestarted = "SourceAgentRestarted";
    public const string CheckpointRefused = "CheckpointRefused";
    public const string PreCopyFailed = "PreCopyFailed";
    public const string HandoffFailed = "HandoffFailed";
    public const string RestoreFailed = "RestoreFailed";
    public const string TargetPreparationTimedOut = "TargetPreparationTimedOut";
    public const string NameTaken = "NameTaken";
    public const string AgentCallFailed = "AgentCallFailed";

    // ended Failed: no state lost, but a person has to look
    public const string RestoreInPlaceFailed = "RestoreInPlaceFailed";
    public const string SourceFrozenTargetUnreachable = "SourceFrozenTargetUnreachable";
    public const string SourceFrozenAgentUnreachable = "SourceFrozenAgentUnreachable";

    // group migrations
    /// <summary>A member failed before the group released its replacements: every member was rolled back.</summary>
    public const string GroupRolledBack = "GroupRolledBack";
    /// <summary>The group's request is malformed, or names pods that cannot move together.</summary>
    public const string InvalidGroup = "InvalidGroup";
    public const string GroupTooLarge = "GroupTooLarge";
    /// <summary>Every member moved.</summary>
    public const string GroupMigrated = "GroupMigrated";
}

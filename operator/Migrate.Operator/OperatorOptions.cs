namespace Migrate.Operator;

/// <summary>Settings of the operator (configuration section "Operator", environment PODMIG_OPERATOR__*).</summary>
public sealed class OperatorOptions
{
    public const string Section = "Operator";

    /// <summary>A kubeconfig file; unset means in-cluster configuration, or ~/.kube/config outside a cluster.</summary>
    public string? Kubeconfig { get; set; }

    /// <summary>Where the leader election Lease lives.</summary>
    public string LeaseNamespace { get; set; } = "podmig-system";

    public string LeaseName { get; set; } = "podmig-operator";

    /// <summary>This replica's name in the Lease (the pod name in a cluster).</summary>
    public string Identity { get; set; } = Environment.GetEnvironmentVariable("POD_NAME") ?? Environment.MachineName;

    /// <summary>Migrations in flight at once, cluster-wide; more wait in Pending (KubeVirt's default: 5).</summary>
    public int MaxConcurrentMigrations { get; set; } = 5;

    /// <summary>Migrations in flight at once out of one node (KubeVirt's default: 2).</summary>
    public int MaxOutboundMigrationsPerNode { get; set; } = 2;

    /// <summary>Migrations in flight at once into one node.</summary>
    public int MaxInboundMigrationsPerNode { get; set; } = 2;

    /// <summary>Bytes per second one migration's images are sent at, at most (0: no limit of its own; agents have a node-wide one).</summary>
    public long BandwidthPerMigration { get; set; }

    /// <summary>
    /// Restore private memory lazily where the target node's CRIU can (userfaultfd): the pod is
    /// frozen only while its memory is read, not written by CRIU, and the replacement runs before its
    /// memory is in place. Off: every migration restores its memory whole before the processes run.
    /// </summary>
    public bool LazyRestore { get; set; } = true;

    /// <summary>Seconds between two rounds of the sweeper that removes checkpoint directories no Checkpoint names any more.</summary>
    public int CheckpointSweepSeconds { get; set; } = 30;

    /// <summary>How old (seconds) an unknown checkpoint directory must be before the sweeper removes it (one whose Checkpoint let go of it goes at once).</summary>
    public int CheckpointOrphanGraceSeconds { get; set; } = 900;

    /// <summary>Seconds one phase (checkpointing, transferring, restoring) may take before the migration is rolled back.</summary>
    public int PhaseTimeoutSeconds { get; set; } = 300;

    /// <summary>Seconds an agent may not answer before a migration that needs it gives up on it (rolled back, its images removed when it is back).</summary>
    public int AgentGraceSeconds { get; set; } = 20;

    /// <summary>
    /// Seconds an agent may not answer before a checkpoint or restore that needs it fails, and before a
    /// deleted checkpoint whose images it holds is let go (its images removed when it answers again).
    /// </summary>
    public int CheckpointAgentGraceSeconds { get; set; } = 30;

    /// <summary>Seconds the replacement pod's sandbox may take to be ready for the restore, while the source still runs.</summary>
    public int PreparationTimeoutSeconds { get; set; } = 90;

    /// <summary>Requests reconciled at once.</summary>
    public int Workers { get; set; } = 4;

    /// <summary>The most pods one group migration may move together.</summary>
    public int MaxGroupMembers { get; set; } = 8;

    /// <summary>Group migrations in flight at once; more wait in Pending.</summary>
    public int MaxConcurrentGroups { get; set; } = 2;

    /// <summary>Seconds a group member's source agent waits at a hold (frozen, or staged) for the rest of the group before it thaws the pod and the group rolls back.</summary>
    public int GroupHoldSeconds { get; set; } = 60;

    /// <summary>The group migrations' limits, from these settings.</summary>
    public Reconciliation.GroupPolicy GroupPolicy() => new()
    {
        MaxMembers = MaxGroupMembers,
        MaxConcurrentGroups = MaxConcurrentGroups,
    };

    /// <summary>The decisions' limits and waits, from these settings.</summary>
    public Reconciliation.MigrationPolicy Policy() => new()
    {
        MaxConcurrentMigrations = MaxConcurrentMigrations,
        MaxOutboundPerNode = MaxOutboundMigrationsPerNode,
        MaxInboundPerNode = MaxInboundMigrationsPerNode,
        PhaseTimeout = TimeSpan.FromSeconds(PhaseTimeoutSeconds),
        AgentGrace = TimeSpan.FromSeconds(AgentGraceSeconds),
        PreparationTimeout = TimeSpan.FromSeconds(PreparationTimeoutSeconds),
        FirstRoundFloorBytesPerSecond = BandwidthPerMigration > 0 ? Math.Min(50e6, BandwidthPerMigration) : 50e6,
    };

    /// <summary>The checkpoint and restore decisions' limits, from these settings.</summary>
    public Checkpoints.CheckpointPolicy CheckpointPolicy() => new()
    {
        AgentGrace = TimeSpan.FromSeconds(Math.Max(1, CheckpointAgentGraceSeconds)),
    };

    /// <summary>Off only for a single replica run by hand.</summary>
    public bool LeaderElection { get; set; } = true;

    /// <summary>The operator's certificate, key and the cluster CA (PEM), for mutual TLS to the agents.</summary>
    public string? TlsCertificateFile { get; set; }

    public string? TlsKeyFile { get; set; }

    public string? TlsAuthorityFile { get; set; }

    /// <summary>
    /// Make the agents' mutual-TLS credentials (a CA and token key in Secret <see cref="PkiSecretName"/>,
    /// one Secret per node named <see cref="AgentSecretPrefix"/> + node) instead of reading the
    /// TLS and token key files below; how the Helm chart and deploy/ run it.
    /// </summary>
    public bool ManageAgentCertificates { get; set; }

    /// <summary>The namespace of the PKI Secrets (the operator's own).</summary>
    public string PkiNamespace { get; set; } = "podmig-system";

    public string PkiSecretName { get; set; } = "podmig-pki";

    public string AgentSecretPrefix { get; set; } = "podmig-agent-";

    /// <summary>The private key (PEM, ECDSA P-256) transfer tokens are signed with; agents trust its public half.</summary>
    public string? TokenSigningKeyFile { get; set; }

    /// <summary>
    /// Where the admission webhooks listen (ip:port, HTTPS) with a certificate the operator manages:
    /// made on first start, kept in a Secret all replicas share, renewed before it expires, its CA
    /// published into the ValidatingWebhookConfiguration. Unset: no managed webhook endpoint (one
    /// can still be configured with certificate files under Kestrel:Endpoints).
    /// </summary>
    public string? WebhookListenAddress { get; set; }

    public string WebhookSecretNamespace { get; set; } = "podmig-system";

    public string WebhookSecretName { get; set; } = "podmig-operator-webhook-tls";

    /// <summary>The ValidatingWebhookConfiguration whose webhooks get the CA bundle.</summary>
    public string WebhookConfigurationName { get; set; } = "podmig-operator-webhooks";

    /// <summary>Names the webhook certificate is valid for (comma-separated): the operator's Service.</summary>
    public string WebhookDnsNames { get; set; } = "podmig-operator.podmig-system.svc,podmig-operator.podmig-system.svc.cluster.local";

    /// <summary>Addresses the webhook certificate is valid for (comma-separated), when the API server calls an IP (the sandbox).</summary>
    public string? WebhookIpAddresses { get; set; }
}

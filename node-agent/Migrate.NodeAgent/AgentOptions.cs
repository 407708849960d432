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

    /// <summary>
    /// Address and port of a plain HTTP/1.1 listener for /healthz (the kubelet's probes cannot show
    /// a client certificate to the mutual-TLS gRPC port); unset: none.
    /// </summary>
    public string? ProbeListenAddress { get; set; }

    /// <summary>The CRIU executable; null means <c>criu</c> on PATH.</summary>
    public string? CriuBinary { get; set; }

    /// <summary>The node's CRI socket (containerd's by default).</summary>
    [Required]
    public string CriSocket { get; set; } = "/run/containerd/containerd.sock";

    /// <summary>Where migrations stage their images, one directory (mode 0700) per migration.</summary>
    [Required]
    public string StagingDirectory { get; set; } = StagingLayout.DefaultStagingRoot;

    /// <summary>
    /// A directory on a memory file system (tmpfs: the host's /dev/shm, say) where a migration's images
    /// are staged instead of <see cref="StagingDirectory"/> when they fit (<see cref="Checkpointing.StagingMediumDecision"/>):
    /// they live only until the target has them, and on disk a pod's memory becomes dirty pages whose
    /// writer the kernel throttles to the disk's speed. Their pages are charged to the agent's memory
    /// cgroup, whose limit counts in the choice. Kept checkpoints stay on disk. Unset: always on disk.
    /// </summary>
    public string? MemoryStagingDirectory { get; set; }

    /// <summary>At most this many bytes of images staged in memory at once, by the choice's reckoning; 0: no cap beyond the memory file system, half the node's available memory and the agent's limit.</summary>
    [Range(0, long.MaxValue)]
    public long MemoryStagingMaxBytes { get; set; }

    /// <summary>Where images received from other nodes are staged, one directory (mode 0700) per migration.</summary>
    [Required]
    public string IncomingDirectory { get; set; } = StagingLayout.DefaultIncomingRoot;

    /// <summary>The container runtime's CNI configuration directory: which pod network the node runs, and whether it can move an address (keepAddress).</summary>
    public string CniConfigDirectory { get; set; } = "/etc/cni/net.d";

    /// <summary>Where kept checkpoints live, one directory (mode 0700) each; unset: "checkpoints" beside <see cref="StagingDirectory"/> (on the same file system, so a checkpoint's images move there at once).</summary>
    public string? CheckpointDirectory { get; set; }

    /// <summary>
    /// Where the CRI path publishes checkpoint images: host[:port]/path of an OCI registry the
    /// nodes' runtimes pull from (plain HTTP for a loopback host, HTTPS otherwise). Unset: this node
    /// offers no CRI path. The images hold the pod's memory, secrets included: use a registry only
    /// the cluster's nodes can reach; each image is deleted when its migration is cleaned up.
    /// </summary>
    public string? CheckpointRegistry { get; set; }

    /// <summary>The directory kept checkpoints live in (<see cref="CheckpointDirectory"/> or its default).</summary>
    public string CheckpointRoot => CheckpointDirectory is { Length: > 0 } configured ? configured
        : Path.Combine(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(StagingDirectory))) ?? "/var/lib/podmig", "checkpoints");

    /// <summary>
    /// The archive storage: a directory every node sees the same (a ReadWriteMany volume, an NFS
    /// mount) that checkpoints are exported to and imported from, each an OCI image layout
    /// (<see cref="Checkpointing.CheckpointArchive"/>); unset: this node neither exports nor imports.
    /// </summary>
    public string? ArchiveDirectory { get; set; }

    /// <summary>
    /// Checkpoints that leave the pod running copy its memory while it runs first (a pre-copy
    /// round) and, while it is frozen, take only what changed since, left to a lazy restore: the
    /// freeze no longer grows with the memory. Only where CRIU has lazy pages; false: one plain dump.
    /// </summary>
    public bool FastCheckpoints { get; set; } = true;

    /// <summary>
    /// Pre-copy rounds and the final memory capture read only the pages a pod wrote since the last
    /// round, found by userfaultfd write-protection and PAGEMAP_SCAN (kernels without soft-dirty
    /// tracking, Linux 6.7 and later, x86_64): the agent briefly traces each process to have it open
    /// a userfaultfd it takes over. Where a process cannot be tracked its pages are compared, as
    /// with false.
    /// </summary>
    public bool WriteTracking { get; set; } = true;

    /// <summary>
    /// Once a pre-copy round is staged on the target, give back the bytes of its pages files on this
    /// node (memory, where the migration is staged in memory) when nothing here reads them again: a
    /// container whose writes are tracked. Rounds that do not converge then hold about one round's
    /// memory at a time instead of every round's. A round given back cannot be sent again: a target
    /// that lost it ends the migration (rolled back).
    /// </summary>
    public bool ReleaseSentRounds { get; set; } = true;

    /// <summary>
    /// The longest chain of checkpoints (each a delta on the one before) this agent builds; the
    /// checkpoint after it is a full one. Longer chains save more space and make restores read through more sets.
    /// </summary>
    [Range(1, 32)]
    public int MaxCheckpointChain { get; set; } = 8;

    /// <summary>Minutes a migration's staged or received images may lie untouched before this agent removes them itself (the operator removes them as soon as a migration ends).</summary>
    public int StagingTtlMinutes { get; set; } = 360;

    /// <summary>This agent's certificate (PEM); with <see cref="TlsKeyFile"/> and <see cref="TlsAuthorityFile"/> it turns on mutual TLS.</summary>
    public string? TlsCertificateFile { get; set; }

    public string? TlsKeyFile { get; set; }

    /// <summary>The CA (PEM) every component's certificate chains to.</summary>
    public string? TlsAuthorityFile { get; set; }

    /// <summary>
    /// Read this agent's certificate, key, CA and token public key from this Secret (made by the
    /// operator; "{node}" stands for <see cref="NodeName"/>) instead of the files above.
    /// </summary>
    public string? CertificateSecret { get; set; }

    public string CertificateSecretNamespace { get; set; } = "podmig-system";

    /// <summary>Where credentials read from the Secret are written (a private directory, best on tmpfs).</summary>
    public string CredentialsDirectory { get; set; } = "/run/podmig-agent/credentials";

    /// <summary>The operator's public key (PEM) that signs transfer tokens.</summary>
    public string? TokenPublicKeyFile { get; set; }

    /// <summary>
    /// Where this agent copies the operator's public key at start, for the node's podmig-ipam to check
    /// the operator's signature on a pinned address (its pinKeyFile); a host path. Empty: not written.
    /// </summary>
    public string? PinKeyFile { get; set; } = "/var/lib/podmig/pin-key.pem";

    /// <summary>Incoming image streams served at once.</summary>
    [Range(1, 1024)]
    public int MaxIncomingStreams { get; set; } = 8;

    /// <summary>Largest migration (bytes) one stream may bring.</summary>
    [Range(1, long.MaxValue)]
    public long MaxStreamBytes { get; set; } = 64L << 30;

    /// <summary>Bytes of incoming images this node holds at most, all migrations together.</summary>
    [Range(1, long.MaxValue)]
    public long MaxIncomingBytes { get; set; } = 256L << 30;

    /// <summary>Free disk space an incoming transfer must leave on the incoming directory's file system.</summary>
    [Range(0, long.MaxValue)]
    public long MinFreeDiskBytes { get; set; } = 1L << 30;

    /// <summary>Largest chunk (uncompressed bytes) a stream may carry.</summary>
    [Range(4096, 4 << 20)]
    public int MaxChunkBytes { get; set; } = 1 << 20;

    /// <summary>
    /// Carry image bytes on the bulk lane (frames in one HTTP/1.1 body on the same mutual-TLS port)
    /// rather than as gRPC messages, when the peer offers it: about twice the throughput on 2 cores.
    /// Off: this agent neither asks for nor offers the lane.
    /// </summary>
    public bool BulkTransfer { get; set; } = true;

    /// <summary>
    /// On the bulk lane, send a 4 KiB page an upload already carried as a reference to it (the
    /// copy-on-write memory a forked process shares with its parent is dumped once per process), and
    /// take such references from peers. Off: neither asked for nor offered.
    /// </summary>
    public bool PageReferences { get; set; } = true;

    /// <summary>
    /// Hash a file not hashed before as its bytes are read to be sent, and give the target its
    /// SHA-256 at the end of the upload (<c>UploadHeader.digests_follow</c>), instead of reading every
    /// file once more before the first byte goes. Off: every digest is in the manifest (for a target
    /// agent older than this field, which refuses a manifest without them).
    /// </summary>
    public bool DigestsFollow { get; set; } = true;

    /// <summary>
    /// Send a one-container pod's pre-copy rounds while they are read (their files announced at
    /// their final sizes first): the first round, and each later one whose writes were tracked
    /// (a round compared with the one before is read in full, then sent). Off: every round is read
    /// in full, then sent. (The name is older than the later rounds' streaming.)
    /// </summary>
    public bool StreamFirstRound { get; set; } = true;

    /// <summary>
    /// CRIU writes its migration dumps' logs (<c>dump.log</c> beside the images) at debug level:
    /// every page pipe and every step of the mounts, for diagnosing a dump that fails in a way its
    /// errors do not explain. Off (the default), they hold CRIU's errors, warnings and steps, which
    /// is what a failed dump's message quotes. Debug lines grow with the memory (about 18,000 lines
    /// per GiB) and are written while the pod is frozen: about 25 ms per GiB measured here.
    /// </summary>
    public bool CriuDebugLogs { get; set; }

    /// <summary>
    /// Whether a migration's final dump carries the container's small tmpfs mounts (<c>/dev</c>, and
    /// <c>/sys/fs/cgroup</c> on cgroup v1) itself instead of CRIU's <c>tar --gzip</c> archives (on by
    /// default: four tar processes per container leave the downtime), when the operator asks for it
    /// (for a target whose restore runtime builds them). A kept checkpoint always leaves them to
    /// CRIU, so its images restore with any CRIU-based runtime.
    /// </summary>
    public bool CarryTmpfsMounts { get; set; } = true;

    /// <summary>
    /// Start the CRIU process of each container's final dump before the pod is frozen (a
    /// <c>criu swrk</c> spawned without forking the agent), so that the freeze does not include
    /// libcriu forking this process and CRIU's start (about 40 ms of the freeze here). Off: libcriu
    /// starts CRIU inside the call, as for every other CRIU call.
    /// </summary>
    public bool PrestartCriu { get; set; } = true;

    /// <summary>
    /// For a pod whose address moves with it: make its network lock ready before the freeze (each
    /// family checked, and its <c>iptables-restore</c> started inside the pod's namespace, waiting for
    /// the lock's transaction), so that when the pod's peers lose it the lock costs one commit per
    /// family, not two programs' starts each. Off: the lock runs its checks and tools when it is needed.
    /// </summary>
    public bool PrepareNetworkLock { get; set; } = true;

    /// <summary>
    /// Where <c>/run</c> is not a tmpfs (CRIU then keeps no cache of its kernel probes), write the
    /// cache CRIU makes on this kernel to <c>/run/criu.kdat</c> at start, so no CRIU run in a freeze
    /// probes the kernel again (<see cref="CriuKernelFacts"/>). Off: every CRIU run probes.
    /// </summary>
    public bool KeepCriuKernelFacts { get; set; } = true;

    /// <summary>
    /// The checksum this agent's uploads carry for each file: <c>Xxh128</c> (XXH3's 128-bit hash,
    /// the default; about a tenth of SHA-256's CPU) or <c>Sha256</c> (for a target agent older than
    /// <c>UploadHeader.xxh128</c>). Mutual TLS authenticates every byte on the wire; the checksum
    /// catches a file changed on a disk or a fault in resuming, which needs no cryptographic hash.
    /// </summary>
    public Migrate.Api.StagedDigestKind TransferChecksum { get; set; } = Migrate.Api.StagedDigestKind.Xxh128;

    /// <summary>
    /// Fault injection, for tests only: flip one bit of every piece of post-copy pages this agent
    /// serves, after its checksum was taken, as a fault between reading the pages and the wire
    /// would. The target's agent must refuse every such piece, and the migration roll back. Never
    /// set it on a node that moves real workloads.
    /// </summary>
    public bool CorruptServedPagesForTesting { get; set; }

    /// <summary>Bytes per second this agent sends images at most (0: as fast as it can), to leave the node's network to its pods during a drain.</summary>
    [Range(0, long.MaxValue)]
    public long TransferBytesPerSecond { get; set; }

    /// <summary>
    /// Write this agent's endpoint into its Node's annotation podmigration.io/agent-endpoint (how the
    /// operator finds agents); on in a cluster (the DaemonSet), off where something else registers
    /// nodes (the sandbox's emulated kubelet).
    /// </summary>
    public bool AnnounceToNode { get; set; }

    /// <summary>The address (host:port) others reach this agent at; the DaemonSet sets it to the node's IP and the port.</summary>
    public string? AdvertiseAddress { get; set; }

    /// <summary>A kubeconfig for announcing and reading <see cref="CertificateSecret"/>; unset means the in-cluster service account.</summary>
    public string? Kubeconfig { get; set; }

    public bool TlsEnabled => TlsCertificateFile is not null && TlsKeyFile is not null && TlsAuthorityFile is not null;
}

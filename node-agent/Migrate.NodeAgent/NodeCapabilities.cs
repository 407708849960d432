using System.Reflection;
using System.Runtime.InteropServices;
using Migrate.Agent.V1;
using Migrate.Criu;
using Migrate.NodeAgent.Checkpointing;
using Microsoft.Extensions.Options;

namespace Migrate.NodeAgent;

/// <summary>
/// What this node offers for migrations. CRIU's facts come from the CRIU binary the agent drives;
/// kernel and CPU facts from /proc. Collected once (they do not change while the agent runs).
/// </summary>
public sealed class NodeCapabilities
{
    private readonly CriuClient _criu;
    private readonly AgentOptions _options;
    private readonly Lazy<GetCapabilitiesResponse> _collected;
    private readonly CriCheckpointer? _cri;
    private CriCheckpointInfo? _criPath;

    public NodeCapabilities(CriuClient criu, IOptions<AgentOptions> options, CriCheckpointer? cri = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _criu = criu;
        _cri = cri;
        _options = options.Value;
        _collected = new Lazy<GetCapabilitiesResponse>(Collect, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public GetCapabilitiesResponse Current => _collected.Value;

    /// <summary>
    /// <see cref="Current"/> with the node's CRI path, asked of the runtime until it has answered
    /// once (a runtime that does not answer yet is reported as such, and asked again next time).
    /// </summary>
    public async Task<GetCapabilitiesResponse> CurrentWithRuntimeAsync(CancellationToken cancellationToken)
    {
        var response = Current.Clone();
        if (_cri is null)
        {
            response.CriCheckpoint = new CriCheckpointInfo { Reason = "this agent offers no CRI path" };
            return response;
        }

        if (_criPath is null)
        {
            try
            {
                _criPath = await _cri.SupportAsync(cancellationToken);
            }
            catch (Grpc.Core.RpcException e)
            {
                response.CriCheckpoint = new CriCheckpointInfo { Registry = _options.CheckpointRegistry ?? "", Reason = $"the container runtime did not answer: {e.Status.Detail}" };
                return response;
            }
        }

        response.CriCheckpoint = _criPath;
        return response;
    }

    private GetCapabilitiesResponse Collect() => new()
    {
        NodeName = _options.NodeName,
        AgentVersion = typeof(NodeCapabilities).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown",
        Criu = CollectCriu(),
        Kernel = new KernelInfo
        {
            Release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim(),
            Machine = RuntimeInformation.OSArchitecture switch
            {
                Architecture.X64 => "x86_64",
                Architecture.Arm64 => "aarch64",
                var other => other.ToString().ToLowerInvariant(),
            },
        },
        Cpu = ReadCpu("/proc/cpuinfo"),
        Network = PodNetworkFacts.Read(_options.CniConfigDirectory),
        // podmig-runc of this release builds them (CarriedMountsOnNode)
        RestoresCarriedMounts = true,
    };

    private CriuCapabilities CollectCriu()
    {
        var result = new CriuCapabilities { Version = _criu.GetVersion().ToString() };
        try
        {
            _criu.Check();
            result.CheckPassed = true;
        }
        catch (CriuException e)
        {
            result.CheckPassed = false;
            result.CheckMessage = e.Message;
        }

        var features = _criu.CheckFeatures();
        result.MemoryTracking = features.MemoryTracking;
        result.LazyPages = features.LazyPages;
        result.PidfdStore = features.PidfdStore;
        result.PreCopyMethod = features.MemoryTracking ? PreCopyMethod.KernelTracking : PreCopyMethod.ContentComparison;
        return result;
    }

    /// <summary>Vendor, model and flags of the first processor listed in a cpuinfo file.</summary>
    internal static CpuInfo ReadCpu(string path)
    {
        var cpu = new CpuInfo();
        foreach (var line in File.ReadLines(path))
        {
            if (line.Length == 0)
            {
                break; // end of the first processor's block
            }

            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon < 0)
            {
                continue;
            }

            var key = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            switch (key)
            {
                case "vendor_id":
                    cpu.Vendor = value;
                    break;
                case "model name":
                    cpu.ModelName = value;
                    break;
                case "flags":
                    cpu.Flags.AddRange(value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal));
                    break;
            }
        }

        return cpu;
    }
}

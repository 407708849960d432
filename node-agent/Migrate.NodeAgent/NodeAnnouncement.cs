using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Options;

namespace Migrate.NodeAgent;

/// <summary>
/// Keeps this agent's endpoint in its Node's podmigration.io/agent-endpoint annotation (a merge patch
/// of that one annotation; the agent's ServiceAccount may patch nodes and nothing more): at start,
/// retried until it works, then checked every minute so that a node re-registered without it gets
/// it back.
/// </summary>
public sealed partial class NodeAnnouncement(IOptions<AgentOptions> options, ILogger<NodeAnnouncement> logger, TimeProvider time) : BackgroundService
{

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var settings = options.Value;
        var address = settings.AdvertiseAddress is { Length: > 0 } advertised ? advertised : settings.ListenAddress;
        using var client = new Kubernetes(settings.Kubeconfig is { Length: > 0 } path
            ? KubernetesClientConfiguration.BuildConfigFromConfigFile(path)
            : KubernetesClientConfiguration.InClusterConfig());
        while (!stoppingToken.IsCancellationRequested)
        {
            var wait = TimeSpan.FromMinutes(1);
            try
            {
                var node = await client.CoreV1.ReadNodeAsync(settings.NodeName, cancellationToken: stoppingToken);
                if (node.Metadata.Annotations?.TryGetValue(Annotations.AgentEndpoint, out var current) != true || current != address)
                {
                    var patch = new JsonObject { ["metadata"] = new JsonObject { ["annotations"] = new JsonObject { [Annotations.AgentEndpoint] = address } } };
                    await client.CoreV1.PatchNodeAsync(new V1Patch(patch.ToJsonString(), V1Patch.PatchType.MergePatch), settings.NodeName, cancellationToken: stoppingToken);
                    LogAnnounced(settings.NodeName, address);
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException)
            {
                LogFailed(settings.NodeName, e.Message);
                wait = TimeSpan.FromSeconds(5);
            }

            try
            {
                await Task.Delay(wait, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "announced this agent on node {Node} as {Address}")]
    private partial void LogAnnounced(string node, string address);

    [LoggerMessage(Level = LogLevel.Warning, Message = "could not announce this agent on node {Node} ({Message}); trying again in 5 s")]
    private partial void LogFailed(string node, string message);
}

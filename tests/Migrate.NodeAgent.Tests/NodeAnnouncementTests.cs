using k8s;
using k8s.Models;
using Migrate.NodeAgent;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>In a cluster the agent itself writes the endpoint the operator finds it by into its Node.</summary>
public sealed class NodeAnnouncementTests(EmulatorFixture cluster) : IClassFixture<EmulatorFixture>
{
    [Fact]
    public async Task The_agent_writes_its_advertised_endpoint_into_its_nodes_annotation_and_touches_nothing_else()
    {
        await cluster.Client.CoreV1.CreateNodeAsync(new V1Node
        {
            Metadata = new V1ObjectMeta { Name = "node-x", Labels = new Dictionary<string, string> { ["pool"] = "a" }, Annotations = new Dictionary<string, string> { ["owner"] = "ops" } },
        });
        var root = Directory.CreateTempSubdirectory("agent-announce-").FullName;
        var host = AgentHost.Build([
            $"--Agent:ListenAddress=127.0.0.1:{Ports.Free()}",
            "--Agent:NodeName=node-x",
            $"--Agent:CriSocket={Path.Combine(root, "no-cri.sock")}",
            $"--Agent:StagingDirectory={Path.Combine(root, "staging")}",
            $"--Agent:IncomingDirectory={Path.Combine(root, "incoming")}",
            "--Agent:PinKeyFile=",
            "--Agent:AnnounceToNode=true",
            "--Agent:AdvertiseAddress=10.1.2.3:7070",
            $"--Agent:Kubeconfig={cluster.Emulator.KubeconfigPath}",
            "--Logging:LogLevel:Default=Warning",
        ]);
        await host.StartAsync();
        try
        {
            V1Node node = null!;
            for (int i = 0; i < 100; i++)
            {
                node = await cluster.Client.CoreV1.ReadNodeAsync("node-x");
                if (node.Metadata.Annotations.ContainsKey(Annotations.AgentEndpoint))
                {
                    break;
                }

                await Task.Delay(100);
            }

            Assert.Equal("10.1.2.3:7070", node.Metadata.Annotations[Annotations.AgentEndpoint]);
            Assert.Equal("ops", node.Metadata.Annotations["owner"]);
            Assert.Equal("a", node.Metadata.Labels["pool"]);
        }
        finally
        {
            await host.StopAsync();
            await host.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }
    }
}

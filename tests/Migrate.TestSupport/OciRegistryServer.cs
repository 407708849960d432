using System.Globalization;

namespace Migrate.TestSupport;

/// <summary>
/// A real OCI registry (bookworm's docker-registry, the CNCF distribution registry, which
/// hack/install-prereqs.sh unpacks into its own prefix) on a free loopback port, storing under a
/// directory of its own, with manifest deletion on. containerd treats a loopback registry with a
/// port as plain HTTP, so nodes pull from it without configuration. Stopped by PID; its directory removed.
/// </summary>
public sealed class OciRegistryServer : IAsyncDisposable
{
    private readonly ChildProcess _process;

    private OciRegistryServer(ChildProcess process, string directory, string host)
    {
        _process = process;
        Directory = directory;
        Host = host;
    }

    /// <summary>host:port, as image references name it.</summary>
    public string Host { get; }

    /// <summary>Its configuration, storage and log.</summary>
    public string Directory { get; }

    public int Pid => _process.Pid;

    public static string Program
    {
        get
        {
            var path = Path.Combine(Prerequisites.InstallPrefix("registry", "usr", "bin"), "docker-registry");
            return File.Exists(path) ? path : throw new InvalidOperationException($"docker-registry is not installed ({path} is missing); run 'sudo hack/install-prereqs.sh'");
        }
    }

    public static async Task<OciRegistryServer> StartAsync()
    {
        var program = Program;
        var directory = System.IO.Directory.CreateTempSubdirectory("podmig-registry-").FullName;
        try
        {
            int port = Ports.Free();
            var host = "127.0.0.1:" + port.ToString(CultureInfo.InvariantCulture);
            var config = Path.Combine(directory, "config.yml");
            File.WriteAllText(config, $"""
                version: 0.1
                log:
                  level: warn
                storage:
                  filesystem:
                    rootdirectory: {Path.Combine(directory, "data")}
                  delete:
                    enabled: true
                http:
                  addr: {host}
                """);
            var process = ChildProcess.Start("registry", program, ["serve", config], Path.Combine(directory, "registry.log"));
            var server = new OciRegistryServer(process, directory, host);
            try
            {
                using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
                await process.WaitUntilAsync(async () =>
                {
                    try
                    {
                        return (await http.GetAsync(new Uri($"http://{host}/v2/"))).IsSuccessStatusCode;
                    }
                    catch (HttpRequestException)
                    {
                        return false;
                    }
                }, TimeSpan.FromSeconds(30), "the registry to answer");
                return server;
            }
            catch
            {
                await server.DisposeAsync();
                throw;
            }
        }
        catch
        {
            if (System.IO.Directory.Exists(directory))
            {
                System.IO.Directory.Delete(directory, recursive: true);
            }

            throw;
        }
    }

    /// <summary>
    /// Pushes an image a node holds (under <paramref name="localName"/>) to this registry as
    /// <paramref name="name"/> (host/...), with the node's own ctr. The node keeps no record of that
    /// name: a pod asking for it has it pulled, as from any registry (and known by its digest).
    /// </summary>
    public static void Push(ContainerdNode node, string localName, string name)
    {
        ArgumentNullException.ThrowIfNull(node);
        Prerequisites.Run(node.Release.Ctr, "--address", node.SocketPath, "--namespace", "k8s.io", "images", "tag", "--force", localName, name);
        Prerequisites.Run(node.Release.Ctr, "--address", node.SocketPath, "--namespace", "k8s.io", "images", "push", "--plain-http", name);
        Prerequisites.Run(node.Release.Ctr, "--address", node.SocketPath, "--namespace", "k8s.io", "images", "rm", name);
    }

    public async ValueTask DisposeAsync()
    {
        await _process.StopAsync(TimeSpan.FromSeconds(10));
        await _process.DisposeAsync();
        if (System.IO.Directory.Exists(Directory))
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
    }
}

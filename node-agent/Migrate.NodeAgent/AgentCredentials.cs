using k8s;
using k8s.Autorest;

namespace Migrate.NodeAgent;

/// <summary>
/// The agent's credentials from its node's Secret, made by the operator (Operator:ManageAgentCertificates):
/// tls.crt, tls.key, ca.crt and token.pub, written as files (mode 0600) into a private directory
/// and handed to the agent as Agent:TlsCertificateFile, TlsKeyFile, TlsAuthorityFile and
/// TokenPublicKeyFile. Read once at start, waiting until the operator has made the Secret; the
/// agent's ServiceAccount may get Secrets in the operator's namespace and nothing else there.
/// </summary>
public static class AgentCredentials
{
    private static readonly string[] Keys = ["tls.crt", "tls.key", "ca.crt", "token.pub"];

    public static IReadOnlyDictionary<string, string?> Fetch(IConfigurationSection section, TextWriter log, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(section);
        ArgumentNullException.ThrowIfNull(log);
        var node = section[nameof(AgentOptions.NodeName)] ?? new AgentOptions().NodeName;
        var name = (section[nameof(AgentOptions.CertificateSecret)] ?? "").Replace("{node}", node, StringComparison.Ordinal);
        var ns = section[nameof(AgentOptions.CertificateSecretNamespace)] ?? new AgentOptions().CertificateSecretNamespace;
        var directory = section[nameof(AgentOptions.CredentialsDirectory)] ?? new AgentOptions().CredentialsDirectory;
        var kubeconfig = section[nameof(AgentOptions.Kubeconfig)];
        using var client = new Kubernetes(kubeconfig is { Length: > 0 }
            ? KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig)
            : KubernetesClientConfiguration.InClusterConfig());
        IDictionary<string, byte[]>? data = null;
        while (data is null)
        {
            try
            {
                data = client.CoreV1.ReadNamespacedSecretAsync(name, ns, cancellationToken: cancellationToken).GetAwaiter().GetResult().Data;
                if (data is null || !Keys.All(data.ContainsKey))
                {
                    throw new InvalidDataException($"Secret {ns}/{name} lacks one of tls.crt, tls.key, ca.crt, token.pub");
                }
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or InvalidDataException)
            {
                data = null;
                log.WriteLine($"waiting for this node's credentials in Secret {ns}/{name}: {e.Message}");
                Task.Delay(TimeSpan.FromSeconds(3), cancellationToken).GetAwaiter().GetResult();
            }
        }

        Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        string Write(string key)
        {
            var path = Path.Combine(directory, key);
            File.Delete(path);
            using (var file = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                file.Write(data[key]);
            }

            return path;
        }

        log.WriteLine($"loaded this node's credentials from Secret {ns}/{name}");
        return new Dictionary<string, string?>
        {
            [$"{AgentOptions.Section}:{nameof(AgentOptions.TlsCertificateFile)}"] = Write("tls.crt"),
            [$"{AgentOptions.Section}:{nameof(AgentOptions.TlsKeyFile)}"] = Write("tls.key"),
            [$"{AgentOptions.Section}:{nameof(AgentOptions.TlsAuthorityFile)}"] = Write("ca.crt"),
            [$"{AgentOptions.Section}:{nameof(AgentOptions.TokenPublicKeyFile)}"] = Write("token.pub"),
        };
    }
}

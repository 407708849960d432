using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>Bearer tokens, service-account tokens, and RBAC with the real server's answers.</summary>
public sealed class AuthTests(RbacEmulatorFixture fx) : IClassFixture<RbacEmulatorFixture>
{
    private HttpClient RawClient(string? token)
    {
        var ca = X509Certificate2.CreateFromPem(fx.Emulator.CaCertificatePem);
        var handler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    if ((errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != 0 || certificate is null)
                    {
                        return false;
                    }

                    using var chain = new X509Chain();
                    chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                    chain.ChainPolicy.CustomTrustStore.Add(ca);
                    chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                    return chain.Build(new X509Certificate2(certificate));
                },
            },
        };
        var client = new HttpClient(handler) { BaseAddress = new Uri(fx.Emulator.Url) };
        if (token is not null)
        {
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        return client;
    }

    /// <summary>A service account with a token, and a kubeconfig using it.</summary>
    private async Task<(string Token, string Kubeconfig)> ServiceAccountAsync(string ns, string name)
    {
        await fx.Client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = ns } });
        await fx.Client.CoreV1.CreateNamespacedServiceAccountAsync(new V1ServiceAccount { Metadata = new V1ObjectMeta { Name = name } }, ns);
        var token = (await fx.Client.CoreV1.CreateNamespacedServiceAccountTokenAsync(
            new Authenticationv1TokenRequest { Spec = new V1TokenRequestSpec { ExpirationSeconds = 3600 } }, name, ns)).Status.Token;
        var kubeconfig = Path.Combine(Path.GetTempPath(), $"{ns}-{name}-{Guid.NewGuid():N}.kubeconfig");
        fx.Emulator.WriteKubeconfig(kubeconfig, token, name, ns);
        return (token, kubeconfig);
    }

    [Fact]
    public async Task A_request_without_a_token_gets_401_and_a_bad_token_too()
    {
        using var anonymous = RawClient(null);
        using var wrong = RawClient("not-a-token");

        var noToken = await anonymous.GetAsync(new Uri("/api/v1/namespaces", UriKind.Relative));
        var badToken = await wrong.GetAsync(new Uri("/api/v1/namespaces", UriKind.Relative));
        var probe = await anonymous.GetAsync(new Uri("/readyz", UriKind.Relative));

        Assert.Equal(HttpStatusCode.Unauthorized, noToken.StatusCode);
        Assert.Contains("\"reason\":\"Unauthorized\"", await noToken.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.Unauthorized, badToken.StatusCode);
        Assert.Equal(HttpStatusCode.OK, probe.StatusCode);
    }

    [Fact]
    public async Task With_RBAC_a_service_account_is_forbidden_until_a_role_grants_it()
    {
        var (_, kubeconfig) = await ServiceAccountAsync("rbac-a", "operator");
        try
        {
            var denied = (await fx.RunKubectlAsync(null, kubeconfig, "get", "pods", "-n", "rbac-a")).Failed();
            var canBefore = await fx.RunKubectlAsync(null, kubeconfig, "auth", "can-i", "list", "pods", "-n", "rbac-a");

            (await fx.KubectlInAsync("""
                apiVersion: rbac.authorization.k8s.io/v1
                kind: Role
                metadata: {name: pod-reader, namespace: rbac-a}
                rules:
                - apiGroups: [""]
                  resources: [pods]
                  verbs: [get, list, watch]
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: RoleBinding
                metadata: {name: operator-reads-pods, namespace: rbac-a}
                subjects:
                - {kind: ServiceAccount, name: operator, namespace: rbac-a}
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
                """, "apply", "-f", "-")).Succeeded();

            var allowed = await fx.RunKubectlAsync(null, kubeconfig, "get", "pods", "-n", "rbac-a");
            (await fx.KubectlAsync("run", "p", "-n", "rbac-a", "--image=busybox", "--restart=Never")).Succeeded();
            var stillDenied = (await fx.RunKubectlAsync(null, kubeconfig, "delete", "pod", "p", "-n", "rbac-a")).Failed();
            var otherNamespace = (await fx.RunKubectlAsync(null, kubeconfig, "get", "pods", "-n", "default")).Failed();
            var canAfter = await fx.RunKubectlAsync(null, kubeconfig, "auth", "can-i", "list", "pods", "-n", "rbac-a");

            Assert.Contains("pods is forbidden: User \"system:serviceaccount:rbac-a:operator\" cannot list resource \"pods\" in API group \"\" in the namespace \"rbac-a\"", denied, StringComparison.Ordinal);
            Assert.Equal("no", canBefore.Output.Trim());
            Assert.Equal(0, allowed.ExitCode);
            Assert.Contains("pods \"p\" is forbidden: User \"system:serviceaccount:rbac-a:operator\" cannot delete resource \"pods\"", stillDenied, StringComparison.Ordinal);
            Assert.Contains("in the namespace \"default\"", otherNamespace, StringComparison.Ordinal);
            Assert.Equal("yes", canAfter.Output.Trim());
        }
        finally
        {
            File.Delete(kubeconfig);
        }
    }

    [Fact]
    public async Task A_cluster_role_binding_grants_everywhere_and_subresources_are_separate()
    {
        var (_, kubeconfig) = await ServiceAccountAsync("rbac-b", "agent");
        try
        {
            (await fx.KubectlInAsync("""
                apiVersion: rbac.authorization.k8s.io/v1
                kind: ClusterRole
                metadata: {name: node-status-writer}
                rules:
                - apiGroups: [""]
                  resources: [nodes]
                  verbs: [get, create]
                - apiGroups: [""]
                  resources: [nodes/status]
                  verbs: [get, patch]
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: ClusterRoleBinding
                metadata: {name: agent-nodes}
                subjects:
                - {kind: ServiceAccount, name: agent, namespace: rbac-b}
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-status-writer}
                """, "apply", "-f", "-")).Succeeded();

            (await fx.RunKubectlAsync("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n", kubeconfig, "create", "-f", "-")).Succeeded();
            var status = await fx.RunKubectlAsync(null, kubeconfig, "patch", "node", "n1", "--subresource=status", "--type=merge", "-p", "{\"status\":{\"phase\":\"Running\"}}");
            var spec = (await fx.RunKubectlAsync(null, kubeconfig, "patch", "node", "n1", "--type=merge", "-p", "{\"spec\":{\"unschedulable\":true}}")).Failed();

            Assert.Equal(0, status.ExitCode);
            Assert.Contains("nodes \"n1\" is forbidden: User \"system:serviceaccount:rbac-b:agent\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope", spec, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(kubeconfig);
        }
    }

    [Fact]
    public async Task A_service_account_token_stops_working_when_the_account_is_deleted()
    {
        var (token, kubeconfig) = await ServiceAccountAsync("rbac-c", "short-lived");
        File.Delete(kubeconfig);
        using var client = RawClient(token);

        var before = await client.GetAsync(new Uri("/api", UriKind.Relative));
        await fx.Client.CoreV1.DeleteNamespacedServiceAccountAsync("short-lived", "rbac-c");
        var after = await client.GetAsync(new Uri("/api", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, before.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, after.StatusCode);
    }

    [Fact]
    public async Task The_client_library_sees_403_as_an_error_with_the_status()
    {
        var (_, kubeconfig) = await ServiceAccountAsync("rbac-d", "nobody");
        try
        {
            using var client = EmulatorFixture.ClientFor(kubeconfig);

            var error = await Assert.ThrowsAsync<HttpOperationException>(() => client.CoreV1.ListNamespacedSecretAsync("rbac-d"));

            Assert.Equal(HttpStatusCode.Forbidden, error.Response.StatusCode);
            Assert.Contains("secrets is forbidden", error.Response.Content, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(kubeconfig);
        }
    }
}

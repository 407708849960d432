using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>Pods' binding, graceful deletion, eviction with budgets, logs from the node, and admission webhooks.</summary>
public sealed class PodSubresourceTests(EmulatorFixture fx) : IClassFixture<EmulatorFixture>
{
    private static string StatusMessage(HttpOperationException e) =>
        JsonNode.Parse(e.Response.Content)!["message"]!.GetValue<string>();

    private async Task<string> NamespaceAsync(string name, Dictionary<string, string>? labels = null)
    {
        await fx.Client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = name, Labels = labels } });
        return name;
    }

    private static V1Pod Pod(string name, params string[] containers) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["app"] = "web" } },
        Spec = new V1PodSpec { Containers = containers.Select(c => new V1Container { Name = c, Image = "busybox:1" }).ToList() },
    };

    /// <summary>What the scheduler and kubelet would do: bind the pod and report it running and ready.</summary>
    private async Task RunOnNodeAsync(string ns, string pod, string node)
    {
        await fx.Client.CoreV1.CreateNamespacedPodBindingAsync(
            new V1Binding { Metadata = new V1ObjectMeta { Name = pod }, Target = new V1ObjectReference { Kind = "Node", Name = node } }, pod, ns);
        var status = new JsonObject
        {
            ["status"] = new JsonObject
            {
                ["phase"] = "Running",
                ["conditions"] = new JsonArray(new JsonObject { ["type"] = "Ready", ["status"] = "True" }),
            },
        };
        await fx.Client.CoreV1.PatchNamespacedPodStatusAsync(new V1Patch(status.ToJsonString(), V1Patch.PatchType.MergePatch), pod, ns);
    }

    [Fact]
    public async Task Binding_assigns_a_node_once_and_deleting_a_bound_pod_waits_for_the_kubelet()
    {
        var ns = await NamespaceAsync("bind");
        await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod("bound", "c"), ns);
        await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod("unbound", "c"), ns);
        await RunOnNodeAsync(ns, "bound", "node-a");

        var again = await Assert.ThrowsAsync<HttpOperationException>(() => fx.Client.CoreV1.CreateNamespacedPodBindingAsync(
            new V1Binding { Metadata = new V1ObjectMeta { Name = "bound" }, Target = new V1ObjectReference { Kind = "Node", Name = "node-b" } }, "bound", ns));
        await fx.Client.CoreV1.DeleteNamespacedPodAsync("unbound", ns);
        await fx.Client.CoreV1.DeleteNamespacedPodAsync("bound", ns);
        var terminating = await fx.Client.CoreV1.ReadNamespacedPodAsync("bound", ns);
        var table = (await fx.KubectlAsync("get", "pod", "bound", "-n", ns)).Succeeded().Output;
        await fx.Client.CoreV1.DeleteNamespacedPodAsync("bound", ns, new V1DeleteOptions { GracePeriodSeconds = 0, Preconditions = new V1Preconditions { Uid = terminating.Metadata.Uid } });

        Assert.Equal(HttpStatusCode.Conflict, again.Response.StatusCode);
        Assert.Contains("already assigned to node \"node-a\"", StatusMessage(again), StringComparison.Ordinal);
        Assert.Equal("node-a", terminating.Spec.NodeName);
        Assert.NotNull(terminating.Metadata.DeletionTimestamp);
        Assert.Equal(30, terminating.Metadata.DeletionGracePeriodSeconds);
        Assert.Contains("Terminating", table, StringComparison.Ordinal);
        var pods = await fx.Client.CoreV1.ListNamespacedPodAsync(ns);
        Assert.Empty(pods.Items); // unbound: gone at once; bound: gone once "the kubelet" deleted it with grace 0
    }

    [Fact]
    public async Task Eviction_honours_the_pod_disruption_budget()
    {
        var ns = await NamespaceAsync("evict");
        foreach (var name in new[] { "web-1", "web-2" })
        {
            await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod(name, "c"), ns);
            await RunOnNodeAsync(ns, name, "node-a");
        }

        await fx.Client.PolicyV1.CreateNamespacedPodDisruptionBudgetAsync(new V1PodDisruptionBudget
        {
            Metadata = new V1ObjectMeta { Name = "web" },
            Spec = new V1PodDisruptionBudgetSpec
            {
                MinAvailable = 2,
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "web" } },
            },
        }, ns);
        var eviction = new V1Eviction { Metadata = new V1ObjectMeta { Name = "web-1", NamespaceProperty = ns } };

        var refused = await Assert.ThrowsAsync<HttpOperationException>(() => fx.Client.CoreV1.CreateNamespacedPodEvictionAsync(eviction, "web-1", ns));
        await fx.Client.PolicyV1.PatchNamespacedPodDisruptionBudgetAsync(new V1Patch("{\"spec\":{\"minAvailable\":1}}", V1Patch.PatchType.MergePatch), "web", ns);
        await fx.Client.CoreV1.CreateNamespacedPodEvictionAsync(eviction, "web-1", ns);
        var evicted = await fx.Client.CoreV1.ReadNamespacedPodAsync("web-1", ns);
        var second = await Assert.ThrowsAsync<HttpOperationException>(() =>
            fx.Client.CoreV1.CreateNamespacedPodEvictionAsync(new V1Eviction { Metadata = new V1ObjectMeta { Name = "web-2", NamespaceProperty = ns } }, "web-2", ns));

        Assert.Equal((HttpStatusCode)429, refused.Response.StatusCode);
        Assert.Equal("Cannot evict pod as it would violate the pod's disruption budget.", StatusMessage(refused));
        Assert.Contains("The disruption budget web needs 2 healthy pods and has 2 currently", refused.Response.Content, StringComparison.Ordinal);
        Assert.NotNull(evicted.Metadata.DeletionTimestamp); // graceful: its kubelet finishes it
        Assert.Equal((HttpStatusCode)429, second.Response.StatusCode); // web-1 is terminating: web-2 is the last healthy one
    }

    [Fact]
    public async Task Logs_come_from_the_kubelet_of_the_pods_node()
    {
        var ns = await NamespaceAsync("logs");
        await using var kubelet = await FakeKubeletAsync();
        await fx.Client.CoreV1.CreateNodeAsync(new V1Node { Metadata = new V1ObjectMeta { Name = "node-logs" } });
        var nodeStatus = new JsonObject
        {
            ["status"] = new JsonObject
            {
                ["addresses"] = new JsonArray(new JsonObject { ["type"] = "InternalIP", ["address"] = "127.0.0.1" }),
                ["daemonEndpoints"] = new JsonObject { ["kubeletEndpoint"] = new JsonObject { ["Port"] = kubelet.Port } },
            },
        };
        await fx.Client.CoreV1.PatchNodeStatusAsync(new V1Patch(nodeStatus.ToJsonString(), V1Patch.PatchType.MergePatch), "node-logs");
        await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod("one", "main"), ns);
        await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod("two", "a", "b"), ns);
        await RunOnNodeAsync(ns, "one", "node-logs");
        await RunOnNodeAsync(ns, "two", "node-logs");

        var one = (await fx.KubectlAsync("logs", "one", "-n", ns, "--tail=2")).Succeeded().Output;
        var b = (await fx.KubectlAsync("logs", "two", "-n", ns, "-c", "b")).Succeeded().Output;
        var ambiguous = (await fx.KubectlAsync("get", "--raw", $"/api/v1/namespaces/{ns}/pods/two/log")).Failed();
        var unknown = (await fx.KubectlAsync("logs", "two", "-n", ns, "-c", "c")).Failed();

        Assert.Equal($"line from {ns}/one/main tailLines=2\n", one);
        Assert.Equal($"line from {ns}/two/b tailLines=\n", b);
        Assert.Contains("a container name must be specified for pod two, choose one of: [a b]", ambiguous, StringComparison.Ordinal);
        Assert.Contains("container c is not valid for pod two", unknown, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_validating_webhook_can_refuse_an_eviction_with_429_and_its_own_message()
    {
        var ns = await NamespaceAsync("hooked", new Dictionary<string, string> { ["migrate"] = "yes" });
        var plain = await NamespaceAsync("unhooked");
        var reviews = new List<JsonObject>();
        await using var webhook = await WebhookAsync(review =>
        {
            lock (reviews)
            {
                reviews.Add(review);
            }

            return (false, 429, "a migration of this pod is under way; retry later");
        });
        (await fx.KubectlInAsync(WebhookConfiguration("eviction-guard", webhook.Url, "Fail", """
            - operations: [CREATE]
              apiGroups: [""]
              apiVersions: [v1]
              resources: [pods/eviction]
            """, "{matchLabels: {migrate: \"yes\"}}"), "apply", "-f", "-")).Succeeded();
        foreach (var n in new[] { ns, plain })
        {
            await fx.Client.CoreV1.CreateNamespacedPodAsync(Pod("p", "c"), n);
        }

        var refused = await Assert.ThrowsAsync<HttpOperationException>(() =>
            fx.Client.CoreV1.CreateNamespacedPodEvictionAsync(new V1Eviction { Metadata = new V1ObjectMeta { Name = "p", NamespaceProperty = ns } }, "p", ns));
        await fx.Client.CoreV1.CreateNamespacedPodEvictionAsync(new V1Eviction { Metadata = new V1ObjectMeta { Name = "p", NamespaceProperty = plain } }, "p", plain);

        Assert.Equal((HttpStatusCode)429, refused.Response.StatusCode);
        Assert.Equal("admission webhook \"eviction-guard.example.io\" denied the request: a migration of this pod is under way; retry later", StatusMessage(refused));
        var review = Assert.Single(reviews);
        Assert.Equal("eviction", review["request"]!["subResource"]!.GetValue<string>());
        Assert.Equal("Eviction", review["request"]!["kind"]!["kind"]!.GetValue<string>());
        Assert.Equal("p", review["request"]!["name"]!.GetValue<string>());
        Assert.NotNull(await fx.Client.CoreV1.ReadNamespacedPodAsync("p", ns)); // refused: still there
        Assert.Empty((await fx.Client.CoreV1.ListNamespacedPodAsync(plain)).Items); // not selected: evicted
    }

    [Fact]
    public async Task Webhook_failure_policy_decides_whether_an_unreachable_webhook_blocks()
    {
        await fx.ApplyWidgetCrdAsync();
        var ns = await NamespaceAsync("hook-down");
        int deadPort;
        await using (var gone = await WebhookAsync(_ => (true, 200, "")))
        {
            deadPort = gone.Port;
        }

        var rule = """
            - operations: [CREATE]
              apiGroups: [example.io]
              apiVersions: [v1]
              resources: [widgets]
            """;
        (await fx.KubectlInAsync(WebhookConfiguration("ignore-when-down", $"https://127.0.0.1:{deadPort}/", "Ignore", rule), "apply", "-f", "-")).Succeeded();
        var allowed = await fx.KubectlInAsync("apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: a}\nspec: {size: 1}\n", "create", "-n", ns, "-f", "-");
        (await fx.KubectlInAsync(WebhookConfiguration("fail-when-down", $"https://127.0.0.1:{deadPort}/", "Fail", rule), "apply", "-f", "-")).Succeeded();
        var blocked = (await fx.KubectlInAsync("apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: b}\nspec: {size: 1}\n", "create", "-n", ns, "-f", "-")).Failed();
        (await fx.KubectlAsync("delete", "validatingwebhookconfiguration", "ignore-when-down", "fail-when-down")).Succeeded();

        Assert.Equal(0, allowed.ExitCode);
        Assert.Contains("failed calling webhook \"fail-when-down.example.io\"", blocked, StringComparison.Ordinal);
    }

    private string WebhookConfiguration(string name, string url, string failurePolicy, string rules, string? namespaceSelector = null)
    {
        var ca = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(fx.Emulator.CaCertificatePem));
        var indentedRules = string.Join('\n', rules.Split('\n').Select(l => "    " + l));
        var selector = namespaceSelector is null ? "" : $"namespaceSelector: {namespaceSelector}";
        return $$"""
            apiVersion: admissionregistration.k8s.io/v1
            kind: ValidatingWebhookConfiguration
            metadata: {name: {{name}}}
            webhooks:
            - name: {{name}}.example.io
              clientConfig: {url: "{{url}}", caBundle: {{ca}}}
              failurePolicy: {{failurePolicy}}
              sideEffects: None
              admissionReviewVersions: [v1]
              timeoutSeconds: 3
              {{selector}}
              rules:
            {{indentedRules}}
            """;
    }

    private sealed class TestServer(WebApplication app, int port) : IAsyncDisposable
    {
        public int Port { get; } = port;

        public string Url => $"https://127.0.0.1:{Port}/validate";

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    private async Task<TestServer> StartHttpsAsync(RequestDelegate handler)
    {
        var certificate = fx.Emulator.CertificateAuthority.IssueServer("test-peer", ["localhost"], [IPAddress.Loopback]);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l =>
        {
            l.Protocols = HttpProtocols.Http1AndHttp2;
            l.UseHttps(certificate);
        }));
        var app = builder.Build();
        app.Run(handler);
        await app.StartAsync();
        return new TestServer(app, new Uri(app.Urls.First()).Port);
    }

    private Task<TestServer> FakeKubeletAsync() => StartHttpsAsync(async http =>
    {
        // /containerLogs/{namespace}/{pod}/{container}
        var parts = http.Request.Path.Value!.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length != 4 || parts[0] != "containerLogs")
        {
            http.Response.StatusCode = 404;
            return;
        }

        await http.Response.WriteAsync($"line from {parts[1]}/{parts[2]}/{parts[3]} tailLines={http.Request.Query["tailLines"]}\n");
    });

    private Task<TestServer> WebhookAsync(Func<JsonObject, (bool Allowed, int Code, string Message)> decide) => StartHttpsAsync(async http =>
    {
        var review = (await http.Request.ReadFromJsonAsync<JsonObject>())!;
        var (allowed, code, message) = decide(review);
        await http.Response.WriteAsJsonAsync(new JsonObject
        {
            ["apiVersion"] = "admission.k8s.io/v1",
            ["kind"] = "AdmissionReview",
            ["response"] = new JsonObject
            {
                ["uid"] = review["request"]!["uid"]!.GetValue<string>(),
                ["allowed"] = allowed,
                ["status"] = new JsonObject { ["code"] = code, ["message"] = message },
            },
        });
    });
}

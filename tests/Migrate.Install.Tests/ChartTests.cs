using System.Text.Json.Nodes;
using Migrate.TestSupport;
using Migrate.TestSupport.Helm;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>
/// The Helm chart (rendered by the test's Go-template renderer: no helm binary can be installed on
/// these machines): it agrees with deploy/ at default values, its values are checked against
/// values.schema.json, and its optional parts render consistently.
/// </summary>
public sealed class ChartTests
{
    private const string Namespace = "podmig-system";
    private static readonly string[] HelmLabels = ["app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version", "helm.sh/chart"];

    private static HelmChart Chart => new(RepositoryLayout.InRepository("charts", "pod-migration"));

    private static RenderedChart Render(params string[] sets) =>
        Chart.Render("podmig", Namespace, sets.Aggregate(new Dictionary<string, object?>(), (values, set) => HelmChart.Merge(values, HelmChart.Set(set))));

    private static string Key(Dictionary<string, object?> o) =>
        $"{DeployManifests.Kind(o)} {(((Dictionary<string, object?>)o["metadata"]!).GetValueOrDefault("namespace") as string) ?? "-"}/{DeployManifests.Name(o)}";

    [Fact]
    public async Task At_default_values_the_chart_renders_exactly_the_objects_of_deploy()
    {
        var deploy = (await DeployManifests.RenderAsync()).Objects
            .Where(o => DeployManifests.Kind(o) != "Namespace") // helm install --create-namespace makes it
            .ToDictionary(Key, o => Canonical(o, stripHelmLabels: false));
        var chart = Render();
        var rendered = chart.Manifests.Concat(chart.Crds).ToDictionary(Key, o => Canonical(o, stripHelmLabels: true));

        Assert.Equal(deploy.Keys.Order(StringComparer.Ordinal), rendered.Keys.Order(StringComparer.Ordinal));
        foreach (var (key, expected) in deploy)
        {
            var difference = FirstDifference(expected, rendered[key], "");
            Assert.True(difference is null, $"{key} differs between deploy/ and the chart at {difference}");
        }

        // what the agreement covers, spelled out
        string[] kinds = ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "DaemonSet", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
            "Role", "RoleBinding", "RuntimeClass", "Service", "ServiceAccount", "ValidatingWebhookConfiguration"];
        Assert.Equal(kinds, rendered.Keys.Select(k => k.Split(' ')[0]).Distinct().Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Values_yaml_satisfies_the_schema_and_bad_values_are_refused_naming_the_field()
    {
        var chart = Chart;
        Assert.Empty(chart.Validate(chart.DefaultValues()));

        (string Set, string Field)[] bad =
        [
            ("operator.replicas=two", "operator.replicas"),
            ("operator.replicas=0", "operator.replicas"),
            ("agent.grpcPort=70000", "agent.grpcPort"),
            ("agent.criSocket=containerd.sock", "agent.criSocket"),
            ("agent.image.pullPolicy=Sometimes", "agent.image.pullPolicy"),
            ("certManager.issuerRef.kind=Vault", "certManager.issuerRef.kind"),
            ("namePrefix=Pod_Migration", "namePrefix"),
            ("metrics.serviceMonitor.interval=soon", "metrics.serviceMonitor.interval"),
        ];
        foreach (var (set, field) in bad)
        {
            var error = Assert.Throws<ChartValuesException>(() => Render(set));
            Assert.True(error.Problems.Any(p => p.StartsWith(field + ":", StringComparison.Ordinal)),
                $"--set {set}: expected a problem at {field}, got: {string.Join(" | ", error.Problems)}");
        }

        var unknown = Assert.Throws<ChartValuesException>(() => Render("operator.replica=2"));
        Assert.Contains(unknown.Problems, p => p.Contains("replica", StringComparison.Ordinal));
    }

    [Fact]
    public void Cert_manager_serves_the_webhooks_and_injects_their_CA_instead_of_the_operator()
    {
        var chart = Render("certManager.enabled=true");
        var certificate = Object(chart, "Certificate", "podmig-operator-webhook");
        Assert.Equal("podmig-operator-webhook-tls", At(certificate, "spec", "secretName"));
        Assert.Equal(["podmig-operator.podmig-system.svc", "podmig-operator.podmig-system.svc.cluster.local"], Strings(At(certificate, "spec", "dnsNames")));
        Assert.Equal("podmig-operator-selfsigned", At(certificate, "spec", "issuerRef", "name"));
        Object(chart, "Issuer", "podmig-operator-selfsigned");
        var webhooks = Object(chart, "ValidatingWebhookConfiguration", "podmig-operator-webhooks");
        Assert.Equal("podmig-system/podmig-operator-webhook", At(webhooks, "metadata", "annotations", "cert-manager.io/inject-ca-from"));

        var environment = Environment(chart, "Deployment", "podmig-operator");
        Assert.False(environment.ContainsKey("PODMIG_OPERATOR__WEBHOOKLISTENADDRESS"));
        Assert.Equal("/etc/podmig/webhook-tls/tls.crt", environment["PODMIG_KESTREL__ENDPOINTS__WEBHOOK__CERTIFICATE__PATH"]);
        var volumes = (List<object?>)At(Object(chart, "Deployment", "podmig-operator"), "spec", "template", "spec", "volumes")!;
        Assert.Contains(volumes.Cast<Dictionary<string, object?>>(), v => At(v, "secret", "secretName") as string == "podmig-operator-webhook-tls");

        // an issuer of the user's: no self-signed one
        var own = Render("certManager.enabled=true", "certManager.issuerRef.name=corp-ca", "certManager.issuerRef.kind=ClusterIssuer");
        Assert.DoesNotContain(own.Manifests, o => DeployManifests.Kind(o) == "Issuer");
        Assert.Equal("ClusterIssuer", At(Object(own, "Certificate", "podmig-operator-webhook"), "spec", "issuerRef", "kind"));
    }

    [Fact]
    public void The_node_installer_is_opt_in_and_mounts_only_what_it_changes()
    {
        var plain = Render();
        Assert.Null(At(Object(plain, "DaemonSet", "podmig-agent"), "spec", "template", "spec", "initContainers"));
        Assert.Contains("deploy/node/install.sh install", plain.Notes, StringComparison.Ordinal);

        var chart = Render("agent.installNodeConfiguration=true", "agent.containerdConfigDirectory=/etc/k3s/containerd");
        var spec = (Dictionary<string, object?>)At(Object(chart, "DaemonSet", "podmig-agent"), "spec", "template", "spec")!;
        var init = (Dictionary<string, object?>)Assert.Single((List<object?>)spec["initContainers"]!)!;
        Assert.Equal(["/opt/podmig/node/install-node.sh"], Strings(init["command"]));
        Assert.Equal(true, At(init, "securityContext", "privileged"));
        var hostPaths = ((List<object?>)spec["volumes"]!).Cast<Dictionary<string, object?>>()
            .Where(v => v.ContainsKey("hostPath")).ToDictionary(v => (string)v["name"]!, v => (string)At(v, "hostPath", "path")!);
        Assert.Equal("/etc/k3s/containerd", hostPaths["containerd-config"]);
        Assert.Equal("/usr/local/bin", hostPaths["host-bin"]);
        Assert.DoesNotContain("deploy/node/install.sh install", chart.Notes, StringComparison.Ordinal);
    }

    [Fact]
    public void A_checkpoint_registry_gives_the_agents_the_CRI_path_and_none_is_set_by_default()
    {
        Assert.False(Environment(Render(), "DaemonSet", "podmig-agent").ContainsKey("PODMIG_AGENT__CHECKPOINTREGISTRY"));
        var chart = Render("agent.checkpointRegistry=registry.cluster.local:5000/podmig-checkpoints");
        Assert.Equal("registry.cluster.local:5000/podmig-checkpoints", Environment(chart, "DaemonSet", "podmig-agent")["PODMIG_AGENT__CHECKPOINTREGISTRY"]);
    }

    [Fact]
    public void Another_name_prefix_keeps_every_reference_consistent_and_options_switch_parts_off()
    {
        var chart = Render("namePrefix=mig", "networkPolicy.enabled=false", "operator.podDisruptionBudget.enabled=false", "metrics.serviceMonitor.enabled=true",
            "agent.grpcPort=9000", "operator.image.tag=1.2.3");
        var names = chart.Manifests.Select(DeployManifests.Name).ToList();
        Assert.All(names.Where(n => n != "podmig"), n => Assert.StartsWith("mig", n, StringComparison.Ordinal));
        Assert.DoesNotContain(chart.Manifests, o => DeployManifests.Kind(o) is "NetworkPolicy" or "PodDisruptionBudget");
        var monitor = Object(chart, "ServiceMonitor", "mig");
        Assert.Equal(["mig-operator", "mig-agent"], Strings(((Dictionary<string, object?>)((List<object?>)At(monitor, "spec", "selector", "matchExpressions")!)[0]!)["values"]));

        // every binding names a role and an account the chart makes; the operator may update exactly the webhook configuration it makes
        foreach (var binding in chart.Manifests.Where(o => DeployManifests.Kind(o) is "RoleBinding" or "ClusterRoleBinding"))
        {
            Object(chart, (string)At(binding, "roleRef", "kind")!, (string)At(binding, "roleRef", "name")!);
            foreach (var subject in ((List<object?>)binding["subjects"]!).Cast<Dictionary<string, object?>>())
            {
                Object(chart, "ServiceAccount", (string)subject["name"]!);
            }
        }

        var webhookRule = ((List<object?>)Object(chart, "ClusterRole", "mig-operator")["rules"]!).Cast<Dictionary<string, object?>>().Single(r => r.ContainsKey("resourceNames"));
        Object(chart, "ValidatingWebhookConfiguration", Strings(webhookRule["resourceNames"]).Single());
        var operatorEnvironment = Environment(chart, "Deployment", "mig-operator");
        Assert.Equal("mig-operator-webhooks", operatorEnvironment["PODMIG_OPERATOR__WEBHOOKCONFIGURATIONNAME"]);
        Assert.Equal("mig-agent-", operatorEnvironment["PODMIG_OPERATOR__AGENTSECRETPREFIX"]);
        Assert.Equal("mig-agent-{node}", Environment(chart, "DaemonSet", "mig-agent")["PODMIG_AGENT__CERTIFICATESECRET"]);
        Assert.Equal("0.0.0.0:9000", Environment(chart, "DaemonSet", "mig-agent")["PODMIG_AGENT__LISTENADDRESS"]);
        Assert.Equal("ghcr.io/pod-migration/operator:1.2.3", At(Container(chart, "Deployment", "mig-operator"), "image"));
        var webhookService = (Dictionary<string, object?>)At((Dictionary<string, object?>)((List<object?>)Object(chart, "ValidatingWebhookConfiguration", "mig-operator-webhooks")["webhooks"]!)[0]!, "clientConfig", "service")!;
        Assert.Equal("mig-operator", webhookService["name"]);
        Object(chart, "Service", "mig-operator");
    }

    [Fact]
    public void The_notes_tell_what_to_do_next_in_the_release_namespace()
    {
        var notes = Render().Notes;
        Assert.Contains("kubectl label namespace podmig-system pod-security.kubernetes.io/enforce=privileged", notes, StringComparison.Ordinal);
        Assert.Contains("kubectl -n podmig-system get daemonset podmig-agent", notes, StringComparison.Ordinal);
        Assert.Contains("kind: MigrationRequest", notes, StringComparison.Ordinal);
    }

    internal static Dictionary<string, object?> Object(RenderedChart chart, string kind, string name) =>
        chart.Manifests.SingleOrDefault(o => DeployManifests.Kind(o) == kind && DeployManifests.Name(o) == name)
        ?? throw new Xunit.Sdk.XunitException($"the chart rendered no {kind} {name}");

    private static Dictionary<string, object?> Container(RenderedChart chart, string kind, string name) =>
        (Dictionary<string, object?>)((List<object?>)At(Object(chart, kind, name), "spec", "template", "spec", "containers")!)[0]!;

    private static Dictionary<string, string> Environment(RenderedChart chart, string kind, string name) =>
        ((List<object?>)Container(chart, kind, name)["env"]!).Cast<Dictionary<string, object?>>()
            .Where(e => e.ContainsKey("value")).ToDictionary(e => (string)e["name"]!, e => (string)e["value"]!);

    private static object? At(Dictionary<string, object?> o, params string[] path) =>
        path.Aggregate((object?)o, (current, key) => (current as Dictionary<string, object?>)?.GetValueOrDefault(key));

    private static string[] Strings(object? list) => [.. ((List<object?>)list!).Cast<string>()];

    /// <summary>The object as JSON, without the labels only Helm adds to top-level metadata.</summary>
    private static JsonNode Canonical(Dictionary<string, object?> o, bool stripHelmLabels)
    {
        var json = HelmChart.ToJson(o)!;
        if (stripHelmLabels && json["metadata"]?["labels"] is JsonObject labels)
        {
            foreach (var label in HelmLabels)
            {
                labels.Remove(label);
            }
        }

        return json;
    }

    /// <summary>The JSON path of the first difference, or null when equal (map key order ignored).</summary>
    private static string? FirstDifference(JsonNode? a, JsonNode? b, string path)
    {
        switch (a, b)
        {
            case (JsonObject x, JsonObject y):
                foreach (var key in x.Select(p => p.Key).Union(y.Select(p => p.Key)).Order(StringComparer.Ordinal))
                {
                    if (!x.ContainsKey(key) || !y.ContainsKey(key))
                    {
                        return $"{path}.{key} (only in {(x.ContainsKey(key) ? "deploy/" : "the chart")})";
                    }

                    if (FirstDifference(x[key], y[key], $"{path}.{key}") is { } inner)
                    {
                        return inner;
                    }
                }

                return null;
            case (JsonArray x, JsonArray y):
                if (x.Count != y.Count)
                {
                    return $"{path} ({x.Count} items in deploy/, {y.Count} in the chart)";
                }

                for (int i = 0; i < x.Count; i++)
                {
                    if (FirstDifference(x[i], y[i], $"{path}[{i}]") is { } inner)
                    {
                        return inner;
                    }
                }

                return null;
            default:
                return JsonNode.DeepEquals(a, b) ? null : $"{path} (deploy/: {a?.ToJsonString()}, chart: {b?.ToJsonString()})";
        }
    }
}

using k8s.Models;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>
/// The sandbox's stand-ins for the kubelet's container environment and the DaemonSet controller,
/// as tables: env values with $(VAR) references and fields of the pod, and which nodes a
/// DaemonSet's pods go to, which are replaced, and what its status counts.
/// </summary>
public sealed class SandboxWorkloadTests
{
    private static readonly V1Pod Pod = new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = "agent-x1", NamespaceProperty = "podmig-system", Uid = "u-1",
            Labels = new Dictionary<string, string> { ["app"] = "agent" }, Annotations = new Dictionary<string, string> { ["note"] = "kept" },
        },
        Spec = new V1PodSpec { NodeName = "node-a", ServiceAccountName = "podmig-agent", Containers = [] },
    };

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("$(NODE):7070", "node-a:7070")]
    [InlineData("$(POD_IP):$(PORT)", "10.1.2.3:7070")]
    [InlineData("$$(NODE)", "$(NODE)")]
    [InlineData("$(LATER)", "$(LATER)")]
    [InlineData("$(UNKNOWN)-x", "$(UNKNOWN)-x")]
    [InlineData("cost $5", "cost $5")]
    [InlineData("$(NODE", "$(NODE")]
    [InlineData("https://$(KUBERNETES_SERVICE_HOST)", "https://10.1.2.254")]
    public void Values_expand_references_to_variables_defined_before_them(string value, string expected)
    {
        var container = new V1Container
        {
            Name = "agent",
            Env =
            [
                new V1EnvVar { Name = "NODE", ValueFrom = new V1EnvVarSource { FieldRef = new V1ObjectFieldSelector { FieldPath = "spec.nodeName" } } },
                new V1EnvVar { Name = "POD_IP", ValueFrom = new V1EnvVarSource { FieldRef = new V1ObjectFieldSelector { FieldPath = "status.podIP" } } },
                new V1EnvVar { Name = "PORT", Value = "7070" },
                new V1EnvVar { Name = "UNDER_TEST", Value = value },
                new V1EnvVar { Name = "LATER", Value = "too late" },
            ],
        };

        var environment = PodEnvironment.For(container, Pod, "10.1.2.3", new Dictionary<string, string> { ["KUBERNETES_SERVICE_HOST"] = "10.1.2.254" });

        Assert.Equal(expected, environment["UNDER_TEST"]);
    }

    [Theory]
    [InlineData("metadata.name", "agent-x1")]
    [InlineData("metadata.namespace", "podmig-system")]
    [InlineData("metadata.uid", "u-1")]
    [InlineData("spec.nodeName", "node-a")]
    [InlineData("spec.serviceAccountName", "podmig-agent")]
    [InlineData("status.podIP", "10.1.2.3")]
    [InlineData("status.hostIP", "127.0.0.1")]
    [InlineData("metadata.labels['app']", "agent")]
    [InlineData("metadata.annotations['note']", "kept")]
    [InlineData("metadata.labels['absent']", "")]
    [InlineData("spec.unknown", null)]
    public void Fields_of_the_pod_are_read_as_the_downward_api_names_them(string path, string? expected) =>
        Assert.Equal(expected, PodEnvironment.Field(path, Pod, "10.1.2.3"));

    [Fact]
    public void What_the_sandbox_cannot_give_is_refused_naming_the_variable()
    {
        var container = new V1Container
        {
            Name = "agent",
            Env = [new V1EnvVar { Name = "PASSWORD", ValueFrom = new V1EnvVarSource { SecretKeyRef = new V1SecretKeySelector { Name = "s", Key = "k" } } }],
        };

        var error = Assert.Throws<InvalidOperationException>(() => PodEnvironment.For(container, Pod, null));
        Assert.Contains("env PASSWORD of container agent", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    // nodes as name(:taint effect); pods as node:phase:ready:deleting; tolerate: the DaemonSet tolerates everything (operator Exists)
    [InlineData("a;b", "", false, "create a,b; delete -; desired 2 current 0 ready 0")]
    [InlineData("a;b", "a:Running:true:no", false, "create b; delete -; desired 2 current 1 ready 1")]
    [InlineData("a;b", "a:Running:true:no;b:Pending:false:no", false, "create -; delete -; desired 2 current 2 ready 1")]
    [InlineData("a;b", "a:Failed:false:no;b:Running:true:no", false, "create a; delete a; desired 2 current 1 ready 1")]
    [InlineData("a;b", "a:Running:true:yes;b:Running:true:no", false, "create -; delete -; desired 2 current 1 ready 1")]
    [InlineData("a;b:NoSchedule", "", false, "create a; delete -; desired 1 current 0 ready 0")]
    [InlineData("a;b:NoSchedule", "", true, "create a,b; delete -; desired 2 current 0 ready 0")]
    [InlineData("a;b:PreferNoSchedule", "", false, "create a,b; delete -; desired 2 current 0 ready 0")]
    [InlineData("a", "a:Running:true:no;z:Running:true:no", false, "create -; delete -; desired 1 current 1 ready 1")]
    public void A_daemonset_has_one_pod_on_every_node_it_tolerates(string nodes, string pods, bool tolerateAll, string expected)
    {
        var daemonSet = new V1DaemonSet
        {
            Metadata = new V1ObjectMeta { Name = "agent", NamespaceProperty = "system", Uid = "ds-1", Generation = 3 },
            Spec = new V1DaemonSetSpec
            {
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "agent" } },
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = "agent" } },
                    Spec = new V1PodSpec
                    {
                        Containers = [new V1Container { Name = "agent", Image = "agent:1" }],
                        Tolerations = tolerateAll ? [new V1Toleration { OperatorProperty = "Exists" }] : null,
                    },
                },
            },
        };
        var nodeList = nodes.Split(';').Select(n => n.Split(':')).Select(f => new V1Node
        {
            Metadata = new V1ObjectMeta { Name = f[0] },
            Spec = new V1NodeSpec { Taints = f.Length > 1 ? [new V1Taint { Key = "maintenance", Effect = f[1] }] : null },
        });
        var podList = pods.Length == 0 ? [] : pods.Split(';').Select(p => p.Split(':')).Select((f, i) => new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = $"agent-{i}", NamespaceProperty = "system", DeletionTimestamp = f[3] == "yes" ? DateTime.UtcNow : null,
                OwnerReferences = [new V1OwnerReference { Kind = "DaemonSet", Name = "agent", Uid = "ds-1", Controller = true }],
            },
            Spec = new V1PodSpec { NodeName = f[0], Containers = [] },
            Status = new V1PodStatus { Phase = f[1], Conditions = [new V1PodCondition { Type = "Ready", Status = f[2] == "true" ? "True" : "False" }] },
        }).ToList();

        var (create, delete, status) = SandboxDaemonSets.Plan(daemonSet, nodeList, podList);

        static string List(IEnumerable<string> items) => items.Any() ? string.Join(",", items) : "-";
        Assert.Equal(expected,
            $"create {List(create)}; delete {List(delete.Select(p => p.Spec.NodeName))}; desired {status.DesiredNumberScheduled} current {status.CurrentNumberScheduled} ready {status.NumberReady}");
        Assert.Equal(3, status.ObservedGeneration);
    }

    [Fact]
    public void A_daemonsets_pod_is_its_template_bound_to_the_node_and_owned_by_it()
    {
        var daemonSet = new V1DaemonSet
        {
            Metadata = new V1ObjectMeta { Name = "agent", NamespaceProperty = "system", Uid = "ds-1", Generation = 2 },
            Spec = new V1DaemonSetSpec
            {
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = "agent" } },
                    Spec = new V1PodSpec { HostPID = true, Containers = [new V1Container { Name = "agent", Image = "agent:1" }] },
                },
            },
        };

        var pod = SandboxDaemonSets.PodFor(daemonSet, "node-b");

        Assert.Equal(("agent-", "system", "node-b", true), (pod.Metadata.GenerateName, pod.Metadata.NamespaceProperty, pod.Spec.NodeName, pod.Spec.HostPID));
        Assert.Equal(new Dictionary<string, string> { ["app"] = "agent", [SandboxDaemonSets.GenerationLabel] = "2" }, pod.Metadata.Labels);
        var owner = Assert.Single(pod.Metadata.OwnerReferences);
        Assert.Equal(("DaemonSet", "agent", "ds-1", true), (owner.Kind, owner.Name, owner.Uid, owner.Controller));
        Assert.Null(daemonSet.Spec.Template.Spec.NodeName); // the template itself is left alone
    }

    [Theory]
    // replicas wanted; nodes; pods as node:phase:ready
    [InlineData(2, "a;b", "", "create a,b; delete -; replicas 0 ready 0")]
    [InlineData(2, "a;b", "b:Running:true", "create a; delete -; replicas 1 ready 1")]
    [InlineData(3, "a;b", "", "create a,b,a; delete -; replicas 0 ready 0")]
    [InlineData(2, "a;b", "a:Running:true;a:Running:false;b:Running:true", "create -; delete a; replicas 2 ready 2")]
    [InlineData(2, "a;b", "a:Failed:false;b:Running:true", "create a; delete a; replicas 1 ready 1")]
    [InlineData(1, "", "", "create -; delete -; replicas 0 ready 0")]
    public void A_replica_set_keeps_its_count_spread_over_the_nodes(int replicas, string nodes, string pods, string expected)
    {
        var replicaSet = new V1ReplicaSet
        {
            Metadata = new V1ObjectMeta { Name = "op-abc", NamespaceProperty = "system", Uid = "rs-1", Generation = 1 },
            Spec = new V1ReplicaSetSpec { Replicas = replicas, Selector = new V1LabelSelector(), Template = new V1PodTemplateSpec { Spec = new V1PodSpec { Containers = [] } } },
        };
        var podList = pods.Length == 0 ? [] : pods.Split(';').Select(p => p.Split(':')).Select((f, i) => new V1Pod
        {
            Metadata = new V1ObjectMeta
            {
                Name = $"op-abc-{i}", NamespaceProperty = "system",
                OwnerReferences = [new V1OwnerReference { Kind = "ReplicaSet", Name = "op-abc", Uid = "rs-1", Controller = true }],
            },
            Spec = new V1PodSpec { NodeName = f[0], Containers = [] },
            Status = new V1PodStatus { Phase = f[1], Conditions = [new V1PodCondition { Type = "Ready", Status = f[2] == "true" ? "True" : "False" }] },
        }).ToList();

        var (create, delete, status) = SandboxDeployments.Plan(replicaSet, nodes.Length == 0 ? [] : nodes.Split(';'), podList);

        static string List(IEnumerable<string> items) => items.Any() ? string.Join(",", items) : "-";
        Assert.Equal(expected, $"create {List(create)}; delete {List(delete.Select(p => p.Spec.NodeName))}; replicas {status.Replicas} ready {status.ReadyReplicas}");
    }

    [Fact]
    public void A_deployments_replica_set_is_named_and_labelled_by_its_templates_hash_and_owned_by_it()
    {
        var deployment = new V1Deployment
        {
            Metadata = new V1ObjectMeta { Name = "op", NamespaceProperty = "system", Uid = "d-1" },
            Spec = new V1DeploymentSpec
            {
                Replicas = 2,
                Selector = new V1LabelSelector { MatchLabels = new Dictionary<string, string> { ["app"] = "op" } },
                Template = new V1PodTemplateSpec
                {
                    Metadata = new V1ObjectMeta { Labels = new Dictionary<string, string> { ["app"] = "op" } },
                    Spec = new V1PodSpec { Containers = [new V1Container { Name = "op", Image = "op:1" }] },
                },
            },
        };

        var replicaSet = SandboxDeployments.ReplicaSetFor(deployment);
        var hash = SandboxDeployments.TemplateHash(deployment.Spec.Template);
        deployment.Spec.Template.Spec.Containers[0].Image = "op:2";

        Assert.Equal($"op-{hash}", replicaSet.Metadata.Name);
        Assert.NotEqual(hash, SandboxDeployments.TemplateHash(deployment.Spec.Template));
        Assert.Equal(hash, replicaSet.Spec.Template.Metadata.Labels[SandboxDeployments.HashLabel]);
        Assert.Equal(hash, replicaSet.Spec.Selector.MatchLabels[SandboxDeployments.HashLabel]);
        Assert.Equal(("Deployment", "d-1", 2), (replicaSet.Metadata.OwnerReferences.Single().Kind, replicaSet.Metadata.OwnerReferences.Single().Uid, replicaSet.Spec.Replicas));
        Assert.Equal("op:1", replicaSet.Spec.Template.Spec.Containers[0].Image);
    }
}

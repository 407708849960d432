using System.Text.Json.Nodes;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>The real kubectl against the emulator: what users and scripts do.</summary>
public sealed class KubectlTests(EmulatorFixture fx) : IClassFixture<EmulatorFixture>
{
    private static string Widget(string name, int size, string? extra = null) => $$"""
        apiVersion: example.io/v1
        kind: Widget
        metadata:
          name: {{name}}
          labels: {app: demo, tier: {{(size > 5 ? "big" : "small")}}}
        spec:
          size: {{size}}
          {{extra}}
        """;

    private async Task<string> NamespaceAsync(string name)
    {
        await fx.KubectlAsync("create", "namespace", name);
        await fx.ApplyWidgetCrdAsync();
        return name;
    }

    [Fact]
    public async Task A_CRD_and_its_resource_are_served_and_printed_as_table_json_and_yaml()
    {
        var ns = await NamespaceAsync("print");

        (await fx.KubectlInAsync(Widget("w1", 3), "apply", "-n", ns, "-f", "-")).Succeeded();
        var table = (await fx.KubectlAsync("get", "widgets", "-n", ns)).Succeeded().Output;
        var json = JsonNode.Parse((await fx.KubectlAsync("get", "widget", "w1", "-n", ns, "-o", "json")).Succeeded().Output)!;
        var yaml = (await fx.KubectlAsync("get", "wg", "w1", "-n", ns, "-o", "yaml")).Succeeded().Output;

        var lines = table.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["NAME", "SIZE", "PHASE", "AGE"], lines[0].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("w1", lines[1], StringComparison.Ordinal);
        Assert.Contains(" 3 ", lines[1], StringComparison.Ordinal);
        Assert.Equal("example.io/v1", json["apiVersion"]!.GetValue<string>());
        Assert.Equal("red", json["spec"]!["color"]!.GetValue<string>()); // schema default applied
        Assert.Equal(1, json["metadata"]!["generation"]!.GetValue<int>());
        Assert.False(string.IsNullOrEmpty(json["metadata"]!["uid"]!.GetValue<string>()));
        Assert.Contains("kind: Widget", yaml, StringComparison.Ordinal);
        Assert.Contains("size: 3", yaml, StringComparison.Ordinal);
        var crd = JsonNode.Parse((await fx.KubectlAsync("get", "crd", "widgets.example.io", "-o", "json")).Succeeded().Output)!;
        var conditions = crd["status"]!["conditions"]!.AsArray();
        Assert.Contains(conditions, c => c!["type"]!.GetValue<string>() == "Established" && c["status"]!.GetValue<string>() == "True");
    }

    [Fact]
    public async Task Schema_violations_are_refused_with_the_field_named()
    {
        var ns = await NamespaceAsync("schema");

        var missing = (await fx.KubectlInAsync("apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: bad1}\nspec: {color: blue}\n", "apply", "-n", ns, "-f", "-")).Failed();
        var outOfRange = (await fx.KubectlInAsync(Widget("bad2", 11), "apply", "-n", ns, "-f", "-")).Failed();
        var badEnum = (await fx.KubectlInAsync(Widget("bad3", 2, "color: green"), "apply", "-n", ns, "-f", "-")).Failed();
        var badPattern = (await fx.KubectlInAsync(Widget("bad4", 2, "owner: Bob_1"), "apply", "-n", ns, "-f", "-")).Failed();
        var badType = (await fx.KubectlInAsync(Widget("bad5", 2).Replace("size: 2", "size: two", StringComparison.Ordinal), "apply", "-n", ns, "-f", "-")).Failed();
        var unknown = (await fx.KubectlInAsync(Widget("bad6", 2, "shape: round"), "apply", "-n", ns, "-f", "-")).Failed();

        Assert.Contains("spec.size: Required value", missing, StringComparison.Ordinal);
        Assert.Contains("spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10", outOfRange, StringComparison.Ordinal);
        Assert.Contains("spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"", badEnum, StringComparison.Ordinal);
        Assert.Contains("spec.owner", badPattern, StringComparison.Ordinal);
        Assert.Contains("spec.size", badType, StringComparison.Ordinal);
        Assert.Contains("must be of type integer", badType, StringComparison.Ordinal);
        Assert.Contains("unknown field \"spec.shape\"", unknown, StringComparison.Ordinal);
        var list = (await fx.KubectlAsync("get", "widgets", "-n", ns, "-o", "name")).Succeeded().Output;
        Assert.Equal("", list.Trim()); // nothing was stored
    }

    [Fact]
    public async Task A_CEL_transition_rule_keeps_a_field_immutable()
    {
        var ns = await NamespaceAsync("cel");
        (await fx.KubectlInAsync(Widget("w", 3), "apply", "-n", ns, "-f", "-")).Succeeded();

        var changed = (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--type=merge", "-p", "{\"spec\":{\"size\":4}}")).Failed();
        (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--type=merge", "-p", "{\"spec\":{\"color\":\"blue\"}}")).Succeeded();

        Assert.Contains("size is immutable", changed, StringComparison.Ordinal);
        var json = JsonNode.Parse((await fx.KubectlAsync("get", "widget", "w", "-n", ns, "-o", "json")).Succeeded().Output)!;
        Assert.Equal(3, json["spec"]!["size"]!.GetValue<int>());
        Assert.Equal(2, json["metadata"]!["generation"]!.GetValue<int>()); // the color change bumped it once
    }

    [Fact]
    public async Task Status_and_spec_are_written_through_their_own_endpoints_and_wait_sees_status()
    {
        var ns = await NamespaceAsync("status");
        (await fx.KubectlInAsync(Widget("w", 3), "apply", "-n", ns, "-f", "-")).Succeeded();
        var waiter = fx.KubectlAsync("wait", "-n", ns, "--for=jsonpath={.status.phase}=Ready", "widget/w", "--timeout=20s");
        await Task.Delay(500);

        (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--subresource=status", "--type=merge",
            "-p", "{\"status\":{\"phase\":\"Ready\"},\"spec\":{\"color\":\"blue\"}}")).Succeeded();
        (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--type=merge", "-p", "{\"status\":{\"phase\":\"Ignored\"}}")).Succeeded();
        var waited = await waiter;

        Assert.Contains("condition met", waited.Succeeded().Output, StringComparison.Ordinal);
        var json = JsonNode.Parse((await fx.KubectlAsync("get", "widget", "w", "-n", ns, "-o", "json")).Succeeded().Output)!;
        Assert.Equal("Ready", json["status"]!["phase"]!.GetValue<string>()); // the main endpoint ignored status
        Assert.Equal("red", json["spec"]!["color"]!.GetValue<string>());     // the status endpoint ignored spec
        Assert.Equal(1, json["metadata"]!["generation"]!.GetValue<int>());
    }

    [Fact]
    public async Task Get_watch_sees_additions_changes_and_deletions()
    {
        var ns = await NamespaceAsync("watch");
        using var watch = fx.StartKubectl(fx.Emulator.KubeconfigPath, ["get", "widgets", "-n", ns, "-w", "--output-watch-events"]);
        var lines = new List<string>();
        var reader = Task.Run(async () =>
        {
            while (await watch.StandardOutput.ReadLineAsync() is { } line)
            {
                lock (lines)
                {
                    lines.Add(line);
                }
            }
        });
        await Task.Delay(1500); // an empty watch prints nothing: give kubectl time to open it
        if (watch.HasExited)
        {
            Assert.Fail("kubectl get -w exited: " + await watch.StandardError.ReadToEndAsync());
        }

        (await fx.KubectlInAsync(Widget("w", 3), "apply", "-n", ns, "-f", "-")).Succeeded();
        (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--subresource=status", "--type=merge", "-p", "{\"status\":{\"phase\":\"Busy\"}}")).Succeeded();
        (await fx.KubectlAsync("delete", "widget", "w", "-n", ns)).Succeeded();
        await WaitUntilAsync(() => lines.Any(l => l.StartsWith("DELETED", StringComparison.Ordinal)), "the deletion to show");
        watch.Kill();
        await reader;

        var events = lines.Where(l => !l.StartsWith("EVENT", StringComparison.Ordinal)).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.Equal(["ADDED", "MODIFIED", "DELETED"], events.Select(e => e[0]));
        Assert.Equal("Busy", events[1][3]); // EVENT NAME SIZE PHASE AGE
    }

    [Fact]
    public async Task Delete_waits_for_finalizers()
    {
        var ns = await NamespaceAsync("finalize");
        (await fx.KubectlInAsync(Widget("w", 3, "").Replace("labels:", "finalizers: [example.io/hold]\n  labels:", StringComparison.Ordinal), "apply", "-n", ns, "-f", "-")).Succeeded();

        (await fx.KubectlAsync("delete", "widget", "w", "-n", ns, "--wait=false")).Succeeded();
        var marked = JsonNode.Parse((await fx.KubectlAsync("get", "widget", "w", "-n", ns, "-o", "json")).Succeeded().Output)!;
        var blocked = fx.KubectlAsync("delete", "widget", "w", "-n", ns, "--timeout=20s");
        await Task.Delay(500);
        Assert.False(blocked.IsCompleted, "kubectl delete returned while a finalizer held the object");
        var addFinalizer = (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--type=json",
            "-p", "[{\"op\":\"add\",\"path\":\"/metadata/finalizers/-\",\"value\":\"example.io/late\"}]")).Failed();
        (await fx.KubectlAsync("patch", "widget", "w", "-n", ns, "--type=json", "-p", "[{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}]")).Succeeded();
        (await blocked).Succeeded();

        Assert.NotNull(marked["metadata"]!["deletionTimestamp"]);
        Assert.Contains("no new finalizers can be added if the object is being deleted", addFinalizer, StringComparison.Ordinal);
        Assert.Contains("NotFound", (await fx.KubectlAsync("get", "widget", "w", "-n", ns)).Failed(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Label_and_field_selectors_filter_lists()
    {
        var ns = await NamespaceAsync("select");
        foreach (var (name, size) in new[] { ("a", 2), ("b", 7), ("c", 9) })
        {
            (await fx.KubectlInAsync(Widget(name, size), "apply", "-n", ns, "-f", "-")).Succeeded();
        }

        var big = (await fx.KubectlAsync("get", "widgets", "-n", ns, "-l", "tier=big", "-o", "name")).Succeeded().Output;
        var setBased = (await fx.KubectlAsync("get", "widgets", "-n", ns, "-l", "tier in (small),app", "-o", "name")).Succeeded().Output;
        var notBig = (await fx.KubectlAsync("get", "widgets", "-n", ns, "-l", "tier!=big", "-o", "name")).Succeeded().Output;
        var byName = (await fx.KubectlAsync("get", "widgets", "-n", ns, "--field-selector", "metadata.name=c", "-o", "name")).Succeeded().Output;
        var unsupported = (await fx.KubectlAsync("get", "widgets", "-n", ns, "--field-selector", "spec.size=2")).Failed();

        Assert.Equal(["widget.example.io/b", "widget.example.io/c"], Names(big));
        Assert.Equal(["widget.example.io/a"], Names(setBased));
        Assert.Equal(["widget.example.io/a"], Names(notBig));
        Assert.Equal(["widget.example.io/c"], Names(byName));
        Assert.Contains("field label not supported: spec.size", unsupported, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stale_update_is_refused_with_409()
    {
        var ns = await NamespaceAsync("conflict");
        (await fx.KubectlInAsync(Widget("w", 3), "apply", "-n", ns, "-f", "-")).Succeeded();
        var stale = (await fx.KubectlAsync("get", "widget", "w", "-n", ns, "-o", "json")).Succeeded().Output;
        (await fx.KubectlAsync("label", "widget", "w", "-n", ns, "touched=yes")).Succeeded();

        var error = (await fx.KubectlInAsync(stale, "replace", "-n", ns, "-f", "-")).Failed();

        Assert.Contains("Conflict", error, StringComparison.Ordinal);
        Assert.Contains("the object has been modified; please apply your changes to the latest version and try again", error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Paging_returns_every_object_once()
    {
        var ns = await NamespaceAsync("paging");
        for (int i = 0; i < 12; i++)
        {
            (await fx.KubectlAsync("create", "configmap", $"cm-{i:00}", "-n", ns, "--from-literal=i=" + i)).Succeeded();
        }

        var names = Names((await fx.KubectlAsync("get", "configmaps", "-n", ns, "--chunk-size=5", "-o", "name")).Succeeded().Output);

        Assert.Equal(Enumerable.Range(0, 12).Select(i => $"configmap/cm-{i:00}"), names.Where(n => n.StartsWith("configmap/cm-", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Server_side_dry_run_validates_but_stores_nothing()
    {
        var ns = await NamespaceAsync("dryrun");

        var ok = (await fx.KubectlInAsync(Widget("w", 3), "apply", "-n", ns, "--dry-run=server", "-f", "-")).Succeeded().Output;
        var invalid = (await fx.KubectlInAsync(Widget("w", 30), "apply", "-n", ns, "--dry-run=server", "-f", "-")).Failed();

        Assert.Contains("(server dry run)", ok, StringComparison.Ordinal);
        Assert.Contains("spec.size", invalid, StringComparison.Ordinal);
        Assert.Contains("NotFound", (await fx.KubectlAsync("get", "widget", "w", "-n", ns)).Failed(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Strategic_merge_patch_merges_containers_by_name()
    {
        var ns = await NamespaceAsync("smp");
        (await fx.KubectlInAsync("""
            apiVersion: v1
            kind: Pod
            metadata: {name: p}
            spec:
              containers:
              - {name: a, image: busybox:1, env: [{name: X, value: "1"}]}
              - {name: b, image: busybox:1}
            """, "apply", "-n", ns, "-f", "-")).Succeeded();

        (await fx.KubectlAsync("patch", "pod", "p", "-n", ns, "-p", "{\"spec\":{\"containers\":[{\"name\":\"b\",\"image\":\"busybox:2\"}]}}")).Succeeded();
        var forbidden = (await fx.KubectlAsync("patch", "pod", "p", "-n", ns, "-p", "{\"spec\":{\"restartPolicy\":\"Never\"}}")).Failed();

        var pod = JsonNode.Parse((await fx.KubectlAsync("get", "pod", "p", "-n", ns, "-o", "json")).Succeeded().Output)!;
        var containers = pod["spec"]!["containers"]!.AsArray();
        Assert.Equal(2, containers.Count);
        Assert.Equal("busybox:1", containers[0]!["image"]!.GetValue<string>());
        Assert.Equal("1", containers[0]!["env"]![0]!["value"]!.GetValue<string>());
        Assert.Equal("busybox:2", containers[1]!["image"]!.GetValue<string>());
        Assert.Contains("pod updates may not change fields", forbidden, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Deleting_an_owner_deletes_its_dependents_unless_orphaned()
    {
        var ns = await NamespaceAsync("gc");
        var owner = JsonNode.Parse((await fx.KubectlAsync("create", "configmap", "owner", "-n", ns, "-o", "json")).Succeeded().Output)!;
        var uid = owner["metadata"]!["uid"]!.GetValue<string>();
        string Dependent(string name) => $$"""
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{name}}
              ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: {{uid}}}]
            """;
        (await fx.KubectlInAsync(Dependent("dep"), "apply", "-n", ns, "-f", "-")).Succeeded();

        (await fx.KubectlAsync("delete", "configmap", "owner", "-n", ns)).Succeeded();
        var gone = (await fx.KubectlAsync("get", "configmap", "dep", "-n", ns)).Failed();

        var owner2 = JsonNode.Parse((await fx.KubectlAsync("create", "configmap", "owner", "-n", ns, "-o", "json")).Succeeded().Output)!;
        uid = owner2["metadata"]!["uid"]!.GetValue<string>();
        (await fx.KubectlInAsync(Dependent("kept"), "apply", "-n", ns, "-f", "-")).Succeeded();
        (await fx.KubectlAsync("delete", "configmap", "owner", "-n", ns, "--cascade=orphan")).Succeeded();
        var kept = JsonNode.Parse((await fx.KubectlAsync("get", "configmap", "kept", "-n", ns, "-o", "json")).Succeeded().Output)!;

        Assert.Contains("NotFound", gone, StringComparison.Ordinal);
        Assert.Empty(kept["metadata"]!["ownerReferences"]?.AsArray() ?? []);
    }

    [Fact]
    public async Task Deleting_a_namespace_deletes_its_content()
    {
        await NamespaceAsync("doomed");
        (await fx.KubectlAsync("create", "configmap", "x", "-n", "doomed")).Succeeded();
        (await fx.KubectlInAsync(Widget("w", 2), "apply", "-n", "doomed", "-f", "-")).Succeeded();

        (await fx.KubectlAsync("delete", "namespace", "doomed", "--timeout=20s")).Succeeded();

        Assert.Contains("NotFound", (await fx.KubectlAsync("get", "namespace", "doomed")).Failed(), StringComparison.Ordinal);
        Assert.Empty(fx.Emulator.Server.Store.List("/configmaps", "doomed").Items);
        Assert.Empty(fx.Emulator.Server.Store.List("example.io/widgets", "doomed").Items);
    }

    [Fact]
    public async Task A_CEL_rule_outside_the_supported_subset_is_reported_and_not_enforced()
    {
        var crd = """
            apiVersion: apiextensions.k8s.io/v1
            kind: CustomResourceDefinition
            metadata: {name: gadgets.example.io}
            spec:
              group: example.io
              scope: Namespaced
              names: {plural: gadgets, singular: gadget, kind: Gadget}
              versions:
              - name: v1
                served: true
                storage: true
                schema:
                  openAPIV3Schema:
                    type: object
                    properties:
                      spec:
                        type: object
                        x-kubernetes-validations:
                        - rule: "duration(self.wait) < duration('1h')"
                        - rule: "self.parts.all(p, p.size() <= 3)"
                          message: parts are at most 3 characters
                        properties:
                          wait: {type: string}
                          parts: {type: array, items: {type: string}}
            """;
        await fx.KubectlAsync("create", "namespace", "cel-subset");

        var applied = (await fx.KubectlInAsync(crd, "apply", "-f", "-")).Succeeded();
        var longWait = await fx.KubectlInAsync("apiVersion: example.io/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {wait: 2h, parts: [abc]}\n", "apply", "-n", "cel-subset", "-f", "-");
        var longPart = (await fx.KubectlInAsync("apiVersion: example.io/v1\nkind: Gadget\nmetadata: {name: g2}\nspec: {wait: 1m, parts: [abcd]}\n", "apply", "-n", "cel-subset", "-f", "-")).Failed();

        Assert.Contains("Warning: x-kubernetes-validations rule not supported by the emulator, not enforced: duration(self.wait) < duration('1h')", applied.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("self.parts.all", applied.Error, StringComparison.Ordinal);
        Assert.Equal(0, longWait.ExitCode); // the unsupported rule is not enforced...
        Assert.Contains("parts are at most 3 characters", longPart, StringComparison.Ordinal); // ...the supported one is
    }

    [Fact]
    public async Task Describe_shows_a_pod_with_its_events_and_annotate_changes_it()
    {
        await fx.KubectlAsync("create", "namespace", "describe");
        (await fx.KubectlAsync("run", "p", "-n", "describe", "--image=busybox:1", "--restart=Never")).Succeeded();
        var uid = (await fx.KubectlAsync("get", "pod", "p", "-n", "describe", "-o", "jsonpath={.metadata.uid}")).Succeeded().Output;
        (await fx.KubectlInAsync($$"""
            apiVersion: v1
            kind: Event
            metadata: {name: p.1, namespace: describe}
            involvedObject: {kind: Pod, name: p, namespace: describe, uid: {{uid}}, apiVersion: v1}
            reason: MigrationStarted
            message: checkpointing the pod
            type: Normal
            source: {component: migrate-operator}
            count: 1
            """, "apply", "-f", "-")).Succeeded();

        (await fx.KubectlAsync("annotate", "pod", "p", "-n", "describe", "podmigration.io/note=hello")).Succeeded();
        var described = (await fx.KubectlAsync("describe", "pod", "p", "-n", "describe")).Succeeded().Output;

        Assert.Contains("podmigration.io/note: hello", described, StringComparison.Ordinal);
        Assert.Contains("MigrationStarted", described, StringComparison.Ordinal);
        Assert.Contains("checkpointing the pod", described, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Explain_shows_a_custom_resources_field_descriptions()
    {
        await fx.ApplyWidgetCrdAsync();

        var explained = (await fx.KubectlAsync("explain", "widgets.spec.size")).Succeeded().Output;

        Assert.Contains("How big the widget is, from 1 to 10.", explained, StringComparison.Ordinal);
    }

    private static List<string> Names(string output) =>
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"timed out waiting for {what}");
            }

            await Task.Delay(50);
        }
    }
}

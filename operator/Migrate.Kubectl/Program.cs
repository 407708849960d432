using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using Migrate.Kubectl;

// kubectl-migrate: kubectl finds it on PATH and runs it for "kubectl migrate ...".
try
{
    var line = CommandLine.Parse(args);
    if (line.Command is "" or "help" || line.Has("help"))
    {
        Console.WriteLine(CommandLine.Usage);
        return line.Command is "" && !line.Has("help") ? 2 : 0;
    }

    // connected on first use: usage errors are reported without a kubeconfig
    var connection = new Lazy<Cluster>(() => Cluster.Connect(line));
    var output = new Output(Console.Out, interactive: !Console.IsOutputRedirected);
    var commands = new Commands(connection, output, line);
    try
    {
        return line.Command switch
        {
            "pod" => await commands.PodAsync(),
            "list" or "ls" => await commands.ListAsync(),
            "describe" => await commands.DescribeAsync(),
            "cancel" => await commands.CancelAsync(),
            "drain" => await commands.DrainAsync(),
            "checkpoint" => await commands.CheckpointAsync(),
            "checkpoints" => await commands.CheckpointsAsync(),
            "restore" => await commands.RestoreAsync(),
            "import" => await commands.ImportAsync(),
            _ => throw new UsageException($"unknown command \"{line.Command}\" (pod, list, describe, cancel, drain, checkpoint, checkpoints, import, restore)"),
        };
    }
    finally
    {
        if (connection.IsValueCreated)
        {
            connection.Value.Dispose();
        }
    }
}
catch (UsageException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    Console.Error.WriteLine("See 'kubectl migrate --help'.");
    return 2;
}
catch (CommandException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}

namespace Migrate.Kubectl
{
    /// <summary>The plugin's subcommands.</summary>
    internal sealed class Commands(Lazy<Cluster> connection, Output output, CommandLine line)
    {
        /// <summary>What status.restoreMillis counts, after its figure.</summary>
        private const string RestoreSpan = "from the committed images to the processes running";

        private Cluster Api => connection.Value;

        private static readonly string[] Final = ["Succeeded", "Failed", "RolledBack"];

        private bool Wait => line.Has("wait") || (!line.Has("no-wait") && output.Interactive);

        private string Single(string what) => line.Arguments.Count == 1 ? line.Arguments[0]
            : throw new UsageException(line.Arguments.Count == 0 ? $"{line.Command} needs {what}" : $"{line.Command} takes one {what}, got {line.Arguments.Count}");

        public async Task<int> PodAsync()
        {
            var pod = Single("a pod name");
            var path = line.Flag("checkpoint-path")?.ToLowerInvariant() switch
            {
                null => null,
                "auto" => "Auto",
                "runtimeclass" => "RuntimeClass",
                "cri" => "CRI",
                var other => throw new UsageException($"--checkpoint-path must be auto, runtimeclass or cri, not '{other}'"),
            };
            var mode = line.Flag("mode")?.ToLowerInvariant() switch
            {
                // left out: the operator picks (Auto; on the CRI path that is Cold)
                null or "auto" => "Auto",
                "precopy" => "PreCopy",
                "cold" => "Cold",
                "postcopy" => "PostCopy",
                "hybrid" => "Hybrid",
                var other => throw new UsageException($"--mode must be auto, cold, precopy, postcopy or hybrid, not '{other}'"),
            };
            if (path == "CRI" && mode is not ("Cold" or "Auto"))
            {
                // the runtime's own checkpoint is taken once, frozen: no pre-copy rounds
                throw new UsageException("--checkpoint-path cri takes one checkpoint while the pod is frozen, with no pre-copy rounds: use --mode cold or leave --mode out");
            }

            await Api.RequireApiAsync();
            await ExistsAsync(() => Api.Client.CoreV1.ReadNamespacedPodAsync(pod, Api.Namespace), $"pod \"{pod}\" not found in namespace \"{Api.Namespace}\"");
            if (line.Flag("to") is { } node)
            {
                await ExistsAsync(() => Api.Client.CoreV1.ReadNodeAsync(node), $"node \"{node}\" not found");
            }

            var spec = new JsonObject { ["podName"] = pod, ["mode"] = mode };
            if (path is not null)
            {
                spec["checkpointPath"] = path;
            }

            if (line.Flag("to") is { } target)
            {
                spec["targetNode"] = target;
            }

            if (line.Flag("timeout") is not null)
            {
                spec["timeoutSeconds"] = line.IntFlag("timeout", 600);
            }

            var name = Name(pod);
            await Api.CreateRequestAsync(new JsonObject
            {
                ["apiVersion"] = $"{Cluster.Group}/{Cluster.Version}",
                ["kind"] = "MigrationRequest",
                ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = Api.Namespace },
                ["spec"] = spec,
            });
            output.Line($"migrationrequest.podmigration.io/{name} created: moving pod {Api.Namespace}/{pod}{(line.Flag("to") is { } to ? $" to {to}" : "")} ({mode})");
            if (!Wait)
            {
                output.Line($"follow it with: kubectl migrate describe {name}");
                return 0;
            }

            return await FollowAsync(name);
        }

        /// <summary>Shows the request's phase and transfer progress until it ends, then a summary; 0 if it succeeded.</summary>
        private async Task<int> FollowAsync(string name)
        {
            string? phase = null;
            JsonObject? lastProgress = null;
            double? rate = null;
            JsonObject status;
            while (true)
            {
                var request = await Api.GetRequestAsync(name);
                status = request["status"] as JsonObject ?? [];
                var current = Text(status, "phase") ?? "Pending";
                if (current != phase)
                {
                    // a phase shorter than the time between two looks is not seen; a successful migration went through it all the same
                    foreach (var passed in MigrationPhases.Passed(phase, current))
                    {
                        output.Phase(passed, "(passed between two looks)");
                    }

                    if (!Final.Contains(current))
                    {
                        output.Phase(current, Text(status, "message") ?? "");
                    }

                    phase = current;
                }

                // the transfer of this phase (pre-copy rounds in Checkpointing, the final images in Transferring)
                if (status["progress"] is JsonObject progress && Text(progress, "phase") == current
                    && (lastProgress is null || Text(progress, "updateTime") != Text(lastProgress, "updateTime")))
                {
                    rate = Rate(lastProgress, progress) ?? rate;
                    output.Progress(Text(progress, "phase") ?? current, Number(progress, "bytesSent"), Number(progress, "bytesTotal"), rate, (int)Number(status, "preCopyRounds"));
                    lastProgress = progress;
                }

                if (Final.Contains(current))
                {
                    break;
                }

                await Task.Delay(250);
            }

            output.EndProgress();
            var started = Time(status, "startTime");
            var completed = Time(status, "completionTime");
            if (phase == "Succeeded")
            {
                output.Line($"Succeeded: pod {Api.Namespace}/{Text(status, "replacementPod")} runs on {Text(status, "targetNode")} (moved from {Text(status, "sourceNode")}).");
                output.Line($"  downtime  {Number(status, "downtimeMillis"):0} ms{(Text(status, "memoryRestore") == "Lazy" ? " (memory restored lazily: the processes ran before it was all in place)" : "")}");
                if (status["restoreMillis"] is not null)
                {
                    output.Line($"  restore   {Number(status, "restoreMillis"):0} ms on {Text(status, "targetNode")}, {RestoreSpan}");
                }

                if (started is { } s && completed is { } c)
                {
                    output.Line(string.Create(CultureInfo.InvariantCulture, $"  total     {(c - s).TotalMilliseconds:0} ms"));
                }

                output.Line(string.Create(CultureInfo.InvariantCulture,
                    $"  images    {Number(status, "imageBytes") / 1e6:0.0} MB staged, {Number(status, "bytesTransferred") / 1e6:0.0} MB sent, {Number(status, "preCopyRounds"):0} pre-copy round(s)"));
                return 0;
            }

            output.Line($"{phase} ({Text(status, "reason")}): {Text(status, "message")}");
            return 1;
        }

        public async Task<int> ListAsync()
        {
            if (line.Arguments.Count > 0)
            {
                throw new UsageException("list takes no arguments");
            }

            await Api.RequireApiAsync();
            bool all = line.Has("all-namespaces");
            var requests = await Api.ListRequestsAsync(all);
            if (requests.Count == 0)
            {
                Console.Error.WriteLine(all ? "No MigrationRequests found." : $"No MigrationRequests found in {Api.Namespace} namespace.");
                return 0;
            }

            var rows = requests.Select(r =>
            {
                var status = r["status"] as JsonObject ?? [];
                string[] cells = [Text(r, "metadata", "name")!, PodsOf(r), Text(status, "sourceNode") ?? "", Text(status, "targetNode") ?? "",
                    Text(status, "phase") ?? "Pending", status["downtimeMillis"] is null ? "" : $"{Number(status, "downtimeMillis"):0}ms", Age(Time(r, "metadata", "creationTimestamp"))];
                return all ? [Text(r, "metadata", "namespace")!, .. cells] : cells;
            }).ToList();
            string[] header = all ? ["NAMESPACE", "NAME", "POD", "SOURCE", "TARGET", "PHASE", "DOWNTIME", "AGE"] : ["NAME", "POD", "SOURCE", "TARGET", "PHASE", "DOWNTIME", "AGE"];
            output.Table(header, rows);
            return 0;
        }

        public async Task<int> DescribeAsync()
        {
            var name = Single("a MigrationRequest name");
            await Api.RequireApiAsync();
            var request = await Api.GetRequestAsync(name);
            var status = request["status"] as JsonObject ?? [];
            output.Line($"Name:         {name}");
            output.Line($"Namespace:    {Api.Namespace}");
            output.Line($"Pod:          {PodsOf(request)}");
            var requested = Text(request, "spec", "mode") ?? "Auto";
            output.Line($"Mode:         {(Text(status, "mode") is { } running && running != requested ? $"{running} (asked: {requested})" : requested)}");
            output.Line($"Path:         {Text(status, "checkpointPath") ?? Text(request, "spec", "checkpointPath") ?? "Auto"}");
            output.Line($"Phase:        {Text(status, "phase") ?? "Pending"}");
            output.Line($"Reason:       {Text(status, "reason")}");
            output.Line($"Message:      {Text(status, "message")}");
            output.Line($"Source:       {Text(status, "sourceNode")}");
            output.Line($"Target:       {Text(status, "targetNode") ?? Text(request, "spec", "targetNode")}");
            output.Line($"Replacement:  {Text(status, "replacementPod")}");
            output.Line($"Started:      {Text(status, "startTime")}");
            output.Line($"Completed:    {Text(status, "completionTime")}");
            output.Line($"Downtime:     {(status["downtimeMillis"] is null ? "" : $"{Number(status, "downtimeMillis"):0} ms")}");
            output.Line($"Restore:      {(status["restoreMillis"] is null ? "" : $"{Number(status, "restoreMillis"):0} ms {RestoreSpan}")}");
            output.Line($"Memory:       {Text(status, "memoryRestore")}");
            output.Line(string.Create(CultureInfo.InvariantCulture, $"Images:       {Number(status, "imageBytes") / 1e6:0.0} MB staged, {Number(status, "bytesTransferred") / 1e6:0.0} MB sent, {Number(status, "preCopyRounds"):0} pre-copy round(s)")
                + (Text(status, "memoryTracking") is { } tracking ? $", writes found by {tracking}" : ""));
            if (status["progress"] is JsonObject progress)
            {
                output.Line(string.Create(CultureInfo.InvariantCulture,
                    $"Progress:     {Text(progress, "phase")}: {Number(progress, "bytesSent") / 1e6:0.0} of {Number(progress, "bytesTotal") / 1e6:0.0} MB at {Text(progress, "updateTime")}"));
            }

            if (status["group"] is JsonObject group)
            {
                // a group request: its gate, and how far each member got
                output.Line($"Gate:         {Text(group, "gate")}");
                output.Line(string.Create(CultureInfo.InvariantCulture,
                    $"Group:        longest downtime {(group["downtimeMillis"] is null ? "-" : $"{Number(group, "downtimeMillis"):0} ms")}, first freeze to last release {(group["spreadMillis"] is null ? "-" : $"{Number(group, "spreadMillis"):0} ms")}"));
                output.Line("Members:");
                foreach (var member in (group["members"] as JsonArray ?? []).OfType<JsonObject>())
                {
                    output.Line($"  {Text(member, "podName"),-20} {Text(member, "phase") ?? "Pending",-13} {Text(member, "step") ?? "-",-9} {Text(member, "sourceNode")} -> {Text(member, "targetNode")}  {Text(member, "request")}");
                }
            }

            output.Line("Conditions:");
            foreach (var condition in (status["conditions"] as JsonArray ?? []).OfType<JsonObject>())
            {
                output.Line($"  {Text(condition, "type"),-12} {Text(condition, "status"),-6} {Text(condition, "reason"),-22} {Text(condition, "message")}");
            }

            var events = await Api.CallAsync(() => Api.Client.CoreV1.ListNamespacedEventAsync(Api.Namespace, fieldSelector: $"involvedObject.name={name}"));
            output.Line("Events:");
            foreach (var e in events.Items.Where(e => e.InvolvedObject.Kind == "MigrationRequest").OrderBy(e => e.EventTime ?? e.LastTimestamp ?? e.FirstTimestamp))
            {
                output.Line($"  {e.Type,-8} {e.Reason,-16} {e.Message}");
            }

            return 0;
        }

        public async Task<int> CancelAsync()
        {
            var name = Single("a MigrationRequest name");
            await Api.RequireApiAsync();
            var phase = Text((await Api.GetRequestAsync(name))["status"] as JsonObject ?? [], "phase") ?? "Pending";
            await Api.DeleteRequestAsync(name);
            output.Line(Final.Contains(phase)
                ? $"migrationrequest.podmigration.io/{name} deleted (it had already ended: {phase})"
                : $"migrationrequest.podmigration.io/{name} cancelled in {phase}: the operator rolls it back and the pod runs on where it was");
            return 0;
        }

        public async Task<int> DrainAsync()
        {
            var node = Single("a node name");
            int maxParallel = line.IntFlag("max-parallel", 1);
            await Api.RequireApiAsync();
            await ExistsAsync(() => Api.Client.CoreV1.ReadNodeAsync(node), $"node \"{node}\" not found");
            var name = Name(node + "-drain");
            await Api.CreateDrainAsync(new JsonObject
            {
                ["apiVersion"] = $"{Cluster.Group}/{Cluster.Version}",
                ["kind"] = "NodeDrain",
                ["metadata"] = new JsonObject { ["name"] = name },
                ["spec"] = new JsonObject { ["nodeName"] = node, ["maxParallel"] = maxParallel, ["reason"] = line.Flag("reason") ?? "kubectl migrate drain" },
            });
            output.Line($"nodedrain.podmigration.io/{name} created: draining {node}, {maxParallel} migration(s) at a time");
            if (!Wait)
            {
                return 0;
            }

            string? last = null;
            while (true)
            {
                var status = (await Api.GetDrainAsync(name))["status"] as JsonObject ?? [];
                var phase = Text(status, "phase") ?? "Pending";
                var summary = string.Create(CultureInfo.InvariantCulture,
                    $"{phase}: {Number(status, "migrated"):0} migrated, {Number(status, "evicted"):0} evicted, {Number(status, "failed"):0} failed, {Number(status, "remaining"):0} remaining");
                if (summary != last)
                {
                    output.Line(summary);
                    last = summary;
                }

                if (phase is "Drained")
                {
                    output.Line($"node {node} is drained (cordoned); delete the NodeDrain to uncordon it: kubectl delete nodedrain {name}");
                    return 0;
                }

                if (phase is "Blocked")
                {
                    foreach (var pod in (status["blockingPods"] as JsonArray ?? []).OfType<JsonObject>())
                    {
                        output.Line($"  blocked by {Text(pod, "namespace")}/{Text(pod, "name")}: {Text(pod, "reason")}");
                    }

                    return 1;
                }

                await Task.Delay(500);
            }
        }

        private async Task ExistsAsync<T>(Func<Task<T>> read, string notFound)
        {
            try
            {
                await Api.CallAsync(read);
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
            {
                throw new CommandException(notFound);
            }
        }

        /// <summary>A name for a new object: the base and 5 random characters, within 63.</summary>
        public async Task<int> CheckpointAsync()
        {
            if (line.Arguments.Count > 1 || line.Has("selector"))
            {
                return await GroupCheckpointAsync();
            }

            var pod = Single("a pod name");
            await Api.RequireApiAsync();
            await ExistsAsync(() => Api.Client.CoreV1.ReadNamespacedPodAsync(pod, Api.Namespace), $"pod \"{pod}\" not found in namespace \"{Api.Namespace}\"");
            var name = line.Flag("name") ?? Name(pod);
            var spec = new JsonObject { ["podName"] = pod };
            if (line.Flag("export") is { } path)
            {
                spec["export"] = new JsonObject { ["path"] = path };
            }

            await Api.CreateObjectAsync("checkpoints", Resource("Checkpoint", name, spec));
            output.Line($"checkpoint.podmigration.io/{name} created: checkpointing pod {Api.Namespace}/{pod}");
            return Wait ? await CheckpointOutcomeAsync(name) : 0;
        }

        /// <summary>A group Checkpoint of the pods named, or of those the selector (label=value pairs) matches.</summary>
        private async Task<int> GroupCheckpointAsync()
        {
            var selector = line.Flag("selector");
            if (selector is not null && line.Arguments.Count > 0)
            {
                throw new UsageException("checkpoint takes pod names or -l SELECTOR, not both");
            }

            if (line.Has("export"))
            {
                throw new UsageException("--export is for one pod's checkpoint; a group checkpoint is kept on its members' nodes");
            }

            var labels = selector is null ? null : Labels(selector);
            await Api.RequireApiAsync();
            var spec = new JsonObject();
            string what;
            if (labels is null)
            {
                foreach (var pod in line.Arguments)
                {
                    await ExistsAsync(() => Api.Client.CoreV1.ReadNamespacedPodAsync(pod, Api.Namespace), $"pod \"{pod}\" not found in namespace \"{Api.Namespace}\"");
                }

                spec["pods"] = new JsonArray([.. line.Arguments.Select(p => (JsonNode)p)]);
                what = $"pods {string.Join(", ", line.Arguments.Select(p => $"{Api.Namespace}/{p}"))}";
            }
            else
            {
                spec["podSelector"] = new JsonObject(labels.Select(l => KeyValuePair.Create(l.Key, (JsonNode?)l.Value)));
                what = $"the Running pods of namespace {Api.Namespace} labelled {selector}";
            }

            var name = line.Flag("name") ?? Name(labels is null ? $"{line.Arguments[0]}-group" : "group");
            await Api.CreateObjectAsync("checkpoints", Resource("Checkpoint", name, spec));
            output.Line($"checkpoint.podmigration.io/{name} created: checkpointing {what} as one group");
            return Wait ? await CheckpointOutcomeAsync(name) : 0;
        }

        /// <summary>A label selector of equality terms (key=value, comma-separated), the only kind a group's podSelector holds.</summary>
        private static Dictionary<string, string> Labels(string selector)
        {
            var labels = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var term in selector.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = term.Split('=');
                if (parts.Length != 2 || parts[0].Length == 0 || parts[0].EndsWith('!') || !labels.TryAdd(parts[0], parts[1]))
                {
                    throw new UsageException($"-l takes label=value pairs separated by commas (such as app=ring), not '{selector}'");
                }
            }

            return labels.Count > 0 ? labels : throw new UsageException("-l needs at least one label=value pair");
        }

        public async Task<int> ImportAsync()
        {
            var path = Single("an archive path");
            await Api.RequireApiAsync();
            var name = line.Flag("name") ?? Name(path.Replace('/', '-').Replace('.', '-').Replace('_', '-').ToLowerInvariant().Trim('-'));
            var source = new JsonObject { ["path"] = path };
            if (line.Flag("digest") is { } digest)
            {
                source["digest"] = digest;
            }

            var spec = new JsonObject { ["source"] = source };
            if (line.Flag("to") is { } node)
            {
                spec["nodeName"] = node;
            }

            await Api.CreateObjectAsync("checkpoints", Resource("Checkpoint", name, spec));
            output.Line($"checkpoint.podmigration.io/{name} created: importing {path} from the archive storage");
            return Wait ? await CheckpointOutcomeAsync(name) : 0;
        }

        private async Task<int> CheckpointOutcomeAsync(string name)
        {
            var status = await AwaitPhaseAsync("checkpoints", "Checkpoint", name, ["Ready", "Failed"]);
            var exported = status["export"] is JsonObject export ? $" Exported to {Text(export, "path")} ({Text(export, "digest")})." : "";
            var members = status["group"] is JsonObject g && g["members"] is JsonArray list
                ? string.Join(", ", list.OfType<JsonObject>().Select(m => $"{Text(m, "name")} on {Text(m, "nodeName")}")) : null;
            output.Line(Text(status, "phase") == "Ready"
                ? $"Ready: {Text(status, "message")} Taken at {Instant(status, "checkpointTime")}; kept in {members ?? Text(status, "location")}.{exported}"
                : $"Failed ({Text(status, "reason")}): {Text(status, "message")}");
            return Text(status, "phase") == "Ready" ? 0 : 1;
        }

        public async Task<int> CheckpointsAsync()
        {
            if (line.Arguments.Count > 0)
            {
                throw new UsageException("checkpoints takes no arguments");
            }

            await Api.RequireApiAsync();
            bool all = line.Has("all-namespaces");
            var checkpoints = await Api.ListObjectsAsync("checkpoints", all);
            if (checkpoints.Count == 0)
            {
                Console.Error.WriteLine(all ? "No Checkpoints found." : $"No Checkpoints found in {Api.Namespace} namespace.");
                return 0;
            }

            var rows = checkpoints.OrderBy(c => Text(c, "status", "checkpointTime") ?? "~", StringComparer.Ordinal).Select(c =>
            {
                string[] cells =
                [
                    Text(c, "metadata", "name")!, Text(c, "status", "podName") ?? Text(c, "spec", "podName") ?? "", Text(c, "status", "nodeName") ?? "", Text(c, "status", "phase") ?? "Pending",
                    c["status"]?["sizeBytes"] is { } size ? $"{size.GetValue<long>() / 1048576.0:0.0} MiB" : "",
                    c["status"]?["freezeMillis"] is { } freeze ? $"{freeze.GetValue<long>()} ms" : "",
                    Instant(c, "status", "checkpointTime"),
                ];
                return all ? [Text(c, "metadata", "namespace")!, .. cells] : cells;
            }).ToList();
            string[] header = ["NAME", "POD", "NODE", "PHASE", "SIZE", "FREEZE", "TAKEN"];
            output.Table(all ? ["NAMESPACE", .. header] : header, rows);
            return 0;
        }

        public async Task<int> RestoreAsync()
        {
            var checkpoint = Single("a Checkpoint name");
            await Api.RequireApiAsync();
            await Api.GetObjectAsync("checkpoints", "Checkpoint", checkpoint);
            var spec = new JsonObject { ["checkpointName"] = checkpoint };
            if (line.Flag("to") is { } node)
            {
                await ExistsAsync(() => Api.Client.CoreV1.ReadNodeAsync(node), $"node \"{node}\" not found");
                spec["nodeName"] = node;
            }

            if (line.Flag("as") is { } pod)
            {
                spec["podName"] = pod;
            }

            var name = line.Flag("name") ?? Name(checkpoint);
            await Api.CreateObjectAsync("restores", Resource("Restore", name, spec));
            output.Line($"restore.podmigration.io/{name} created: restoring checkpoint {Api.Namespace}/{checkpoint}");
            if (!Wait)
            {
                return 0;
            }

            var status = await AwaitPhaseAsync("restores", "Restore", name, ["Succeeded", "Failed"]);
            output.Line(Text(status, "phase") == "Succeeded"
                ? $"Succeeded: {Text(status, "message")}"
                : $"Failed ({Text(status, "reason")}): {Text(status, "message")}");
            return Text(status, "phase") == "Succeeded" ? 0 : 1;
        }

        private JsonObject Resource(string kind, string name, JsonObject spec) => new()
        {
            ["apiVersion"] = $"{Cluster.Group}/{Cluster.Version}",
            ["kind"] = kind,
            ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = Api.Namespace },
            ["spec"] = spec,
        };

        /// <summary>Polls the object until its phase is one of <paramref name="final"/>, showing each phase it passes; returns its status.</summary>
        private async Task<JsonObject> AwaitPhaseAsync(string plural, string kind, string name, string[] final)
        {
            string? shown = null;
            while (true)
            {
                var status = (await Api.GetObjectAsync(plural, kind, name))["status"] as JsonObject ?? [];
                var phase = Text(status, "phase") ?? "Pending";
                if (final.Contains(phase))
                {
                    return status;
                }

                if (phase != shown)
                {
                    output.Phase(phase, Text(status, "message") ?? "");
                    shown = phase;
                }

                await Task.Delay(200);
            }
        }

        /// <summary>A time of the status to the millisecond, as the operator's messages write it.</summary>
        private static string Instant(JsonObject o, params string[] path) =>
            Text(o, path) is { } text && DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at)
                ? at.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture) : "";

        private static string Name(string basis)
        {
            const string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
            var suffix = string.Concat(Enumerable.Range(0, 5).Select(_ => alphabet[System.Security.Cryptography.RandomNumberGenerator.GetInt32(alphabet.Length)]));
            return $"{(basis.Length > 56 ? basis[..56].TrimEnd('-', '.') : basis)}-{suffix}";
        }

        private static double? Rate(JsonObject? previous, JsonObject current)
        {
            if (previous is null || Text(previous, "phase") != Text(current, "phase") || Time(previous, "updateTime") is not { } a || Time(current, "updateTime") is not { } b || b <= a)
            {
                return null;
            }

            return (Number(current, "bytesSent") - Number(previous, "bytesSent")) / (b - a).TotalSeconds;
        }

        private static string? Text(JsonObject? o, params string[] path) =>
            path.Aggregate((JsonNode?)o, (n, key) => (n as JsonObject)?[key]) is JsonValue v ? v.ToString() : null;

        /// <summary>The pod a request moves, or for a group its pods (named, or by selector until admitted).</summary>
        private static string PodsOf(JsonObject request)
        {
            if (Text(request, "spec", "podName") is { Length: > 0 } pod)
            {
                return pod;
            }

            var members = ((request["status"] as JsonObject)?["group"] as JsonObject)?["members"] as JsonArray
                ?? (request["spec"] as JsonObject)?["pods"] as JsonArray;
            if (members is not null)
            {
                return string.Join(",", members.OfType<JsonObject>().Select(m => Text(m, "podName")));
            }

            return (request["spec"] as JsonObject)?["podSelector"] is JsonObject selector
                ? string.Join(",", selector.Select(l => $"{l.Key}={l.Value}"))
                : "";
        }

        private static double Number(JsonObject? o, string key) =>
            o?[key] is JsonValue v && double.TryParse(v.ToString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : 0;

        private static DateTimeOffset? Time(JsonObject? o, params string[] path) =>
            DateTimeOffset.TryParse(Text(o, path), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t) ? t : null;

        private static string Age(DateTimeOffset? created)
        {
            if (created is not { } c)
            {
                return "";
            }

            var age = DateTimeOffset.UtcNow - c;
            return age.TotalSeconds < 120 ? $"{(int)age.TotalSeconds}s" : age.TotalMinutes < 120 ? $"{(int)age.TotalMinutes}m" : age.TotalHours < 48 ? $"{(int)age.TotalHours}h" : $"{(int)age.TotalDays}d";
        }
    }
}

using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Api;

public sealed partial class ApiServer
{
    /// <summary>An object as a client of <paramref name="type"/>'s version sees it.</summary>
    internal static JsonObject Present(ResourceType type, JsonObject body)
    {
        var obj = body.DeepClone().AsObject();
        obj["apiVersion"] = type.GroupVersion;
        obj["kind"] = type.Kind;
        type.Schema?.ApplyDefaults(obj);
        return Json.Ordered(obj);
    }

    internal JsonObject Get(ResourceType type, string? ns, string name)
    {
        var stored = Store.Get(type.StorageKey, ns, name) ?? throw ApiException.NotFound(type, name);
        return Present(type, stored.Body);
    }

    private async Task ListAsync(ApiRequest r)
    {
        var labels = LabelSelector.Parse(r.Query["labelSelector"].FirstOrDefault());
        var fields = FieldSelector.Parse(r.Query["fieldSelector"].FirstOrDefault(), r.Type);
        var (items, revision) = Store.List(r.Type.StorageKey, r.Namespace);
        var matching = items.Where(o => labels.Matches(Json.Labels(o.Body)) && fields.Matches(o.Body)).ToList();

        // Paging: the continue token carries the path of the last item returned.
        int? limit = int.TryParse(r.Query["limit"].FirstOrDefault(), out var l) && l > 0 ? l : null;
        string? after = DecodeContinue(r.Query["continue"].FirstOrDefault(), out var tokenRevision);
        if (after is not null)
        {
            revision = tokenRevision;
            matching = matching.Where(o => string.CompareOrdinal(o.Path, after) > 0).ToList();
        }

        string? next = null;
        long remaining = 0;
        if (limit is int n && matching.Count > n)
        {
            remaining = matching.Count - n;
            matching = matching.Take(n).ToList();
            next = EncodeContinue(revision, matching[^1].Path);
        }

        var presented = matching.Select(o => Present(r.Type, o.Body)).ToList();
        var rv = revision.ToString(CultureInfo.InvariantCulture);
        if (Tables.WantsTable(r.Http.Request.Headers.Accept.ToString()))
        {
            await WriteJsonAsync(r.Http, 200, _tables.Convert(r.Type, presented, rv, r.Query["includeObject"].FirstOrDefault(), next),
                "application/json;as=Table;v=v1;g=meta.k8s.io");
            return;
        }

        var metadata = new JsonObject { ["resourceVersion"] = rv };
        if (next is not null)
        {
            metadata["continue"] = next;
            metadata["remainingItemCount"] = remaining;
        }

        var array = new JsonArray();
        foreach (var item in presented)
        {
            array.Add(item);
        }

        await WriteJsonAsync(r.Http, 200, new JsonObject
        {
            ["kind"] = r.Type.ListKind,
            ["apiVersion"] = r.Type.GroupVersion,
            ["metadata"] = metadata,
            ["items"] = array,
        });
    }

    private static string EncodeContinue(long revision, string path) =>
        Convert.ToBase64String(Encoding.UTF8.GetBytes(new JsonObject { ["rv"] = revision, ["start"] = path }.ToJsonString()));

    private static string? DecodeContinue(string? token, out long revision)
    {
        revision = 0;
        if (string.IsNullOrEmpty(token))
        {
            return null;
        }

        try
        {
            var node = JsonNode.Parse(Convert.FromBase64String(token));
            revision = Json.WholeNumber(node?["rv"]) ?? 0;
            return node?["start"]?.GetValue<string>() ?? throw new FormatException();
        }
        catch (Exception e) when (e is FormatException or JsonException or InvalidOperationException)
        {
            throw ApiException.BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
        }
    }

    private async Task WatchAsync(ApiRequest r)
    {
        var labels = LabelSelector.Parse(r.Query["labelSelector"].FirstOrDefault());
        var fields = FieldSelector.Parse(r.Query["fieldSelector"].FirstOrDefault(), r.Type);
        var name = r.Info.Name ?? fields.PinnedName;
        var ns = r.Namespace;
        bool bookmarks = r.Query["allowWatchBookmarks"].Any(v => v is "true" or "1");
        bool table = Tables.WantsTable(r.Http.Request.Headers.Accept.ToString());
        var includeObject = r.Query["includeObject"].FirstOrDefault();
        var rvText = r.Query["resourceVersion"].FirstOrDefault();
        long? since = null;
        if (!string.IsNullOrEmpty(rvText) && rvText != "0")
        {
            since = long.TryParse(rvText, NumberStyles.None, CultureInfo.InvariantCulture, out var parsed)
                ? parsed
                : throw ApiException.BadRequest($"resourceVersion: Invalid value: \"{rvText}\": must be a non-negative integer");
        }

        TimeSpan timeout = int.TryParse(r.Query["timeoutSeconds"].FirstOrDefault(), out var seconds) && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : TimeSpan.FromMinutes(30 + Random.Shared.Next(30));

        r.Http.Response.StatusCode = 200;
        r.Http.Response.ContentType = table ? "application/json;as=Table;v=v1;g=meta.k8s.io" : "application/json";
        r.Http.Response.Headers.CacheControl = "no-cache, private";
        var body = r.Http.Response.Body;

        ObjectStore.Subscription subscription;
        try
        {
            subscription = Store.Subscribe(r.Type.StorageKey, since);
        }
        catch (RevisionGoneException e)
        {
            await WriteEventAsync(body, "ERROR", ApiException.Gone(e.Message).ToStatus(), r.Aborted);
            return;
        }

        using var subscriptionScope = subscription;
        using var timeoutSource = CancellationTokenSource.CreateLinkedTokenSource(r.Aborted, _stopping.Token);
        timeoutSource.CancelAfter(timeout);
        var token = timeoutSource.Token;
        await r.Http.Response.StartAsync(token);
        await body.FlushAsync(token);
        bool sentHeader = false;
        long lastRevision = since ?? 0;
        try
        {
            var reader = subscription.Events;
            Task<bool>? pending = null;
            while (!token.IsCancellationRequested)
            {
                // One outstanding wait at a time: a bookmark tick leaves it pending for the next round.
                var waitForEvent = pending ??= reader.WaitToReadAsync(token).AsTask();
                if (bookmarks)
                {
                    var delay = Task.Delay(_options.BookmarkInterval, token);
                    if (await Task.WhenAny(waitForEvent, delay) == delay)
                    {
                        long safe = Store.Revision;
                        if (!reader.TryPeek(out _))
                        {
                            lastRevision = Math.Max(lastRevision, safe);
                        }

                        await WriteEventAsync(body, "BOOKMARK", new JsonObject
                        {
                            ["kind"] = r.Type.Kind,
                            ["apiVersion"] = r.Type.GroupVersion,
                            ["metadata"] = new JsonObject { ["resourceVersion"] = lastRevision.ToString(CultureInfo.InvariantCulture) },
                        }, token);
                        continue;
                    }
                }

                pending = null;
                if (!await waitForEvent)
                {
                    if (subscription.Overflowed)
                    {
                        await WriteEventAsync(body, "ERROR", ApiException.Gone("the watch fell too far behind").ToStatus(), CancellationToken.None);
                    }

                    return;
                }

                while (reader.TryRead(out var e))
                {
                    subscription.Consumed();
                    lastRevision = Math.Max(lastRevision, e.Stored.Revision);
                    var type = Transition(e, ns, name, labels, fields);
                    if (type is null)
                    {
                        continue;
                    }

                    JsonObject obj = Present(r.Type, e.Stored.Body);
                    if (table)
                    {
                        var t = _tables.Convert(r.Type, [obj], e.Stored.Revision.ToString(CultureInfo.InvariantCulture), includeObject);
                        if (sentHeader)
                        {
                            t["columnDefinitions"] = new JsonArray();
                        }

                        sentHeader = true;
                        obj = t;
                    }

                    await WriteEventAsync(body, type, obj, token);
                }
            }
        }
        catch (OperationCanceledException)
        {
            // timeout or client gone: the watch simply ends
        }
    }

    /// <summary>How a change shows to a watch with these filters: ADDED, MODIFIED, DELETED, or nothing.</summary>
    private static string? Transition(StoreEvent e, string? ns, string? name, LabelSelector labels, FieldSelector fields)
    {
        if ((ns is not null && e.Stored.Namespace != ns) || (name is not null && e.Stored.Name != name))
        {
            return null;
        }

        bool Matches(JsonObject? body) => body is not null && labels.Matches(Json.Labels(body)) && fields.Matches(body);
        bool now = e.Type != ChangeType.Deleted && Matches(e.Stored.Body);
        bool before = e.Type switch
        {
            ChangeType.Added => false,
            _ => Matches(e.Previous),
        };
        return (now, before, e.Type) switch
        {
            (_, true, ChangeType.Deleted) => "DELETED",
            (true, true, _) => "MODIFIED",
            (true, false, _) => "ADDED",
            (false, true, _) => "DELETED",
            _ => null,
        };
    }

    private static async Task WriteEventAsync(Stream body, string type, JsonObject obj, CancellationToken token)
    {
        using var buffer = new MemoryStream();
        await using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            writer.WriteStartObject();
            writer.WriteString("type", type);
            writer.WritePropertyName("object");
            obj.WriteTo(writer);
            writer.WriteEndObject();
        }

        buffer.WriteByte((byte)'\n');
        await body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), token);
        await body.FlushAsync(token);
    }
}

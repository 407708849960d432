using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Migrate.KubeEmulator.Admission;
using Migrate.KubeEmulator.Auth;
using Migrate.KubeEmulator.Storage;

namespace Migrate.KubeEmulator.Api;

/// <summary>Settings of one emulator instance.</summary>
public sealed class EmulatorOptions
{
    /// <summary>Authorize every request with RBAC (otherwise any authenticated user may do anything).</summary>
    public bool Rbac { get; set; }

    /// <summary>
    /// Keep every authorized request of a user other than system:masters, with the verdict, in
    /// <see cref="ApiServer.AccessLog"/> (for tests that check which RBAC rules a component needs).
    /// </summary>
    public bool RecordAccess { get; set; }

    /// <summary>Changes kept for watches that resume from a resourceVersion; older ones get 410 Gone.</summary>
    public int WatchHistory { get; set; } = 100_000;

    /// <summary>How often a watch that asked for bookmarks gets one.</summary>
    public TimeSpan BookmarkInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Address clients reach the server at (https://host:port), for discovery documents.</summary>
    public string ServerAddress { get; set; } = "127.0.0.1:6443";

    /// <summary>Where "service" references of webhooks go: "name.namespace.svc" to "host:port".</summary>
    public Dictionary<string, string> ServiceEndpoints { get; } = new(StringComparer.Ordinal);
}

/// <summary>Everything about one API request that the handlers need.</summary>
internal sealed record ApiRequest(HttpContext Http, RequestInfo Info, UserInfo User, ResourceType Type)
{
    public IQueryCollection Query => Http.Request.Query;

    public string? Namespace => Type.Namespaced ? Info.Namespace : null;

    public bool DryRun => Query["dryRun"].Any(v => v == "All");

    public string FieldValidation => Query["fieldValidation"].FirstOrDefault() ?? "Warn";

    public CancellationToken Aborted => Http.RequestAborted;
}

/// <summary>
/// The Kubernetes API server emulator: the REST and watch protocol over an in-memory store, with
/// discovery, CRDs, subresources, optimistic concurrency, finalizers, garbage collection,
/// selectors, the three patch types, dry run, paging, bearer-token authentication, RBAC and
/// validating admission webhooks. See README.md in this project for what it does not do.
/// </summary>
public sealed partial class ApiServer : IDisposable
{
    private readonly EmulatorOptions _options;
    private readonly TimeProvider _clock;
    private readonly ILogger _logger;
    private readonly Discovery _discovery;
    private readonly OpenApi _openApi;
    private readonly Tables _tables;
    private readonly RbacAuthorizer _rbac;
    private readonly WebhookDispatcher _webhooks;
    private readonly CancellationTokenSource _stopping = new();

    public ApiServer(EmulatorOptions options, TimeProvider clock, ILogger<ApiServer> logger)
    {
        _options = options;
        _clock = clock;
        _logger = logger;
        Registry = new ResourceRegistry(BuiltInResources.Create());
        Store = new ObjectStore(options.WatchHistory);
        Authenticator = new Authenticator();
        _discovery = new Discovery(Registry);
        _openApi = new OpenApi(Registry);
        _tables = new Tables(clock);
        _rbac = new RbacAuthorizer(Store);
        _webhooks = new WebhookDispatcher(Store, options, logger);
        Bootstrap();
    }

    public ResourceRegistry Registry { get; }

    public ObjectStore Store { get; }

    public Authenticator Authenticator { get; }

    public EmulatorOptions Options => _options;

    /// <summary>Ends every open watch (before the host stops, so shutdown does not wait for them).</summary>
    public void StopWatches() => _stopping.Cancel();

    public void Dispose() => _stopping.Dispose();

    public async Task HandleAsync(HttpContext http)
    {
        try
        {
            var path = http.Request.Path.Value ?? "/";
            var user = Authenticate(http);
            if (user is null)
            {
                if (IsProbe(path))
                {
                    await WriteTextAsync(http, 200, "ok");
                    return;
                }

                throw ApiException.Unauthorized();
            }

            var watchQuery = http.Request.Query["watch"].Any(v => v is "true" or "1");
            var info = RequestInfo.Parse(http.Request.Method, path, watchQuery);
            if (!info.IsResourceRequest)
            {
                Authorize(new AccessRequest(user, http.Request.Method == "GET" ? "get" : http.Request.Method.ToLowerInvariant(), false, "", "", null, null, null, path));
                await HandleNonResourceAsync(http, info);
                return;
            }

            var type = Registry.Find(info.Group, info.Version, info.Resource) ?? throw ApiException.NotFoundPath();
            if (type.Namespaced != (info.Namespace is not null) && !(type.Namespaced && info.Name is null && info.Verb is "list" or "watch"))
            {
                throw ApiException.NotFoundPath();
            }

            Authorize(new AccessRequest(user, info.Verb, true, type.Group, type.Plural, info.Subresource, info.Namespace, info.Name, path));
            await DispatchAsync(new ApiRequest(http, info, user, type));
        }
        catch (ApiException e)
        {
            if (!http.Response.HasStarted)
            {
                await WriteJsonAsync(http, e.Code, e.ToStatus());
            }
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // the client went away
        }
#pragma warning disable CA1031 // a bug in the emulator must become a 500 for the client, not a dropped connection
        catch (Exception e)
#pragma warning restore CA1031
        {
            _logger.LogError(e, "internal error serving {Method} {Path}", http.Request.Method, http.Request.Path);
            if (!http.Response.HasStarted)
            {
                await WriteJsonAsync(http, 500, ApiException.Status(500, "InternalError", $"Internal error occurred: {e.Message}", null));
            }
        }
    }

    private async Task DispatchAsync(ApiRequest r)
    {
        var info = r.Info;
        switch (info.Subresource, info.Verb)
        {
            case (null, "get"):
                await WriteObjectAsync(r, 200, Get(r.Type, r.Namespace, info.Name!));
                break;
            case (null, "list"):
                await ListAsync(r);
                break;
            case (null or "status", "watch"):
                await WatchAsync(r);
                break;
            case (null, "create"):
                await CreateFromRequestAsync(r);
                break;
            case (null or "status", "update"):
                await UpdateFromRequestAsync(r);
                break;
            case (null or "status", "patch"):
                await PatchFromRequestAsync(r);
                break;
            case (null, "delete"):
                await DeleteFromRequestAsync(r);
                break;
            case (null, "deletecollection"):
                await DeleteCollectionAsync(r);
                break;
            case ("status", "get") when r.Type.HasStatus:
                await WriteObjectAsync(r, 200, Get(r.Type, r.Namespace, info.Name!));
                break;
            case ("log", "get") when r.Type.StorageKey == "/pods":
                await PodLogAsync(r);
                break;
            case ("eviction", "create") when r.Type.StorageKey == "/pods":
                await EvictAsync(r);
                break;
            case ("binding", "create") when r.Type.StorageKey == "/pods":
                await BindAsync(r);
                break;
            case ("token", "create") when r.Type.StorageKey == "/serviceaccounts":
                await TokenRequestAsync(r);
                break;
            case ("finalize", "update") when r.Type.StorageKey == "/namespaces":
                await FinalizeNamespaceAsync(r);
                break;
            case (not null, _):
                throw ApiException.NotFoundPath();
            default:
                throw ApiException.MethodNotSupported(r.Type, info.Verb);
        }
    }

    private async Task HandleNonResourceAsync(HttpContext http, RequestInfo info)
    {
        var path = info.Path.TrimEnd('/');
        var accept = http.Request.Headers.Accept.ToString();
        switch (path)
        {
            case "/api":
                if (Discovery.WantsAggregated(accept))
                {
                    await WriteJsonAsync(http, 200, _discovery.Aggregated(core: true), Discovery.AggregatedContentType);
                }
                else
                {
                    await WriteJsonAsync(http, 200, _discovery.CoreVersions(_options.ServerAddress));
                }

                return;
            case "/apis":
                if (Discovery.WantsAggregated(accept))
                {
                    await WriteJsonAsync(http, 200, _discovery.Aggregated(core: false), Discovery.AggregatedContentType);
                }
                else
                {
                    await WriteJsonAsync(http, 200, _discovery.GroupList());
                }

                return;
            case "/version":
                await WriteJsonAsync(http, 200, new JsonObject
                {
                    ["major"] = "1",
                    ["minor"] = "32",
                    ["gitVersion"] = "v1.32.0-emulated",
                    ["gitCommit"] = "emulator",
                    ["gitTreeState"] = "clean",
                    ["buildDate"] = "2026-01-01T00:00:00Z",
                    ["goVersion"] = "n/a",
                    ["compiler"] = "n/a",
                    ["platform"] = "linux/amd64",
                });
                return;
            case "/healthz" or "/livez" or "/readyz":
                await WriteTextAsync(http, 200, "ok");
                return;
            case "/openapi/v3":
                await WriteJsonAsync(http, 200, _openApi.Index());
                return;
        }

        var segments = info.Segments;
        JsonObject? document = segments switch
        {
            ["api", var version] => _discovery.ResourceList("", version),
            ["apis", var group] => _discovery.GroupDocument(group),
            ["apis", var group, var version] => _discovery.ResourceList(group, version),
            ["openapi", "v3", "api", var version] => _openApi.Document("", version),
            ["openapi", "v3", "apis", var group, var version] => _openApi.Document(group, version),
            _ => null,
        };
        if (document is null)
        {
            throw ApiException.NotFoundPath();
        }

        await WriteJsonAsync(http, 200, document);
    }

    private UserInfo? Authenticate(HttpContext http)
    {
        var header = http.Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }

        return Authenticator.Authenticate(header[7..].Trim(),
            (ns, name) => Json.GetString(Store.Get("/serviceaccounts", ns, name)?.Body, "metadata", "uid"),
            _clock.GetUtcNow());
    }

    private static bool IsProbe(string path) => path is "/healthz" or "/livez" or "/readyz";

    /// <summary>Requests RBAC judged, with the verdict (when <see cref="EmulatorOptions.RecordAccess"/> is on).</summary>
    public System.Collections.Concurrent.ConcurrentQueue<(AccessRequest Request, bool Allowed)> AccessLog { get; } = new();

    private void Authorize(AccessRequest request)
    {
        bool allowed = !_options.Rbac || _rbac.Allows(request);
        if (_options.RecordAccess && !request.User.IsMaster)
        {
            AccessLog.Enqueue((request, allowed));
        }

        if (!allowed)
        {
            throw ApiException.Forbidden(request.ForbiddenMessage());
        }
    }

    /// <summary>Whether a user may do something (SubjectAccessReview semantics).</summary>
    internal bool IsAllowed(AccessRequest request) => !_options.Rbac || _rbac.Allows(request);

    private async Task WriteObjectAsync(ApiRequest r, int code, JsonObject obj)
    {
        if (Tables.WantsTable(r.Http.Request.Headers.Accept.ToString()) && Json.GetString(obj, "kind") == r.Type.Kind)
        {
            var table = _tables.Convert(r.Type, [obj], Json.GetString(obj, "metadata", "resourceVersion") ?? "", r.Query["includeObject"].FirstOrDefault());
            await WriteJsonAsync(r.Http, code, table, "application/json;as=Table;v=v1;g=meta.k8s.io");
            return;
        }

        await WriteJsonAsync(r.Http, code, obj);
    }

    /// <summary>Like Go's encoding/json, quotes and apostrophes in messages are written as they are.</summary>
    internal static readonly JsonWriterOptions WriterOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    internal static async Task WriteJsonAsync(HttpContext http, int code, JsonNode body, string contentType = "application/json")
    {
        http.Response.StatusCode = code;
        http.Response.ContentType = contentType;
        await using var writer = new Utf8JsonWriter(http.Response.Body, WriterOptions);
        body.WriteTo(writer);
        await writer.FlushAsync(http.RequestAborted);
    }

    private static async Task WriteTextAsync(HttpContext http, int code, string text)
    {
        http.Response.StatusCode = code;
        http.Response.ContentType = "text/plain; charset=utf-8";
        await http.Response.WriteAsync(text, http.RequestAborted);
    }

    /// <summary>The request body as JSON: JSON as sent, or protobuf (kubectl's typed commands) decoded; null if empty.</summary>
    private static async Task<JsonNode?> ReadBodyNodeAsync(HttpContext http)
    {
        var contentType = http.Request.ContentType ?? "";
        if (contentType.Contains("cbor", StringComparison.OrdinalIgnoreCase))
        {
            throw new ApiException(415, "UnsupportedMediaType",
                $"the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf; got {contentType}");
        }

        using var buffer = new MemoryStream();
        await http.Request.Body.CopyToAsync(buffer, http.RequestAborted);
        if (buffer.Length == 0)
        {
            return null;
        }

        var bytes = buffer.GetBuffer().AsSpan(0, (int)buffer.Length);
        if (ProtobufBodies.IsProtobuf(bytes))
        {
            return ProtobufBodies.Decode(bytes);
        }

        try
        {
            return JsonNode.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
    }

    private static async Task<JsonObject> ReadBodyAsync(HttpContext http) =>
        await ReadBodyNodeAsync(http) switch
        {
            JsonObject o => o,
            null => throw ApiException.BadRequest("the request needs a body"),
            _ => throw ApiException.BadRequest("the request body is not a JSON object"),
        };

    private static void AddWarning(HttpContext http, string warning)
    {
        var escaped = warning.Replace("\"", "\\\"", StringComparison.Ordinal);
        http.Response.Headers.Append("Warning", $"299 - \"{escaped}\"");
    }
}

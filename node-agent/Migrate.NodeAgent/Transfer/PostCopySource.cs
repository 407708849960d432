using System.IO.Hashing;
using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Agent.Contracts.Transfer;
using Migrate.Api;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Microsoft.Extensions.Options;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The source's side of post-copy: answers the target agent's requests for the pages a final dump
/// left here, read from the pod's frozen processes. Only the target the migration's token names,
/// only while the pod is frozen after such a dump, only pages the dump left here.
/// </summary>
public sealed partial class PostCopySource(CheckpointEngine engine, ImageReceiver receiver, IOptions<AgentOptions> options, ILogger<PostCopySource> logger)
{
    private readonly bool _corrupt = options.Value.CorruptServedPagesForTesting;

    public async Task ServeAsync(IAsyncStreamReader<PageFetch> requests, IServerStreamWriter<PageData> replies, string? peer, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ArgumentNullException.ThrowIfNull(replies);
        if (!await requests.MoveNext(cancellationToken))
        {
            return;
        }

        var first = requests.Current;
        var (record, container) = Admit(first.MigrationId, first.Token, first.Container, peer);

        long served = 0;
        using var pages = OpenPages(record, container);
        var buffer = new byte[RemotePagesProtocol.MaxPages * PagemapEntry.PageSize];
        var request = first;
        while (true)
        {
            if (request.Pages is 0 or > RemotePagesProtocol.MaxPages || request.TaskId is 0 or > int.MaxValue)
            {
                throw Refuse(StatusCode.InvalidArgument, $"a request for {request.Pages} pages of task {request.TaskId} (1 to {RemotePagesProtocol.MaxPages} pages of a task that can be)");
            }

            // a pod thawed by a rollback, or ended after the commit, has no pages to give any more
            EnsureServing(record);
            int length = (int)request.Pages * PagemapEntry.PageSize;
            try
            {
                pages.Read((int)request.TaskId, request.Address, (int)request.Pages, buffer);
            }
            catch (PageServerException e)
            {
                throw Refuse(StatusCode.InvalidArgument, e.Message);
            }
            catch (IOException e)
            {
                throw Refuse(StatusCode.Internal, e.Message);
            }

            var data = buffer.AsSpan(0, length);
            ulong checksum = XxHash64.HashToUInt64(data);
            Corrupt(data);
            await replies.WriteAsync(new PageData { Data = ByteString.CopyFrom(data), Checksum = checksum }, cancellationToken);
            served += request.Pages;
            if (!await requests.MoveNext(cancellationToken))
            {
                break;
            }

            request = requests.Current;
        }

        LogServed(record.MigrationId, container.Name, served);
    }

    /// <summary>
    /// The pages lane (HTTP/1.1, <see cref="PagesLane"/>): every request of the body answered in turn on
    /// the response's body. Refused before any page with an HTTP status and the reason; a page that
    /// cannot be given later ends the body with a refusal frame.
    /// </summary>
    public async Task ServeLaneAsync(HttpContext http, string? peer)
    {
        ArgumentNullException.ThrowIfNull(http);
        string Header(string name) => http.Request.Headers[name].FirstOrDefault() ?? "";
        MigrationRecord record;
        ContainerRecord container;
        IReadOnlyList<(int TaskId, ulong Address, int Pages)> asked;
        LivePages opened;
        try
        {
            (record, container) = Admit(Header(PagesLane.MigrationHeader), Header(PagesLane.TokenHeader), Header(PagesLane.ContainerHeader), peer);
            long length = http.Request.ContentLength ?? -1;
            if (length <= 0 || length > (long)PagesLane.MaxRequests * PagesLane.RequestSize)
            {
                throw Refuse(StatusCode.InvalidArgument, $"a pages lane needs a body of 1 to {PagesLane.MaxRequests} requests with its length; this one has {length} bytes");
            }

            var body = new byte[length];
            await http.Request.Body.ReadExactlyAsync(body, http.RequestAborted);
            asked = ReadRequests(body);
            opened = OpenPages(record, container);
        }
        catch (Exception e) when (e is RpcException or TransferRejectedException)
        {
            var (code, message) = e is RpcException rpc ? (rpc.StatusCode, rpc.Status.Detail) : (((TransferRejectedException)e).Code, e.Message);
            http.Response.StatusCode = code switch
            {
                StatusCode.PermissionDenied or StatusCode.Unauthenticated => StatusCodes.Status403Forbidden,
                StatusCode.NotFound => StatusCodes.Status404NotFound,
                StatusCode.FailedPrecondition => StatusCodes.Status409Conflict,
                StatusCode.InvalidArgument => StatusCodes.Status400BadRequest,
                _ => StatusCodes.Status500InternalServerError,
            };
            await http.Response.WriteAsync(message, http.RequestAborted);
            return;
        }

        using var pages = opened;
        http.Response.StatusCode = StatusCodes.Status200OK;
        http.Response.ContentType = "application/octet-stream";
        var answer = new byte[PagesLane.AnswerHeadSize + (PagesLane.MaxPages * PagemapEntry.PageSize)];
        long served = 0;
        foreach (var (task, address, count) in asked)
        {
            int length = count * PagemapEntry.PageSize;
            var data = answer.AsMemory(PagesLane.AnswerHeadSize, length);
            try
            {
                // a pod thawed by a rollback, or ended after the commit, has no pages to give any more
                EnsureServing(record);
                pages.Read(task, address, count, data.Span);
            }
            catch (Exception e) when (e is RpcException or PageServerException or IOException)
            {
                await http.Response.Body.WriteAsync(PagesLane.Refusal(e is RpcException rpc ? rpc.Status.Detail : e.Message), http.RequestAborted);
                return;
            }

            PagesLane.WriteAnswerHead(answer, XxHash64.HashToUInt64(data.Span));
            Corrupt(data.Span);
            await http.Response.Body.WriteAsync(answer.AsMemory(0, PagesLane.AnswerHeadSize + length), http.RequestAborted);
            served += count;
        }

        LogServed(record.MigrationId, container.Name, served);
    }

    /// <summary>Fault injection (<see cref="AgentOptions.CorruptServedPagesForTesting"/>): one bit of the piece flipped after its checksum was taken.</summary>
    private void Corrupt(Span<byte> piece)
    {
        if (_corrupt && piece.Length > 0)
        {
            piece[piece.Length / 2] ^= 0x10;
        }
    }

    private static IReadOnlyList<(int TaskId, ulong Address, int Pages)> ReadRequests(byte[] body)
    {
        try
        {
            return PagesLane.ReadRequests(body);
        }
        catch (InvalidDataException e)
        {
            throw Refuse(StatusCode.InvalidArgument, e.Message);
        }
    }

    /// <summary>Who may have the pages of which container: the token's target, for a migration frozen here after a post-copy dump.</summary>
    private (MigrationRecord Record, ContainerRecord Container) Admit(string migrationId, string token, string containerName, string? peer)
    {
        if (!CheckpointEngine.IsValidMigrationId(migrationId))
        {
            throw Refuse(StatusCode.InvalidArgument, $"'{migrationId}' is not a migration id");
        }

        receiver.AuthorizeTarget(token, migrationId, peer);
        var record = engine.Find(migrationId) ?? throw Refuse(StatusCode.NotFound, $"migration {migrationId} is not known on this node");
        var container = record.Containers.FirstOrDefault(c => c.Name == containerName)
            ?? throw Refuse(StatusCode.InvalidArgument, $"migration {migrationId} has no container '{containerName}'");
        EnsureServing(record);
        return (record, container);
    }

    private static void EnsureServing(MigrationRecord record)
    {
        if (!record.PostCopy || record.Phase != MigrationPhase.Frozen)
        {
            throw Refuse(StatusCode.FailedPrecondition,
                $"migration {record.MigrationId} is {record.Phase}{(record.PostCopy ? "" : " and left no pages on this node")}: it has no pages to give");
        }
    }

    private static LivePages OpenPages(MigrationRecord record, ContainerRecord container)
    {
        try
        {
            return LivePages.Open(container.Pid, Path.Combine(record.StagingDirectory, StagingLayout.LazyMemoryImages(container.Name)));
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or InvalidDataException or UnauthorizedAccessException)
        {
            throw Refuse(StatusCode.FailedPrecondition, $"the frozen processes of container {container.Name} cannot be read: {e.Message}");
        }
    }

    private static RpcException Refuse(StatusCode code, string message) => new(new Status(code, message));

    [LoggerMessage(Level = LogLevel.Information, Message = "migration {Migration}: served {Pages} pages of container {Container} left on this node to the target")]
    private partial void LogServed(string migration, string container, long pages);
}

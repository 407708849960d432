using System.IO.Hashing;
using Google.Protobuf;
using Grpc.Core;
using Migrate.Agent.V1;
using Migrate.Api;
using Migrate.Criu.Images;
using Migrate.Criu.Lazy;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The source's side of post-copy: answers the target agent's requests for the pages a final dump
/// left here, read from the pod's frozen processes. Only the target the migration's token names,
/// only while the pod is frozen after such a dump, only pages the dump left here.
/// </summary>
public sealed partial class PostCopySource(CheckpointEngine engine, ImageReceiver receiver, ILogger<PostCopySource> logger)
{
    public async Task ServeAsync(IAsyncStreamReader<PageFetch> requests, IServerStreamWriter<PageData> replies, string? peer, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ArgumentNullException.ThrowIfNull(replies);
        if (!await requests.MoveNext(cancellationToken))
        {
            return;
        }

        var first = requests.Current;
        if (!CheckpointEngine.IsValidMigrationId(first.MigrationId))
        {
            throw Refuse(StatusCode.InvalidArgument, $"'{first.MigrationId}' is not a migration id");
        }

        receiver.AuthorizeTarget(first.Token, first.MigrationId, peer);
        var record = engine.Find(first.MigrationId) ?? throw Refuse(StatusCode.NotFound, $"migration {first.MigrationId} is not known on this node");
        var container = record.Containers.FirstOrDefault(c => c.Name == first.Container)
            ?? throw Refuse(StatusCode.InvalidArgument, $"migration {first.MigrationId} has no container '{first.Container}'");
        EnsureServing(record);

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
            await replies.WriteAsync(new PageData { Data = ByteString.CopyFrom(data), Checksum = XxHash64.HashToUInt64(data) }, cancellationToken);
            served += request.Pages;
            if (!await requests.MoveNext(cancellationToken))
            {
                break;
            }

            request = requests.Current;
        }

        LogServed(record.MigrationId, container.Name, served);
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

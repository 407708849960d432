using System.Net;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.Contracts.Transfer;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The source's end of an upload's bulk lane: one HTTP/1.1 POST over mutual TLS to the target agent,
/// its body the preamble, the frames the sender writes, and the end frame. The target's verdict on
/// the bytes comes on the gRPC stream; this request's answer only says the body was read.
/// </summary>
internal sealed class BulkUpload : IAsyncDisposable
{
    private readonly HttpClient _client;
    private readonly LaneContent _content;
    private readonly Task<HttpResponseMessage> _response;
    private readonly Stream _body;

    private BulkUpload(HttpClient client, LaneContent content, Task<HttpResponseMessage> response, Stream body)
    {
        _client = client;
        _content = content;
        _response = response;
        _body = body;
    }

    /// <summary>The body's exact length when the frames are not compressed: the preamble, a header per chunk with its bytes, the end frame.</summary>
    public static long BodyLength(IEnumerable<long> bytesPerFile, int chunkSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkSize);
        long length = BulkLane.Preamble.Length + BulkFrame.HeaderBytes;
        foreach (long bytes in bytesPerFile)
        {
            length += bytes + (((bytes + chunkSize - 1) / chunkSize) * BulkFrame.HeaderBytes);
        }

        return length;
    }

    /// <summary>Opens the lane with the ticket the target gave; <paramref name="length"/> is the body's length when known.</summary>
    public static async Task<BulkUpload> OpenAsync(HttpClient client, string address, string ticket, long? length, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(client);
        var content = new LaneContent(length);
        try
        {
            var message = new HttpRequestMessage(HttpMethod.Post, new Uri($"https://{address}{BulkLane.Path}"))
            {
                Version = HttpVersion.Version11,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                Content = content,
            };
            message.Headers.TryAddWithoutValidation(BulkLane.TicketHeader, ticket);
            var response = client.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            if (await Task.WhenAny(content.Opened, response) == response)
            {
                using var early = await response;
                throw new IOException($"the target answered the bulk lane before its body: {(int)early.StatusCode} {await early.Content.ReadAsStringAsync(cancellationToken)}");
            }

            var body = await content.Opened;
            await body.WriteAsync(BulkLane.Preamble.ToArray(), cancellationToken);
            return new BulkUpload(client, content, response, body);
        }
        catch
        {
            content.Fail();
            client.Dispose();
            throw;
        }
    }

    /// <summary>Writes one frame: its 20-byte header followed by its bytes, in one buffer.</summary>
    public ValueTask WriteAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken) => _body.WriteAsync(frame, cancellationToken);

    /// <summary>Writes the end frame and waits for the target to have read the body.</summary>
    public async Task FinishAsync(CancellationToken cancellationToken)
    {
        var end = new byte[BulkFrame.HeaderBytes];
        BulkFrame.End.Write(end);
        await _body.WriteAsync(end, cancellationToken);
        await _body.FlushAsync(cancellationToken);
        _content.Finish();
        using var response = await _response;
        if (!response.IsSuccessStatusCode)
        {
            throw new IOException($"the target did not take the bulk lane: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(cancellationToken)}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        // a lane not finished is cut: the target keeps what arrived for a resume
        _content.Fail();
        try
        {
            (await _response).Dispose();
        }
        catch (Exception e) when (e is HttpRequestException or IOException or OperationCanceledException)
        {
            // already reported by the write or the verdict that failed
        }

        _client.Dispose();
    }

    /// <summary>A request body written by its owner through the stream the handler opens, until it says it is finished.</summary>
    private sealed class LaneContent(long? length) : HttpContent
    {
        private readonly TaskCompletionSource<Stream> _opened = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<Stream> Opened => _opened.Task;

        public void Finish() => _finished.TrySetResult();

        public void Fail() => _finished.TrySetCanceled();

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            _opened.TrySetResult(stream);
            await _finished.Task;
        }

        protected override bool TryComputeLength(out long computed)
        {
            computed = length ?? 0;
            return length is not null;
        }
    }
}

using System.Net;
using Polly;
using Polly.Retry;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Retries Kubernetes API calls that failed for a passing reason (connection errors, 429, 502, 503,
/// 504) with exponential backoff and jitter. Only idempotent verbs are retried (GET, PUT, PATCH,
/// DELETE; a PUT or PATCH carries the resourceVersion it read, so a retry cannot overwrite a newer
/// write); a POST is never repeated blindly.
/// </summary>
public sealed class ResilientApiHandler : DelegatingHandler
{
    private static readonly HttpStatusCode[] Transient = [HttpStatusCode.TooManyRequests, HttpStatusCode.BadGateway, HttpStatusCode.ServiceUnavailable, HttpStatusCode.GatewayTimeout];

    private readonly ResiliencePipeline<HttpResponseMessage> _pipeline;

    public ResilientApiHandler(int retries = 3, TimeSpan? delay = null)
    {
        _pipeline = new ResiliencePipelineBuilder<HttpResponseMessage>()
            .AddRetry(new RetryStrategyOptions<HttpResponseMessage>
            {
                ShouldHandle = new PredicateBuilder<HttpResponseMessage>()
                    .Handle<HttpRequestException>()
                    .HandleResult(response => Transient.Contains(response.StatusCode)),
                MaxRetryAttempts = retries,
                Delay = delay ?? TimeSpan.FromMilliseconds(200),
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                OnRetry = arguments =>
                {
                    arguments.Outcome.Result?.Dispose();
                    return ValueTask.CompletedTask;
                },
            })
            .Build();
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Method == HttpMethod.Post)
        {
            return await base.SendAsync(request, cancellationToken);
        }

        // the request body (if any) is buffered by the client library, so it can be sent again
        return await _pipeline.ExecuteAsync(async token => await base.SendAsync(request, token), cancellationToken);
    }
}

using Grpc.Core;
using Grpc.Core.Interceptors;
using Polly;
using Polly.CircuitBreaker;
using Polly.Retry;

namespace Migrate.Operator.Reconciliation;

/// <summary>
/// Resilience for calls to one agent: retries with exponential backoff and jitter when the agent is
/// unreachable (every agent call is idempotent per migration id, so a retry cannot do a step twice),
/// and a circuit breaker that fails calls fast while an agent keeps being unreachable. Refusals
/// (NOT_FOUND, FAILED_PRECONDITION, ...) are never retried. Streaming calls pass through: the
/// source agent resumes its own transfers.
/// </summary>
public sealed class AgentResilience : Interceptor
{
    private readonly ResiliencePipeline _pipeline;
    private readonly string _endpoint;

    public AgentResilience(string endpoint, int retries = 3, TimeSpan? breakDuration = null)
    {
        _endpoint = endpoint;
        var transient = new PredicateBuilder().Handle<RpcException>(e => e.StatusCode is StatusCode.Unavailable);
        _pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = transient,
                MaxRetryAttempts = retries,
                Delay = TimeSpan.FromMilliseconds(100),
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
            })
            .AddCircuitBreaker(new CircuitBreakerStrategyOptions
            {
                ShouldHandle = transient,
                FailureRatio = 0.9,
                MinimumThroughput = 6,
                SamplingDuration = TimeSpan.FromSeconds(30),
                BreakDuration = breakDuration ?? TimeSpan.FromSeconds(15),
            })
            .Build();
    }

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        var response = CallAsync(request, context, continuation);
        return new AsyncUnaryCall<TResponse>(response, Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => [], () => { });
    }

    private async Task<TResponse> CallAsync<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        where TRequest : class
        where TResponse : class
    {
        try
        {
            return await _pipeline.ExecuteAsync(async _ =>
            {
                using var call = continuation(request, context);
                return await call.ResponseAsync;
            }, context.Options.CancellationToken);
        }
        catch (BrokenCircuitException e)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"the agent at {_endpoint} keeps failing; calls to it are paused ({e.Message})"));
        }
    }
}

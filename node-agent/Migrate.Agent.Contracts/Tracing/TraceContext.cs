using System.Diagnostics;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Migrate.Agent.Contracts.Tracing;

/// <summary>
/// W3C trace context in gRPC metadata: the caller's current span goes out as <c>traceparent</c>
/// (and <c>tracestate</c>), and the callee's work runs in a server span that is its child, so a
/// migration is one trace across the operator and both agents.
/// </summary>
public static class TraceContext
{
    public const string ParentHeader = "traceparent";
    public const string StateHeader = "tracestate";

    /// <summary>The headers with the current span's context added (when there is one).</summary>
    public static Metadata Inject(Metadata? headers)
    {
        headers ??= [];
        if (Activity.Current is { IdFormat: ActivityIdFormat.W3C } current && headers.Get(ParentHeader) is null)
        {
            headers.Add(ParentHeader, current.Id!);
            if (current.TraceStateString is { Length: > 0 } state)
            {
                headers.Add(StateHeader, state);
            }
        }

        return headers;
    }

    /// <summary>The caller's span context from the request headers, if it sent a valid one.</summary>
    public static ActivityContext? Extract(Metadata headers)
    {
        ArgumentNullException.ThrowIfNull(headers);
        return headers.GetValue(ParentHeader) is { } parent && ActivityContext.TryParse(parent, headers.GetValue(StateHeader), isRemote: true, out var context)
            ? context
            : null;
    }
}

/// <summary>Adds the current span's W3C trace context to every outgoing call.</summary>
public sealed class TraceContextClientInterceptor : Interceptor
{
    private static ClientInterceptorContext<TRequest, TResponse> WithTrace<TRequest, TResponse>(ClientInterceptorContext<TRequest, TResponse> context)
        where TRequest : class
        where TResponse : class =>
        new(context.Method, context.Host, context.Options.WithHeaders(TraceContext.Inject(context.Options.Headers)));

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return continuation(request, WithTrace(context));
    }

    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context,
        AsyncServerStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return continuation(request, WithTrace(context));
    }

    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(ClientInterceptorContext<TRequest, TResponse> context,
        AsyncClientStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return continuation(WithTrace(context));
    }

    public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(ClientInterceptorContext<TRequest, TResponse> context,
        AsyncDuplexStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        return continuation(WithTrace(context));
    }
}

/// <summary>Runs each incoming call in a server span whose parent is the caller's span (from its traceparent).</summary>
public sealed class TraceContextServerInterceptor(ActivitySource source) : Interceptor
{
    private Activity? Start(ServerCallContext context)
    {
        // the caller's context, not whatever the host had current
        Activity.Current = null;
        var parent = TraceContext.Extract(context.RequestHeaders);
        var activity = source.StartActivity(context.Method.TrimStart('/'), ActivityKind.Server, parent ?? default);
        activity?.SetTag("rpc.system", "grpc");
        activity?.SetTag("rpc.method", context.Method);
        return activity;
    }

    private static void Fail(Activity? activity, Exception e) => activity?.SetStatus(ActivityStatusCode.Error, e.Message);

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        using var activity = Start(context);
        try
        {
            return await continuation(request, context);
        }
        catch (Exception e)
        {
            Fail(activity, e);
            throw;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context,
        ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        using var activity = Start(context);
        try
        {
            await continuation(request, responseStream, context);
        }
        catch (Exception e)
        {
            Fail(activity, e);
            throw;
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context,
        ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        using var activity = Start(context);
        try
        {
            return await continuation(requestStream, context);
        }
        catch (Exception e)
        {
            Fail(activity, e);
            throw;
        }
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        using var activity = Start(context);
        try
        {
            await continuation(requestStream, responseStream, context);
        }
        catch (Exception e)
        {
            Fail(activity, e);
            throw;
        }
    }
}

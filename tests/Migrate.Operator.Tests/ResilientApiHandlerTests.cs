using System.Net;
using Migrate.Operator.Reconciliation;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>Which Kubernetes API calls are retried, and which never are.</summary>
public sealed class ResilientApiHandlerTests
{
    private sealed class Flaky(params HttpStatusCode[] answers) : HttpMessageHandler
    {
        public int Calls { get; private set; }

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(new HttpResponseMessage(answers[Math.Min(Calls++, answers.Length - 1)]));
    }

    private static async Task<(HttpStatusCode Status, int Calls)> SendAsync(HttpMethod method, params HttpStatusCode[] answers)
    {
        var flaky = new Flaky(answers);
        using var handler = new ResilientApiHandler(retries: 3, delay: TimeSpan.FromMilliseconds(1)) { InnerHandler = flaky };
        using var client = new HttpClient(handler);
        using var response = await client.SendAsync(new HttpRequestMessage(method, new Uri("http://api.invalid/api/v1/pods")));
        return (response.StatusCode, flaky.Calls);
    }

    [Fact]
    public async Task A_read_through_a_passing_overload_is_retried_until_it_succeeds()
    {
        var (status, calls) = await SendAsync(HttpMethod.Get, HttpStatusCode.ServiceUnavailable, HttpStatusCode.TooManyRequests, HttpStatusCode.OK);

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(3, calls);
    }

    [Fact]
    public async Task A_create_is_never_repeated_and_refusals_are_not_retried()
    {
        var post = await SendAsync(HttpMethod.Post, HttpStatusCode.ServiceUnavailable, HttpStatusCode.OK);
        var conflict = await SendAsync(HttpMethod.Put, HttpStatusCode.Conflict, HttpStatusCode.OK);
        var exhausted = await SendAsync(HttpMethod.Patch, HttpStatusCode.BadGateway);

        Assert.Equal((HttpStatusCode.ServiceUnavailable, 1), post);
        Assert.Equal((HttpStatusCode.Conflict, 1), conflict);
        Assert.Equal((HttpStatusCode.BadGateway, 4), exhausted);
    }
}

using System.Text.Json.Nodes;

namespace Migrate.Operator.Admission;

/// <summary>The AdmissionReview v1 exchange both webhooks share: read the request, ask the decision, answer allowed or refused with a code and a reason.</summary>
public static class AdmissionReviews
{
    /// <param name="http">The webhook call.</param>
    /// <param name="decide">From the review's request: null to allow, otherwise why not.</param>
    /// <param name="refusalCode">The HTTP status a refusal carries (409, 429, ...).</param>
    /// <param name="refusalReason">Its reason (Conflict, TooManyRequests, ...).</param>
    public static async Task AnswerAsync(HttpContext http, Func<JsonObject, CancellationToken, Task<string?>> decide, int refusalCode, string refusalReason)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(decide);
        var review = await JsonNode.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted) as JsonObject;
        var request = review?["request"] as JsonObject;
        if (request?["uid"]?.GetValue<string>() is not { } uid)
        {
            http.Response.StatusCode = 400;
            await http.Response.WriteAsync("not an AdmissionReview with a request uid", http.RequestAborted);
            return;
        }

        var refusal = await decide(request, http.RequestAborted);
        var response = new JsonObject { ["uid"] = uid, ["allowed"] = refusal is null };
        if (refusal is not null)
        {
            response["status"] = new JsonObject { ["code"] = refusalCode, ["reason"] = refusalReason, ["message"] = refusal };
        }

        http.Response.ContentType = "application/json";
        await http.Response.WriteAsync(new JsonObject
        {
            ["apiVersion"] = "admission.k8s.io/v1",
            ["kind"] = "AdmissionReview",
            ["response"] = response,
        }.ToJsonString(), http.RequestAborted);
    }
}

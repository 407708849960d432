using System.Net;
using System.Net.Http.Headers;

namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// Pushes and deletes images in one repository of a registry through the OCI distribution API
/// (blobs uploaded monolithically: POST then PUT with the digest; manifests put by tag, deleted by
/// digest). Any answer other than the API's success codes is an error naming the call and the status.
/// </summary>
public sealed class OciRegistryClient(HttpClient http, Uri baseAddress, string repository)
{
    public const string ManifestMediaType = "application/vnd.oci.image.manifest.v1+json";

    /// <summary>Uploads a blob unless the repository holds it already.</summary>
    public async Task PushBlobAsync(string digest, long size, Func<Stream> open, CancellationToken cancellationToken)
    {
        using (var head = new HttpRequestMessage(HttpMethod.Head, Api($"blobs/{digest}")))
        using (var held = await http.SendAsync(head, cancellationToken))
        {
            if (held.IsSuccessStatusCode)
            {
                return;
            }
        }

        using var start = await http.PostAsync(Api("blobs/uploads/"), content: null, cancellationToken);
        Expect(start, HttpStatusCode.Accepted, "starting a blob upload");
        var location = start.Headers.Location ?? throw new HttpRequestException($"registry {baseAddress} started a blob upload to {repository} without a Location");
        if (!location.IsAbsoluteUri)
        {
            location = new Uri(baseAddress, location);
        }

        var target = new UriBuilder(location);
        target.Query = (string.IsNullOrEmpty(target.Query) ? "" : target.Query.TrimStart('?') + "&") + "digest=" + Uri.EscapeDataString(digest);
        await using var body = open();
        using var content = new StreamContent(body, 1 << 20);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        content.Headers.ContentLength = size;
        using var put = await http.PutAsync(target.Uri, content, cancellationToken);
        Expect(put, HttpStatusCode.Created, $"uploading blob {digest}");
    }

    /// <summary>Puts a manifest under a tag; returns its digest (as the registry computed it).</summary>
    public async Task<string> PushManifestAsync(string tag, byte[] manifest, CancellationToken cancellationToken)
    {
        using var content = new ByteArrayContent(manifest);
        content.Headers.ContentType = new MediaTypeHeaderValue(ManifestMediaType);
        using var put = await http.PutAsync(Api($"manifests/{tag}"), content, cancellationToken);
        Expect(put, HttpStatusCode.Created, $"putting manifest {tag}");
        return put.Headers.TryGetValues("Docker-Content-Digest", out var digests) && digests.FirstOrDefault() is { Length: > 0 } digest
            ? digest
            : "sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(manifest));
    }

    /// <summary>Deletes a manifest by digest; one already gone is no error.</summary>
    public async Task DeleteManifestAsync(string digest, CancellationToken cancellationToken)
    {
        using var delete = await http.DeleteAsync(Api($"manifests/{digest}"), cancellationToken);
        if (delete.StatusCode != HttpStatusCode.NotFound)
        {
            Expect(delete, HttpStatusCode.Accepted, $"deleting manifest {digest}");
        }
    }

    private Uri Api(string path) => new(baseAddress, $"v2/{repository}/{path}");

    private void Expect(HttpResponseMessage response, HttpStatusCode expected, string what)
    {
        if (response.StatusCode != expected && !(expected == HttpStatusCode.Created && response.StatusCode == HttpStatusCode.OK))
        {
            throw new HttpRequestException($"registry {baseAddress.Authority} refused {what} in {repository}: {(int)response.StatusCode} {response.ReasonPhrase}", null, response.StatusCode);
        }
    }
}

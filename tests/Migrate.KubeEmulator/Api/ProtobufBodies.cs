using System.Text;
using System.Text.Json.Nodes;

namespace Migrate.KubeEmulator.Api;

/// <summary>
/// Decodes the Kubernetes protobuf request bodies kubectl's typed commands send
/// (<c>kubectl create namespace|configmap|secret|serviceaccount|token</c>, <c>kubectl auth can-i</c>,
/// and <c>kubectl drain</c>'s evictions and delete options) into the JSON the rest of the server works with. Only the kinds
/// listed in <see cref="Messages"/> are understood; any other protobuf body gets 415. Field numbers
/// follow the published generated.proto files of k8s.io/api and k8s.io/apimachinery.
/// </summary>
public static class ProtobufBodies
{
    private static readonly byte[] Magic = "k8s\0"u8.ToArray();

    private enum Kind
    {
        String,
        Bytes,
        Int64,
        Bool,
        Message,
        Time,
        StringMap,
        BytesMap,
    }

    private sealed record Field(int Number, string Name, Kind Kind, bool Repeated = false, string? Message = null);

    private static readonly Dictionary<string, Field[]> Messages = new(StringComparer.Ordinal)
    {
        ["ObjectMeta"] =
        [
            new(1, "name", Kind.String), new(2, "generateName", Kind.String), new(3, "namespace", Kind.String),
            new(5, "uid", Kind.String), new(6, "resourceVersion", Kind.String), new(7, "generation", Kind.Int64),
            new(8, "creationTimestamp", Kind.Time), new(9, "deletionTimestamp", Kind.Time), new(10, "deletionGracePeriodSeconds", Kind.Int64),
            new(11, "labels", Kind.StringMap), new(12, "annotations", Kind.StringMap),
            new(13, "ownerReferences", Kind.Message, true, "OwnerReference"), new(14, "finalizers", Kind.String, true),
        ],
        ["OwnerReference"] =
        [
            new(5, "apiVersion", Kind.String), new(1, "kind", Kind.String), new(3, "name", Kind.String), new(4, "uid", Kind.String),
            new(6, "controller", Kind.Bool), new(7, "blockOwnerDeletion", Kind.Bool),
        ],
        ["ObjectReference"] =
        [
            new(1, "kind", Kind.String), new(2, "namespace", Kind.String), new(3, "name", Kind.String), new(4, "uid", Kind.String),
            new(5, "apiVersion", Kind.String), new(6, "resourceVersion", Kind.String), new(7, "fieldPath", Kind.String),
        ],
        ["LocalObjectReference"] = [new(1, "name", Kind.String)],
        ["Namespace"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "spec", Kind.Message, Message: "NamespaceSpec")],
        ["NamespaceSpec"] = [new(1, "finalizers", Kind.String, true)],
        ["ConfigMap"] =
        [
            new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "data", Kind.StringMap), new(3, "binaryData", Kind.BytesMap),
            new(4, "immutable", Kind.Bool),
        ],
        ["Secret"] =
        [
            new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "data", Kind.BytesMap), new(3, "type", Kind.String),
            new(4, "stringData", Kind.StringMap), new(5, "immutable", Kind.Bool),
        ],
        ["ServiceAccount"] =
        [
            new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "secrets", Kind.Message, true, "ObjectReference"),
            new(3, "imagePullSecrets", Kind.Message, true, "LocalObjectReference"), new(4, "automountServiceAccountToken", Kind.Bool),
        ],
        ["Eviction"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "deleteOptions", Kind.Message, Message: "DeleteOptions")],
        ["DeleteOptions"] =
        [
            new(1, "gracePeriodSeconds", Kind.Int64), new(2, "preconditions", Kind.Message, Message: "Preconditions"),
            new(3, "orphanDependents", Kind.Bool), new(4, "propagationPolicy", Kind.String), new(5, "dryRun", Kind.String, true),
        ],
        ["Preconditions"] = [new(1, "uid", Kind.String), new(2, "resourceVersion", Kind.String)],
        ["TokenRequest"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "spec", Kind.Message, Message: "TokenRequestSpec")],
        ["TokenRequestSpec"] =
        [
            new(1, "audiences", Kind.String, true), new(4, "expirationSeconds", Kind.Int64),
            new(3, "boundObjectRef", Kind.Message, Message: "BoundObjectReference"),
        ],
        ["SelfSubjectAccessReview"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "spec", Kind.Message, Message: "SelfSubjectAccessReviewSpec")],
        ["SelfSubjectAccessReviewSpec"] =
        [
            new(1, "resourceAttributes", Kind.Message, Message: "ResourceAttributes"),
            new(2, "nonResourceAttributes", Kind.Message, Message: "NonResourceAttributes"),
        ],
        ["SubjectAccessReview"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "spec", Kind.Message, Message: "SubjectAccessReviewSpec")],
        ["SubjectAccessReviewSpec"] =
        [
            new(1, "resourceAttributes", Kind.Message, Message: "ResourceAttributes"),
            new(2, "nonResourceAttributes", Kind.Message, Message: "NonResourceAttributes"),
            new(3, "user", Kind.String), new(4, "groups", Kind.String, true), new(6, "uid", Kind.String),
        ],
        ["ResourceAttributes"] =
        [
            new(1, "namespace", Kind.String), new(2, "verb", Kind.String), new(3, "group", Kind.String), new(4, "version", Kind.String),
            new(5, "resource", Kind.String), new(6, "subresource", Kind.String), new(7, "name", Kind.String),
        ],
        ["NonResourceAttributes"] = [new(1, "path", Kind.String), new(2, "verb", Kind.String)],
        ["TokenReview"] = [new(1, "metadata", Kind.Message, Message: "ObjectMeta"), new(2, "spec", Kind.Message, Message: "TokenReviewSpec")],
        ["TokenReviewSpec"] = [new(1, "token", Kind.String), new(2, "audiences", Kind.String, true)],
        ["BoundObjectReference"] = [new(1, "kind", Kind.String), new(2, "apiVersion", Kind.String), new(3, "name", Kind.String), new(4, "uid", Kind.String)],
    };

    public static bool IsProtobuf(ReadOnlySpan<byte> body) => body.StartsWith(Magic);

    /// <summary>Decodes a body that starts with the k8s protobuf envelope magic.</summary>
    public static JsonObject Decode(ReadOnlySpan<byte> body)
    {
        var envelope = new Reader(body[Magic.Length..]);
        string apiVersion = "", kind = "";
        ReadOnlySpan<byte> raw = default;
        while (envelope.More)
        {
            var (number, wire) = envelope.Tag();
            switch (number)
            {
                case 1 when wire == 2:
                    var typeMeta = new Reader(envelope.LengthDelimited());
                    while (typeMeta.More)
                    {
                        var (n, w) = typeMeta.Tag();
                        if (n == 1 && w == 2)
                        {
                            apiVersion = Encoding.UTF8.GetString(typeMeta.LengthDelimited());
                        }
                        else if (n == 2 && w == 2)
                        {
                            kind = Encoding.UTF8.GetString(typeMeta.LengthDelimited());
                        }
                        else
                        {
                            typeMeta.Skip(w);
                        }
                    }

                    break;
                case 2 when wire == 2:
                    raw = envelope.LengthDelimited();
                    break;
                default:
                    envelope.Skip(wire);
                    break;
            }
        }

        if (!Messages.ContainsKey(kind))
        {
            throw new ApiException(415, "UnsupportedMediaType",
                $"the emulator decodes protobuf bodies only for Namespace, ConfigMap, Secret, ServiceAccount, Eviction, DeleteOptions, TokenRequest and access and token reviews; got {kind} (send JSON, e.g. kubectl apply -f)");
        }

        var obj = DecodeMessage(raw, kind);
        if (apiVersion.Length > 0)
        {
            obj["apiVersion"] = apiVersion;
        }

        obj["kind"] = kind;
        return Json.Ordered(obj);
    }

    private static JsonObject DecodeMessage(ReadOnlySpan<byte> data, string message)
    {
        var fields = Messages[message];
        var obj = new JsonObject();
        var reader = new Reader(data);
        while (reader.More)
        {
            var (number, wire) = reader.Tag();
            var field = Array.Find(fields, f => f.Number == number);
            if (field is null)
            {
                reader.Skip(wire);
                continue;
            }

            JsonNode? value = field.Kind switch
            {
                Kind.String => Encoding.UTF8.GetString(reader.LengthDelimited()),
                Kind.Bytes => Convert.ToBase64String(reader.LengthDelimited()),
                Kind.Int64 => (long)reader.Varint(),
                Kind.Bool => reader.Varint() != 0,
                Kind.Message => DecodeMessage(reader.LengthDelimited(), field.Message!),
                Kind.Time => DecodeTime(reader.LengthDelimited()),
                Kind.StringMap or Kind.BytesMap => null,
                _ => null,
            };

            // Go's non-pointer fields are always encoded, so an empty string (or a zero generation)
            // means "not set", as an omitted JSON field would.
            if ((value is JsonValue sv && sv.TryGetValue<string>(out var text) && text.Length == 0 && !field.Repeated)
                || (field.Name == "generation" && value is JsonValue gv && gv.TryGetValue<long>(out var g) && g == 0))
            {
                continue;
            }

            if (field.Kind is Kind.StringMap or Kind.BytesMap)
            {
                var (key, entryValue) = DecodeMapEntry(reader.LengthDelimited(), field.Kind == Kind.BytesMap);
                var map = obj[field.Name] as JsonObject ?? new JsonObject();
                map[key] = entryValue;
                obj[field.Name] = map;
            }
            else if (field.Repeated)
            {
                var list = obj[field.Name] as JsonArray ?? new JsonArray();
                list.Add(value);
                obj[field.Name] = list;
            }
            else
            {
                obj[field.Name] = value;
            }
        }

        return obj;
    }

    private static (string Key, string Value) DecodeMapEntry(ReadOnlySpan<byte> data, bool bytesValue)
    {
        var reader = new Reader(data);
        string key = "", value = "";
        while (reader.More)
        {
            var (number, wire) = reader.Tag();
            if (number == 1 && wire == 2)
            {
                key = Encoding.UTF8.GetString(reader.LengthDelimited());
            }
            else if (number == 2 && wire == 2)
            {
                var bytes = reader.LengthDelimited();
                value = bytesValue ? Convert.ToBase64String(bytes) : Encoding.UTF8.GetString(bytes);
            }
            else
            {
                reader.Skip(wire);
            }
        }

        return (key, value);
    }

    private static string DecodeTime(ReadOnlySpan<byte> data)
    {
        var reader = new Reader(data);
        long seconds = 0;
        while (reader.More)
        {
            var (number, wire) = reader.Tag();
            if (number == 1 && wire == 0)
            {
                seconds = (long)reader.Varint();
            }
            else
            {
                reader.Skip(wire);
            }
        }

        return Json.Timestamp(DateTimeOffset.FromUnixTimeSeconds(seconds));
    }

    private ref struct Reader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public readonly bool More => _pos < _data.Length;

        public (int Number, int Wire) Tag()
        {
            var tag = Varint();
            return ((int)(tag >> 3), (int)(tag & 7));
        }

        public ulong Varint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length)
                {
                    throw ApiException.BadRequest("truncated protobuf body");
                }

                byte b = _data[_pos++];
                result |= (ulong)(b & 0x7f) << shift;
                if ((b & 0x80) == 0)
                {
                    return result;
                }
            }

            throw ApiException.BadRequest("malformed protobuf varint");
        }

        public ReadOnlySpan<byte> LengthDelimited()
        {
            var length = (int)Varint();
            if (length < 0 || _pos + length > _data.Length)
            {
                throw ApiException.BadRequest("truncated protobuf body");
            }

            var slice = _data.Slice(_pos, length);
            _pos += length;
            return slice;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0:
                    Varint();
                    break;
                case 1:
                    _pos += 8;
                    break;
                case 2:
                    LengthDelimited();
                    break;
                case 5:
                    _pos += 4;
                    break;
                default:
                    throw ApiException.BadRequest($"unsupported protobuf wire type {wire}");
            }
        }
    }
}

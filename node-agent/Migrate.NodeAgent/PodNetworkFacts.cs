using System.Text.Json;
using Migrate.Agent.V1;

namespace Migrate.NodeAgent;

/// <summary>
/// Which pod network a node runs, from its CNI configuration directory read the way container
/// runtimes read it (files ending .conf, .conflist or .json, by name; the first one that parses),
/// and whether that network can move an address between nodes: its IPAM is podmig-ipam.
/// </summary>
public static class PodNetworkFacts
{
    public const string MovableIpam = "podmig-ipam";

    public static PodNetworkInfo Read(string directory)
    {
        if (!Directory.Exists(directory))
        {
            return new PodNetworkInfo { Source = $"no CNI configuration directory {directory}" };
        }

        var files = Directory.EnumerateFiles(directory)
            .Where(f => f.EndsWith(".conf", StringComparison.Ordinal) || f.EndsWith(".conflist", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(f => (Path: f, Text: SafeRead(f)));
        return FromFiles(files, directory);
    }

    /// <summary>The decision itself: the first configuration that parses, as (path, content) pairs in the runtime's order.</summary>
    public static PodNetworkInfo FromFiles(IEnumerable<(string Path, string? Text)> files, string directory)
    {
        ArgumentNullException.ThrowIfNull(files);
        foreach (var (path, text) in files)
        {
            if (text is null)
            {
                continue;
            }

            try
            {
                using var document = JsonDocument.Parse(text);
                var root = document.RootElement;
                if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                {
                    continue;
                }

                // a list names its plugins; a single configuration is its own plugin
                var plugins = root.TryGetProperty("plugins", out var list) && list.ValueKind == JsonValueKind.Array ? [.. list.EnumerateArray()] : new[] { root };
                var ipam = plugins
                    .Where(p => p.ValueKind == JsonValueKind.Object && p.TryGetProperty("ipam", out var i) && i.ValueKind == JsonValueKind.Object && i.TryGetProperty("type", out _))
                    .Select(p => p.GetProperty("ipam").GetProperty("type").GetString() ?? "")
                    .FirstOrDefault() ?? "";
                return new PodNetworkInfo { Name = name.GetString() ?? "", Ipam = ipam, MovesAddresses = ipam == MovableIpam, Source = path };
            }
            catch (JsonException)
            {
                // the runtime skips it too
            }
        }

        return new PodNetworkInfo { Source = $"no readable CNI configuration in {directory}" };
    }

    private static string? SafeRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}

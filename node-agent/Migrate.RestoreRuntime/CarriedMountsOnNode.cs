using System.Diagnostics;
using Migrate.NodeAgent.Checkpointing;

namespace Migrate.RestoreRuntime;

/// <summary>
/// The tmpfs mounts the source carried for a container (<see cref="CarriedMounts"/>), built again
/// on this node: each a tmpfs under the restore's work directory, with the carried files, and a CRIU
/// configuration file naming them as the external mounts the images expect (CRIU binds each in
/// place of the mount it left alone). Disposing unmounts them from the node; the restored container
/// keeps its own binds of them.
/// </summary>
internal sealed class CarriedMountsOnNode : IDisposable
{
    private const string Prefix = "carried-";
    private readonly List<string> _mounted = [];

    private CarriedMountsOnNode(string configurationFile) => ConfigurationFile = configurationFile;

    /// <summary>The CRIU configuration file (CRIU_CONFIG_FILE for the <c>criu swrk</c> runc starts).</summary>
    public string ConfigurationFile { get; }

    public int Count => _mounted.Count;

    public TimeSpan Elapsed { get; private set; }

    /// <summary>Where the CRIU configuration file of a restore's carried mounts is (in its work directory).</summary>
    public static string ConfigurationPath(string work) => Path.Combine(work, "carried-mounts.conf");

    /// <summary>Builds the mounts carried beside <paramref name="images"/> under <paramref name="work"/>; null when none were carried.</summary>
    public static CarriedMountsOnNode? Build(string images, string work)
    {
        var clock = Stopwatch.StartNew();
        CarriedMountSet? set;
        try
        {
            set = CarriedMounts.Read(images);
        }
        catch (InvalidDataException e)
        {
            throw new RestoreFailedException($"the carried tmpfs mounts cannot be read: {e.Message}");
        }

        if (set is null || set.Mounts.Count == 0)
        {
            return null;
        }

        if (CarriedMounts.Problem(set, CarryLimits.Default) is { } problem)
        {
            throw new RestoreFailedException($"the carried tmpfs mounts are refused: {problem}");
        }

        var built = new CarriedMountsOnNode(ConfigurationPath(work));
        try
        {
            var mapping = new List<(string Key, string Path)>();
            for (int i = 0; i < set.Mounts.Count; i++)
            {
                var mount = set.Mounts[i];
                var directory = Path.Combine(work, Prefix + i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                Directory.CreateDirectory(directory);
                Mounts.MountTmpfs(directory, mount.Options);
                built._mounted.Add(directory);
                TmpfsListing.Build(directory, mount.Entries);
                mapping.Add((mount.Key, directory));
            }

            File.WriteAllText(built.ConfigurationFile, CarriedMounts.CriuConfiguration(mapping));
            built.Elapsed = clock.Elapsed;
            return built;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or FormatException)
        {
            built.Dispose();
            throw new RestoreFailedException($"the carried tmpfs mounts could not be built: {e.Message}");
        }
    }

    /// <summary>Unmounts what an earlier attempt (killed before it could) left mounted under <paramref name="work"/>.</summary>
    public static void UnmountLeftovers(string work)
    {
        foreach (var directory in Directory.EnumerateDirectories(work, Prefix + "*"))
        {
            Mounts.DetachIfMounted(directory);
        }
    }

    public void Dispose()
    {
        foreach (var directory in _mounted)
        {
            Mounts.DetachIfMounted(directory);
            Directory.Delete(directory);
        }

        _mounted.Clear();
        File.Delete(ConfigurationFile);
    }
}

using System.Globalization;
using System.Net;

namespace Migrate.NodeAgent.Networking;

/// <summary>
/// The addresses of one pod network held now, kept as files in a directory every node of the
/// network shares (one file per held address, a line per holder; "last" names the address handed
/// out last), changed only under an exclusive lock on the directory's lock file.
/// </summary>
public sealed class AddressStore : IDisposable
{
    private const string LastFile = "last";
    private readonly string _directory;
    private readonly FileStream _lock;

    private AddressStore(string directory, FileStream held)
    {
        _directory = directory;
        _lock = held;
    }

    /// <summary>Opens the network's store, waiting up to <paramref name="wait"/> for another plugin call to let go of it.</summary>
    public static AddressStore Open(string dataDirectory, string network, TimeSpan wait)
    {
        if (string.IsNullOrEmpty(network) || network.Contains('/', StringComparison.Ordinal) || network is "." or "..")
        {
            throw new ArgumentException($"'{network}' is not a network name that can name a directory");
        }

        var directory = Path.Combine(dataDirectory, network);
        Directory.CreateDirectory(directory);
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            try
            {
                return new AddressStore(directory, new FileStream(Path.Combine(directory, ".lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(10);
            }
        }
    }

    public Dictionary<uint, IReadOnlyList<AddressHolder>> Held()
    {
        var held = new Dictionary<uint, IReadOnlyList<AddressHolder>>();
        foreach (var file in Directory.GetFiles(_directory))
        {
            if (IPAddress.TryParse(Path.GetFileName(file), out var address) && address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork)
            {
                held[AddressRange.ToNumber(address)] = [.. File.ReadAllLines(file).Select(Parse).OfType<AddressHolder>()];
            }
        }

        return held;
    }

    public uint? LastAllocated()
    {
        var path = Path.Combine(_directory, LastFile);
        return File.Exists(path) && IPAddress.TryParse(File.ReadAllText(path).Trim(), out var a) ? AddressRange.ToNumber(a) : null;
    }

    /// <summary>Records <paramref name="who"/> as a holder of <paramref name="address"/> (beside any other).</summary>
    public void Add(IPAddress address, AddressHolder who, bool remember)
    {
        var path = Path.Combine(_directory, address.ToString());
        var holders = File.Exists(path) ? File.ReadAllLines(path).Where(l => l.Length > 0).ToList() : [];
        if (!holders.Contains(who.ToString()))
        {
            holders.Add(who.ToString());
            WriteAtomically(path, string.Join('\n', holders) + "\n");
        }

        if (remember)
        {
            WriteAtomically(Path.Combine(_directory, LastFile), address + "\n");
        }
    }

    /// <summary>Forgets every address <paramref name="containerId"/>'s interface holds; an address nobody holds any more is free. Returns what it held.</summary>
    public IReadOnlyList<IPAddress> Remove(string containerId, string @interface)
    {
        var removed = new List<IPAddress>();
        var line = new AddressHolder(containerId, @interface).ToString();
        // the list first: the loop renames and deletes in the directory it reads
        foreach (var file in Directory.GetFiles(_directory))
        {
            if (!IPAddress.TryParse(Path.GetFileName(file), out var address))
            {
                continue;
            }

            var holders = File.ReadAllLines(file).Where(l => l.Length > 0).ToList();
            if (holders.Remove(line))
            {
                removed.Add(address);
                if (holders.Count == 0)
                {
                    File.Delete(file);
                }
                else
                {
                    WriteAtomically(file, string.Join('\n', holders) + "\n");
                }
            }
        }

        return removed;
    }

    public void Dispose() => _lock.Dispose();

    private static AddressHolder? Parse(string line)
    {
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return parts.Length == 2 ? new AddressHolder(parts[0], parts[1]) : null;
    }

    // on disk before it replaces the old one: after a crash an address is never held by an empty file
    private static void WriteAtomically(string path, string text) => WholeFile.WriteText(path, text, durable: true);
}

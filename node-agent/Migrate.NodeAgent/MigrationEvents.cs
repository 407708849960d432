using System.Threading.Channels;

namespace Migrate.NodeAgent;

/// <summary>
/// Tells watchers (the operator's WatchMigrations streams) which migration changed on this node.
/// A slow watcher loses nothing that matters: its channel keeps the ids, coalesced, and every id
/// is answered with the migration's state at that moment.
/// </summary>
public sealed class MigrationEvents
{
    private readonly Lock _gate = new();
    private readonly List<Channel<string>> _watchers = [];

    /// <summary>Something about the migration changed (its record, its images, a restore).</summary>
    public void Changed(string migrationId)
    {
        lock (_gate)
        {
            foreach (var watcher in _watchers)
            {
                watcher.Writer.TryWrite(migrationId);
            }
        }
    }

    /// <summary>A new watcher: the ids of changed migrations, until disposed.</summary>
    public Subscription Subscribe()
    {
        var channel = Channel.CreateBounded<string>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
        lock (_gate)
        {
            _watchers.Add(channel);
        }

        return new Subscription(this, channel);
    }

    public sealed class Subscription(MigrationEvents owner, Channel<string> channel) : IDisposable
    {
        public ChannelReader<string> Reader => channel.Reader;

        public void Dispose()
        {
            lock (owner._gate)
            {
                owner._watchers.Remove(channel);
            }

            channel.Writer.TryComplete();
        }
    }
}

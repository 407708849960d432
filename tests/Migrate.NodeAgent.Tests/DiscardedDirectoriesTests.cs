using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>A migration's directory leaves its root at once and is deleted in the background; what an ended agent left is swept.</summary>
public sealed class DiscardedDirectoriesTests : IDisposable
{
    private readonly string _parent = Directory.CreateTempSubdirectory("discarded-").FullName;

    public void Dispose() => Directory.Delete(_parent, recursive: true);

    [Fact]
    public async Task A_removed_directory_leaves_its_root_at_once_and_nothing_of_it_stays_once_deleted()
    {
        var root = Path.Combine(_parent, "staging");
        var migration = Path.Combine(root, "5f9a4ca5-1201-4dc4-bf41-7bfa62bd4fbd");
        Directory.CreateDirectory(Path.Combine(migration, "containers", "main", "round-1"));
        File.WriteAllBytes(Path.Combine(migration, "containers", "main", "round-1", "pages-1.img"), new byte[1 << 20]);
        var other = Path.Combine(root, "another-migration");
        Directory.CreateDirectory(other);

        var deletion = DiscardedDirectories.Remove(migration);
        Assert.False(Directory.Exists(migration));
        Assert.Equal([other], Directory.EnumerateFileSystemEntries(root));
        await deletion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal([root], Directory.EnumerateFileSystemEntries(_parent));

        // a directory already gone: nothing to do
        Assert.True(DiscardedDirectories.Remove(migration).IsCompletedSuccessfully);
    }

    [Fact]
    public void A_sweep_deletes_what_earlier_removals_left_beside_the_root_and_nothing_else()
    {
        var root = Path.Combine(_parent, "incoming");
        Directory.CreateDirectory(Path.Combine(root, "kept"));
        var left = Path.Combine(_parent, "incoming.discarded.0b7e.1234");
        Directory.CreateDirectory(Path.Combine(left, "files"));
        File.WriteAllText(Path.Combine(left, "files", "pages-1.img"), "left when the agent ended");
        var neighbour = Path.Combine(_parent, "staging.discarded.0b7e.5678");
        Directory.CreateDirectory(neighbour);
        var lookalike = Path.Combine(_parent, "incoming-discarded");
        Directory.CreateDirectory(lookalike);

        Assert.Equal(1, DiscardedDirectories.Sweep(root));
        Assert.False(Directory.Exists(left));
        Assert.True(Directory.Exists(Path.Combine(root, "kept")));
        Assert.True(Directory.Exists(neighbour));
        Assert.True(Directory.Exists(lookalike));
        Assert.Equal(0, DiscardedDirectories.Sweep(Path.Combine(_parent, "no-such-root")));
    }
}

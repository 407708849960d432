using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The stamps that let a restore skip re-hashing staged files: any write afterwards must show.</summary>
public sealed class StagedFileStampTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("migrate-stamps-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void A_file_rewritten_with_the_same_bytes_count_no_longer_matches_its_stamp()
    {
        var path = Path.Combine(_root, "pages-1.img");
        File.WriteAllBytes(path, new byte[8192]);
        var stamp = StagedFileStamp.Of(path, "containers/main/final/pages-1.img")!;
        Assert.Equal(8192, stamp.Size);
        Assert.True(stamp.Matches(path), "an untouched file matches");
        Thread.Sleep(10); // more than a tick of the file system's clock
        File.SetLastWriteTimeUtc(path, File.GetLastWriteTimeUtc(path)); // only the change time moves, not the contents
        Assert.False(stamp.Matches(path), "a metadata change moves the change time");

        var again = StagedFileStamp.Of(path, stamp.Path)!;
        Thread.Sleep(10);
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            stream.Position = 4096;
            stream.WriteByte(1); // one flipped byte, same size
        }

        Assert.Equal(again.Size, new FileInfo(path).Length);
        Assert.False(again.Matches(path), "a write of the same size must not match");
    }

    [Fact]
    public void A_replaced_file_does_not_match_and_stamps_survive_a_round_trip()
    {
        var path = Path.Combine(_root, "a.tar");
        File.WriteAllText(path, "first");
        var file = Path.Combine(_root, "staged.stamps");
        Assert.Null(StagedFileStamp.Of(Path.Combine(_root, "missing.img"), "missing.img"));
        StagedFileStamp.Write(file, [StagedFileStamp.Of(path, "a.tar")!]);
        var loaded = StagedFileStamp.Load(file);

        Assert.Equal(["a.tar"], loaded.Keys);
        Assert.True(loaded["a.tar"].Matches(path));
        File.Delete(path);
        Thread.Sleep(10);
        File.WriteAllText(path, "other");
        Assert.False(loaded["a.tar"].Matches(path), "another inode");
        Assert.Empty(StagedFileStamp.Load(Path.Combine(_root, "none")));
        File.WriteAllText(file, "{not json");
        Assert.Empty(StagedFileStamp.Load(file));
    }
}

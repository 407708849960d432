using System.Text;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// Files replaced whole (records, stamps, reports, the address store, the kernel-facts cache, the
/// pin key): whoever reads the name sees the old content or the new one, never part of one, and a
/// failed write leaves the old content and nothing beside it.
/// </summary>
public sealed class WholeFileTests : IDisposable
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private const UnixFileMode Public = OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead;

    private readonly string _root = Directory.CreateTempSubdirectory("migrate-whole-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    public static TheoryData<string?, UnixFileMode?, bool, string> Writes => new()
    {
        // what the name held before, the mode asked for, durable, what it holds after
        { null, null, false, "{\"phase\":\"Prepared\"}" },
        { "an older record that was longer than the new one", null, false, "short" },
        { null, OwnerOnly, false, "kdat" },
        { "public key v1", Public, false, "public key v2" },
        { "10.244.1.7 pod-a\n", null, true, "10.244.1.7 pod-a\n10.244.1.8 pod-b\n" },
        { "something", OwnerOnly, true, "" },
    };

    [Theory]
    [MemberData(nameof(Writes))]
    public void The_name_holds_the_new_content_with_the_mode_asked_for_and_nothing_is_left_beside_it(string? before, UnixFileMode? mode, bool durable, string after)
    {
        var path = Path.Combine(_root, "record.json");
        if (before is not null)
        {
            File.WriteAllText(path, before);
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherWrite);
        }

        WholeFile.WriteText(path, after, mode, durable);

        Assert.Equal(Encoding.UTF8.GetBytes(after), File.ReadAllBytes(path)); // no byte-order mark
        if (mode is { } wanted)
        {
            Assert.Equal(wanted, File.GetUnixFileMode(path));
        }

        Assert.Equal([path], Directory.GetFiles(_root));
    }

    [Fact]
    public async Task A_reader_polling_the_name_while_it_is_replaced_never_sees_part_of_a_content()
    {
        var path = Path.Combine(_root, "report.json");
        var contents = new[] { Enumerable.Repeat((byte)'a', 1 << 20).ToArray(), Enumerable.Repeat((byte)'b', 300_000).ToArray() };
        WholeFile.Write(path, contents[0]);
        using var stop = new CancellationTokenSource();
        var reads = 0;
        var reader = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                var seen = File.ReadAllBytes(path);
                Assert.True(seen.SequenceEqual(contents[0]) || seen.SequenceEqual(contents[1]), $"read {seen.Length} bytes that are neither whole content");
                Interlocked.Increment(ref reads);
            }
        });

        // the reader is under way before the name changes (the thread pool may start it late)
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref reads) > 0 || reader.IsCompleted, TimeSpan.FromSeconds(30)), "the reader started");
        for (var i = 1; i <= 200 && !reader.IsCompleted; i++)
        {
            WholeFile.Write(path, contents[i % 2]);
        }

        stop.Cancel();
        await reader;
        Assert.Equal([path], Directory.GetFiles(_root));
    }

    [Fact]
    public void Writers_in_several_threads_end_with_one_whole_content_and_nothing_beside_it()
    {
        var path = Path.Combine(_root, "stamps.json");
        var contents = Enumerable.Range(0, 4).Select(i => new string((char)('p' + i), 10_000 * (i + 1))).ToArray();

        Parallel.For(0, 4, i =>
        {
            for (var n = 0; n < 50; n++)
            {
                WholeFile.WriteText(path, contents[i]);
            }
        });

        Assert.Contains(File.ReadAllText(path), contents);
        Assert.Equal([path], Directory.GetFiles(_root));
    }

    [Fact]
    public void A_write_into_a_missing_directory_fails_and_creates_nothing()
    {
        var path = Path.Combine(_root, "gone", "record.json");

        Assert.Throws<DirectoryNotFoundException>(() => WholeFile.WriteText(path, "x"));

        Assert.Empty(Directory.GetFileSystemEntries(_root));
    }

    [Fact]
    public void A_name_taken_by_a_directory_is_not_replaced_and_the_written_bytes_are_removed()
    {
        var path = Path.Combine(_root, "criu.kdat");
        Directory.CreateDirectory(Path.Combine(path, "inside"));

        Assert.ThrowsAny<IOException>(() => WholeFile.Write(path, new byte[4096], OwnerOnly));

        Assert.True(Directory.Exists(Path.Combine(path, "inside")), "the directory is left as it was");
        Assert.Equal([path], Directory.GetFileSystemEntries(_root));
    }

    [Fact]
    public void The_name_written_beside_ends_in_the_suffix_the_image_sender_leaves_out_and_differs_per_write()
    {
        var path = Path.Combine(_root, "record.json");

        var first = WholeFile.Beside(path);
        var second = WholeFile.Beside(path);

        Assert.EndsWith(WholeFile.Suffix, first, StringComparison.Ordinal);
        Assert.StartsWith(path + ".", first, StringComparison.Ordinal);
        Assert.Contains(Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), first, StringComparison.Ordinal);
        Assert.NotEqual(first, second);
    }
}

using System.Net.Sockets;
using Migrate.Criu.Lazy;
using Xunit;

namespace Migrate.Criu.Tests;

/// <summary>
/// The memory filler's side of the restore's protocol when the restore misbehaves: it never comes,
/// it goes before it finished, or it sends a PID without the userfaultfd that must follow. Each is
/// a failure that names why (the agent then rolls the move back), never a filler left waiting.
/// (Real restores, with real CRIU, are in the node agent's LazyRestoreTests.)
/// </summary>
public sealed class MemoryFillerTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("podmig-filler-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    public static TheoryData<string, byte[]?, string> Misbehaving() => new()
    {
        { "no restore ever connects", null, "no restore connected within 0.3 s" },
        { "the restore goes before it finished", [], "the restore closed its connection before it finished" },
        { "a PID without its userfaultfd", [123, 0, 0, 0, 1], "sent a process's PID without its userfaultfd" },
        { "the connection ends inside a word", [123, 0], "the restore's connection ended inside a word" },
    };

    [Theory]
    [MemberData(nameof(Misbehaving))]
    public async Task A_restore_that_misbehaves_ends_the_filler_with_the_reason(string _, byte[]? restoreSends, string reason)
    {
        var images = Directory.CreateDirectory(Path.Combine(_root, "images")).FullName;
        var memory = Directory.CreateDirectory(Path.Combine(_root, "memory")).FullName;
        var path = Path.Combine(_root, "lazy-pages.socket");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        using var filler = new MemoryFiller(images, memory) { AcceptTimeout = TimeSpan.FromMilliseconds(300) };
        var running = Task.Run(() => filler.Run(listener));
        using var restore = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        if (restoreSends is not null)
        {
            await restore.ConnectAsync(new UnixDomainSocketEndPoint(path));
            await restore.SendAsync(restoreSends);
            restore.Shutdown(SocketShutdown.Send);
        }

        var error = await Assert.ThrowsAsync<IOException>(() => running.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Contains(reason, error.Message, StringComparison.Ordinal);
    }
}

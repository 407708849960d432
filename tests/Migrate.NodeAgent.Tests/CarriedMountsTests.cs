using System.Net.Sockets;
using Migrate.Api;
using Migrate.NodeAgent.Checkpointing;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>
/// The tmpfs mounts the agent carries in place of CRIU: which mounts qualify (a table of mountinfo
/// lines), what a set from the wire must be before the target builds it, CRIU's configuration, and
/// a real tmpfs listed and built again entry for entry.
/// </summary>
public sealed class CarriedMountsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("podmig-carried-").FullName;
    private readonly List<string> _mounted = [];

    public void Dispose()
    {
        foreach (var mount in Enumerable.Reverse(_mounted))
        {
            Prerequisites.Run("umount", mount);
        }

        Directory.Delete(_directory, recursive: true);
    }

    [Theory]
    // runc's /dev, and /sys/fs/cgroup on a cgroup v1 node: carried
    [InlineData("200 190 0:60 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64", true)]
    [InlineData("210 190 0:66 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755,inode64", true)]
    // a masked path runc mounts read-only: carried (empty)
    [InlineData("220 195 0:70 / /proc/acpi ro,relatime - tmpfs tmpfs ro,inode64", true)]
    // bound in from the node (the sandbox's /dev/shm): already CRIU's external mount
    [InlineData("230 200 0:25 / /dev/shm rw,nosuid,nodev - tmpfs shm rw,size=65536k,inode64", false)]
    // a bind of a part of a tmpfs: not its root
    [InlineData("240 190 0:26 /secrets/a /run/secrets rw - tmpfs tmpfs rw,inode64", false)]
    // another file system, or the container's root
    [InlineData("250 190 0:80 / /dev/pts rw,nosuid,noexec - devpts devpts rw,gid=5,mode=620,ptmxmode=666", false)]
    [InlineData("190 180 0:90 / / rw - tmpfs tmpfs rw,size=1g", false)]
    // an option the target would not mount with
    [InlineData("260 190 0:91 / /scratch rw - tmpfs tmpfs rw,mpol=bind:0", false)]
    public void A_mount_is_carried_only_when_it_is_the_root_of_a_tmpfs_of_the_container_mountable_as_it_is(string line, bool carried)
    {
        var mount = MountInfoEntry.Parse(line);
        var chosen = CarriedMounts.Candidates([mount], ["/dev/shm", "/etc/hosts"]);
        Assert.Equal(carried, chosen.Contains(mount));
    }

    [Theory]
    [InlineData("rw,size=65536k,mode=755,inode64", "size=65536k,mode=755,inode64")]
    [InlineData("ro", "")]
    [InlineData("rw,nr_inodes=100,uid=1000,gid=1000,huge=never", "nr_inodes=100,uid=1000,gid=1000,huge=never")]
    [InlineData("rw,size=1k,mode=755;reboot", null)]
    [InlineData("rw,quota", null)]
    public void The_target_mounts_with_the_super_block_options_it_knows_and_nothing_else(string superOptions, string? options) =>
        Assert.Equal(options, CarriedMounts.MountOptions(superOptions));

    public static TheoryData<string, CarriedMountSet> Hostile => new()
    {
        { "does not follow its directory 'l'", Set(Dir("."), new CarriedEntry("l", CarriedMounts.SymbolicLink, 0x1FF, 0, 0, 0, 0, Target: "/etc"), File("l/passwd", "root::0:0")) },
        { "not a plain relative path", Set(Dir("."), File("../escape", "x")) },
        { "not a plain relative path", Set(Dir("."), File("/etc/passwd", "x")) },
        { "not a plain relative path", Set(Dir("."), Dir("a"), File("a/./b", "x")) },
        { "listed twice", Set(Dir("."), Dir("a"), Dir("a")) },
        { "does not follow its directory 'a'", Set(Dir("."), File("a/b", "x"), Dir("a")) },
        { "not its root directory", Set(File("x", "y")) },
        { "kind 'socket'", Set(Dir("."), new CarriedEntry("s", "socket", 0x1B6, 0, 0, 0, 0)) },
        { "more than permission bits", Set(Dir("."), new CarriedEntry("x", CarriedMounts.File, 0x81A4, 0, 0, 0, 0)) },
        { "with content", Set(Dir("."), new CarriedEntry("d", CarriedMounts.Directory, 0x1ED, 0, 0, 0, 0, Content: "eA==")) },
        { "no fitting link target", Set(Dir("."), new CarriedEntry("l", CarriedMounts.SymbolicLink, 0x1FF, 0, 0, 0, 0)) },
        { "not base64", Set(Dir("."), new CarriedEntry("f", CarriedMounts.File, 0x1A4, 0, 0, 0, 0, Content: "***")) },
        { "more than 16 bytes of content", Set(Dir("."), File("a", new string('x', 12)), File("b", new string('y', 12))) },
        { "more than 4", Set(Dir("."), Dir("a"), Dir("b"), Dir("c"), Dir("d")) },
        { "options 'size=1k,mpol=bind:0'", new CarriedMountSet([new CarriedMount("/dev", CarriedMounts.Key(0), "size=1k,mpol=bind:0", [Dir(".")])]) },
        { "key 'a]:/etc'", new CarriedMountSet([new CarriedMount("/dev", "a]:/etc", "", [Dir(".")])]) },
        { "not an absolute unique path", new CarriedMountSet([new CarriedMount("dev", CarriedMounts.Key(0), "", [Dir(".")])]) },
    };

    [Theory]
    [MemberData(nameof(Hostile))]
    public void A_set_from_the_wire_that_would_leave_its_mount_or_its_bounds_is_refused_with_the_reason(string reason, CarriedMountSet set) =>
        Assert.Contains(reason, CarriedMounts.Problem(set, new CarryLimits(4, 16)), StringComparison.Ordinal);

    [Fact]
    public void A_set_within_its_bounds_passes()
    {
        var set = Set(Dir("."), Dir("a"), File("a/b", "0123456789"), new CarriedEntry("a/c", CarriedMounts.CharacterDevice, 0x1B6, 0, 0, 0, 0, 1, 3));
        Assert.Null(CarriedMounts.Problem(set, new CarryLimits(4, 16)));
    }

    [Fact]
    public void CRIU_is_told_each_key_and_the_tmpfs_built_for_it_and_a_path_it_would_misread_is_refused()
    {
        Assert.Equal("external mnt[podmig-carried-0]:/w/carried-0\nexternal mnt[podmig-carried-1]:/w/carried-1\n",
            CarriedMounts.CriuConfiguration([(CarriedMounts.Key(0), "/w/carried-0"), (CarriedMounts.Key(1), "/w/carried-1")]));
        Assert.Throws<ArgumentException>(() => CarriedMounts.CriuConfiguration([(CarriedMounts.Key(0), "/w/a b")]));
    }

    [Fact]
    public void A_real_tmpfs_is_listed_and_built_again_with_its_kinds_modes_owners_times_and_contents_and_a_mount_inside_it_left_empty()
    {
        Prerequisites.RequireRoot();
        var source = Tmpfs("source", "size=1m,mode=751");
        Directory.CreateDirectory(Path.Combine(source, "sub"));
        System.IO.File.WriteAllText(Path.Combine(source, "sub", "note"), "kept across the move\n");
        System.IO.File.WriteAllBytes(Path.Combine(source, "empty"), []);
        System.IO.File.CreateSymbolicLink(Path.Combine(source, "fd"), "/proc/self/fd");
        Prerequisites.Run("mknod", "-m", "666", Path.Combine(source, "null"), "c", "1", "3");
        Prerequisites.Run("mknod", "-m", "660", Path.Combine(source, "loop9"), "b", "7", "9");
        Prerequisites.Run("mkfifo", "-m", "600", Path.Combine(source, "pipe"));
        Prerequisites.Run("chown", "1000:2000", Path.Combine(source, "sub", "note"));
        Prerequisites.Run("chmod", "1777", Path.Combine(source, "sub"));
        Prerequisites.Run("chmod", "4750", Path.Combine(source, "sub", "note"));
        Prerequisites.Run("chown", "-h", "7:8", Path.Combine(source, "fd"));
        Directory.CreateDirectory(Path.Combine(source, "pts"));
        var inner = Tmpfs("source/pts", "size=64k");
        System.IO.File.WriteAllText(Path.Combine(inner, "hidden"), "another mount's");
        Prerequisites.Run("touch", "-h", "-d", "2020-01-02 03:04:05.123456789", Path.Combine(source, "fd"));
        Prerequisites.Run("touch", "-d", "2021-05-06 07:08:09.5", Path.Combine(source, "sub", "note"), Path.Combine(source, "sub"), source);

        var (entries, refusal) = TmpfsListing.List(source, CarryLimits.Default);
        Assert.Null(refusal);
        Assert.NotNull(entries);
        Assert.Equal([".", "empty", "fd", "loop9", "null", "pipe", "pts", "sub", "sub/note"], entries.Select(e => e.Path).Order(StringComparer.Ordinal));
        Assert.Null(CarriedMounts.Problem(new CarriedMountSet([new CarriedMount("/dev", CarriedMounts.Key(0), "size=1m", entries)]), CarryLimits.Default));

        var target = Tmpfs("target", "size=1m");
        TmpfsListing.Build(target, entries);
        var (again, _) = TmpfsListing.List(target, CarryLimits.Default);
        Assert.Equal(entries.OrderBy(e => e.Path, StringComparer.Ordinal), again!.OrderBy(e => e.Path, StringComparer.Ordinal));

        var note = FileStatus.Of(Path.Combine(target, "sub", "note"))!.Value;
        Assert.Equal((0x9E8u, 1000u, 2000u, 1620284889L), (note.Permissions, note.Owner, note.Group, note.ModifiedSeconds));
        Assert.Equal("kept across the move\n", System.IO.File.ReadAllText(Path.Combine(target, "sub", "note")));
        Assert.Equal((FileStatus.BlockDevice, 7u, 9u), FileStatus.Of(Path.Combine(target, "loop9")) is { } b ? (b.Type, b.NodeMajor, b.NodeMinor) : default);
        Assert.Equal("/proc/self/fd", new FileInfo(Path.Combine(target, "fd")).LinkTarget);
        Assert.Equal((0x1E9u, 123456789u), FileStatus.Of(target) is { } root ? (root.Permissions, FileStatus.Of(Path.Combine(target, "fd"))!.Value.ModifiedNanoseconds) : default);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(target, "pts")));
    }

    [Fact]
    public void A_tmpfs_holding_a_socket_a_hard_link_or_too_much_or_hidden_by_another_mount_is_left_to_CRIU_with_the_reason()
    {
        Prerequisites.RequireRoot();
        var sockets = Tmpfs("sockets", "size=1m");
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            socket.Bind(new UnixDomainSocketEndPoint(Path.Combine(sockets, "log")));
            Assert.Contains("log is a socket", TmpfsListing.List(sockets, CarryLimits.Default).Refusal, StringComparison.Ordinal);
        }

        var links = Tmpfs("links", "size=1m");
        System.IO.File.WriteAllText(Path.Combine(links, "a"), "x");
        Prerequisites.Run("ln", Path.Combine(links, "a"), Path.Combine(links, "b"));
        Assert.Contains("one of 2 hard links", TmpfsListing.List(links, CarryLimits.Default).Refusal, StringComparison.Ordinal);

        // a mount another mount was stacked on: its path reaches the upper one
        var lower = Tmpfs("stacked", "size=64k");
        ulong hidden = FileStatus.Of(lower)!.Value.MountId;
        Tmpfs("stacked", "size=64k");
        Assert.Contains("another mount hides it", TmpfsListing.List(lower, CarryLimits.Default, hidden).Refusal, StringComparison.Ordinal);

        var big = Tmpfs("big", "size=4m");
        System.IO.File.WriteAllBytes(Path.Combine(big, "blob"), new byte[2 << 20]);
        Assert.Contains("more than 1048576 bytes", TmpfsListing.List(big, CarryLimits.Default).Refusal, StringComparison.Ordinal);
        Assert.Contains("more than 1 entries", TmpfsListing.List(links, new CarryLimits(1, 100)).Refusal, StringComparison.Ordinal);
    }

    private string Tmpfs(string name, string options)
    {
        var path = Directory.CreateDirectory(Path.Combine(_directory, name)).FullName;
        Prerequisites.Run("mount", "-t", "tmpfs", "-o", options, "tmpfs", path);
        _mounted.Add(path);
        return path;
    }

    private static CarriedMountSet Set(params CarriedEntry[] entries) => new([new CarriedMount("/dev", CarriedMounts.Key(0), "size=64k", entries)]);

    private static CarriedEntry Dir(string path) => new(path, CarriedMounts.Directory, 0x1ED, 0, 0, 0, 0);

    private static CarriedEntry File(string path, string content) =>
        new(path, CarriedMounts.File, 0x1A4, 0, 0, 0, 0, Content: Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(content)));
}

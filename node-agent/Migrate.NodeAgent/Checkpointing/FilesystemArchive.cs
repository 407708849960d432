namespace Migrate.NodeAgent.Checkpointing;

/// <summary>
/// File system state as tar archives (GNU tar): a container's overlay writable layer, with its
/// whiteouts (0:0 character devices) and opaque-directory markers (trusted.overlay.* extended
/// attributes), and emptyDir volumes. Numeric owners, permissions, sparse files and hard links are kept.
/// </summary>
public static class FilesystemArchive
{
    /// <summary>Archives the contents of <paramref name="directory"/>; returns the archive's size.</summary>
    public static long Create(string directory, string archive)
    {
        Run("--create", "--file", archive, "--directory", directory, "--numeric-owner", "--sparse",
            "--xattrs", "--xattrs-include=trusted.overlay.*", "--xattrs-include=user.*", "--acls", ".");
        return new FileInfo(archive).Length;
    }

    /// <summary>Extracts an archive made by <see cref="Create"/> into <paramref name="directory"/>.</summary>
    public static void Extract(string archive, string directory)
    {
        Directory.CreateDirectory(directory);
        Run("--extract", "--file", archive, "--directory", directory, "--numeric-owner", "--same-permissions",
            "--xattrs", "--xattrs-include=trusted.overlay.*", "--xattrs-include=user.*", "--acls");
    }

    private static void Run(params string[] arguments)
    {
        var result = HostCommands.Run(new HostCommand("tar", arguments));
        if (!result.Succeeded)
        {
            throw new IOException($"tar {arguments[0]} failed ({result.ExitCode}): {result.Error.Trim()}");
        }
    }
}

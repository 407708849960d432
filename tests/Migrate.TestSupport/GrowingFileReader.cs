using Migrate.Criu.Incremental;

namespace Migrate.TestSupport;

/// <summary>Reads a file announced as growing (<see cref="GrowingFiles"/>) as the image sender does: whatever is there, then waits for more.</summary>
public static class GrowingFileReader
{
    /// <summary>Every byte of <paramref name="growing"/> once its writer wrote them; throws with the writer's reason when it stopped short.</summary>
    public static async Task<byte[]> FollowAsync(GrowingFile growing)
    {
        ArgumentNullException.ThrowIfNull(growing);
        var bytes = new byte[growing.Size];
        await using var stream = new FileStream(growing.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 0);
        int done = 0;
        while (done < bytes.Length)
        {
            int read = await stream.ReadAsync(bytes.AsMemory(done));
            if (read == 0)
            {
                if (!await growing.WaitForAsync(done + 1, CancellationToken.None))
                {
                    throw new IOException(growing.Failure);
                }

                continue;
            }

            done += read;
        }

        return bytes;
    }
}

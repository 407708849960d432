namespace Migrate.TestSupport;

/// <summary>Bytes that look like checkpoint images to a compressor or a digest.</summary>
public static class CheckpointData
{
    /// <summary>Memory-image-like bytes: runs of zero pages between pages of random data.</summary>
    public static byte[] Create(int length, int seed)
    {
        var bytes = new byte[length];
        var random = new Random(seed);
        for (int page = 0; page * 4096 < length; page++)
        {
            if (page % 4 != 3)
            {
                random.NextBytes(bytes.AsSpan(page * 4096, Math.Min(4096, length - (page * 4096))));
            }
        }

        return bytes;
    }
}

namespace Migrate.Criu.Images;

/// <summary>A run of addresses [Start, End): a pagemap entry, a range of pages.</summary>
public interface IAddressRun
{
    ulong Start { get; }

    ulong End { get; }
}

/// <summary>Searches in runs sorted by address and not overlapping.</summary>
public static class AddressRuns
{
    /// <summary>The index of the run holding <paramref name="address"/>, or -1.</summary>
    public static int IndexOf<T>(IReadOnlyList<T> sorted, ulong address)
        where T : IAddressRun
    {
        ArgumentNullException.ThrowIfNull(sorted);
        int low = 0, high = sorted.Count - 1;
        while (low <= high)
        {
            int middle = (low + high) >>> 1;
            var run = sorted[middle];
            if (address < run.Start)
            {
                high = middle - 1;
            }
            else if (address >= run.End)
            {
                low = middle + 1;
            }
            else
            {
                return middle;
            }
        }

        return -1;
    }
}

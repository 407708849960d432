using System.IO.Hashing;

namespace Migrate.NodeAgent.Transfer;

/// <summary>A piece of a chunk as it goes on the bulk lane: its own bytes, or a reference to the same bytes sent before (<see cref="FromFile"/> set).</summary>
/// <param name="Start">Where the piece begins in the chunk.</param>
/// <param name="Length">Its length.</param>
/// <param name="FromFile">For a reference: the manifest index of the file that already holds these bytes.</param>
/// <param name="FromOffset">For a reference: where they are in that file.</param>
public readonly record struct ChunkPiece(int Start, int Length, uint? FromFile = null, ulong FromOffset = 0)
{
    public bool IsReference => FromFile is not null;
}

/// <summary>
/// The 4 KiB pages one attempt of an upload has sent, by content (XxHash128 of the page; the
/// target's SHA-256 of every whole file still checks the result), so that a page sent again goes as
/// a reference to its first copy. Only pages at page-aligned offsets of their file count: CRIU's
/// page images and the agent's memory captures hold memory pages at such offsets, and memory a
/// process shares copy-on-write with its parent (a forking server's workers) is written once per
/// process. Where the upload holds the memory of one process per image set, a page repeats only by
/// chance, so only zero pages are looked for (<paramref name="everyPage"/> false: no hashing, no
/// index). References point only backwards, to pages of earlier pieces, so the target always holds
/// what a reference names; consecutive pages whose first copies are consecutive too go as one. At
/// most <see cref="MaxPages"/> distinct pages are remembered (the index takes some 45 bytes a page).
/// </summary>
public sealed class SentPages(bool everyPage = true, int maxPages = SentPages.DefaultMaxPages, int expectedPages = 0)
{
    public const int PageSize = 4096;

    /// <summary>4 GiB of distinct pages, some 45 MB of index.</summary>
    public const int DefaultMaxPages = 1 << 20;

    private readonly Dictionary<UInt128, (uint File, ulong Offset)> _first = everyPage ? new(Math.Min(expectedPages, maxPages)) : [];
    private (uint File, ulong Offset)? _firstZero;

    public int MaxPages { get; } = maxPages;

    /// <summary>Distinct pages remembered.</summary>
    public int Count => _first.Count + (_firstZero is null ? 0 : 1);

    /// <summary>
    /// Whether an upload's files hold the memory of more than one process in some image set (a
    /// directory with several of CRIU's <c>pagemap-ID.img</c>): only then is every page worth indexing.
    /// </summary>
    public static bool SeveralProcesses(IEnumerable<string> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        return paths.Where(p => Path.GetFileName(p) is { } name && name.StartsWith("pagemap-", StringComparison.Ordinal) && name.EndsWith(".img", StringComparison.Ordinal))
            .GroupBy(Path.GetDirectoryName, StringComparer.Ordinal)
            .Any(set => set.Count() > 1);
    }

    /// <summary>Splits a chunk of file <paramref name="file"/> at <paramref name="offset"/> into its own bytes and references to pages sent before, remembering its new pages.</summary>
    public IReadOnlyList<ChunkPiece> Split(ReadOnlySpan<byte> chunk, uint file, ulong offset)
    {
        var pieces = new List<ChunkPiece>();
        int own = 0; // where the chunk's own bytes not yet in a piece begin
        int firstPage = (int)((PageSize - (int)(offset % PageSize)) % PageSize);
        for (int at = firstPage; at + PageSize <= chunk.Length; at += PageSize)
        {
            if (Earlier(chunk.Slice(at, PageSize), (file, offset + (ulong)at)) is not { } earlier)
            {
                continue;
            }

            if (at > own)
            {
                pieces.Add(new ChunkPiece(own, at - own));
            }

            if (pieces.Count > 0 && pieces[^1] is { IsReference: true } last && last.Start + last.Length == at
                && last.FromFile == earlier.File && last.FromOffset + (ulong)last.Length == earlier.Offset)
            {
                pieces[^1] = last with { Length = last.Length + PageSize };
            }
            else
            {
                pieces.Add(new ChunkPiece(at, PageSize, earlier.File, earlier.Offset));
            }

            own = at + PageSize;
        }

        if (own < chunk.Length)
        {
            pieces.Add(new ChunkPiece(own, chunk.Length - own));
        }

        return pieces;
    }

    /// <summary>Where the same page was sent before, or null (then it is remembered at <paramref name="here"/>, room allowing).</summary>
    private (uint File, ulong Offset)? Earlier(ReadOnlySpan<byte> page, (uint File, ulong Offset) here)
    {
        if (!page.ContainsAnyExcept((byte)0))
        {
            var zero = _firstZero;
            _firstZero ??= here;
            return zero;
        }

        if (!everyPage)
        {
            return null;
        }

        var key = XxHash128.HashToUInt128(page);
        if (_first.TryGetValue(key, out var earlier))
        {
            return earlier;
        }

        if (_first.Count < MaxPages)
        {
            _first[key] = here;
        }

        return null;
    }
}

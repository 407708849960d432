using System.Diagnostics;
using System.Globalization;
using Migrate.Criu.Images;

namespace Migrate.Criu.Incremental;

/// <summary>How pre-copy rounds find the pages that changed.</summary>
public enum PreCopyMethod
{
    /// <summary>CRIU's pre-dump with kernel soft-dirty tracking: only changed pages are even read.</summary>
    KernelTracking,

    /// <summary>
    /// For kernels without soft-dirty tracking: rounds are <see cref="MemorySnapshot"/>s and the
    /// final full dump is reduced by <see cref="ParentDeduplication"/>. The final dump still reads
    /// every page while the tree is frozen; what shrinks is what has to be sent afterwards.
    /// </summary>
    ContentComparison,
}

/// <summary>One pre-copy round, taken while the tree runs.</summary>
/// <param name="Number">Counted from 1.</param>
/// <param name="Directory">The round's image set.</param>
/// <param name="Method">How changed pages were found.</param>
/// <param name="PagesWritten">Pages the set holds.</param>
/// <param name="PagesUnchanged">Pages it takes from the round before.</param>
/// <param name="Elapsed">Wall time of the round.</param>
/// <param name="Tracked">True when a write-tracking scan decided which pages to read (content comparison only).</param>
/// <param name="PagesRead">Content comparison: pages read from the processes (fewer than all when tracked).</param>
public sealed record PreCopyRound(int Number, string Directory, PreCopyMethod Method, ulong PagesWritten, ulong PagesUnchanged, TimeSpan Elapsed, bool Tracked = false, ulong PagesRead = 0)
{
    public long BytesWritten => (long)PagesWritten * PagemapEntry.PageSize;
}

/// <summary>The final dump of a pre-copy session.</summary>
/// <param name="Directory">The final image set (its parent link leads to the last round).</param>
/// <param name="Method">How unchanged pages were found.</param>
/// <param name="Dump">CRIU's dump result (its statistics count what CRIU itself wrote).</param>
/// <param name="PagesWritten">Pages the final set holds.</param>
/// <param name="PagesInParent">Pages the final set takes from earlier rounds.</param>
/// <param name="DeduplicationTime">Time spent comparing with earlier rounds (zero with kernel tracking).</param>
/// <param name="MemoryDirectory">For a lazy dump: the image set holding its lazy pages (child of the last round); null otherwise.</param>
/// <param name="Tracked">True when a write-tracking scan decided which of the lazy pages to read.</param>
/// <param name="PagesRead">A lazy dump: pages read from the frozen processes (fewer than all when tracked).</param>
/// <param name="PagesRemote">A post-copy dump: pages left on the source, fetched from the frozen processes after the restore.</param>
/// <param name="CaptureOverlap">A lazy dump: the part of <paramref name="DeduplicationTime"/> (the memory capture) that ran while CRIU was still finishing its dump.</param>
public sealed record PreCopyFinalDump(string Directory, PreCopyMethod Method, CriuDumpResult Dump, ulong PagesWritten, ulong PagesInParent, TimeSpan DeduplicationTime, string? MemoryDirectory = null, bool Tracked = false, ulong PagesRead = 0,
    ulong PagesRemote = 0, TimeSpan CaptureOverlap = default)
{
    public long BytesWritten => (long)PagesWritten * PagemapEntry.PageSize;

    /// <summary>Wall time from the start of CRIU's dump to the end of the memory capture (or of the deduplication).</summary>
    public TimeSpan Elapsed => Dump.Elapsed + DeduplicationTime - CaptureOverlap;
}

/// <summary>
/// Iterative pre-copy of one process tree into a directory of image sets
/// (<c>round-1</c>, <c>round-2</c>, ..., <c>final</c>), each the child of the one before. Uses
/// CRIU's kernel-tracked pre-dumps where the kernel supports them, content comparison otherwise.
/// </summary>
public sealed class PreCopySession
{
    public const string FinalDirectoryName = "final";

    /// <summary>The image set of a lazy final dump's memory.</summary>
    public const string MemoryDirectoryName = "memory";

    private readonly CriuClient _criu;
    private readonly CriuOptions _options;
    private readonly string _baseDirectory;
    private readonly List<PreCopyRound> _rounds = [];
    private readonly string? _ancestor;
    private readonly Func<int, WriteTracker?>? _tracker;
    private IReadOnlyDictionary<int, IReadOnlyList<PageRange>> _unread = new Dictionary<int, IReadOnlyList<PageRange>>();

    /// <param name="criu">The CRIU client.</param>
    /// <param name="options">Options of the final dump; <see cref="CriuOptions.Pid"/> and
    /// <see cref="CriuOptions.ImagesDirectory"/> (the session's base directory) are required.</param>
    /// <param name="method">Forces a method; by default kernel tracking when available.</param>
    /// <param name="completedRounds">Rounds an earlier session over the same directory already
    /// took (e.g. before the caller restarted); the next round continues from the last of them.</param>
    /// <param name="ancestor">The last image set of an earlier checkpoint of the same tree (content
    /// comparison only): the first round, or the final dump when there is none, is a child of it and
    /// holds only the pages that changed since.</param>
    /// <param name="tracker">Content comparison only: the tree's write tracker, kept by the caller
    /// across sessions; called with the number of the round about to be read, it returns the tracker
    /// (armed then if it was not yet), or null when the tree's writes cannot be tracked.</param>
    public PreCopySession(CriuClient criu, CriuOptions options, PreCopyMethod? method = null, IEnumerable<PreCopyRound>? completedRounds = null, string? ancestor = null,
        Func<int, WriteTracker?>? tracker = null)
    {
        ArgumentNullException.ThrowIfNull(criu);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Pid is not > 0 || string.IsNullOrEmpty(options.ImagesDirectory))
        {
            throw new ArgumentException("a pre-copy session needs the tree's PID and a base directory", nameof(options));
        }

        _criu = criu;
        _options = options;
        _baseDirectory = Path.GetFullPath(options.ImagesDirectory);
        Method = method ?? (criu.CheckFeatures().MemoryTracking ? PreCopyMethod.KernelTracking : PreCopyMethod.ContentComparison);
        if (Method == PreCopyMethod.KernelTracking && !criu.CheckFeatures().MemoryTracking)
        {
            throw new ArgumentException("kernel memory tracking was requested but this kernel does not provide it", nameof(method));
        }

        if (ancestor is not null && (Method != PreCopyMethod.ContentComparison || !Directory.Exists(ancestor)))
        {
            throw new ArgumentException($"an earlier checkpoint's image set ({ancestor}) can only be the parent of a content-comparison session, and must exist", nameof(ancestor));
        }

        _ancestor = ancestor is null ? null : Path.GetFullPath(ancestor);
        _tracker = Method == PreCopyMethod.ContentComparison ? tracker : null;
        Directory.CreateDirectory(_baseDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        foreach (var round in completedRounds ?? [])
        {
            if (round.Number != _rounds.Count + 1 || round.Method != Method || !Directory.Exists(round.Directory))
            {
                throw new ArgumentException($"completed round {round.Number} ({round.Method}, {round.Directory}) does not continue this session", nameof(completedRounds));
            }

            _rounds.Add(round);
        }
    }

    public PreCopyMethod Method { get; }

    public IReadOnlyList<PreCopyRound> Rounds => _rounds;

    /// <summary>
    /// Takes one more round while the tree keeps running. <paramref name="planned"/>, when given, is
    /// called once the round's files can be listed for sending: before its pages are read (they are
    /// written into files announced with their final sizes, <see cref="MemorySnapshot.WriteStreamed"/>)
    /// for a first round by content comparison with no earlier checkpoint, and for a later one whose
    /// writes were tracked; otherwise once the round is written (its pages are compared with the
    /// parent's as they are read, so its size is known only then).
    /// </summary>
    public PreCopyRound PreDump(Action? planned = null)
    {
        int number = _rounds.Count + 1;
        var directory = Path.Combine(_baseDirectory, RoundName(number));
        if (Directory.Exists(directory))
        {
            Directory.Delete(directory, recursive: true);
        }

        var previous = _rounds.Count > 0 ? _rounds[^1].Directory : _ancestor;
        PreCopyRound round;
        if (Method == PreCopyMethod.KernelTracking)
        {
            var result = _criu.PreDump(_options with
            {
                ImagesDirectory = directory,
                ParentImages = previous is null ? null : Path.GetRelativePath(directory, previous),
                LeaveRunning = null,
            });
            var stats = result.Statistics;
            round = new PreCopyRound(number, directory, Method, stats?.PagesWritten ?? 0, stats?.PagesSkippedParent ?? 0, result.Elapsed);
        }
        else
        {
            // (a first round arms the write tracking here, before its pages are read)
            var changes = TrackedChanges(number);
            if (planned is not null && (previous is null || changes is not null))
            {
                // what the round holds is known before it is read (every resident page, or what write
                // tracking shows written): laid out, then sent as it is read
                var streamed = MemorySnapshot.WriteStreamed(_options.Pid!.Value, directory, planned, previous, changes);
                _unread = streamed.Unread;
                planned = null;
                round = new PreCopyRound(number, directory, Method, streamed.PagesWritten, streamed.PagesUnchanged, streamed.Elapsed, changes is not null, streamed.PagesRead);
            }
            else
            {
                var snapshot = MemorySnapshot.Write(_options.Pid!.Value, directory, previous, changes);
                round = new PreCopyRound(number, directory, Method, snapshot.PagesWritten, snapshot.PagesUnchanged, snapshot.Elapsed, changes is not null, snapshot.PagesRead);
            }
        }

        _rounds.Add(round);
        planned?.Invoke();
        return round;
    }

    /// <summary>The final dump, as a child of the last round (a plain full dump when there was none).</summary>
    public PreCopyFinalDump Dump()
    {
        var directory = Path.Combine(_baseDirectory, FinalDirectoryName);
        var previous = _rounds.Count > 0 ? _rounds[^1].Directory : _ancestor;
        if (Directory.Exists(directory))
        {
            // what a failed attempt left behind
            Directory.Delete(directory, recursive: true);
        }

        if (Method == PreCopyMethod.KernelTracking)
        {
            var result = _criu.Dump(_options with
            {
                ImagesDirectory = directory,
                ParentImages = previous is null ? null : Path.GetRelativePath(directory, previous),
                TrackMemory = previous is not null ? true : _options.TrackMemory,
            });
            var stats = result.Statistics;
            return new PreCopyFinalDump(directory, Method, result, stats?.PagesWritten ?? 0, stats?.PagesSkippedParent ?? 0, TimeSpan.Zero);
        }

        var dump = _criu.Dump(_options with { ImagesDirectory = directory, ParentImages = null, TrackMemory = null });
        if (previous is null)
        {
            ulong pages = CriuPagemap.ReadAll(directory).Aggregate(0UL, (sum, m) => sum + m.PresentPages);
            return new PreCopyFinalDump(directory, Method, dump, pages, 0, TimeSpan.Zero);
        }

        var stopwatch = Stopwatch.StartNew();
        var dedup = ParentDeduplication.Apply(directory, previous);
        return new PreCopyFinalDump(directory, Method, dump, dedup.PagesKept, dedup.PagesInParent, stopwatch.Elapsed);
    }

    /// <summary>
    /// The final dump with lazy memory: CRIU writes everything but the private anonymous pages
    /// (marked lazy in its pagemaps), then those pages are read from the frozen tree into
    /// <see cref="MemoryDirectoryName"/>, a child of the last round holding only what changed since.
    /// Restoring it needs CRIU's lazy-pages daemon fed by a <see cref="Lazy.PageServer"/> over that
    /// set. The tree must stay frozen from the dump to the end of the capture (the session's
    /// options must leave it running under a frozen cgroup, or stopped). With
    /// <paramref name="leaveOnSource"/> (post-copy) what changed is not read but listed as left on
    /// the source: the tree must then stay frozen until the target's page server fetched it all
    /// (<see cref="Lazy.LivePages"/>).
    /// </summary>
    public PreCopyFinalDump DumpLazy(bool leaveOnSource = false)
    {
        if (_options.LeaveRunning != true)
        {
            throw new InvalidOperationException("a lazy final dump reads the tree's memory after CRIU's dump: the tree must be left running (frozen)");
        }

        var directory = Path.Combine(_baseDirectory, FinalDirectoryName);
        var memory = Path.Combine(_baseDirectory, MemoryDirectoryName);
        foreach (var leftover in new[] { directory, memory })
        {
            if (Directory.Exists(leftover))
            {
                Directory.Delete(leftover, recursive: true);
            }
        }

        var previous = _rounds.Count > 0 ? _rounds[^1].Directory : _ancestor;
        int number = _rounds.Count + 1;
        (SnapshotResult Snapshot, bool Tracked) Capture()
        {
            var changes = TrackedChanges(number);
            return (MemorySnapshot.CaptureLazy(_options.Pid!.Value, directory, memory, previous, changes, leaveOnSource), changes is not null);
        }

        // CRIU's "post-dump" comes once every image is written and closed; what it does after that
        // (its page pipes released, the tasks unseized) takes tens of ms per GiB while the tree
        // stays frozen. The capture needs only the written pagemaps and the frozen tree, so it
        // begins there, beside CRIU's teardown instead of after it.
        Task<(SnapshotResult Snapshot, bool Tracked)>? early = null;
        var clock = Stopwatch.StartNew();
        TimeSpan startedAt = TimeSpan.Zero;
        var notify = CriuNotification.Then(n =>
        {
            if (n.Action == PostDumpAction && early is null)
            {
                startedAt = clock.Elapsed;
                early = Task.Run(Capture);
            }

            return true;
        }, _options.Notify);
        CriuDumpResult dump;
        try
        {
            dump = _criu.Dump(_options with { ImagesDirectory = directory, ParentImages = null, TrackMemory = null, LazyPages = true, Notify = notify });
        }
        catch
        {
            // the failed dump's caller may delete the capture's directory: it must be done first
            Settle(early);
            throw;
        }

        var returnedAt = clock.Elapsed;
        var (snapshot, tracked) = early is null ? Capture() : early.GetAwaiter().GetResult();
        var overlap = early is null ? TimeSpan.Zero : returnedAt - startedAt;
        return new PreCopyFinalDump(directory, Method, dump, snapshot.PagesWritten, snapshot.PagesUnchanged, snapshot.Elapsed, memory, tracked, snapshot.PagesRead,
            snapshot.PagesRemote, overlap < snapshot.Elapsed ? overlap : snapshot.Elapsed);
    }

    /// <summary>CRIU's notification once a dump's images are all written (its "post-dump" action script).</summary>
    public const string PostDumpAction = "post-dump";

    /// <summary>Waits for a capture begun beside a dump that then failed; its own failure no longer matters.</summary>
    private static void Settle(Task? capture)
    {
        try
        {
            capture?.Wait();
        }
        catch (AggregateException)
        {
            // the dump's failure is the one reported
        }
    }

    /// <summary>
    /// Before reading round <paramref name="number"/> (or the final memory, numbered after the last
    /// round): the pages written since the previous round's read, when the tracker was armed before
    /// that read; null otherwise (arming it now if it was not), and every page is compared.
    /// </summary>
    private MemoryChanges? TrackedChanges(int number)
    {
        var tracker = _tracker?.Invoke(number);
        var previous = _rounds.Count > 0 ? _rounds[^1] : null;
        var changes = tracker is not null && previous is not null && previous.Number == number - 1 && tracker.ArmedBeforeRound <= previous.Number
            ? tracker.Scan()
            : null;
        // what the round before listed but could not read counts as written: read again now
        // (without tracking every page is compared with the round before, whose copy of those is zeros)
        changes = changes?.WithWritten(_unread);
        _unread = new Dictionary<int, IReadOnlyList<PageRange>>();
        return changes;
    }

    /// <summary>The directory of round <paramref name="number"/> under the session's base directory.</summary>
    public static string RoundName(int number) => "round-" + number.ToString(CultureInfo.InvariantCulture);
}

using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Migrate.Criu.Images;
using Migrate.Criu.Incremental;
using static Migrate.Criu.Interop.Userfaultfd;

namespace Migrate.Criu.Lazy;

/// <summary>What a memory filler did.</summary>
/// <param name="Faults">Page faults answered.</param>
/// <param name="Pieces">Pieces filled in the background.</param>
/// <param name="Pages">Pages put in place.</param>
/// <param name="Elapsed">From the restore's connection to the last page.</param>
/// <param name="Reading">Of it, reading the staged images.</param>
/// <param name="Copying">Of it, copying into the processes (the kernel allocates their memory as it copies).</param>
/// <param name="Source">What became of the pages left on the source (null: none were).</param>
/// <param name="Answering">Of it, answering faults: from reading each to its pages in place, which a process waits for. Not counted: the time a
/// fault sat unread while a piece was being filled (at most one piece).</param>
/// <param name="LongestAnswer">The longest of those answers.</param>
/// <param name="Mapped">Copies (pieces and faults alike) the kernel took straight from a staged file's mapping, with no read before.</param>
/// <param name="Beside">Pieces copied on a second thread beside another (<see cref="CopyBeside"/>).</param>
public sealed record MemoryFillerReport(long Faults, long Pieces, long Pages, TimeSpan Elapsed, TimeSpan Reading, TimeSpan Copying, SourcePagesReport? Source = null,
    TimeSpan Answering = default, TimeSpan LongestAnswer = default, long Mapped = 0, long Beside = 0);

/// <summary>
/// Fills the memory of a lazily restored process tree from image sets already on this node, in
/// place of CRIU's lazy-pages daemon and a page server behind it. It takes the same part in the
/// restore: it listens on <see cref="LazyPagesDaemon.SocketName"/> in the work directory, where
/// <c>criu restore --lazy-pages</c> sends each process's PID and userfaultfd and at last says the
/// restore finished. It answers each page fault at once, and fills every other lazy page in large
/// pieces as soon as the restore finished, straight from the staged files into the processes
/// (<c>UFFDIO_COPY</c>): no request and answer per piece, no socket between two helpers, and a
/// background fill that does not shrink to a few pages whenever the processes touch one (CRIU 4's
/// daemon fills 64 KiB after each fault, one request at a time, so a process writing its memory
/// while it fills made the fill 2-3 times as slow as when it was idle).
/// Pages a post-copy (or hybrid) dump left on the source come through this node's agent
/// (<see cref="SourcePages"/>): streamed in the background once the restore finished, and fetched at once when
/// a process touches one first. Reading them is in the reading time.
/// </summary>
public sealed unsafe class MemoryFiller : IDisposable
{
    /// <summary>The most pages filled in one piece in the background: a fault waits at most for one piece.</summary>
    public const int PiecePages = 256;

    /// <summary>Pages filled for a fault: the one touched and the missing ones right after it.</summary>
    public const int FaultPages = 16;

    /// <summary>The restore's word that it finished (CRIU's LAZY_PAGES_RESTORE_FINISHED, "RSTF").</summary>
    public const uint RestoreFinished = 0x52535446;

    private const uint MmMagic = 0x57492820;
    private const ulong Page = PagemapEntry.PageSize;

    private readonly string _images;
    private readonly ImageChain _chain;
    private readonly SourcePages? _source;
    private readonly List<Filled> _processes = [];
    private readonly byte* _buffer;
    private byte* _secondBuffer;
    // the second thread that copies beside this one (none with a pace to keep, or a single core)
    private CopyBeside? _beside;
    private readonly bool[] _found = new bool[PiecePages];
    // the staged pages files, mapped for the kernel to copy from (MappedAt); Base 0: not mappable, read instead
    private readonly Dictionary<Microsoft.Win32.SafeHandles.SafeFileHandle, (nint Base, long Length)> _maps = [];
    private bool _mapping = true;
    private readonly Stopwatch _clock = new();
    private long _faults, _pieces, _pages, _readTicks, _copyTicks, _answerTicks, _longestAnswerTicks, _mappedPieces, _besidePieces;
    private int _next;
    private Func<IPipelinedPageSource>? _prefetch;

    /// <param name="imagesDirectory">The image set CRIU restores: its pagemaps mark the lazy pages, its mm images name the mappings.</param>
    /// <param name="memoryDirectory">The image set (with its parents) that holds the lazy pages, or lists them as left on the source.</param>
    /// <param name="source">Where the pages left on the source come from (null: nowhere; filling one fails the fill).</param>
    public MemoryFiller(string imagesDirectory, string memoryDirectory, IPageSource? source = null)
    {
        _images = Path.GetFullPath(imagesDirectory);
        var memory = Path.GetFullPath(memoryDirectory);
        _chain = ImageChain.Open(memory);
        try
        {
            // every file is open from the start: the node may delete the staged images while memory still fills
            _chain.OpenAll();
            var remote = SourcePages.LeftIn(memory);
            _source = remote.Count > 0 && source is not null ? new SourcePages(remote, memory, source) : null;
        }
        catch
        {
            _chain.Dispose();
            throw;
        }

        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)(PiecePages * Page), (nuint)Page);
    }

    /// <summary>
    /// Whether the image set in <paramref name="memoryDirectory"/> holds every page itself or through
    /// its parents (none left on the source): then a filler needs nothing but the staged files.
    /// </summary>
    public static bool Serves(string memoryDirectory) => SourcePages.LeftIn(memoryDirectory).Count == 0;

    /// <summary>
    /// Streams all the pages left on the source in the background, on connections
    /// <paramref name="connect"/> opens (<see cref="SourcePages.StartPrefetch"/>), so that most are
    /// here before a piece or a fault needs them. The stream begins when the restore says it finished,
    /// not before: while CRIU restores, the pages its restorer touches (the rseq area, the stack) are
    /// fetched by their faults, which a stream of hundreds of megabytes on the same two ends made wait
    /// up to 0.66 s each (a 4 GiB pod that wrote 5% of its memory a second). Without pages left on the
    /// source (or a source), none is opened.
    /// </summary>
    public void StartPrefetch(Func<IPipelinedPageSource> connect)
    {
        ArgumentNullException.ThrowIfNull(connect);
        if (_source is null)
        {
            return;
        }

        _prefetch = connect;
    }

    /// <summary>
    /// Takes the restore's connection from <paramref name="listener"/> and fills until every lazy page
    /// of every process is in place (or its process is gone). Throws when it cannot: a page missing
    /// from the images, the restore gone before it finished, a copy the kernel refused.
    /// </summary>
    public MemoryFillerReport Run(Socket listener, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(listener);
        var clock = _clock;
        clock.Restart();
        // a restore connects within seconds of its helpers' start; one that never comes must not leave this process waiting for ever
        if (!listener.Poll(AcceptTimeout, SelectMode.SelectRead))
        {
            throw new IOException($"no restore connected within {AcceptTimeout.TotalSeconds:0.#} s");
        }

        using var restore = listener.Accept();
        int client = (int)restore.SafeHandle.DangerousGetHandle();
        bool finished = false, connected = true, waiting = false;
        var fds = new List<PollFd>();
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var live = _processes.Where(p => !p.Gone).ToList();
            if (finished && live.All(p => p.Missing.Left == 0))
            {
                return new MemoryFillerReport(_faults, _pieces, _pages, clock.Elapsed, Stopwatch.GetElapsedTime(0, _readTicks), Stopwatch.GetElapsedTime(0, _copyTicks), _source?.Report(),
                    Stopwatch.GetElapsedTime(0, _answerTicks), Stopwatch.GetElapsedTime(0, _longestAnswerTicks), _mappedPieces, _besidePieces);
            }

            fds.Clear();
            if (connected)
            {
                fds.Add(new PollFd { Fd = client, Events = PollIn });
            }

            fds.AddRange(live.Select(p => new PollFd { Fd = p.Uffd, Events = PollIn }));
            bool filling = finished && live.Any(p => p.Missing.Left > 0);
            var polled = CollectionsMarshal.AsSpan(fds);
            int ready;
            fixed (PollFd* pointer = polled)
            {
                // while every piece left waits for pages on their way from the source, faults are watched for meanwhile
                ready = Poll(pointer, (nuint)polled.Length, !filling ? 100 : waiting ? SourceWaitMillis : 0);
            }

            if (ready < 0)
            {
                int error = Marshal.GetLastPInvokeError();
                if (error == EIntr)
                {
                    continue;
                }

                throw new IOException($"poll failed (errno {error})");
            }

            int first = 0;
            if (connected)
            {
                first = 1;
                if ((polled[0].ReturnedEvents & (PollIn | PollHup | PollErr)) != 0)
                {
                    switch (ReadFromRestore(restore, client))
                    {
                        case RestoreWord.Finished:
                            finished = true;
                            if (_prefetch is { } connect)
                            {
                                _prefetch = null;
                                _source!.StartPrefetch(connect, BytesPerSecond);
                            }

                            break;
                        case RestoreWord.Closed:
                            connected = false;
                            if (!finished)
                            {
                                throw new IOException("the restore closed its connection before it finished (it failed, or was killed)");
                            }

                            break;
                    }
                }
            }

            for (int i = first; i < polled.Length; i++)
            {
                if (polled[i].ReturnedEvents != 0)
                {
                    Drain(live[i - first]);
                }
            }

            waiting = filling && !FillNextPiece();
        }
    }

    /// <summary>How long the fill waits for the stream from the source between two looks, when nothing else is left to fill.</summary>
    private const int SourceWaitMillis = 2;

    /// <summary>How long <see cref="Run"/> waits for the restore to connect before it gives up.</summary>
    public TimeSpan AcceptTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// At most this many bytes of pages a second, for faults and pieces alike (0: as fast as it goes).
    /// Emulates a slow supply of pages in the sandbox's fault tests, as
    /// <see cref="PageServer.BytesPerSecond"/> does for CRIU's daemon.
    /// </summary>
    public long BytesPerSecond { get; init; }

    /// <summary>Holds back until the pages filled so far fit <see cref="BytesPerSecond"/> since the restore connected.</summary>
    private void Pace()
    {
        if (BytesPerSecond <= 0)
        {
            return;
        }

        var due = TimeSpan.FromSeconds((double)_pages * Page / BytesPerSecond);
        if (due > _clock.Elapsed)
        {
            Thread.Sleep(due - _clock.Elapsed);
        }
    }

    public void Dispose()
    {
        foreach (var process in _processes.Where(p => !p.Gone))
        {
            Interop.Userfaultfd.Close(process.Uffd);
        }

        _processes.Clear();
        foreach (var (at, length) in _maps.Values.Where(m => m.Base != 0))
        {
            _ = Interop.Tracking.Munmap(at, (nuint)length);
        }

        _maps.Clear();
        _beside?.Dispose();
        _beside = null;
        NativeMemory.AlignedFree(_buffer);
        if (_secondBuffer != null)
        {
            NativeMemory.AlignedFree(_secondBuffer);
            _secondBuffer = null;
        }

        _source?.Dispose();
        _chain.Dispose();
    }

    private enum RestoreWord
    {
        Process,
        Finished,
        Closed,
    }

    /// <summary>One word from the restore: a process's PID (its userfaultfd follows, unless it is a zombie's, negative), or that it finished.</summary>
    private RestoreWord ReadFromRestore(Socket restore, int client)
    {
        Span<byte> word = stackalloc byte[4];
        int got = 0;
        while (got < 4)
        {
            int read = restore.Receive(word[got..]);
            if (read == 0)
            {
                return got == 0 ? RestoreWord.Closed : throw new IOException("the restore's connection ended inside a word");
            }

            got += read;
        }

        uint value = BinaryPrimitives.ReadUInt32LittleEndian(word);
        if (value == RestoreFinished)
        {
            return RestoreWord.Finished;
        }

        int pid = (int)value;
        if (pid < 0)
        {
            return RestoreWord.Process; // a zombie: no memory, no descriptor
        }

        int uffd = ReceiveDescriptor(client);
        try
        {
            _processes.Add(new Filled(pid, uffd, MissingPages.Collect(CriuPagemap.Read(_images, pid).Entries, Mappings(pid))));
        }
        catch
        {
            Interop.Userfaultfd.Close(uffd);
            throw;
        }

        return RestoreWord.Process;
    }

    private static int ReceiveDescriptor(int socket)
    {
        byte data;
        byte* control = stackalloc byte[ControlSpace];
        var vector = new IoVector { Base = (nint)(&data), Length = 1 };
        var header = new MessageHeader { Vectors = (nint)(&vector), VectorCount = 1, Control = (nint)control, ControlLength = ControlSpace };
        nint received;
        do
        {
            received = ReceiveMessage(socket, &header, 0);
        }
        while (received < 0 && Marshal.GetLastPInvokeError() == EIntr);

        // struct cmsghdr: cmsg_len (8 bytes), cmsg_level, cmsg_type, then the descriptor
        if (received <= 0 || header.ControlLength < 20 || *(int*)(control + 8) != SolSocket || *(int*)(control + 12) != ScmRights)
        {
            throw new IOException($"the restore sent a process's PID without its userfaultfd (recvmsg returned {received}, errno {Marshal.GetLastPInvokeError()})");
        }

        return *(int*)(control + 16);
    }

    /// <summary>The mappings of process <paramref name="pid"/> as its mm image lists them.</summary>
    private List<(ulong Start, ulong End)> Mappings(int pid)
    {
        var path = Path.Combine(_images, $"mm-{pid}.img");
        var (magic, records) = CriuImageFile.Read(path);
        if (magic != MmMagic || records.Count != 1)
        {
            throw new InvalidDataException($"{path} is not a CRIU mm image (magic 0x{magic:x8}, {records.Count} records)");
        }

        return Images.Proto.MmEntry.Parser.ParseFrom(records[0]).Vmas.Select(v => (v.Start, v.End)).OrderBy(v => v.Start).ToList();
    }

    /// <summary>Reads and handles every message waiting on a process's userfaultfd.</summary>
    private void Drain(Filled process)
    {
        Message message;
        while (!process.Gone)
        {
            nint read = Interop.Userfaultfd.Read(process.Uffd, &message, (nuint)sizeof(Message));
            if (read < 0)
            {
                int error = Marshal.GetLastPInvokeError();
                if (error is EAgain)
                {
                    return;
                }

                if (error is EIntr)
                {
                    continue;
                }

                throw new IOException($"reading process {process.Pid}'s userfaultfd failed (errno {error})");
            }

            if (read == 0)
            {
                Forget(process); // its memory is gone
                return;
            }

            Handle(process, message);
        }
    }

    private void Handle(Filled process, Message message)
    {
        switch (message.Event)
        {
            case EventPagefault:
                _faults++;
                ulong address = message.Word1 & ~(Page - 1);
                if (process.Missing.At(address, FaultPages) is { } stretch)
                {
                    long began = Stopwatch.GetTimestamp();
                    Copy(process, stretch, fault: true);
                    long answer = Stopwatch.GetTimestamp() - began;
                    _answerTicks += answer;
                    _longestAnswerTicks = Math.Max(_longestAnswerTicks, answer);
                }
                else if (process.Missing.IsLazy(address))
                {
                    Wake(process, address); // filled meanwhile: the waiting thread goes on
                }
                else
                {
                    ZeroPage(process, address); // never written before the dump: a zero page, as CRIU's daemon gives
                }

                break;
            case EventFork:
                // the child misses what its parent missed at the fork, and its pages are the parent's in the images
                _processes.Add(new Filled(process.Pid, (int)(uint)message.Word0, process.Missing.Clone()));
                break;
            case EventRemap:
                process.Missing.Remap(message.Word0, message.Word1, message.Word2);
                break;
            case EventRemove:
                // discarded (MADV_DONTNEED and kin): later touches must read zeros, so the range is no longer ours
                var range = new UffdRange { Start = message.Word0, Length = message.Word1 - message.Word0 };
                if (Interop.Tracking.Ioctl(process.Uffd, UffdioUnregister, &range) != 0)
                {
                    int error = Marshal.GetLastPInvokeError();
                    if (error is ENoMem or ESrch)
                    {
                        Forget(process);
                        return;
                    }

                    throw new IOException($"could not unregister 0x{message.Word0:x}-0x{message.Word1:x} of process {process.Pid} (errno {error})");
                }

                process.Missing.Drop(message.Word0, message.Word1);
                break;
            case EventUnmap:
                process.Missing.Drop(message.Word0, message.Word1);
                break;
            default:
                throw new IOException($"process {process.Pid}'s userfaultfd sent event 0x{message.Event:x}, which no restore registers for");
        }
    }

    /// <summary>
    /// Fills the next missing piece of the next process that has one (in turn, so that each
    /// progresses). False when every process's next piece waits for pages still on their way from
    /// the source: nothing was filled. True also when nothing is left: the faults handled since
    /// the caller looked may have filled the last pages.
    /// </summary>
    private bool FillNextPiece()
    {
        bool found = false;
        for (int tried = 0; tried < _processes.Count; tried++)
        {
            var process = _processes[_next++ % _processes.Count];
            if (!process.Gone && process.Missing.Next(PiecePages) is { } stretch)
            {
                found = true;
                if (Copy(process, stretch, fault: false, BytesPerSecond <= 0 && CopyBeside.Worthwhile ? _beside ??= new CopyBeside() : null))
                {
                    _pieces++;
                    return true;
                }
            }
        }

        if (found)
        {
            return false;
        }

        // none found: right when none is counted missing any more; pages counted missing that cannot be found would spin for ever
        long left = _processes.Where(p => !p.Gone).Sum(p => p.Missing.Left);
        return left == 0 ? true : throw new InvalidOperationException($"{left} pages are counted missing, but none is found to fill");
    }

    /// <summary>
    /// Puts the stretch's pages in place, or as many of them as one source holds: the staged images,
    /// or the pages left on the source (a <paramref name="fault"/> fetches those at once; a piece is
    /// not filled, and false returned, while its first page is still on its way in the stream). With
    /// <paramref name="beside"/>, the missing pages right after it too, when the staged images hold
    /// them, on that helper's thread: two pieces at once.
    /// </summary>
    private bool Copy(Filled process, MissingStretch stretch, bool fault, CopyBeside? beside = null)
    {
        if (!Prepare(process, stretch, fault, _buffer, localOnly: false, out var first))
        {
            return false;
        }

        ulong after = first.Stretch.Address + ((ulong)first.Stretch.Pages * Page);
        Ready second = default;
        bool two = beside is not null && process.Missing.At(after, PiecePages) is { } next && Prepare(process, next, fault: false, SecondBuffer, localOnly: true, out second);
        long began = Stopwatch.GetTimestamp();
        if (two)
        {
            beside!.Start(process.Uffd, CopyOf(second));
        }

        var copy = CopyOf(first);
        int result = Interop.Tracking.Ioctl(process.Uffd, UffdioCopy, &copy);
        int error = result == 0 ? 0 : Marshal.GetLastPInvokeError();
        var (besideResult, besideError, besideCopied) = two ? beside!.Finish() : default;
        Account(process, first.Stretch, result, error, copy.Copied);
        if (two)
        {
            Account(process, second.Stretch, besideResult, besideError, besideCopied);
            _pieces++;
            _besidePieces++;
        }

        _copyTicks += Stopwatch.GetTimestamp() - began;
        return true;
    }

    /// <summary>A stretch ready to be copied into its process, from <paramref name="From"/> (a staged file's mapping, or a buffer its pages were read into).</summary>
    private readonly record struct Ready(MissingStretch Stretch, nint From);

    private static Interop.Userfaultfd.Copy CopyOf(Ready ready) =>
        new() { Destination = ready.Stretch.Address, Source = (ulong)ready.From, Length = (ulong)ready.Stretch.Pages * Page };

    /// <summary>
    /// Finds where the stretch's pages are (as many of them as one source holds) and has them ready to
    /// copy: mapped, or read into <paramref name="buffer"/>. False while its first page is still on its
    /// way from the source, or (<paramref name="localOnly"/>) when it is not in the staged images.
    /// </summary>
    private bool Prepare(Filled process, MissingStretch stretch, bool fault, byte* buffer, bool localOnly, out Ready ready)
    {
        ready = default;
        int have = _chain.CoveredRun(process.Pid, stretch.ImageAddress, stretch.Pages);
        if (have == 0 && localOnly)
        {
            return false;
        }

        int left = have == 0 ? _chain.RemoteRun(process.Pid, stretch.ImageAddress, stretch.Pages) : 0;
        bool remote = left > 0;
        if (remote)
        {
            have = _source is null
                ? throw new InvalidDataException($"process {process.Pid}'s page at 0x{stretch.ImageAddress:x} was left on the source, and this filler has no way to fetch it")
                : fault ? left : _source.ReadyRun(process.Pid, stretch.ImageAddress, left);
            if (have == 0)
            {
                return false;
            }
        }
        else if (have == 0)
        {
            throw new InvalidDataException($"process {process.Pid}'s page at 0x{stretch.ImageAddress:x} is lazy, but in none of the staged images");
        }

        // the stretch as far as one source holds it: the rest stays missing for the next turn
        stretch = stretch with { Pages = have };
        Pace();
        long began = Stopwatch.GetTimestamp();
        var pages = new Span<byte>(buffer, stretch.Pages * (int)Page);
        nint from = (nint)buffer;
        if (remote)
        {
            _source!.Read(process.Pid, stretch.ImageAddress, stretch.Pages, pages, fault);
        }
        else if (_chain.Locate(process.Pid, stretch.ImageAddress, stretch.Pages) is { } stored && (stored.Pages == stretch.Pages || stored.Pages >= MinMappedPages)
            && MappedAt(stored.File, stored.Offset, stored.Pages) is var mapped && mapped != 0)
        {
            // copied by the kernel straight from the staged file's pages, as far as that file holds them in a row
            stretch = stretch with { Pages = stored.Pages };
            from = mapped;
            _mappedPieces++;
        }
        else
        {
            _chain.Read(process.Pid, stretch.ImageAddress, stretch.Pages, pages, _found);
        }

        _readTicks += Stopwatch.GetTimestamp() - began;
        ready = new Ready(stretch, from);
        return true;
    }

    /// <summary>Reckons what a copy of the stretch did (<paramref name="result"/> and <paramref name="error"/>: the ioctl's; <paramref name="copied"/>: its bytes copied before a failure).</summary>
    private void Account(Filled process, MissingStretch stretch, int result, int error, long copied)
    {
        if (result == 0)
        {
            process.Missing.Filled(stretch.Address, stretch.Pages);
            _pages += stretch.Pages;
            return;
        }

        int done = copied > 0 ? (int)((ulong)copied / Page) : 0;
        switch (error)
        {
            case ESrch or ENoSpc:
                Forget(process); // it exited
                return;
            case EExist or ENoEnt:
                // the page after those copied is there already (EEXIST), or no longer mapped (ENOENT,
                // its unmap event not read yet): either way nothing is to be filled there
                process.Missing.Filled(stretch.Address, Math.Min(done + 1, stretch.Pages));
                break;
            case EAgain:
                process.Missing.Filled(stretch.Address, done); // the mappings are changing: the rest again later
                break;
            default:
                throw new IOException($"UFFDIO_COPY of {stretch.Pages} pages at 0x{stretch.Address:x} into process {process.Pid} failed (errno {error})");
        }

        _pages += done;
    }

    private byte* SecondBuffer => _secondBuffer != null ? _secondBuffer : _secondBuffer = (byte*)NativeMemory.AlignedAlloc((nuint)(PiecePages * Page), (nuint)Page);

    /// <summary>A stretch stored in a row in one file is copied from the file's mapping when it is at least this long (or whole); shorter ones are gathered by reads.</summary>
    private const int MinMappedPages = 32;

    /// <summary>
    /// Where <paramref name="pages"/> pages at <paramref name="offset"/> of a staged pages file are in
    /// its mapping, their page tables filled (so the kernel's copy takes them without faulting); 0
    /// where the file cannot be mapped or they cannot be filled in: those pages are read instead.
    /// Reading them first cost a copy of every byte (at 1 GiB, 130-200 ms of a fill of 490-550 ms).
    /// </summary>
    private nint MappedAt(Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset, int pages)
    {
        if (!_mapping)
        {
            return 0;
        }

        if (!_maps.TryGetValue(file, out var map))
        {
            long length = RandomAccess.GetLength(file);
            nint at = length > 0 ? Interop.Tracking.Mmap(0, (nuint)length, Interop.Tracking.ProtRead, Interop.Tracking.MapShared, (int)file.DangerousGetHandle(), 0) : 0;
            map = (at == Interop.Tracking.MapFailed ? 0 : at, length);
            _maps[file] = map;
        }

        long bytes = (long)pages * (long)Page;
        if (map.Base == 0 || offset < 0 || offset + bytes > map.Length)
        {
            return 0;
        }

        nint start = map.Base + (nint)offset;
        if (Interop.Tracking.Madvise(start, (nuint)bytes, Interop.Tracking.MadvisePopulateRead) != 0)
        {
            // a kernel without MADV_POPULATE_READ (before 5.14): read, as before, from now on
            _mapping = Marshal.GetLastPInvokeError() != EInval;
            return 0;
        }

        return start;
    }

    private static void Wake(Filled process, ulong address)
    {
        var range = new UffdRange { Start = address, Length = Page };
        _ = Interop.Tracking.Ioctl(process.Uffd, UffdioWake, &range);
    }

    private static void ZeroPage(Filled process, ulong address)
    {
        var zero = new Zeropage { Range = new UffdRange { Start = address, Length = Page } };
        if (Interop.Tracking.Ioctl(process.Uffd, UffdioZeropage, &zero) != 0)
        {
            int error = Marshal.GetLastPInvokeError();
            if (error is ESrch or ENoSpc)
            {
                Forget(process);
            }
            else if (error is not (EExist or EAgain or ENoEnt))
            {
                throw new IOException($"UFFDIO_ZEROPAGE at 0x{address:x} of process {process.Pid} failed (errno {error})");
            }
        }
    }

    private static void Forget(Filled process)
    {
        if (!process.Gone)
        {
            process.Gone = true;
            Interop.Userfaultfd.Close(process.Uffd);
        }
    }

    /// <summary>A restored process (or a child it forked meanwhile) and what it still misses.</summary>
    private sealed class Filled(int pid, int uffd, MissingPages missing)
    {
        /// <summary>Its PID in the images: whose pages it has.</summary>
        public int Pid { get; } = pid;

        public int Uffd { get; } = uffd;

        public MissingPages Missing { get; } = missing;

        public bool Gone { get; set; }
    }
}

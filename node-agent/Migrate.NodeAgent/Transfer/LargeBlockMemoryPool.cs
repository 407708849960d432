using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace Migrate.NodeAgent.Transfer;

/// <summary>
/// The memory pool this agent's server (Kestrel) reads its connections into, in blocks of
/// <see cref="BlockSize"/> bytes. Kestrel's own pool has blocks of 4 KiB, and its socket transport
/// reads at most one block per receive: the transfer benchmark's 5 GiB through the agents took
/// about 2.5 million receives, and those calls were a tenth of both cores' time during a pre-copy
/// round here.
/// With 64 KiB blocks a receive takes what the loopback or the network has ready, up to that.
/// Blocks are pinned (never moved by the GC, as sockets want them) and kept for reuse up to
/// <see cref="MaxKept"/>; more are left to the GC when returned.
/// </summary>
internal sealed class LargeBlockMemoryPool : MemoryPool<byte>
{
    public const int BlockSize = 64 << 10;

    /// <summary>Blocks kept for reuse at most (16 MiB: what Kestrel buffers of one request at most here).</summary>
    public const int MaxKept = 256;

    private readonly ConcurrentQueue<Block> _kept = new();
    private int _count;
    private volatile bool _disposed;

    public override int MaxBufferSize => BlockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, BlockSize);
        if (_kept.TryDequeue(out var block))
        {
            Interlocked.Decrement(ref _count);
            block.Rented = true;
            return block;
        }

        return new Block(this) { Rented = true };
    }

    private void Return(Block block)
    {
        if (_disposed || Interlocked.Increment(ref _count) > MaxKept)
        {
            if (!_disposed)
            {
                Interlocked.Decrement(ref _count);
            }

            return;
        }

        _kept.Enqueue(block);
    }

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        _kept.Clear();
    }

    private sealed class Block(LargeBlockMemoryPool pool) : IMemoryOwner<byte>
    {
        private readonly byte[] _array = GC.AllocateUninitializedArray<byte>(BlockSize, pinned: true);

        public bool Rented { get; set; }

        public Memory<byte> Memory => _array;

        public void Dispose()
        {
            // (once: a block returned twice would be handed to two renters)
            if (Rented)
            {
                Rented = false;
                pool.Return(this);
            }
        }
    }
}

/// <summary>Gives Kestrel <see cref="LargeBlockMemoryPool"/>s in place of its own (registered with the agent's services).</summary>
internal sealed class LargeBlockMemoryPoolFactory : IMemoryPoolFactory<byte>
{
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new LargeBlockMemoryPool();
}

using Microsoft.Extensions.DependencyInjection;
using Migrate.NodeAgent.Transfer;
using Xunit;

namespace Migrate.NodeAgent.Tests;

/// <summary>The pool the agent's server reads connections into: 64 KiB blocks, reused, each handed to one renter at a time.</summary>
public sealed class LargeBlockMemoryPoolTests
{
    [Fact]
    public void Blocks_are_64_KiB_and_a_returned_block_is_rented_again()
    {
        using var pool = new LargeBlockMemoryPoolFactory().Create();
        Assert.Equal(64 << 10, pool.MaxBufferSize);

        var first = pool.Rent(4096);
        Assert.Equal(64 << 10, first.Memory.Length);
        first.Memory.Span.Fill(7);
        var memory = first.Memory;
        first.Dispose();
        first.Dispose(); // (a second return is ignored: never two renters of one block)

        using var again = pool.Rent();
        using var other = pool.Rent();
        Assert.True(again.Memory.Span.Overlaps(memory.Span), "the returned block was not reused");
        Assert.False(other.Memory.Span.Overlaps(memory.Span), "a block returned twice was handed out twice");
    }

    [Fact]
    public void More_than_a_block_is_refused_and_a_disposed_pool_rents_nothing()
    {
        var pool = new LargeBlockMemoryPool();
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent((64 << 10) + 1));
        var rented = pool.Rent();
        pool.Dispose();
        rented.Dispose(); // returned after the pool went: dropped
        Assert.Throws<ObjectDisposedException>(() => pool.Rent());
    }

    [Fact]
    public async Task The_agents_server_is_given_it()
    {
        await using var agent = AgentHost.Build(["--Agent:ListenAddress=127.0.0.1:0", "--Agent:NodeName=node-a"]);
        // the one Kestrel's socket transport and its connections resolve
        Assert.IsType<LargeBlockMemoryPoolFactory>(agent.Services.GetRequiredService<Microsoft.AspNetCore.Connections.IMemoryPoolFactory<byte>>());
    }
}

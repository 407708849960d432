using Migrate.Operator.Kubernetes;
using Xunit;

namespace Migrate.Operator.Tests.Kubernetes;

public sealed class WorkQueueTests
{
    [Fact]
    public async Task A_key_added_many_times_before_a_worker_takes_it_is_worked_on_once()
    {
        using var queue = new WorkQueue<string>();
        for (int i = 0; i < 10; i++)
        {
            queue.Add("a");
        }

        queue.Add("b");

        Assert.Equal("a", await queue.TakeAsync(CancellationToken.None));
        Assert.Equal("b", await queue.TakeAsync(CancellationToken.None));
        Assert.Equal(0, queue.Length);
    }

    [Fact]
    public async Task A_key_added_while_it_is_worked_on_waits_for_its_worker_and_comes_back_once()
    {
        using var queue = new WorkQueue<string>();
        queue.Add("a");
        var taken = await queue.TakeAsync(CancellationToken.None);

        queue.Add("a");
        queue.Add("a");
        using var nothingYet = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queue.TakeAsync(nothingYet.Token));
        queue.Done(taken);

        Assert.Equal("a", await queue.TakeAsync(CancellationToken.None));
        Assert.Equal(0, queue.Length);
    }

    [Fact]
    public async Task Concurrent_workers_never_hold_the_same_key_at_once()
    {
        using var queue = new WorkQueue<int>();
        int[] holders = new int[5];
        int overlaps = 0;
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        var workers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    int key = await queue.TakeAsync(stop.Token);
                    if (Interlocked.Increment(ref holders[key]) > 1)
                    {
                        Interlocked.Increment(ref overlaps);
                    }

                    await Task.Delay(1);
                    Interlocked.Decrement(ref holders[key]);
                    queue.Done(key);
                }
            }
            catch (OperationCanceledException)
            {
                // time is up
            }
        })).ToList();
        for (int i = 0; i < 2000 && !stop.IsCancellationRequested; i++)
        {
            queue.Add(i % 5);
            await Task.Yield();
        }

        await Task.WhenAll(workers);

        Assert.Equal(0, overlaps);
    }

    [Fact]
    public void A_failing_key_waits_twice_as_long_each_time_until_it_succeeds()
    {
        using var queue = new WorkQueue<string> { BaseDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(50) };

        var delays = Enumerable.Range(0, 5).Select(_ => queue.AddRateLimited("a").TotalMilliseconds).ToList();
        queue.Forget("a");
        var afterSuccess = queue.AddRateLimited("a").TotalMilliseconds;

        Assert.Equal([10.0, 20, 40, 50, 50], delays);
        Assert.Equal(10.0, afterSuccess);
    }

    [Fact]
    public async Task A_delayed_key_arrives_after_its_delay_and_the_earliest_of_two_wins()
    {
        using var queue = new WorkQueue<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        queue.AddAfter("a", TimeSpan.FromSeconds(5));
        queue.AddAfter("a", TimeSpan.FromMilliseconds(150));

        Assert.Equal("a", await queue.TakeAsync(CancellationToken.None));
        Assert.InRange(clock.ElapsedMilliseconds, 140, 4000);
    }
}

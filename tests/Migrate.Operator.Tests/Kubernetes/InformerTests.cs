using System.Runtime.CompilerServices;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using Migrate.Operator.Kubernetes;
using Xunit;

namespace Migrate.Operator.Tests.Kubernetes;

/// <summary>The informer's list-then-watch loop against scripted list and watch answers.</summary>
public sealed class InformerTests
{
    [Fact]
    public async Task A_410_from_the_watch_relists_and_handlers_learn_what_changed_meanwhile()
    {
        var lists = new Queue<(IList<V1Pod>, string)>(
        [
            ([Pod("a", "1"), Pod("b", "2")], "2"),
            ([Pod("b", "5"), Pod("c", "6")], "6"),
        ]);
        var watchedFrom = new List<string>();
        var changes = new List<string>();
        var informer = new Informer<V1Pod>("pods", _ => Task.FromResult(lists.Count > 1 ? lists.Dequeue() : lists.Peek()),
            (version, onError, ct) => Watch(version, onError, watchedFrom, ct), NullLogger.Instance);
        informer.OnChange(c => changes.Add($"{c.Old?.Metadata.Name ?? "-"}>{c.New?.Metadata.Name ?? "-"}"));
        using var stop = new CancellationTokenSource();

        var running = informer.RunAsync(stop.Token);
        await WaitAsync(() => watchedFrom.Count >= 2);
        await stop.CancelAsync();
        await running;

        Assert.Equal(["2", "6"], watchedFrom.Take(2));
        Assert.Equal(2, informer.Lists);
        Assert.Equal(["b", "c"], informer.Items.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
        Assert.Equal(["->a", "->b", "a>a", "b>b", "->c", "a>-"], changes);
    }

    [Fact]
    public async Task A_watch_that_ends_resumes_from_the_last_version_seen_a_bookmark_included()
    {
        var watchedFrom = new List<string>();
        var informer = new Informer<V1Pod>("pods", _ => Task.FromResult<(IList<V1Pod>, string)>(([], "10")),
            (version, onError, ct) => Bookmarked(version, watchedFrom, ct), NullLogger.Instance);
        using var stop = new CancellationTokenSource();

        var running = informer.RunAsync(stop.Token);
        await WaitAsync(() => watchedFrom.Count >= 3);
        await stop.CancelAsync();
        await running;

        Assert.Equal(["10", "11", "12"], watchedFrom.Take(3));
        Assert.Equal(1, informer.Lists);
        Assert.Single(informer.Items);
    }

    /// <summary>The first watch ends with a 410 Gone; the later ones stay open until cancelled.</summary>
    private static async IAsyncEnumerable<(WatchEventType, V1Pod)> Watch(string version, Action<Exception> onError, List<string> watchedFrom,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        watchedFrom.Add(version);
        if (watchedFrom.Count == 1)
        {
            yield return (WatchEventType.Modified, Pod("a", "3"));
            onError(new KubernetesException(new V1Status { Code = 410, Reason = "Expired", Message = "too old" }));
            yield break;
        }

        await Task.Delay(Timeout.Infinite, cancellationToken).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    /// <summary>Each watch sees one event or bookmark, then the server closes it.</summary>
    private static async IAsyncEnumerable<(WatchEventType, V1Pod)> Bookmarked(string version, List<string> watchedFrom, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        watchedFrom.Add(version);
        await Task.Yield();
        if (watchedFrom.Count == 1)
        {
            yield return (WatchEventType.Added, Pod("x", "11"));
        }
        else if (watchedFrom.Count == 2)
        {
            yield return (WatchEventType.Bookmark, new V1Pod { Metadata = new V1ObjectMeta { ResourceVersion = "12" } });
        }
        else
        {
            await Task.Delay(Timeout.Infinite, cancellationToken).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    private static V1Pod Pod(string name, string version) => new() { Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "default", ResourceVersion = version } };

    private static async Task WaitAsync(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++)
        {
            await Task.Delay(20);
        }

        Assert.True(condition());
    }
}

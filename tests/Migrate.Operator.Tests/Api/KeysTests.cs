using Xunit;

namespace Migrate.Operator.Tests.Api;

public sealed class KeysTests
{
    [Theory]
    [InlineData("podmigration.io/keep-name", "true", "podmigration.io/keep-name", "true")]
    [InlineData("podmig.io/keep-name", "true", "podmigration.io/keep-name", "true")]
    [InlineData("podmig.io/agent-endpoint", "10.0.0.1:7070", "podmigration.io/agent-endpoint", "10.0.0.1:7070")]
    [InlineData("podmig.io/migrate", "true", "podmigration.io/migrate", null)]
    [InlineData("example.com/keep-name", "true", "podmigration.io/keep-name", null)]
    public void A_key_is_read_under_its_name_or_its_deprecated_spelling_only(string present, string value, string asked, string? expected)
    {
        var map = new Dictionary<string, string> { [present] = value };

        Assert.Equal(expected, Keys.Get(map, asked));
    }

    [Fact]
    public void The_current_key_wins_over_the_deprecated_one()
    {
        var map = new Dictionary<string, string> { ["podmig.io/keep-name"] = "false", ["podmigration.io/keep-name"] = "true" };

        Assert.Equal("true", Keys.Get(map, Labels.KeepName));
    }

    [Fact]
    public void Every_key_the_project_writes_is_under_the_api_group_domain()
    {
        var keys = new[] { typeof(Labels), typeof(Annotations), typeof(Finalizers) }
            .SelectMany(t => t.GetFields())
            .Select(f => (string)f.GetValue(null)!)
            .Where(k => k != Annotations.PodDeletionCost)
            .ToList();

        Assert.NotEmpty(keys);
        Assert.All(keys, k => Assert.StartsWith(Keys.Domain, k, StringComparison.Ordinal));
        Assert.Equal(keys.Count, keys.Distinct(StringComparer.Ordinal).Count());
    }
}

using Microsoft.Extensions.Configuration;
using Xunit;

namespace Migrate.Operator.Tests;

/// <summary>The operator's settings, as configuration gives them, reach the decisions' limits.</summary>
public sealed class OperatorOptionsTests
{
    private static OperatorOptions Bound(params (string Key, string Value)[] settings)
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(settings.Select(s => new KeyValuePair<string, string?>(OperatorOptions.Section + ":" + s.Key, s.Value)))
            .Build();
        var options = new OperatorOptions();
        configuration.GetSection(OperatorOptions.Section).Bind(options);
        return options;
    }

    [Theory]
    [InlineData(null, 30)] // the default
    [InlineData("8", 8)]
    [InlineData("0", 1)] // never zero: a silent agent is given a second
    [InlineData("-5", 1)]
    public void The_checkpoint_agent_grace_reaches_checkpoints_and_restores(string? seconds, int expected)
    {
        var options = seconds is null ? Bound() : Bound(("CheckpointAgentGraceSeconds", seconds));

        Assert.Equal(TimeSpan.FromSeconds(expected), options.CheckpointPolicy().AgentGrace);
    }

    [Fact]
    public void The_migration_and_the_checkpoint_grace_are_set_apart()
    {
        var options = Bound(("AgentGraceSeconds", "12"), ("CheckpointAgentGraceSeconds", "45"));

        Assert.Equal((TimeSpan.FromSeconds(12), TimeSpan.FromSeconds(45)), (options.Policy().AgentGrace, options.CheckpointPolicy().AgentGrace));
    }
}

namespace Migrate.Operator;

/// <summary>
/// The operator's host. So far it only serves its probes: the MigrationRequest controller, leader
/// election and the agent client arrive with the operator issue (see README, "Status").
/// </summary>
public static class OperatorHost
{
    public static WebApplication Build(string[] args)
    {
        var builder = WebApplication.CreateSlimBuilder(args);
        builder.Configuration.AddEnvironmentVariables("PODMIG_");
        builder.Services.AddHealthChecks();

        var app = builder.Build();
        app.MapHealthChecks("/healthz");
        app.MapHealthChecks("/readyz");
        return app;
    }
}

using Migrate.NodeAgent;

if (ProgramVersion.Requested(args))
{
    Console.WriteLine(ProgramVersion.Describe("migrate-node-agent", typeof(AgentHost).Assembly));
    return;
}

AgentHost.Build(args).Run();

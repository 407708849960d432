using Migrate.NodeAgent;

AgentHost.Build(args).Run();

using Migrate.Operator;

OperatorHost.Build(args).Run();

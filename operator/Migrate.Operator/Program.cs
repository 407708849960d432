using Migrate.Operator;

if (ProgramVersion.Requested(args))
{
    Console.WriteLine(ProgramVersion.Describe("migrate-operator", typeof(OperatorHost).Assembly));
    return;
}

OperatorHost.Build(args).Run();

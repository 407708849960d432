using System.Text.Json.Serialization;
using Migrate.Criu.Lazy;
using Migrate.RestoreRuntime;

// podmig-runc: runc's command line; every call goes to runc unchanged, except the creation (and
// then the start) of a container whose pod is marked for restore.
if (args.Length > 0 && args[0] == LazyRestoreHelpers.ServeArgument)
{
    // a lazy restore's page server (started by a restore below, detached)
    return LazyRestoreHelpers.Serve(args, Console.Out);
}

if (args.Length > 0 && args[0] == LazyRestoreHelpers.FillArgument)
{
    // a lazy restore's memory filler (started by a restore below, detached), when the memory is all on this node
    return LazyRestoreHelpers.Fill(args, Console.Out);
}

if (Environment.GetEnvironmentVariable("CNI_COMMAND") is { Length: > 0 })
{
    // installed as the CNI IPAM plugin podmig-ipam (a link to this program)
    return CniIpam.Run(Environment.GetEnvironmentVariable, Console.In, Console.Out);
}

var runc = Environment.GetEnvironmentVariable("PODMIG_RUNC") is { Length: > 0 } configured ? configured : "runc";
var line = RuncCommandLine.Parse(args);
if (line.Command == "create" && RestoreRequest.TryRead(line) is { } request)
{
    return Restorer.Run(runc, line, request);
}

if (line.Command == "start" && Restorer.IsRestored(line))
{
    // restored containers run from the moment they are created
    return 0;
}

int errno = Exec.Replace(runc, args);
Console.Error.WriteLine($"podmig-runc: cannot run {runc} (errno {errno})");
return 127;

namespace Migrate.RestoreRuntime
{
    [JsonSerializable(typeof(Dictionary<string, string>))]
    internal sealed partial class RuntimeJson : JsonSerializerContext;
}

using System.Globalization;
using System.Net;
using Migrate.KubeEmulator;
using Migrate.KubeEmulator.Auth;

// hack/kube-emulator [--port P] [--kubeconfig PATH] [--rbac] [--address A] [--watch-history N]
//                    [--token TOKEN:USER[:GROUP,...]] [--service-endpoint NAME.NS.svc=HOST:PORT] [--verbose]
var settings = new KubeEmulatorSettings { Port = 6443 };
var tokens = new List<(string Token, UserInfo User)>();
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "--port":
            settings.Port = int.Parse(Next(), CultureInfo.InvariantCulture);
            break;
        case "--kubeconfig":
            settings.KubeconfigPath = Next();
            break;
        case "--rbac":
            settings.Api.Rbac = true;
            break;
        case "--address":
            settings.Address = IPAddress.Parse(Next());
            break;
        case "--watch-history":
            settings.Api.WatchHistory = int.Parse(Next(), CultureInfo.InvariantCulture);
            break;
        case "--token":
            var parts = Next().Split(':', 3);
            tokens.Add((parts[0], new UserInfo(parts[1], [.. (parts.Length > 2 ? parts[2].Split(',') : []), "system:authenticated"])));
            break;
        case "--service-endpoint":
            var mapping = Next().Split('=', 2);
            settings.Api.ServiceEndpoints[mapping[0]] = mapping[1];
            break;
        case "--verbose":
            settings.LogLevel = LogLevel.Information;
            break;
        case "--help" or "-h":
            Console.WriteLine("usage: kube-emulator [--port P] [--kubeconfig PATH] [--rbac] [--address A] [--watch-history N] [--token TOKEN:USER[:GROUPS]] [--service-endpoint NAME.NS.svc=HOST:PORT] [--verbose]");
            return 0;
        default:
            Console.Error.WriteLine($"kube-emulator: unknown argument '{args[i]}' (see --help)");
            return 2;
    }
}

await using var emulator = await KubeEmulator.StartAsync(settings);
foreach (var (token, user) in tokens)
{
    emulator.Server.Authenticator.AddStaticToken(token, user);
}

Console.WriteLine($"KUBECONFIG={emulator.KubeconfigPath}");
Console.Out.Flush();
var stop = new TaskCompletionSource();
using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
{
    c.Cancel = true;
    stop.TrySetResult();
});
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true;
    stop.TrySetResult();
};
await stop.Task;
return 0;

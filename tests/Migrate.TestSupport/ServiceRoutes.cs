using System.Globalization;
using System.Text;
using k8s;
using k8s.Models;

namespace Migrate.TestSupport;

/// <summary>
/// What kube-proxy does for one Service on one node, done here for a network namespace of the
/// sandbox (there is no kube-proxy): connections to the Service's cluster IP and port are
/// DNATed to one of its ready endpoints (each new connection picks one, as kube-proxy's iptables
/// mode does), and the rules follow the Service's Endpoints, looked at every 50 ms. Established
/// connections keep the endpoint they were given (conntrack).
/// </summary>
public sealed class ServiceRoutes : IAsyncDisposable
{
    private readonly IKubernetes _client;
    private readonly string _namespacePath;
    private readonly string _ns;
    private readonly string _service;
    private readonly string _chain;
    private readonly string _interface;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly List<(DateTime At, string Endpoints)> _history = [];
    private readonly Lock _gate = new();

    private ServiceRoutes(IKubernetes client, string namespacePath, string ns, string service, string @interface)
    {
        _interface = @interface;
        _client = client;
        _namespacePath = namespacePath;
        _ns = ns;
        _service = service;
        _chain = "PMSVC-" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(ns + "/" + service)))[..10].ToUpperInvariant();
        _loop = Task.Run(() => RunAsync(_stop.Token));
    }

    /// <summary>Routes <paramref name="service"/>'s cluster IP inside the network namespace at <paramref name="namespacePath"/>, out of <paramref name="interface"/>.</summary>
    public static ServiceRoutes Start(IKubernetes client, string namespacePath, string ns, string service, string @interface = "eth0") =>
        new(client ?? throw new ArgumentNullException(nameof(client)), namespacePath, ns, service, @interface);

    /// <summary>Every set of ready endpoints seen, in order, as "ip:port(pod)" lists.</summary>
    public IReadOnlyList<(DateTime At, string Endpoints)> History
    {
        get
        {
            lock (_gate)
            {
                return [.. _history];
            }
        }
    }

    /// <summary>The iptables-restore input that sends <paramref name="clusterIp"/>:<paramref name="port"/> to <paramref name="endpoints"/> (a pure function).</summary>
    public static string Rules(string chain, string clusterIp, int port, IReadOnlyList<(string Ip, int Port)> endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var text = new StringBuilder();
        text.Append("*nat\n").Append(CultureInfo.InvariantCulture, $":{chain} - [0:0]\n");
        for (int i = 0; i < endpoints.Count; i++)
        {
            // the first of n endpoints takes 1/n of new connections, the next 1/(n-1) of the rest, ...
            var pick = i < endpoints.Count - 1
                ? string.Create(CultureInfo.InvariantCulture, $" -m statistic --mode random --probability {1.0 / (endpoints.Count - i):0.00000}")
                : "";
            text.Append(CultureInfo.InvariantCulture, $"-A {chain} -d {clusterIp}/32 -p tcp --dport {port}{pick} -j DNAT --to-destination {endpoints[i].Ip}:{endpoints[i].Port}\n");
        }

        if (endpoints.Count == 0)
        {
            // no endpoint: nothing gets through (kube-proxy rejects in the filter table; a NAT rule can only drop)
            text.Append(CultureInfo.InvariantCulture, $"-A {chain} -d {clusterIp}/32 -p tcp --dport {port} -j DROP\n");
        }

        return text.Append("COMMIT\n").ToString();
    }

    private async Task RunAsync(CancellationToken cancellationToken)
    {
        string applied = "";
        bool jumped = false;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var service = await _client.CoreV1.ReadNamespacedServiceAsync(_service, _ns, cancellationToken: cancellationToken);
                V1Endpoints? endpoints = null;
                try
                {
                    endpoints = await _client.CoreV1.ReadNamespacedEndpointsAsync(_service, _ns, cancellationToken: cancellationToken);
                }
                catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == System.Net.HttpStatusCode.NotFound)
                {
                    // none yet
                }

                var port = service.Spec.Ports[0];
                var ready = (endpoints?.Subsets ?? []).SelectMany(s => (s.Addresses ?? []).Select(a => (a.Ip, Port: s.Ports?.FirstOrDefault(p => p.Name == port.Name)?.Port ?? port.Port, Pod: a.TargetRef?.Name)))
                    .ToList();
                var rules = Rules(_chain, service.Spec.ClusterIP, port.Port, [.. ready.Select(r => (r.Ip, r.Port)).Distinct()]);
                if (rules != applied)
                {
                    Apply(rules);
                    if (!jumped)
                    {
                        // a node reaches cluster IPs by its default route; this namespace has only its segment's
                        InNamespace("ip", "route", "replace", service.Spec.ClusterIP + "/32", "dev", _interface);
                        InNamespace("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-j", _chain);
                        jumped = true;
                    }

                    applied = rules;
                }

                // what the endpoints are, pods included (the rules change only when an address or port does)
                var seen = string.Join(",", ready.Select(r => $"{r.Ip}:{r.Port}({r.Pod})"));
                lock (_gate)
                {
                    if (_history.Count == 0 || _history[^1].Endpoints != seen)
                    {
                        _history.Add((DateTime.UtcNow, seen));
                    }
                }

                await Task.Delay(50, cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested)
            {
                // a call timed out, the Service has no port yet, a rule did not apply: look again
                Console.Error.WriteLine($"service routes of {_ns}/{_service}: {e.GetType().Name}: {e.Message}");
                await Task.Delay(50, CancellationToken.None);
            }
        }
    }

    private void Apply(string rules)
    {
        var file = Path.Combine(Path.GetTempPath(), $"podmig-{_chain}-{Environment.ProcessId}.rules");
        File.WriteAllText(file, rules);
        try
        {
            InNamespace("iptables-restore", "-w", "--noflush", file);
        }
        finally
        {
            File.Delete(file);
        }
    }

    private void InNamespace(string program, params string[] arguments)
    {
        var result = Prerequisites.Capture("nsenter", ["--net=" + _namespacePath, program, .. arguments]);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} in {_namespacePath}: {result.Stderr.Trim()}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop.ContinueWith(_ => { }, TaskScheduler.Default);
        _stop.Dispose();
        // the rules live in the namespace, which their owner removes
    }
}

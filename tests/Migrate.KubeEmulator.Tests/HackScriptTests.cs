using System.Diagnostics;
using System.Globalization;
using Migrate.TestSupport;
using Xunit;

namespace Migrate.KubeEmulator.Tests;

/// <summary>hack/kube-emulator as a user runs it: prints the kubeconfig, serves kubectl, stops on SIGTERM.</summary>
public sealed class HackScriptTests
{
    [Fact]
    public async Task The_script_prints_a_kubeconfig_serves_kubectl_and_stops_on_SIGTERM()
    {
        Prerequisites.RequirePrograms("kubectl");
        int port = Ports.Free();

        var kubeconfig = Path.Combine(Path.GetTempPath(), $"script-{port}.kubeconfig");
        var start = new ProcessStartInfo(RepositoryLayout.InRepository("hack", "kube-emulator"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "--port", port.ToString(CultureInfo.InvariantCulture), "--kubeconfig", kubeconfig, "--rbac" })
        {
            start.ArgumentList.Add(a);
        }

        using var emulator = Process.Start(start)!;
        try
        {
            var first = await emulator.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromMinutes(2));
            var namespaces = Prerequisites.Run("kubectl", $"--kubeconfig={kubeconfig}", "get", "namespaces", "-o", "name");

            Assert.Equal($"KUBECONFIG={kubeconfig}", first);
            Assert.Contains("namespace/default", namespaces, StringComparison.Ordinal);
            Assert.Contains($"server: https://127.0.0.1:{port}", await File.ReadAllTextAsync(kubeconfig), StringComparison.Ordinal);
        }
        finally
        {
            Prerequisites.Run("kill", "-TERM", emulator.Id.ToString(CultureInfo.InvariantCulture));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await emulator.WaitForExitAsync(timeout.Token);
            File.Delete(kubeconfig);
        }

        Assert.Equal(0, emulator.ExitCode);
    }
}

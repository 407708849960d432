using System.Diagnostics;
using System.Text;
using k8s;
using Emulator = Migrate.KubeEmulator.KubeEmulator;
using KubeEmulatorSettings = Migrate.KubeEmulator.KubeEmulatorSettings;
using Migrate.KubeEmulator.Api;
using Xunit;

namespace Migrate.TestSupport;

/// <summary>The result of running kubectl.</summary>
public sealed record KubectlResult(int ExitCode, string Output, string Error)
{
    public KubectlResult Succeeded()
    {
        Assert.True(ExitCode == 0, $"kubectl failed ({ExitCode}): {Error}{Output}");
        return this;
    }

    public string Failed()
    {
        Assert.True(ExitCode != 0, $"kubectl was expected to fail but printed: {Output}");
        return Error;
    }
}

/// <summary>The real kubectl against one kubeconfig (never $KUBECONFIG), with a discovery cache of its own.</summary>
public sealed class Kubectl(string kubeconfig, string cacheDirectory)
{
    public string KubeconfigPath => kubeconfig;

    public Task<KubectlResult> RunAsync(params string[] args) => RunCoreAsync(null, args);

    /// <summary>kubectl with <paramref name="stdin"/> as its standard input (apply -f -).</summary>
    public Task<KubectlResult> RunWithInputAsync(string stdin, params string[] args) => RunCoreAsync(stdin, args);

    private async Task<KubectlResult> RunCoreAsync(string? stdin, string[] args)
    {
        using var process = Start(args, stdin is not null);
        if (stdin is not null)
        {
            await process.StandardInput.WriteAsync(stdin);
            process.StandardInput.Close();
        }

        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        return new KubectlResult(process.ExitCode, await output, await error);
    }

    /// <summary>Starts kubectl without waiting (for get -w or logs -f); the caller stops it.</summary>
    public Process Start(string[] args, bool redirectInput = false)
    {
        ArgumentNullException.ThrowIfNull(args);
        var start = new ProcessStartInfo("kubectl")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = redirectInput,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
        };
        start.ArgumentList.Add($"--kubeconfig={kubeconfig}");
        start.ArgumentList.Add($"--cache-dir={cacheDirectory}");
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment.Remove("KUBECONFIG");
        return Process.Start(start) ?? throw new InvalidOperationException("could not start kubectl");
    }
}

/// <summary>A fresh emulator per test class, the real kubectl pointed at it, and a KubernetesClient.</summary>
public class EmulatorFixture : IAsyncLifetime
{
    private readonly string _cacheDirectory = Directory.CreateTempSubdirectory("kubectl-cache-").FullName;

    public Emulator Emulator { get; private set; } = null!;

    /// <summary>kubectl's discovery cache for this emulator (removed on dispose).</summary>
    public string KubectlCacheDirectory => _cacheDirectory;

    public Kubernetes Client { get; private set; } = null!;

    protected virtual void Configure(EmulatorOptions options)
    {
    }

    /// <summary>The server's own settings (addresses to listen on).</summary>
    protected virtual void ConfigureServer(KubeEmulatorSettings settings)
    {
    }

    public async Task InitializeAsync()
    {
        Prerequisites.RequirePrograms("kubectl");
        var settings = new KubeEmulatorSettings();
        Configure(settings.Api);
        ConfigureServer(settings);
        Emulator = await Emulator.StartAsync(settings);
        Client = ClientFor(Emulator.KubeconfigPath);
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        await Emulator.DisposeAsync();
        Directory.Delete(_cacheDirectory, recursive: true);
    }

    public static Kubernetes ClientFor(string kubeconfig) =>
        new(KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig));

    public static string ManifestPath(string name) => Path.Combine(AppContext.BaseDirectory, "Manifests", name);

    public Task<KubectlResult> KubectlAsync(params string[] args) => RunKubectlAsync(null, Emulator.KubeconfigPath, args);

    public Task<KubectlResult> KubectlInAsync(string stdin, params string[] args) => RunKubectlAsync(stdin, Emulator.KubeconfigPath, args);

    public Task<KubectlResult> RunKubectlAsync(string? stdin, string kubeconfig, params string[] args) =>
        stdin is null ? new Kubectl(kubeconfig, _cacheDirectory).RunAsync(args) : new Kubectl(kubeconfig, _cacheDirectory).RunWithInputAsync(stdin, args);

    /// <summary>Starts kubectl without waiting (for get -w); the caller stops it.</summary>
    public Process StartKubectl(string kubeconfig, string[] args, bool redirectInput = false) =>
        new Kubectl(kubeconfig, _cacheDirectory).Start(args, redirectInput);

    public async Task ApplyWidgetCrdAsync() =>
        (await KubectlAsync("apply", "-f", ManifestPath("widgets-crd.yaml"))).Succeeded();

    /// <summary>kubectl apply of a file in the repository (e.g. the CRDs under crds/).</summary>
    public async Task ApplyRepositoryFileAsync(params string[] path) =>
        (await KubectlAsync("apply", "-f", RepositoryLayout.InRepository(path))).Succeeded();
}


/// <summary>An emulator fixture with settings of the caller's (RBAC, access recording, service endpoints).</summary>
public sealed class ConfiguredEmulatorFixture(Action<EmulatorOptions> configure, Action<KubeEmulatorSettings>? server = null) : EmulatorFixture
{
    protected override void Configure(EmulatorOptions options) => configure(options);

    protected override void ConfigureServer(KubeEmulatorSettings settings) => server?.Invoke(settings);
}

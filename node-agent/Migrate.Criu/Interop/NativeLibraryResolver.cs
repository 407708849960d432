using System.Reflection;
using System.Runtime.InteropServices;

namespace Migrate.Criu;

/// <summary>
/// Finds libcriu.so.2. On the project's machines CRIU 4.x lives in a private prefix (Debian
/// bookworm's own CRIU cannot dump on current kernels) that hack/install-prereqs.sh fills; a
/// container image built on Debian trixie has it as a system library instead.
/// Order: $PODMIG_CRIU_LIBRARY_DIR, then $PODMIG_PREFIX (default /opt/pod-migration)/criu, then
/// the system's default search path.
/// </summary>
internal static class NativeLibraryResolver
{
    private const string DefaultPrefix = "/opt/pod-migration";
    private const string PrefixLibrarySubdirectory = "criu/usr/lib/x86_64-linux-gnu";
    private static int _registered;

    public static void EnsureRegistered()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 0)
        {
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
        }
    }

    /// <summary>The directory libcriu is loaded from, or null when the system search path is used.</summary>
    public static string? LibraryDirectory { get; private set; }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Interop.Libraries.Criu)
        {
            return nint.Zero;
        }

        var explicitDirectory = Environment.GetEnvironmentVariable("PODMIG_CRIU_LIBRARY_DIR");
        if (!string.IsNullOrEmpty(explicitDirectory))
        {
            return LoadFrom(explicitDirectory)
                ?? throw new DllNotFoundException(
                    $"PODMIG_CRIU_LIBRARY_DIR is '{explicitDirectory}' but {Interop.Libraries.Criu} is not there");
        }

        var prefix = Environment.GetEnvironmentVariable("PODMIG_PREFIX");
        var prefixDirectory = Path.Combine(string.IsNullOrEmpty(prefix) ? DefaultPrefix : prefix, PrefixLibrarySubdirectory);
        if (LoadFrom(prefixDirectory) is { } fromPrefix)
        {
            return fromPrefix;
        }

        if (NativeLibrary.TryLoad(Interop.Libraries.Criu, out var system))
        {
            return system;
        }

        throw new DllNotFoundException(
            $"{Interop.Libraries.Criu} (CRIU >= 4.1) was found neither in {prefixDirectory} nor on the system " +
            "library path; run hack/install-prereqs.sh as root");
    }

    private static nint? LoadFrom(string directory)
    {
        var criu = Path.Combine(directory, Interop.Libraries.Criu);
        if (!File.Exists(criu))
        {
            return null;
        }

        // libcriu links against libprotobuf-c.so.1; loading it first from the same directory makes the
        // dynamic loader satisfy that dependency with the matching build instead of searching for it.
        var protobuf = Path.Combine(directory, Interop.Libraries.ProtobufC);
        if (File.Exists(protobuf))
        {
            NativeLibrary.Load(protobuf);
        }

        var handle = NativeLibrary.Load(criu);
        LibraryDirectory = directory;
        return handle;
    }
}

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>Native library names, resolved by <see cref="NativeLibraryResolver"/>.</summary>
    internal static class Libraries
    {
        /// <summary>The soname of libcriu 4.x (Debian package libcriu2).</summary>
        internal const string Criu = "libcriu.so.2";

        /// <summary>libcriu's only non-libc dependency; preloaded from the same directory.</summary>
        internal const string ProtobufC = "libprotobuf-c.so.1";

        internal const string Libc = "libc.so.6";
    }
}

using Migrate.KubeEmulator.Api;
using Migrate.TestSupport;

namespace Migrate.KubeEmulator.Tests;

/// <summary>An emulator with RBAC enforcement on.</summary>
public sealed class RbacEmulatorFixture : EmulatorFixture
{
    protected override void Configure(EmulatorOptions options) => options.Rbac = true;
}

/// <summary>An emulator that keeps only 20 changes of watch history (for 410 Gone) and sends bookmarks often.</summary>
public sealed class ShortHistoryEmulatorFixture : EmulatorFixture
{
    protected override void Configure(EmulatorOptions options)
    {
        options.WatchHistory = 20;
        options.BookmarkInterval = TimeSpan.FromMilliseconds(300);
    }
}

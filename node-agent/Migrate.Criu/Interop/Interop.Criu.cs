using System.Runtime.InteropServices;

namespace Migrate.Criu;

internal static partial class Interop
{
    /// <summary>
    /// libcriu's thread-safe "local" API: every call takes its own options object, so concurrent
    /// operations do not share settings (the global criu_set_* API would). Strings are copied by
    /// libcriu (strdup) and released by criu_local_free_opts.
    /// </summary>
    internal static unsafe partial class Criu
    {
        /// <summary>struct criu_feature_check from criu.h (three C bools).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct FeatureCheck
        {
            public byte MemTrack;
            public byte LazyPages;
            public byte PidfdStore;
        }

        internal enum CgroupMode
        {
            Ignore = 0,
            None = 1,
            Props = 2,
            Soft = 3,
            Full = 4,
            Strict = 5,
            Default = 6,
        }

        internal enum NetworkLockMethod
        {
            Iptables = 1,
            Nftables = 2,
            Skip = 3,
        }

        internal enum PreDumpMode
        {
            Splice = 1,
            Read = 2,
        }

        // criu_local_init_opts frees *opts when it is non-null, so it is declared with a ref to a
        // pointer the caller zeroes, not as an out SafeHandle.
        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_init_opts")]
        internal static partial int InitOptions(ref nint opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_free_opts")]
        internal static partial void FreeOptions(nint opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_service_binary", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetServiceBinary(SafeCriuOptionsHandle opts, string path);

        /// <summary>Talk to a CRIU service already connected on <paramref name="fd"/> instead of starting one (libcriu closes it after the call).</summary>
        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_service_fd")]
        internal static partial void SetServiceFd(SafeCriuOptionsHandle opts, int fd);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_pid")]
        internal static partial void SetPid(SafeCriuOptionsHandle opts, int pid);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_images_dir_fd")]
        internal static partial void SetImagesDirFd(SafeCriuOptionsHandle opts, int fd);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_work_dir_fd")]
        internal static partial void SetWorkDirFd(SafeCriuOptionsHandle opts, int fd);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_parent_images", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetParentImages(SafeCriuOptionsHandle opts, string path);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_log_file", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetLogFile(SafeCriuOptionsHandle opts, string logFile);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_log_level")]
        internal static partial void SetLogLevel(SafeCriuOptionsHandle opts, int level);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_leave_running")]
        internal static partial void SetLeaveRunning(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_track_mem")]
        internal static partial void SetTrackMem(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_shell_job")]
        internal static partial void SetShellJob(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_tcp_established")]
        internal static partial void SetTcpEstablished(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_tcp_close")]
        internal static partial void SetTcpClose(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_tcp_skip_in_flight")]
        internal static partial void SetTcpSkipInFlight(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_ext_unix_sk")]
        internal static partial void SetExternalUnixSockets(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_file_locks")]
        internal static partial void SetFileLocks(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_link_remap")]
        internal static partial void SetLinkRemap(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_evasive_devices")]
        internal static partial void SetEvasiveDevices(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_weak_sysctls")]
        internal static partial void SetWeakSysctls(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_orphan_pts_master")]
        internal static partial void SetOrphanPtsMaster(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_auto_ext_mnt")]
        internal static partial void SetAutoExternalMounts(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_ext_sharing")]
        internal static partial void SetExternalSharing(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_ext_masters")]
        internal static partial void SetExternalMasters(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_manage_cgroups")]
        internal static partial void SetManageCgroups(SafeCriuOptionsHandle opts, [MarshalAs(UnmanagedType.U1)] bool value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_manage_cgroups_mode")]
        internal static partial void SetManageCgroupsMode(SafeCriuOptionsHandle opts, CgroupMode mode);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_freeze_cgroup", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetFreezeCgroup(SafeCriuOptionsHandle opts, string path);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_root", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetRoot(SafeCriuOptionsHandle opts, string root);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_ghost_limit")]
        internal static partial void SetGhostLimit(SafeCriuOptionsHandle opts, uint limit);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_network_lock")]
        internal static partial int SetNetworkLock(SafeCriuOptionsHandle opts, NetworkLockMethod method);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_pre_dump_mode")]
        internal static partial int SetPreDumpMode(SafeCriuOptionsHandle opts, PreDumpMode mode);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_empty_ns")]
        internal static partial void SetEmptyNamespaces(SafeCriuOptionsHandle opts, int namespaces);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_lsm_profile", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int SetLsmProfile(SafeCriuOptionsHandle opts, string profile);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_ext_mount", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddExternalMount(SafeCriuOptionsHandle opts, string key, string value);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_external", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddExternal(SafeCriuOptionsHandle opts, string key);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_inherit_fd", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddInheritFd(SafeCriuOptionsHandle opts, int fd, string key);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_skip_mnt", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddSkipMount(SafeCriuOptionsHandle opts, string mountPoint);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_enable_fs", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddEnableFilesystem(SafeCriuOptionsHandle opts, string filesystem);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_add_cg_root", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddCgroupRoot(SafeCriuOptionsHandle opts, string? controller, string path);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_join_ns_add", StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int AddJoinNamespace(SafeCriuOptionsHandle opts, string ns, string nsFile, string? extraOption);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_set_notify_cb")]
        internal static partial void SetNotifyCallback(SafeCriuOptionsHandle opts, delegate* unmanaged<byte*, nint, int> callback);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_notify_pid")]
        internal static partial int NotifyPid(nint notification);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_dump", SetLastError = true)]
        internal static partial int Dump(SafeCriuOptionsHandle opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_pre_dump", SetLastError = true)]
        internal static partial int PreDump(SafeCriuOptionsHandle opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_restore", SetLastError = true)]
        internal static partial int Restore(SafeCriuOptionsHandle opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_restore_child", SetLastError = true)]
        internal static partial int RestoreChild(SafeCriuOptionsHandle opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_get_version", SetLastError = true)]
        internal static partial int GetVersion(SafeCriuOptionsHandle opts);

        [LibraryImport(Libraries.Criu, EntryPoint = "criu_local_feature_check", SetLastError = true)]
        internal static partial int CheckFeatures(SafeCriuOptionsHandle opts, ref FeatureCheck features, nuint size);
    }
}

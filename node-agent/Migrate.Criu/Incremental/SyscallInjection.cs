using System.Runtime.InteropServices;
using static Migrate.Criu.Interop.Tracking;

namespace Migrate.Criu.Incremental;

/// <summary>Why a process's memory could not be tracked: said in logs and status, and the pages are compared instead.</summary>
public sealed class WriteTrackingException(string message) : Exception(message);

/// <summary>
/// Makes a running process call userfaultfd(2) once, takes the new descriptor out of it with
/// pidfd_getfd(2) and closes it there, so that nothing stays in the process's descriptor table
/// (a later CRIU dump sees no userfaultfd). One thread of the process is seized with ptrace and
/// interrupted; the calls run on a <c>syscall</c> instruction of its vDSO (no code is written into
/// the process); its registers are restored afterwards, with the restart of a system call it was
/// interrupted in done as the kernel would have done it; signals that arrive meanwhile are sent
/// again after it is let go. x86_64 only. Must run on one thread from seize to detach (ptrace
/// binds the tracer to the calling thread), so it is synchronous.
/// </summary>
public static class SyscallInjection
{
    private const int PtraceEventStop = 128;
    private const int SyscallStop = 0x80 | 5; // SIGTRAP | 0x80 with PTRACE_O_TRACESYSGOOD
    private const long RestartSyscall = 219;

    /// <summary>How long a stop may take to be reported (a task in uninterruptible sleep delays it).</summary>
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(20);

    /// <summary>A descriptor of this process for a new userfaultfd of process <paramref name="pid"/>'s memory.</summary>
    public static SafeUserfaultfd StealUserfaultfd(int pid)
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            throw new WriteTrackingException($"write tracking is implemented for x86_64 only, not {RuntimeInformation.ProcessArchitecture}");
        }

        ulong syscallAt = FindSyscallInstruction(pid);
        if (Ptrace(PtraceSeize, pid, 0, (nint)PtraceOptionTraceSysGood) != 0)
        {
            throw new WriteTrackingException($"could not trace process {pid}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
        }

        var pendingSignals = new List<int>();
        var saved = new ulong[RegisterCount];
        bool stopped = false;
        try
        {
            if (Ptrace(PtraceInterrupt, pid, 0, 0) != 0)
            {
                throw new WriteTrackingException($"could not stop process {pid}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
            }

            WaitForStop(pid, pendingSignals, expectSyscall: false);
            stopped = true;
            GetRegisters(pid, saved);
            long fd = Call(pid, saved, syscallAt, SysUserfaultfd, UserfaultfdFlags, 0, pendingSignals);
            if (fd < 0)
            {
                throw new WriteTrackingException($"process {pid} could not create a userfaultfd: {Interop.Libc.Describe((int)-fd)}"
                    + (fd == -1 || fd == -38 ? " (refused by its seccomp profile or the kernel)" : ""));
            }

            SafeUserfaultfd? ours = null;
            WriteTrackingException? failure = null;
            try
            {
                ours = TakeDescriptor(pid, (int)fd);
            }
            catch (WriteTrackingException e)
            {
                failure = e;
            }

            long closed = Call(pid, saved, syscallAt, SysClose, fd, 0, pendingSignals);
            if (closed != 0)
            {
                ours?.Dispose();
                throw new WriteTrackingException($"process {pid} could not close the userfaultfd it made (descriptor {fd}): {Interop.Libc.Describe((int)-closed)}");
            }

            if (failure is not null || ours is null)
            {
                throw failure ?? new WriteTrackingException($"no descriptor taken from process {pid}");
            }

            return ours;
        }
        finally
        {
            if (stopped)
            {
                // best effort: a process that died meanwhile has no registers to set
                try
                {
                    SetRegisters(pid, AfterStop(saved));
                }
                catch (WriteTrackingException)
                {
                }
            }

            // detaching lets it run; a process that died meanwhile is simply gone
            _ = Ptrace(PtraceDetach, pid, 0, 0);
            foreach (int signal in pendingSignals)
            {
                _ = TgKill(pid, pid, signal);
            }
        }
    }

    /// <summary>
    /// The registers to let a process go on with, given those saved when it was stopped: where it
    /// was stopped inside an interrupted system call, the kernel would now restart that call (it had
    /// not yet done so when the stop was reported); that is done here, and the call number is then
    /// cleared so that the kernel does not do it a second time. Pure.
    /// </summary>
    public static ulong[] AfterStop(ulong[] saved)
    {
        var registers = (ulong[])saved.Clone();
        long callNumber = (long)registers[RegOrigRax];
        long result = (long)registers[RegRax];
        if (callNumber >= 0)
        {
            switch (result)
            {
                case -512: // ERESTARTSYS
                case -513: // ERESTARTNOINTR
                case -514: // ERESTARTNOHAND
                    registers[RegRax] = (ulong)callNumber;
                    registers[RegRip] -= 2;
                    break;
                case -516: // ERESTART_RESTARTBLOCK
                    registers[RegRax] = RestartSyscall;
                    registers[RegRip] -= 2;
                    break;
            }

            registers[RegOrigRax] = ulong.MaxValue;
        }

        return registers;
    }

    /// <summary>Runs one system call in the stopped thread and returns its result (negative errno on failure).</summary>
    private static long Call(int pid, ulong[] saved, ulong syscallAt, long number, long first, long second, List<int> pendingSignals)
    {
        var registers = (ulong[])saved.Clone();
        registers[RegRip] = syscallAt;
        registers[RegRax] = (ulong)number;
        registers[RegRdi] = (ulong)first;
        registers[RegRsi] = (ulong)second;
        registers[RegOrigRax] = ulong.MaxValue; // not in a system call: no restart on the way out
        SetRegisters(pid, registers);
        Resume(pid);
        WaitForStop(pid, pendingSignals, expectSyscall: true); // entry
        Resume(pid);
        WaitForStop(pid, pendingSignals, expectSyscall: true); // exit
        GetRegisters(pid, registers);
        return (long)registers[RegRax];
    }

    private static void Resume(int pid)
    {
        if (Ptrace(PtraceSyscall, pid, 0, 0) != 0)
        {
            throw new WriteTrackingException($"could not resume process {pid} under trace: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>
    /// Waits for the next stop of interest: the interrupt's stop, or a system-call stop. Signals
    /// that arrive meanwhile are held back (sent again after the detach); other stops are passed.
    /// </summary>
    private static void WaitForStop(int pid, List<int> pendingSignals, bool expectSyscall)
    {
        while (true)
        {
            int result;
            int status;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (true)
            {
                result = WaitPid(pid, out status, WAll | Interop.Libc.WNoHang);
                if (result != 0 && !(result < 0 && Marshal.GetLastPInvokeError() == Interop.Libc.EINTR))
                {
                    break;
                }

                if (clock.Elapsed > StopTimeout)
                {
                    throw new WriteTrackingException($"process {pid} did not stop within {StopTimeout.TotalSeconds:0} s of being traced");
                }

                Thread.Sleep(result == 0 && clock.ElapsedMilliseconds < 50 ? 0 : 1);
            }

            if (result < 0)
            {
                throw new WriteTrackingException($"lost process {pid} while it was traced: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
            }

            if ((status & 0xff) != 0x7f)
            {
                throw new WriteTrackingException($"process {pid} exited while it was traced");
            }

            int signal = (status >> 8) & 0xff;
            int ptraceEvent = status >> 16;
            if (expectSyscall && signal == SyscallStop)
            {
                return;
            }

            if (!expectSyscall && ptraceEvent == PtraceEventStop)
            {
                return;
            }

            if (ptraceEvent == 0 && signal != SyscallStop && signal != 0)
            {
                // a signal meant for the process: keep it for after the detach
                if (!pendingSignals.Contains(signal))
                {
                    pendingSignals.Add(signal);
                }

                if (!expectSyscall)
                {
                    return; // stopped for it, which is as good as the interrupt's stop for our calls
                }
            }

            Resume(pid);
        }
    }

    private static unsafe void GetRegisters(int pid, ulong[] registers)
    {
        fixed (ulong* pointer = registers)
        {
            if (Ptrace(PtraceGetRegs, pid, 0, (nint)pointer) != 0)
            {
                throw new WriteTrackingException($"could not read the registers of process {pid}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
            }
        }
    }

    private static unsafe void SetRegisters(int pid, ulong[] registers)
    {
        fixed (ulong* pointer = registers)
        {
            if (Ptrace(PtraceSetRegs, pid, 0, (nint)pointer) != 0)
            {
                throw new WriteTrackingException($"could not set the registers of process {pid}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
            }
        }
    }

    private static SafeUserfaultfd TakeDescriptor(int pid, int fd)
    {
        long pidfd = Syscall(SysPidfdOpen, pid, 0, 0);
        if (pidfd < 0)
        {
            throw new WriteTrackingException($"pidfd_open({pid}): {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
        }

        try
        {
            long ours = Syscall(SysPidfdGetfd, pidfd, fd, 0);
            if (ours < 0)
            {
                throw new WriteTrackingException($"pidfd_getfd of process {pid}'s descriptor {fd}: {Interop.Libc.Describe(Marshal.GetLastPInvokeError())}");
            }

            return new SafeUserfaultfd((int)ours);
        }
        finally
        {
            _ = Posix.Close((int)pidfd);
        }
    }

    /// <summary>The address of a <c>syscall</c> instruction (0f 05) in the process's vDSO.</summary>
    private static ulong FindSyscallInstruction(int pid)
    {
        var vdso = LiveProcessTree.ReadMaps(pid).FirstOrDefault(r => r.Name == "[vdso]");
        if (vdso.End == 0)
        {
            throw new WriteTrackingException($"process {pid} has no vDSO to run a system call from");
        }

        var code = new byte[vdso.End - vdso.Start];
        using (var memory = File.OpenHandle($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read))
        {
            if (RandomAccess.Read(memory, code, (long)vdso.Start) != code.Length)
            {
                throw new WriteTrackingException($"could not read process {pid}'s vDSO");
            }
        }

        for (int i = 0; i + 1 < code.Length; i++)
        {
            if (code[i] == 0x0f && code[i + 1] == 0x05)
            {
                return vdso.Start + (ulong)i;
            }
        }

        throw new WriteTrackingException($"process {pid}'s vDSO holds no syscall instruction");
    }
}

/// <summary>A userfaultfd of another process's memory, held by the agent; closing it ends the tracking (the kernel unregisters every range).</summary>
public sealed class SafeUserfaultfd : Microsoft.Win32.SafeHandles.SafeHandleZeroOrMinusOneIsInvalid
{
    public SafeUserfaultfd(int fd)
        : base(ownsHandle: true)
    {
        SetHandle(fd);
    }

    public int Descriptor => (int)handle;

    protected override bool ReleaseHandle() => Posix.Close((int)handle) == 0;
}

import type { Trust } from '../../spec/schema.js';

// OCI runtime-spec `linux.seccomp`. A deny list over an allow-by-default policy, in the
// manner of Docker's and podman's default profiles: it keeps ordinary programs working
// while closing the kernel interfaces that have carried container escapes.

const EPERM = 1;
const ENOSYS = 38;
const EAFNOSUPPORT = 97;
/** The socket family that reaches a hypervisor's host side (virtio-vsock), were one attached. */
const AF_VSOCK = 40;

type Rule = {
  names: string[];
  action: 'SCMP_ACT_ERRNO';
  errnoRet: number;
  args?: { index: number; value: number; valueTwo?: number; op: 'SCMP_CMP_MASKED_EQ' | 'SCMP_CMP_EQ' }[];
};

/** Blocked for every sandbox: host-wide state, kernel code loading, and the new mount API. */
const ALWAYS_DENIED = [
  'acct',
  'add_key',
  'bpf',
  'clock_adjtime',
  'clock_settime',
  'create_module',
  'delete_module',
  'finit_module',
  'fsconfig',
  'fsmount',
  'fsopen',
  'fspick',
  'get_kernel_syms',
  'init_module',
  'ioperm',
  'iopl',
  'kexec_file_load',
  'kexec_load',
  'keyctl',
  'lookup_dcookie',
  'mount',
  'mount_setattr',
  'move_mount',
  'name_to_handle_at',
  'nfsservctl',
  'open_by_handle_at',
  'open_tree',
  'perf_event_open',
  'pivot_root',
  'query_module',
  'quotactl',
  'reboot',
  'request_key',
  'setns',
  'settimeofday',
  'stime',
  'swapoff',
  'swapon',
  'syslog',
  'umount',
  'umount2',
  'unshare',
  'uselib',
  'userfaultfd',
  'ustat',
  'vhangup',
  'adjtimex',
];

/** Also blocked for untrusted code: debugging other processes, async kernel interfaces, and more. */
const UNTRUSTED_DENIED = [
  'ptrace',
  'process_vm_readv',
  'process_vm_writev',
  'kcmp',
  'personality',
  'io_uring_setup',
  'io_uring_enter',
  'io_uring_register',
  'chroot',
  'pidfd_getfd',
  'process_madvise',
  'move_pages',
  'migrate_pages',
  'mbind',
  'set_mempolicy',
  'fanotify_init',
  'name_to_handle_at',
  'memfd_secret',
  'landlock_create_ruleset',
];

// clone(2) flags that create namespaces; denied one bit at a time (OCI ANDs the args of one rule).
const CLONE_NS_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000];

/**
 * Untrusted code gets no vsock socket (the family answers as if the kernel had none).
 * i386's socketcall(2) passes the family in memory that seccomp cannot read: libseccomp
 * (2.5, under crun 1.8) turns this rule into a refusal of socketcall's socket(2) for every
 * family, so 32-bit programs cannot make sockets that way (measured in test/run-limits).
 */
const UNTRUSTED_ARG_RULES: Rule[] = [{ names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: EAFNOSUPPORT, args: [{ index: 0, value: AF_VSOCK, op: 'SCMP_CMP_EQ' }] }];

export function seccompProfile(trust: Trust): Record<string, unknown> {
  const untrusted = trust === 'untrusted';
  const denied = untrusted ? [...new Set([...ALWAYS_DENIED, ...UNTRUSTED_DENIED])] : ALWAYS_DENIED;
  const syscalls: Rule[] = [
    { names: denied, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
    // clone3 passes its flags in memory that seccomp cannot inspect: answer ENOSYS so libc
    // falls back to clone(2), whose flags the rules below can check.
    { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
    ...CLONE_NS_FLAGS.map(
      (flag): Rule => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      }),
    ),
    ...(untrusted ? UNTRUSTED_ARG_RULES : []),
  ];
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
    syscalls,
  };
}

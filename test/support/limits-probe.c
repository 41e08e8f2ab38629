/*
 * limits-probe: the workload side of test/run-limits.test.ts, built on the host with
 * `gcc -static` and passed into containers and VMs by a volume.
 *
 *   limits-probe syscalls        the interfaces untrusted seccomp refuses, one line each:
 *                                "NAME ok" or "NAME ERRNO-NAME"
 *   limits-probe syscalls-i386   the same through the i386 entry (int 0x80), as a 32-bit
 *                                program would make them
 *   limits-probe spin N          N processes (this one and N-1 children) spinning for ever
 *   limits-probe open-files      opens /dev/null until refused: "opened N EMFILE"
 *   limits-probe hold MIB SECS   touches MIB MiB of fresh memory, prints "holding", keeps it SECS s
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static void report(const char *name, long rc) {
  if (rc >= 0) printf("%s ok\n", name);
  else printf("%s %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
  fflush(stdout);
}

/* An i386 system call from this 64-bit process: seccomp sees AUDIT_ARCH_I386. Returns the
 * kernel's raw result (-errno on failure). */
static long int80(long nr, long a, long b, long c) {
  long ret;
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
  return ret;
}

/* socketcall's argument block must be addressable with 32 bits: a static buffer in a
 * non-PIE static binary is. */
static uint32_t socketcall_vsock[3] = {AF_VSOCK, SOCK_STREAM, 0};
static uint32_t socketcall_unix[3] = {AF_UNIX, SOCK_STREAM, 0};

static void report_raw(const char *name, long raw) {
  if (raw < 0 && raw > -4096) {
    errno = (int)-raw;
    report(name, -1);
  } else {
    report(name, 0);
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "syscalls")) {
    unsigned char params[120] = {0};
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "hbx-probe", "x", 1, -3));
    report("request_key", syscall(SYS_request_key, "user", "hbx-probe", NULL, 0));
    report("socket_vsock", socket(AF_VSOCK, SOCK_STREAM, 0));
    report("socket_unix", socket(AF_UNIX, SOCK_STREAM, 0));
    return 0;
  }
  /* Apart: a kernel without IA32 emulation (hybridbox's guest kernel) kills the caller. */
  if (argc >= 2 && !strcmp(argv[1], "syscalls-i386")) {
    report_raw("i386_socket_vsock", int80(359, AF_VSOCK, SOCK_STREAM, 0));
    report_raw("i386_socketcall_vsock", int80(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)socketcall_vsock, 0));
    report_raw("i386_socketcall_unix", int80(102, 1 /* SYS_SOCKET */, (long)(uintptr_t)socketcall_unix, 0));
    return 0;
  }
  if (argc >= 3 && !strcmp(argv[1], "spin")) {
    int n = atoi(argv[2]);
    for (int i = 1; i < n; i++)
      if (fork() == 0) break;
    for (volatile unsigned long x = 0;; x++) {
    }
  }
  if (argc >= 2 && !strcmp(argv[1], "open-files")) {
    int n = 0;
    while (open("/dev/null", O_RDONLY) >= 0) n++;
    printf("opened %d %s\n", n, strerrorname_np(errno));
    return 0;
  }
  if (argc >= 4 && !strcmp(argv[1], "hold")) {
    size_t bytes = (size_t)atoi(argv[2]) << 20;
    char *p = malloc(bytes);
    if (!p) return 1;
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
    printf("holding\n");
    fflush(stdout);
    sleep((unsigned)atoi(argv[3]));
    return p[bytes / 2] == 1 ? 0 : 1;
  }
  fprintf(stderr, "usage: limits-probe syscalls | syscalls-i386 | spin N | open-files | hold MIB SECS\n");
  return 2;
}

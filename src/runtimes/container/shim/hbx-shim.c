/*
 * hbx-shim: prepares the environment for an OCI runtime (crun, runc) and runs it.
 *
 *   hbx-shim [OPTIONS] -- PROGRAM [ARGS...]
 *
 * Options, applied in this order in the process that execs PROGRAM:
 *   --private-mounts                  unshare the mount namespace, make / recursively private
 *   --mask-dir PATH        (repeat)   empty tmpfs over PATH if PATH is a cgroup2 mount point
 *   --ro-self PATH         (repeat)   bind PATH over itself read-only (skipped if PATH is missing)
 *   --overlay LOWER UPPER WORK TARGET overlayfs at TARGET (LOWER may be a colon-separated list)
 *   --pdeathsig SIG                   PR_SET_PDEATHSIG (KILL, SIGKILL or a number)
 *   --join-cgroup PROCS    (repeat)   write "0" to PROCS (a cgroup.procs file): PROGRAM and every
 *                                     thread it makes run in that cgroup from the first instruction
 *   --stdout FILE, --stderr FILE      append to FILE (created 0600)
 *   --stdin-null                      stdin from /dev/null
 *   --nofile N                        raise the hard RLIMIT_NOFILE to at least N (the soft one
 *                                     stays): the runtime sets the container's limits once
 *                                     its capabilities are dropped, so it can only lower them
 * Monitor mode:
 *   --exit-file FILE [--on-exit SHELLCMD] [--timeout-ms N [--grace-ms M] [--pid-file PATH]]
 *               [--cpu-limit-ms N --cpu-usage FILE]
 *
 * --timeout-ms: N ms after PROGRAM was started it gets SIGTERM, and SIGKILL M ms later
 * (default 2000; 0: SIGKILL at once) if it is still running. The exit file then says
 * "timedOut":true and "exitCode":124 (as timeout(1) does), with "signal" naming the signal
 * that ended PROGRAM, or null if it exited by itself. PROGRAM is taken to report a child
 * killed by signal N as exit status 128+N (as shells, tini and the OCI runtimes do).
 * --pid-file: PATH is where PROGRAM (an OCI runtime) writes the pid of the container's init
 * when the workload starts. The N ms then count from PATH's modification time, not from the
 * runtime's own set-up (a runtime that never writes it is stopped 30 s after the deadline),
 * and the SIGTERM waits (up to 1 s) until the init can pass it on: an init that has not yet
 * blocked its signals, or whose workload has not yet made its process group, loses it.
 *
 * --cpu-limit-ms: once the CPU time in FILE reaches N ms, PROGRAM gets SIGKILL (as at the
 * end of a timeout's grace: the runtime's death takes the container with it). FILE is a
 * cgroup's CPU counter: cgroup v1 cpuacct.usage (ns) or cgroup v2 cpu.stat (usage_usec), of
 * the whole sandbox, so every process counts. The exit file then says
 * "cpuTimeLimitExceeded":true, with exit code 128+9 and "signal":"SIGKILL".
 *
 * Exit codes: PROGRAM's own status when it ran; 125 when hbx-shim failed before PROGRAM
 * ran (usage or setup error, one line on stderr); 127/126 when PROGRAM could not be
 * executed (not found / other). In monitor mode without --on-exit, the monitor exits with
 * PROGRAM's code, or 128+N when PROGRAM was killed by signal N, or 124 when it timed out.
 *
 * Why C rather than Node: this sits on every container start, where ~6 ms of Node spawn
 * overhead and a missing unshare(2)/prctl(2) binding both matter, and the monitor must
 * outlive the CLI that started it without costing a Node process per sandbox.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

#define EXIT_SHIM_FAILED 125
#define EXIT_CANNOT_EXEC 126
#define EXIT_NOT_FOUND 127
#define EXIT_TIMED_OUT 124
#define DEFAULT_GRACE_MS 2000
#define MAX_REPEAT 16

static const char USAGE[] =
    "usage: hbx-shim [--private-mounts] [--mask-dir PATH]... [--ro-self PATH]... "
    "[--overlay LOWER UPPER WORK TARGET] [--join-cgroup PROCS] [--pdeathsig SIG] [--stdout FILE] [--stderr FILE] "
    "[--stdin-null] [--nofile N] [--exit-file FILE [--on-exit SHELLCMD] [--timeout-ms N [--grace-ms M] [--pid-file PATH]] "
    "[--cpu-limit-ms N --cpu-usage FILE]] -- PROGRAM [ARGS...]";

struct options {
  bool private_mounts;
  const char *mask_dirs[MAX_REPEAT];
  int n_mask_dirs;
  const char *ro_selves[MAX_REPEAT];
  int n_ro_selves;
  const char *overlay[4]; /* lower, upper, work, target; overlay[3] == NULL: none */
  int pdeathsig;          /* 0: none */
  const char *join_cgroups[MAX_REPEAT];
  int n_join_cgroups;
  const char *stdout_path;
  const char *stderr_path;
  bool stdin_null;
  long long nofile; /* 0: leave it */
  const char *exit_file;
  const char *on_exit;
  long long timeout_ms; /* 0: none; monitor mode only */
  long long grace_ms;   /* -1: not given */
  const char *pid_file;
  long long cpu_limit_ms; /* 0: none; monitor mode only */
  const char *cpu_usage;
  char **argv; /* PROGRAM and its arguments */
};

static const struct {
  int num;
  const char *name;
} SIGNALS[] = {
    {SIGHUP, "HUP"},       {SIGINT, "INT"},       {SIGQUIT, "QUIT"},   {SIGILL, "ILL"},
    {SIGTRAP, "TRAP"},     {SIGABRT, "ABRT"},     {SIGBUS, "BUS"},     {SIGFPE, "FPE"},
    {SIGKILL, "KILL"},     {SIGUSR1, "USR1"},     {SIGSEGV, "SEGV"},   {SIGUSR2, "USR2"},
    {SIGPIPE, "PIPE"},     {SIGALRM, "ALRM"},     {SIGTERM, "TERM"},   {SIGSTKFLT, "STKFLT"},
    {SIGCHLD, "CHLD"},     {SIGCONT, "CONT"},     {SIGSTOP, "STOP"},   {SIGTSTP, "TSTP"},
    {SIGTTIN, "TTIN"},     {SIGTTOU, "TTOU"},     {SIGURG, "URG"},     {SIGXCPU, "XCPU"},
    {SIGXFSZ, "XFSZ"},     {SIGVTALRM, "VTALRM"}, {SIGPROF, "PROF"},   {SIGWINCH, "WINCH"},
    {SIGIO, "IO"},         {SIGPWR, "PWR"},       {SIGSYS, "SYS"},
};

/* One write(2) per message, so lines from concurrent writers to a shared log never interleave. */
static void say(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t r;
  do r = write(STDERR_FILENO, buf, (size_t)n);
  while (r < 0 && errno == EINTR);
}

static _Noreturn void usage_error(const char *why, const char *arg) {
  if (arg)
    say("hbx-shim: %s %s; %s", why, arg, USAGE);
  else
    say("hbx-shim: %s; %s", why, USAGE);
  exit(EXIT_SHIM_FAILED);
}

static _Noreturn void setup_failed(const char *step, const char *path) {
  say("hbx-shim: %s %s: %s", step, path, strerror(errno));
  exit(EXIT_SHIM_FAILED);
}

static int parse_signal(const char *s) {
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
    if (strcmp(s, SIGNALS[i].name) == 0) return SIGNALS[i].num;
  char *end;
  errno = 0;
  long n = strtol(s, &end, 10);
  if (errno == 0 && *s && !*end && n >= 1 && n <= SIGRTMAX) return (int)n;
  return 0;
}

static void signal_name(int sig, char *out, size_t len) {
  for (size_t i = 0; i < sizeof SIGNALS / sizeof SIGNALS[0]; i++)
    if (SIGNALS[i].num == sig) {
      snprintf(out, len, "SIG%s", SIGNALS[i].name);
      return;
    }
  snprintf(out, len, "SIG%d", sig);
}

/* Returns the option's value and advances *i; empty values are refused because every value is a path, a command or a signal. */
static const char *take(int argc, char **argv, int *i, const char *opt) {
  if (*i + 1 >= argc || strcmp(argv[*i + 1], "--") == 0) usage_error("missing value for", opt);
  const char *v = argv[++*i];
  if (!*v) usage_error("empty value for", opt);
  return v;
}

static void set_once(const char **slot, int argc, char **argv, int *i) {
  if (*slot) usage_error("repeated option", argv[*i]);
  *slot = take(argc, argv, i, argv[*i]);
}

static long long take_ms(int argc, char **argv, int *i, const char *opt, bool zero_ok) {
  const char *v = take(argc, argv, i, opt);
  char *end;
  errno = 0;
  long long ms = strtoll(v, &end, 10);
  if (errno || *end || ms < 0 || (ms == 0 && !zero_ok) || ms > 1000LL * 3600 * 24 * 365)
    usage_error(zero_ok ? "not a number of milliseconds" : "not a positive number of milliseconds", v);
  return ms;
}

static void parse(int argc, char **argv, struct options *o) {
  memset(o, 0, sizeof *o);
  o->grace_ms = -1;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) break;
    if (strcmp(a, "--private-mounts") == 0) {
      o->private_mounts = true;
    } else if (strcmp(a, "--mask-dir") == 0) {
      if (o->n_mask_dirs == MAX_REPEAT) usage_error("too many", a);
      o->mask_dirs[o->n_mask_dirs++] = take(argc, argv, &i, a);
    } else if (strcmp(a, "--ro-self") == 0) {
      if (o->n_ro_selves == MAX_REPEAT) usage_error("too many", a);
      o->ro_selves[o->n_ro_selves++] = take(argc, argv, &i, a);
    } else if (strcmp(a, "--overlay") == 0) {
      if (o->overlay[3]) usage_error("repeated option", a);
      for (int k = 0; k < 4; k++) o->overlay[k] = take(argc, argv, &i, a);
    } else if (strcmp(a, "--join-cgroup") == 0) {
      if (o->n_join_cgroups == MAX_REPEAT) usage_error("too many", a);
      o->join_cgroups[o->n_join_cgroups++] = take(argc, argv, &i, a);
    } else if (strcmp(a, "--pdeathsig") == 0) {
      if (o->pdeathsig) usage_error("repeated option", a);
      const char *v = take(argc, argv, &i, a);
      if (!(o->pdeathsig = parse_signal(v))) usage_error("unknown signal", v);
    } else if (strcmp(a, "--stdout") == 0) {
      set_once(&o->stdout_path, argc, argv, &i);
    } else if (strcmp(a, "--stderr") == 0) {
      set_once(&o->stderr_path, argc, argv, &i);
    } else if (strcmp(a, "--stdin-null") == 0) {
      o->stdin_null = true;
    } else if (strcmp(a, "--nofile") == 0) {
      if (o->nofile) usage_error("repeated option", a);
      const char *v = take(argc, argv, &i, a);
      char *end;
      errno = 0;
      o->nofile = strtoll(v, &end, 10);
      if (errno || *end || o->nofile < 1 || o->nofile > (1LL << 30)) usage_error("not a number of files", v);
    } else if (strcmp(a, "--exit-file") == 0) {
      set_once(&o->exit_file, argc, argv, &i);
    } else if (strcmp(a, "--on-exit") == 0) {
      set_once(&o->on_exit, argc, argv, &i);
    } else if (strcmp(a, "--timeout-ms") == 0) {
      if (o->timeout_ms) usage_error("repeated option", a);
      o->timeout_ms = take_ms(argc, argv, &i, a, false);
    } else if (strcmp(a, "--pid-file") == 0) {
      set_once(&o->pid_file, argc, argv, &i);
    } else if (strcmp(a, "--cpu-limit-ms") == 0) {
      if (o->cpu_limit_ms) usage_error("repeated option", a);
      o->cpu_limit_ms = take_ms(argc, argv, &i, a, false);
    } else if (strcmp(a, "--cpu-usage") == 0) {
      set_once(&o->cpu_usage, argc, argv, &i);
    } else if (strcmp(a, "--grace-ms") == 0) {
      if (o->grace_ms >= 0) usage_error("repeated option", a);
      o->grace_ms = take_ms(argc, argv, &i, a, true);
    } else {
      usage_error("unknown option", a);
    }
  }
  if (i >= argc) usage_error("missing", "--");
  if (i + 1 >= argc || !*argv[i + 1]) usage_error("missing", "PROGRAM");
  o->argv = &argv[i + 1];
  /* Without a private namespace these mounts would land on the host and outlive us. */
  if (!o->private_mounts) {
    if (o->n_mask_dirs) usage_error("--private-mounts is required by", "--mask-dir");
    if (o->n_ro_selves) usage_error("--private-mounts is required by", "--ro-self");
    if (o->overlay[3]) usage_error("--private-mounts is required by", "--overlay");
  }
  if (o->on_exit && !o->exit_file) usage_error("--exit-file is required by", "--on-exit");
  if (o->timeout_ms && !o->exit_file) usage_error("--exit-file is required by", "--timeout-ms");
  if (o->grace_ms >= 0 && !o->timeout_ms) usage_error("--timeout-ms is required by", "--grace-ms");
  if (o->pid_file && !o->timeout_ms) usage_error("--timeout-ms is required by", "--pid-file");
  if (o->cpu_limit_ms && !o->exit_file) usage_error("--exit-file is required by", "--cpu-limit-ms");
  if (o->cpu_limit_ms && !o->cpu_usage) usage_error("--cpu-usage is required by", "--cpu-limit-ms");
  if (o->cpu_usage && !o->cpu_limit_ms) usage_error("--cpu-limit-ms is required by", "--cpu-usage");
  if (o->grace_ms < 0) o->grace_ms = DEFAULT_GRACE_MS;
}

/* A mount point, not merely a directory inside one: its device differs from its parent's. */
static bool is_cgroup2_mount_point(const char *path) {
  struct statfs sfs;
  struct stat self, parent;
  char up[4096];
  if (statfs(path, &sfs) != 0 || (unsigned long)sfs.f_type != (unsigned long)CGROUP2_SUPER_MAGIC) return false;
  if (snprintf(up, sizeof up, "%s/..", path) >= (int)sizeof up) return false;
  if (stat(path, &self) != 0 || stat(up, &parent) != 0) return false;
  return self.st_dev != parent.st_dev;
}

static void private_mounts(void) {
  if (unshare(CLONE_NEWNS) != 0) setup_failed("unshare", "CLONE_NEWNS");
  /* Private, not slave: nothing we mount may reach the host, and the host's later mounts are of no use to a runtime that lives for one command. */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) setup_failed("make-private", "/");
}

static void mask_dir(const char *path) {
  if (!is_cgroup2_mount_point(path)) return;
  /* Writable, though nothing here may persist: crun 1.8.1 still mkdirs its cgroup path under
   * the cgroup2 mount point and writes cgroup.procs there, and fails the start on EROFS. The
   * size cap only bounds what such writes can cost; they vanish with the namespace. */
  if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,nr_inodes=256,mode=0755") != 0)
    setup_failed("mask-dir", path);
}

static void ro_self(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return;
    setup_failed("ro-self", path);
  }
  if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0) setup_failed("ro-self bind", path);
  /* A bind remount must repeat the flags the mount already has, or the kernel refuses it where they are locked (user namespaces). */
  struct statvfs sv;
  if (statvfs(path, &sv) != 0) setup_failed("ro-self statvfs", path);
  unsigned long keep = 0;
  if (sv.f_flag & ST_NOSUID) keep |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) keep |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) keep |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) keep |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) keep |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) keep |= MS_RELATIME;
  if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, NULL) != 0) setup_failed("ro-self remount", path);
}

static void check_dir(const char *step, const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) setup_failed(step, path);
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    setup_failed(step, path);
  }
}

static void overlay(const char *const ov[4]) {
  const char *target = ov[3];
  /* The kernel reports a bad layer as a bare ENOENT/ENOTDIR; naming the culprit saves a hunt. */
  char layer[4096];
  for (const char *p = ov[0], *end; *p; p = *end ? end + 1 : end) {
    end = strchrnul(p, ':');
    size_t len = (size_t)(end - p);
    if (len == 0 || len >= sizeof layer) {
      errno = EINVAL;
      setup_failed("overlay", ov[0]);
    }
    memcpy(layer, p, len);
    layer[len] = '\0';
    check_dir("overlay", layer);
  }
  for (int k = 1; k < 4; k++) check_dir("overlay", ov[k]);
  char data[4096]; /* legacy mount(2) copies at most one page of data */
  size_t n = 0;
  /* overlayfs splits its options at commas and its lowerdir at colons unless a backslash
     escapes them: a state root with a comma in its path must still mount. The lowerdir's
     colons are separators (the state root may not contain one: hybridbox refuses it). */
  const char *keys[3] = {"lowerdir=", ",upperdir=", ",workdir="};
  for (int k = 0; k < 3; k++) {
    for (const char *c = keys[k]; *c && n < sizeof data - 1; c++) data[n++] = *c;
    for (const char *c = ov[k]; *c && n < sizeof data - 2; c++) {
      if (*c == ',' || *c == '\\' || (k > 0 && *c == ':')) data[n++] = '\\';
      data[n++] = *c;
    }
  }
  if (n >= sizeof data - 2) {
    errno = ENAMETOOLONG;
    setup_failed("overlay", target);
  }
  data[n] = '\0';
  if (mount("overlay", target, "overlay", 0, data) != 0) setup_failed("overlay", target);
}

/* open(2) can return the very descriptor we dup2 onto when it was closed; then dup2 is a no-op and O_CLOEXEC would close it at exec. */
static void redirect(const char *path, int flags, mode_t mode, int target, const char *step) {
  int fd = open(path, flags | O_CLOEXEC, mode);
  if (fd < 0) setup_failed(step, path);
  if (fd == target) {
    if (fcntl(fd, F_SETFD, 0) != 0) setup_failed(step, path);
    return;
  }
  if (dup2(fd, target) < 0) setup_failed(step, path);
  close(fd);
}

/* Everything up to exec, in the documented order, in the process that becomes PROGRAM. */
static _Noreturn void setup_and_exec(const struct options *o, pid_t expected_parent) {
  if (o->private_mounts) private_mounts();
  for (int k = 0; k < o->n_mask_dirs; k++) mask_dir(o->mask_dirs[k]);
  for (int k = 0; k < o->n_ro_selves; k++) ro_self(o->ro_selves[k]);
  if (o->overlay[3]) overlay(o->overlay);
  if (o->pdeathsig) {
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)o->pdeathsig, 0, 0, 0) != 0) setup_failed("pdeathsig", "prctl");
    /* The signal follows the parent *thread*: callers must spawn us from a thread that lives
     * as long as the sandbox should (Node's main thread does). The parent may also have died
     * before prctl took effect; then deliver what the kernel would have. */
    if (getppid() != expected_parent) raise(o->pdeathsig);
  }
  if (o->stdout_path) redirect(o->stdout_path, O_WRONLY | O_CREAT | O_APPEND, 0600, STDOUT_FILENO, "stdout");
  if (o->stderr_path) redirect(o->stderr_path, O_WRONLY | O_CREAT | O_APPEND, 0600, STDERR_FILENO, "stderr");
  if (o->stdin_null) redirect("/dev/null", O_RDONLY, 0, STDIN_FILENO, "stdin");
  if (o->nofile) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) setup_failed("getrlimit", "RLIMIT_NOFILE");
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)o->nofile) {
      rl.rlim_max = (rlim_t)o->nofile;
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0) setup_failed("setrlimit", "RLIMIT_NOFILE (more than /proc/sys/fs/nr_open?)");
    }
  }
  for (int k = 0; k < o->n_join_cgroups; k++) {
    int fd = open(o->join_cgroups[k], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) setup_failed("join cgroup", o->join_cgroups[k]);
    close(fd);
  }
  execvp(o->argv[0], o->argv);
  int err = errno;
  say("hbx-shim: cannot exec %s: %s", o->argv[0], strerror(err));
  exit(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXEC);
}

/* A closed 0/1/2 would make our own opens land there and PROGRAM write its output into, say, the exit file. */
static void ensure_std_fds(void) {
  for (int fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    int n = open("/dev/null", O_RDWR);
    if (n < 0) exit(EXIT_SHIM_FAILED);
    if (n != fd) exit(EXIT_SHIM_FAILED); /* lowest free descriptor must be fd */
  }
}

static bool write_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t w = write(fd, buf, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += w;
    len -= (size_t)w;
  }
  return true;
}

/* How PROGRAM ended, as the exit file tells it. */
struct outcome {
  int exit_code; /* -1: none (killed by a signal) */
  int signal;    /* 0: none */
  bool timed_out;
  bool cpu_exceeded;
};

static struct outcome outcome_of(int status, bool timed_out, bool cpu_exceeded) {
  struct outcome r = {WIFSIGNALED(status) ? -1 : WEXITSTATUS(status), WIFSIGNALED(status) ? WTERMSIG(status) : 0, timed_out, cpu_exceeded};
  if (cpu_exceeded && !timed_out && r.signal) {
    /* The runtime itself was killed: report the container's death as the runtime would have, 128+N. */
    r.exit_code = 128 + r.signal;
  }
  if (timed_out) {
    /* The code says "timed out"; the signal is all that is left of how the workload ended, and
     * a runtime reports its container's death by signal N as 128+N. */
    if (!r.signal && r.exit_code > 128 && r.exit_code <= 128 + SIGRTMAX) r.signal = r.exit_code - 128;
    r.exit_code = EXIT_TIMED_OUT;
  }
  return r;
}

/* Readers either see no exit file or a complete one, also after a host crash: tmp + fsync + rename + fsync(dir). */
static bool write_exit_file(const char *path, const struct outcome *out, long long finished_ms) {
  char tmp[4096], line[256], code[16] = "null", sig[40] = "null";
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return false;
  }
  if (out->exit_code >= 0) snprintf(code, sizeof code, "%d", out->exit_code);
  if (out->signal) {
    char name[32];
    signal_name(out->signal, name, sizeof name);
    snprintf(sig, sizeof sig, "\"%s\"", name);
  }
  snprintf(line, sizeof line, "{\"exitCode\":%s,\"signal\":%s,\"finishedAtMs\":%lld,\"timedOut\":%s,\"cpuTimeLimitExceeded\":%s}\n", code, sig,
           finished_ms, out->timed_out ? "true" : "false", out->cpu_exceeded ? "true" : "false");
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  if (!write_all(fd, line, strlen(line)) || fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    return false;
  }
  if (close(fd) != 0 || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return false;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash)
    strcpy(dir, ".");
  else if (slash == dir)
    dir[1] = '\0';
  else
    *slash = '\0';
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd); /* best effort: some filesystems refuse fsync on directories */
    close(dfd);
  }
  return true;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add_ms(struct timespec *t, long long ms) {
  t->tv_sec += ms / 1000;
  t->tv_nsec += (ms % 1000) * 1000000L;
  if (t->tv_nsec >= 1000000000L) {
    t->tv_sec++;
    t->tv_nsec -= 1000000000L;
  }
}

#define START_LIMIT_MS 30000
#define READY_LIMIT_MS 1000
#define POLL_MS 2

/* Parent and process group of pid, from /proc/PID/stat. */
static bool proc_stat(pid_t pid, pid_t *ppid, pid_t *pgrp) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  int pp, pg;
  if (!p || sscanf(p + 1, " %*c %d %d", &pp, &pg) != 2) return false;
  *ppid = pp;
  *pgrp = pg;
  return true;
}

/* Whether the init named in pid_file can pass a signal on: it has a child that leads its own
 * process group (tini blocks its signals before it forks, and its child calls setpgid first).
 * True when that cannot be told (the init is gone, or the kernel lacks /proc/PID/task/PID/children). */
static bool init_ready(const char *pid_file) {
  char buf[4096];
  int fd = open(pid_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, 31);
  close(fd);
  if (n <= 0) return false; /* being written */
  buf[n] = '\0';
  int init = atoi(buf);
  if (init <= 0) return false;
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", init, init);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return true;
  buf[n] = '\0';
  for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
    pid_t c = (pid_t)atoi(tok), ppid, pgrp;
    if (c > 0 && proc_stat(c, &ppid, &pgrp) && ppid == init && pgrp == c) return true;
  }
  return false;
}

/* How much later the deadline falls than planned (0: it is due), with --pid-file: while the
 * workload has not started or has had less than the limit since, or cannot take TERM yet. */
static long long not_due_yet_ms(const struct options *o, const struct timespec *forked, long long *ready_waited) {
  if (!o->pid_file) return 0;
  struct stat st;
  if (stat(o->pid_file, &st) != 0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long since = (long long)(now.tv_sec - forked->tv_sec) * 1000 + (now.tv_nsec - forked->tv_nsec) / 1000000;
    return since < o->timeout_ms + START_LIMIT_MS ? 10 : 0;
  }
  long long started = (long long)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
  long long left = started + o->timeout_ms - now_ms();
  /* A clock stepped back by hours must not stretch the limit without bound. */
  if (left > o->timeout_ms) left = o->timeout_ms;
  if (left > 0) return left;
  if (*ready_waited < READY_LIMIT_MS && !init_ready(o->pid_file)) {
    *ready_waited += POLL_MS;
    return POLL_MS;
  }
  return 0;
}

/* The sandbox's CPU time so far, ms, from a cgroup v1 cpuacct.usage (ns) or a v2 cpu.stat
 * (usage_usec); -1 when it cannot be read. */
static long long cpu_used_ms(const char *path) {
  char buf[1024];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char *k = strstr(buf, "usage_usec ");
  if (k) return strtoll(k + 11, NULL, 10) / 1000;
  return strtoll(buf, NULL, 10) / 1000000;
}

/* When to look at the CPU counter next: the group cannot use more than one ms per CPU per
 * ms, so until then the limit cannot have been reached; never sooner than 5 ms (the most
 * it overshoots by, per CPU), never later than 250 ms. */
static long long cpu_check_in_ms(long long left_ms) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long long in = left_ms / (cpus > 0 ? cpus : 1);
  return in < 5 ? 5 : in > 250 ? 250 : in;
}

static long long ms_until(const struct timespec *t) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  /* Rounded up: waking before a deadline would take it as due. */
  long long ns = (long long)(t->tv_sec - now.tv_sec) * 1000000000LL + (t->tv_nsec - now.tv_nsec);
  return ns <= 0 ? 0 : (ns + 999999) / 1000000;
}

static _Noreturn void monitor(const struct options *o) {
  /* The child must start PROGRAM with exactly the signal state we were given, so keep it. */
  struct sigaction orig_hup, orig_pipe, orig_chld, ign, dfl;
  sigset_t waitset, orig_mask;
  memset(&ign, 0, sizeof ign);
  memset(&dfl, 0, sizeof dfl);
  ign.sa_handler = SIG_IGN;
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&ign.sa_mask);
  sigemptyset(&dfl.sa_mask);
  sigemptyset(&waitset);
  sigaddset(&waitset, SIGTERM);
  sigaddset(&waitset, SIGINT);
  sigaddset(&waitset, SIGCHLD);
  /* Signals are taken synchronously with sigwaitinfo: no handler can then race with reaping and signal a recycled pid. Blocking before fork keeps an early SIGTERM pending instead of killing the monitor. */
  sigprocmask(SIG_BLOCK, &waitset, &orig_mask);
  /* The monitor outlives the CLI and its terminal; SIGHUP or a closed stderr pipe must not take it (and the exit file) down. */
  sigaction(SIGHUP, &ign, &orig_hup);
  sigaction(SIGPIPE, &ign, &orig_pipe);
  /* An inherited SIG_IGN/SA_NOCLDWAIT for SIGCHLD would auto-reap the child and lose its status. */
  sigaction(SIGCHLD, &dfl, &orig_chld);
  /* Orphans of PROGRAM (say, the container's init after crun is killed) come to us, not to an unrelated init that cannot tell anyone. */
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

  pid_t self = getpid();
  pid_t child = fork();
  if (child == 0) {
    sigaction(SIGHUP, &orig_hup, NULL);
    sigaction(SIGPIPE, &orig_pipe, NULL);
    sigaction(SIGCHLD, &orig_chld, NULL);
    sigprocmask(SIG_SETMASK, &orig_mask, NULL);
    setup_and_exec(o, self);
  }

  int status = 0;
  /* The workload's time limit is kept here, not by the CLI, so it holds for detached sandboxes
   * that nobody watches. RUNNING → (deadline) TERM sent → (grace) KILL sent. */
  enum { RUNNING, TERM_SENT, KILL_SENT } phase = RUNNING;
  bool timed_out = false, cpu_exceeded = false;
  struct timespec deadline = {0, 0}, forked = {0, 0}, cpu_next = {0, 0};
  long long ready_waited = 0;
  clock_gettime(CLOCK_MONOTONIC, &forked);
  if (o->timeout_ms) {
    deadline = forked;
    add_ms(&deadline, o->timeout_ms);
  }
  if (o->cpu_limit_ms) {
    cpu_next = forked;
    add_ms(&cpu_next, cpu_check_in_ms(o->cpu_limit_ms));
  }
  if (child < 0) {
    say("hbx-shim: fork %s: %s", o->argv[0], strerror(errno));
    /* Report it like any other setup failure so the sandbox still gets its exit file and its cleanup. */
    status = EXIT_SHIM_FAILED << 8;
  } else {
    for (bool done = false; !done;) {
      siginfo_t si;
      int sig;
      bool timing = o->timeout_ms && phase != KILL_SENT;
      bool cpu_watch = o->cpu_limit_ms && !cpu_exceeded && phase != KILL_SENT;
      if (timing || cpu_watch) {
        long long wait = timing ? ms_until(&deadline) : -1;
        long long cpu_wait = cpu_watch ? ms_until(&cpu_next) : -1;
        bool cpu_first = cpu_watch && (!timing || cpu_wait < wait);
        if (cpu_first) wait = cpu_wait;
        struct timespec left = {wait / 1000, (wait % 1000) * 1000000L};
        sig = sigtimedwait(&waitset, &si, &left);
        if (sig < 0 && errno == EAGAIN && cpu_first) {
          long long used = cpu_used_ms(o->cpu_usage);
          if (used >= o->cpu_limit_ms) {
            cpu_exceeded = true;
            kill(child, SIGKILL);
            phase = KILL_SENT;
          } else {
            clock_gettime(CLOCK_MONOTONIC, &cpu_next);
            add_ms(&cpu_next, cpu_check_in_ms(o->cpu_limit_ms - (used < 0 ? 0 : used)));
          }
          continue;
        }
        if (sig < 0 && errno == EAGAIN) {
          long long late = phase == RUNNING ? not_due_yet_ms(o, &forked, &ready_waited) : 0;
          if (late > 0) {
            add_ms(&deadline, late);
            continue;
          }
          timed_out = true;
          if (phase == RUNNING && o->grace_ms > 0) {
            /* The runtime passes TERM on to the container's init, which hands it to the workload. */
            kill(child, SIGTERM);
            phase = TERM_SENT;
            add_ms(&deadline, o->grace_ms);
          } else {
            /* The runtime dies with SIGKILL; the container's init has it as its parent-death signal, so the whole sandbox ends. */
            kill(child, SIGKILL);
            phase = KILL_SENT;
          }
          continue;
        }
      } else {
        sig = sigwaitinfo(&waitset, &si);
      }
      if (sig < 0) continue; /* EINTR from a stop/continue */
      if (sig == SIGTERM || sig == SIGINT) {
        /* Not yet reaped, so the pid cannot have been reused. */
        kill(child, sig);
        continue;
      }
      int st;
      pid_t p;
      /* SIGCHLD coalesces: one signal may stand for several exits. */
      while ((p = waitpid(-1, &st, WNOHANG)) > 0)
        if (p == child) {
          status = st;
          done = true;
        }
      if (p < 0 && errno == ECHILD && !done) {
        /* Cannot happen while we hold the child, but never spin forever on it. */
        status = EXIT_SHIM_FAILED << 8;
        done = true;
      }
    }
  }
  long long finished = now_ms();

  int rc = timed_out ? EXIT_TIMED_OUT : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  struct outcome out = outcome_of(status, timed_out, cpu_exceeded);
  if (!write_exit_file(o->exit_file, &out, finished)) {
    say("hbx-shim: exit-file %s: %s", o->exit_file, strerror(errno));
    rc = EXIT_SHIM_FAILED;
  }
  /* Only what has already exited: a descendant still running is for --on-exit (crun delete -f) to stop, and waiting for it here would deadlock that cleanup. */
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }

  if (!o->on_exit) exit(rc);
  /* Stragglers would otherwise keep reparenting to the cleanup command, which never reaps them. */
  prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
  /* A SIGTERM/SIGINT still pending was meant for PROGRAM, which is gone; unblocking it would kill the cleanup instead. */
  sigset_t fwd;
  sigemptyset(&fwd);
  sigaddset(&fwd, SIGTERM);
  sigaddset(&fwd, SIGINT);
  struct timespec zero = {0, 0};
  while (sigtimedwait(&fwd, NULL, &zero) > 0) {
  }
  sigaction(SIGHUP, &orig_hup, NULL);
  sigaction(SIGPIPE, &orig_pipe, NULL);
  sigaction(SIGCHLD, &orig_chld, NULL);
  sigprocmask(SIG_SETMASK, &orig_mask, NULL);
  execl("/bin/sh", "sh", "-c", o->on_exit, (char *)NULL);
  say("hbx-shim: cannot exec /bin/sh: %s", strerror(errno));
  exit(EXIT_NOT_FOUND);
}

int main(int argc, char **argv) {
  /* As early as possible: the later we look, the likelier the parent is already gone and the pdeathsig check compares against the wrong pid. */
  pid_t parent = getppid();
  ensure_std_fds();
  struct options o;
  parse(argc, argv, &o);
  if (o.exit_file) monitor(&o);
  setup_and_exec(&o, parent);
}

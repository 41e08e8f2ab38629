/*
 * hbx-probe: the one program `hybridbox bench isolation` runs inside every backend and on
 * the host. Static (musl), no dependencies, so the same binary runs in a container, in a
 * microVM and in a libvirt VM. Every mode prints one JSON object on its last line.
 *
 *   hbx-probe probe                      what the sandbox can see and do (security part);
 *                                        env: HBX_HOST_INIT, HBX_HOST_PID, HBX_MARKER,
 *                                        HBX_MARKER_TOKEN, HBX_PTRACE_TARGET=1
 *   hbx-probe work SECONDS               the victim's workload: xorshift updates streaming over
 *                                        a 4 MiB buffer; score in million words per second
 *   hbx-probe cpu-hog SECONDS            two spinning processes
 *   hbx-probe mem-bomb SECONDS [--once]  children that allocate until the OOM killer ends them,
 *                                        re-forked each time (--once: this process, no fork)
 *   hbx-probe fork-bomb SECONDS          processes that fork without end (at most 2048 alive)
 *   hbx-probe disk-writer SECONDS [DIR]  1 MiB writes cycling over 64 MiB, fdatasync every 8 MiB
 *   hbx-probe udp-flood SECONDS IP [PORT] 1400-byte UDP datagrams as fast as possible
 *   hbx-probe host-latency SECONDS       (host) every 100 ms: a 10 ms sleep's overshoot and
 *                                        the time to spawn and reap /bin/true
 *
 * Neighbour modes print "ready" when the stress has begun and stop early on SIGTERM.
 * The probe never loads a module (it passes buffers the kernel rejects before loading),
 * unmounts what it mounts at once, and only seizes (never stops) the process it ptraces.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define PTRACE_SEIZE_ 0x4206
#define PTRACE_DETACH_ 17
#define KEY_SPEC_PROCESS_KEYRING_ (-2)
#define KEY_SPEC_SESSION_KEYRING_ (-3)
#define KEYCTL_GET_KEYRING_ID_ 0

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig) {
  (void)sig;
  stop_flag = 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void install_stop_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

static void ready(void) {
  fputs("ready\n", stdout);
  fflush(stdout);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_flag) {
  }
}

static const char *errname(int e) {
  switch (e) {
  case 0: return "ok";
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case EACCES: return "EACCES";
  case EINVAL: return "EINVAL";
  case ENOSYS: return "ENOSYS";
  case EROFS: return "EROFS";
  case ENOEXEC: return "ENOEXEC";
  case EFAULT: return "EFAULT";
  case EBADF: return "EBADF";
  case ESRCH: return "ESRCH";
  case EBUSY: return "EBUSY";
  case ENODEV: return "ENODEV";
  case ENXIO: return "ENXIO";
  case ENOTDIR: return "ENOTDIR";
  case EAFNOSUPPORT: return "EAFNOSUPPORT";
  case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
  case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
  case EDQUOT: return "EDQUOT";
  case EKEYREJECTED: return "EKEYREJECTED";
  case ENOKEY: return "ENOKEY";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case ENOMEM: return "ENOMEM";
  case EAGAIN: return "EAGAIN";
  case EEXIST: return "EEXIST";
  default: {
    static char buf[16];
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
  }
  }
}

/* ---------------------------------------------------------------- JSON output -- */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
    else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
    else fputc(*p, f);
  }
  fputc('"', f);
}

static int first = 1;
static void key(const char *k) {
  if (!first) fputc(',', stdout);
  first = 0;
  json_str(stdout, k);
  fputc(':', stdout);
}
static void kv_str(const char *k, const char *v) {
  key(k);
  if (v) json_str(stdout, v);
  else fputs("null", stdout);
}
static void kv_num(const char *k, double v) {
  key(k);
  printf("%.6g", v);
}
static void kv_bool(const char *k, int v) {
  key(k);
  fputs(v ? "true" : "false", stdout);
}

/* ------------------------------------------------------------------ file helpers -- */

/* The first line of a file without its newline, or NULL. */
static char *read_line(const char *path, char *buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  ssize_t r = read(fd, buf, n - 1);
  close(fd);
  if (r < 0) return NULL;
  buf[r] = 0;
  char *nl = strchr(buf, '\n');
  if (nl) *nl = 0;
  return buf;
}

/* The value of "Key:" in /proc/self/status, trimmed, or NULL. */
static char *status_field(const char *name, char *out, size_t n) {
  static char buf[8192];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  ssize_t r = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (r <= 0) return NULL;
  buf[r] = 0;
  size_t kl = strlen(name);
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (strncmp(line, name, kl) == 0 && line[kl] == ':') {
      char *v = line + kl + 1;
      while (*v == ' ' || *v == '\t') v++;
      size_t i = 0;
      while (v[i] && v[i] != '\n' && i + 1 < n) {
        out[i] = v[i];
        i++;
      }
      out[i] = 0;
      return out;
    }
  }
  return NULL;
}

/* comm and start time (clock ticks since boot) of a pid, as "comm:start", or NULL. */
static char *proc_identity(const char *pid, char *out, size_t n) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  if (!read_line(path, buf, sizeof buf)) return NULL;
  char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
  if (!lp || !rp) return NULL;
  *rp = 0;
  /* Fields after ")": state is field 3; starttime is field 22. */
  char *p = rp + 2;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  if (!p) return NULL;
  char *end = strchr(p, ' ');
  if (end) *end = 0;
  snprintf(out, n, "%s:%s", lp + 1, p);
  return out;
}

static int is_number(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

/* ----------------------------------------------------------------------- probe -- */

static int errno_of_child(int (*fn)(void)) {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) _exit(fn());
  int st;
  if (waitpid(pid, &st, 0) < 0) return errno;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

static int try_unshare(void) {
  return unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0 ? 0 : errno;
}

/* The network interfaces of the probe's own network namespace (netlink), with their MACs. */
static void probe_interfaces(void) {
  key("interfaces");
  fputc('[', stdout);
  struct if_nameindex *ifs = if_nameindex();
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  for (struct if_nameindex *i = ifs; i && i->if_index; i++) {
    char mac[32] = "";
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", i->if_name);
    if (sock >= 0 && ioctl(sock, SIOCGIFHWADDR, &ifr) == 0) {
      const unsigned char *m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
      snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
    }
    if (i != ifs) fputc(',', stdout);
    fputs("{\"name\":", stdout);
    json_str(stdout, i->if_name);
    fputs(",\"mac\":", stdout);
    json_str(stdout, mac);
    fputc('}', stdout);
  }
  if (sock >= 0) close(sock);
  if (ifs) if_freenameindex(ifs);
  fputc(']', stdout);

  /* What /sys shows: a sysfs of its own lists the same interfaces; the host's lists the host's. */
  key("sysfsInterfaces");
  fputc('[', stdout);
  DIR *d = opendir("/sys/class/net");
  int n = 0;
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[512], mac[64];
      snprintf(path, sizeof path, "/sys/class/net/%s/address", e->d_name);
      if (n++) fputc(',', stdout);
      fputs("{\"name\":", stdout);
      json_str(stdout, e->d_name);
      fputs(",\"mac\":", stdout);
      json_str(stdout, read_line(path, mac, sizeof mac) ? mac : "");
      fputc('}', stdout);
    }
    closedir(d);
  }
  fputc(']', stdout);
}

static int probe_mode(void) {
  char buf[4096], tmp[256];
  struct stat st;
  fputc('{', stdout);
  kv_str("mode", "probe");

  /* Kernel: the same boot id as the host's means the same running kernel. */
  {
    FILE *f = fopen("/proc/sys/kernel/osrelease", "r");
    char rel[256] = "";
    if (f) {
      if (fgets(rel, sizeof rel, f)) rel[strcspn(rel, "\n")] = 0;
      fclose(f);
    }
    kv_str("kernelRelease", rel);
    kv_str("bootId", read_line("/proc/sys/kernel/random/boot_id", buf, sizeof buf));
  }

  /* Processes: how many, what PID 1 is, whether a given host process is visible. */
  {
    int count = 0;
    DIR *d = opendir("/proc");
    if (d) {
      struct dirent *e;
      while ((e = readdir(d)))
        if (is_number(e->d_name)) count++;
      closedir(d);
    }
    kv_num("pidCount", count);
    kv_str("pid1", proc_identity("1", tmp, sizeof tmp));
    const char *host_init = getenv("HBX_HOST_INIT");
    kv_bool("pid1IsHostInit", host_init && proc_identity("1", tmp, sizeof tmp) && strcmp(tmp, host_init) == 0);
    /* HBX_HOST_PID=pid:comm:start, a process on the host: visible = same pid, comm and start. */
    const char *hp = getenv("HBX_HOST_PID");
    int visible = 0;
    if (hp) {
      char pid[32];
      size_t i = 0;
      while (hp[i] && hp[i] != ':' && i + 1 < sizeof pid) pid[i] = hp[i], i++;
      pid[i] = 0;
      visible = hp[i] == ':' && proc_identity(pid, tmp, sizeof tmp) && strcmp(tmp, hp + i + 1) == 0;
    }
    kv_bool("hostPidVisible", visible);
  }

  probe_interfaces();

  /* Host filesystem: a marker file the bench made on the host at a random path. */
  {
    const char *path = getenv("HBX_MARKER");
    const char *token = getenv("HBX_MARKER_TOKEN");
    kv_bool("markerVisible", path && token && read_line(path, buf, sizeof buf) && strcmp(buf, token) == 0);
  }

  /* Identity and privileges. */
  {
    char map[256] = "";
    if (read_line("/proc/self/uid_map", buf, sizeof buf)) {
      /* collapse runs of spaces: "0 0 4294967295" */
      size_t j = 0;
      for (size_t i = 0; buf[i] && j + 1 < sizeof map; i++)
        if (buf[i] != ' ' || (j > 0 && map[j - 1] != ' ')) map[j++] = buf[i];
      map[j] = 0;
      while (j > 0 && map[j - 1] == ' ') map[--j] = 0;
    }
    kv_str("uidMap", map[0] ? map : NULL);
    kv_num("uid", getuid());
    kv_str("capEff", status_field("CapEff", tmp, sizeof tmp));
    kv_str("seccomp", status_field("Seccomp", tmp, sizeof tmp));
    kv_str("noNewPrivs", status_field("NoNewPrivs", tmp, sizeof tmp));
  }

  /* /proc/sys writable: opened for writing, never written. */
  {
    int fd = open("/proc/sys/kernel/hostname", O_WRONLY | O_CLOEXEC);
    kv_str("procSysWrite", errname(fd >= 0 ? 0 : errno));
    if (fd >= 0) close(fd);
  }

  /* Devices. */
  {
    int entries = 0, blocks = 0;
    DIR *d = opendir("/dev");
    if (d) {
      struct dirent *e;
      while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        entries++;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISBLK(st.st_mode)) blocks++;
      }
      closedir(d);
    }
    kv_num("devEntries", entries);
    kv_num("devBlock", blocks);
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    kv_str("devKmsg", errname(fd >= 0 ? 0 : errno));
    if (fd >= 0) close(fd);
    fd = open("/dev/mem", O_RDONLY | O_CLOEXEC);
    kv_str("devMem", errname(fd >= 0 ? 0 : errno));
    if (fd >= 0) close(fd);
  }

  /* mount: a tmpfs on a fresh directory, unmounted at once. */
  {
    char dir[] = "/tmp/hbx-probe-XXXXXX";
    int e;
    if (!mkdtemp(dir)) e = errno;
    else {
      e = mount("hbx-probe", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k") == 0 ? 0 : errno;
      if (e == 0) umount2(dir, MNT_DETACH);
      rmdir(dir);
    }
    kv_str("mount", errname(e));
  }

  kv_str("unshareUserMount", errname(errno_of_child(try_unshare)));

  /* Kernel modules: buffers the loader rejects before anything is loaded. */
  {
    static char zeros[64];
    kv_str("initModule", errname(syscall(SYS_init_module, zeros, sizeof zeros, "") == 0 ? 0 : errno));
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    kv_str("finitModule", errname(syscall(SYS_finit_module, fd, "", 0) == 0 ? 0 : errno));
    if (fd >= 0) close(fd);
  }

  /* ptrace: PTRACE_SEIZE (the permission check of PTRACE_ATTACH, without stopping the
   * target), then detach. The target is PID 1 only with HBX_PTRACE_TARGET=1 (inside a
   * sandbox); otherwise a child of the probe, so that a host's init is never touched. */
  {
    const char *target = getenv("HBX_PTRACE_TARGET");
    pid_t pid = 1, child = -1;
    if (!target || strcmp(target, "1") != 0) {
      child = fork();
      if (child == 0) {
        pause();
        _exit(0);
      }
      pid = child;
    }
    int e = syscall(SYS_ptrace, PTRACE_SEIZE_, pid, 0, 0) == 0 ? 0 : errno;
    if (e == 0) syscall(SYS_ptrace, PTRACE_DETACH_, pid, 0, 0);
    if (child > 0) {
      kill(child, SIGKILL);
      waitpid(child, NULL, 0);
    }
    kv_str("ptraceTarget", child > 0 ? "own child" : "pid 1");
    kv_str("ptrace", errname(e));
  }

  {
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    kv_str("rawSocket", errname(fd >= 0 ? 0 : errno));
    if (fd >= 0) close(fd);
  }

  /* Keys: a key in the process keyring (gone when the probe exits). */
  {
    long r = syscall(SYS_add_key, "user", "hbx-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING_);
    kv_str("addKey", errname(r >= 0 ? 0 : errno));
    r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID_, KEY_SPEC_SESSION_KEYRING_, 0);
    kv_str("keyctl", errname(r >= 0 ? 0 : errno));
  }

  fputs("}\n", stdout);
  return 0;
}

/* ------------------------------------------------------------------ victim work -- */

/* Passes over a 4 MiB buffer, each word updated with a xorshift value: CPU work and memory
 * bandwidth (the buffer is larger than a core's L2), in address order. Random access would
 * mostly measure QEMU's software TLB under TCG, whose refills vary from run to run. */
static int work_mode(double seconds) {
  const size_t words = (4u << 20) / sizeof(uint32_t);
  uint32_t *buf = malloc(words * sizeof(uint32_t));
  if (!buf) return 1;
  for (size_t i = 0; i < words; i++) buf[i] = (uint32_t)i;
  uint64_t x = 0x9e3779b97f4a7c15ull, ops = 0;
  double t0 = now_s(), t = t0;
  while (t - t0 < seconds) {
    for (size_t i = 0; i < words; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      buf[i] = (buf[i] ^ (uint32_t)x) + (buf[i] >> 3);
    }
    ops += words;
    t = now_s();
  }
  uint32_t sum = 0;
  for (size_t i = 0; i < words; i += 4096) sum += buf[i];
  printf("{\"mode\":\"work\",\"score\":%.4f,\"unit\":\"Mops/s\",\"seconds\":%.3f,\"check\":%u}\n", (double)ops / (t - t0) / 1e6, t - t0, sum);
  return 0;
}

/* --------------------------------------------------------------- neighbours -- */

/* Counters shared between a neighbour's processes. */
struct shared {
  uint64_t a, b, c, d;
};
static struct shared *shared_counters(void) {
  void *p = mmap(NULL, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return p;
}
#define ADD(p, v) __atomic_add_fetch(&(p), (v), __ATOMIC_RELAXED)
#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)
#define MAX(p, v)                                                                                \
  do {                                                                                           \
    uint64_t cur_ = LOAD(p);                                                                     \
    while ((v) > cur_ && !__atomic_compare_exchange_n(&(p), &cur_, (v), 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                            \
  } while (0)

/* Waits until the deadline or SIGTERM. */
static void wait_until(double deadline) {
  while (!stop_flag && now_s() < deadline) sleep_ms(20);
}

static int cpu_hog(double seconds) {
  struct shared *s = shared_counters();
  const int workers = 2;
  pid_t pids[2];
  for (int i = 0; i < workers; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      signal(SIGTERM, SIG_DFL);
      volatile uint64_t x = 1;
      for (;;) {
        for (int j = 0; j < 1000000; j++) x = x * 6364136223846793005ull + 1;
        ADD(s->a, 1);
      }
    }
  }
  ready();
  double t0 = now_s();
  wait_until(t0 + seconds);
  for (int i = 0; i < workers; i++)
    if (pids[i] > 0) kill(pids[i], SIGKILL);
  while (wait(NULL) > 0) {
  }
  printf("{\"mode\":\"cpu-hog\",\"workers\":%d,\"megaLoops\":%llu,\"seconds\":%.3f}\n", workers, (unsigned long long)LOAD(s->a), now_s() - t0);
  return 0;
}

/* Allocates and touches 4 MiB at a time until killed; records the high-water mark (MiB). */
static void hog_memory(struct shared *s) {
  FILE *f = fopen("/proc/self/oom_score_adj", "w");
  if (f) {
    fputs("1000", f);
    fclose(f);
  }
  uint64_t mib = 0;
  for (;;) {
    if (mib >= 4096) { /* a safety cap: never more than 4 GiB whatever the limits */
      pause();
      continue;
    }
    char *p = malloc(4u << 20);
    if (!p) {
      if (s) ADD(s->c, 1);
      _exit(3);
    }
    for (size_t i = 0; i < (4u << 20); i += 4096) p[i] = (char)i | 1;
    mib += 4;
    if (s) MAX(s->b, mib);
  }
}

static int mem_bomb(double seconds, int once) {
  if (once) {
    ready();
    hog_memory(NULL);
    return 0;
  }
  struct shared *s = shared_counters(); /* a: OOM kills, b: most MiB touched, c: malloc refused, d: rounds */
  ready();
  double t0 = now_s();
  while (!stop_flag && now_s() - t0 < seconds) {
    pid_t pid = fork();
    if (pid < 0) {
      sleep_ms(20);
      continue;
    }
    if (pid == 0) {
      signal(SIGTERM, SIG_DFL);
      hog_memory(s);
    }
    ADD(s->d, 1);
    /* Polled, so that the deadline and SIGTERM are seen while the child still grows. */
    int st = 0, ended = 0;
    while (!ended) {
      pid_t r = waitpid(pid, &st, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) break;
      if (stop_flag || now_s() - t0 >= seconds) {
        ended = 1;
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        break;
      }
      sleep_ms(5);
    }
    if (!ended && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) ADD(s->a, 1);
    sleep_ms(20);
  }
  printf("{\"mode\":\"mem-bomb\",\"oomKills\":%llu,\"maxMiB\":%llu,\"allocRefused\":%llu,\"rounds\":%llu,\"seconds\":%.3f}\n",
         (unsigned long long)LOAD(s->a), (unsigned long long)LOAD(s->b), (unsigned long long)LOAD(s->c), (unsigned long long)LOAD(s->d), now_s() - t0);
  return 0;
}

static int fork_bomb(double seconds) {
  struct shared *s = shared_counters(); /* a: forks, b: forks refused, c: alive */
  const uint64_t cap = 2048;
  /* Orphans of the bomb come back to this process, which reaps them all at the end. */
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  pid_t root = fork();
  if (root < 0) {
    perror("fork");
    return 1;
  }
  if (root == 0) {
    setpgid(0, 0);
    signal(SIGTERM, SIG_DFL);
    ADD(s->c, 1);
    for (;;) {
      if (LOAD(s->c) < cap) {
        pid_t p = fork();
        if (p == 0) {
          ADD(s->c, 1);
          continue;
        }
        if (p > 0) ADD(s->a, 1);
        else ADD(s->b, 1);
      }
      for (volatile int i = 0; i < 20000; i++) {
      }
    }
  }
  setpgid(root, root);
  ready();
  double t0 = now_s();
  wait_until(t0 + seconds);
  kill(-root, SIGKILL);
  uint64_t reaped = 0;
  for (;;) {
    pid_t p = waitpid(-1, NULL, 0);
    if (p > 0) reaped++;
    else if (errno == EINTR) continue;
    else break;
  }
  printf("{\"mode\":\"fork-bomb\",\"forks\":%llu,\"forksRefused\":%llu,\"maxAlive\":%llu,\"reaped\":%llu,\"seconds\":%.3f}\n",
         (unsigned long long)LOAD(s->a), (unsigned long long)LOAD(s->b), (unsigned long long)LOAD(s->c), (unsigned long long)reaped, now_s() - t0);
  return 0;
}

static int disk_writer(double seconds, const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/hbx-disk-writer.%d", dir, (int)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "disk-writer: %s: %s\n", path, strerror(errno));
    return 1;
  }
  const size_t block = 1u << 20, span = 64u << 20;
  char *buf = malloc(block);
  if (!buf) return 1;
  for (size_t i = 0; i < block; i++) buf[i] = (char)(i * 7 + 1);
  ready();
  double t0 = now_s();
  uint64_t written = 0, syncs = 0, errors = 0;
  off_t off = 0;
  while (!stop_flag && now_s() - t0 < seconds) {
    buf[0]++;
    ssize_t w = pwrite(fd, buf, block, off);
    if (w < 0) {
      if (errno != EINTR) errors++;
      sleep_ms(10);
      continue;
    }
    written += (uint64_t)w;
    off = (off + (off_t)block) % (off_t)span;
    if (written % (8u << 20) == 0) {
      fdatasync(fd);
      syncs++;
    }
  }
  double dt = now_s() - t0;
  close(fd);
  unlink(path);
  printf("{\"mode\":\"disk-writer\",\"writtenMiB\":%.1f,\"MiBps\":%.1f,\"syncs\":%llu,\"errors\":%llu,\"seconds\":%.3f}\n",
         written / 1048576.0, written / 1048576.0 / dt, (unsigned long long)syncs, (unsigned long long)errors, dt);
  return 0;
}

/* An IPv4 address and port; ip NULL: any address (a listener). 0, said on stderr, when ip is not one. */
static int ipv4_address(const char *mode, const char *ip, int port, struct sockaddr_in *out) {
  memset(out, 0, sizeof *out);
  out->sin_family = AF_INET;
  out->sin_port = htons((uint16_t)port);
  if (ip && inet_pton(AF_INET, ip, &out->sin_addr) != 1) {
    fprintf(stderr, "%s: bad address %s\n", mode, ip);
    return 0;
  }
  return 1;
}

static int udp_flood(double seconds, const char *ip, int port) {
  struct sockaddr_in to;
  if (!ipv4_address("udp-flood", ip, port, &to)) return 2;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  char payload[1400];
  memset(payload, 'x', sizeof payload);
  ready();
  double t0 = now_s();
  uint64_t sent = 0, errors = 0;
  while (!stop_flag) {
    for (int i = 0; i < 64; i++) {
      if (sendto(fd, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) < 0) errors++;
      else sent++;
    }
    if (now_s() - t0 >= seconds) break;
  }
  double dt = now_s() - t0;
  printf("{\"mode\":\"udp-flood\",\"packets\":%llu,\"errors\":%llu,\"pps\":%.0f,\"MBps\":%.2f,\"seconds\":%.3f}\n",
         (unsigned long long)sent, (unsigned long long)errors, sent / dt, sent * sizeof payload / 1e6 / dt, dt);
  return 0;
}

/*
 * tcp-sink / tcp-send: one bulk TCP transfer between two sandboxes, for --net-rate. The
 * sink's count is the one that matters: bytes that crossed both shapers, timed from the
 * first byte to the last, so connection set-up and the sender's socket buffer do not count.
 */
static int tcp_sink(double seconds, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in at;
  ipv4_address("tcp-sink", NULL, port, &at);
  if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0 || listen(fd, 1) < 0) {
    perror("tcp-sink: bind/listen");
    return 1;
  }
  ready();
  int c = accept(fd, NULL, NULL);
  if (c < 0) {
    perror("tcp-sink: accept");
    return 1;
  }
  static char buf[65536];
  uint64_t got = 0;
  double first = 0, last = 0, t0 = now_s();
  for (;;) {
    ssize_t n = read(c, buf, sizeof buf);
    if (n <= 0 || stop_flag) break;
    last = now_s();
    if (got == 0) first = last;
    got += (uint64_t)n;
    if (last - t0 >= seconds) break;
  }
  close(c);
  close(fd);
  double dt = last - first;
  printf("{\"mode\":\"tcp-sink\",\"bytes\":%llu,\"seconds\":%.3f,\"Mbitps\":%.3f}\n", (unsigned long long)got, dt, dt > 0 ? got * 8 / 1e6 / dt : 0.0);
  return 0;
}

static int tcp_send(double seconds, const char *ip, int port) {
  struct sockaddr_in to;
  if (!ipv4_address("tcp-send", ip, port, &to)) return 2;
  int fd = -1;
  /* The sink may still be starting: retry for up to 30 s. */
  for (double t0 = now_s(); now_s() - t0 < 30 && !stop_flag; sleep_ms(50)) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&to, sizeof to) == 0) break;
    if (fd >= 0) close(fd);
    fd = -1;
  }
  if (fd < 0) {
    fprintf(stderr, "tcp-send: cannot connect to %s:%d\n", ip, port);
    return 1;
  }
  static char buf[65536];
  memset(buf, 'x', sizeof buf);
  ready();
  uint64_t sent = 0;
  double t0 = now_s();
  while (!stop_flag && now_s() - t0 < seconds) {
    ssize_t n = write(fd, buf, sizeof buf);
    if (n <= 0) break;
    sent += (uint64_t)n;
  }
  /*
   * Wait for the sink to close its end: until then the data is still in this socket's
   * buffer (or in a shaper's queue), and a sandbox torn down on exit would drop it.
   */
  shutdown(fd, SHUT_WR);
  struct timeval tv = {.tv_sec = 60};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (read(fd, buf, sizeof buf) > 0) {
  }
  double dt = now_s() - t0;
  close(fd);
  printf("{\"mode\":\"tcp-send\",\"bytes\":%llu,\"seconds\":%.3f,\"Mbitps\":%.3f}\n", (unsigned long long)sent, dt, sent * 8 / 1e6 / dt);
  return 0;
}

/* ------------------------------------------------------------------ host probe -- */

static int host_latency(double seconds) {
  size_t cap = (size_t)(seconds * 10) + 16, n = 0;
  double *sleep_over = calloc(cap, sizeof(double)), *spawn_ms = calloc(cap, sizeof(double));
  if (!sleep_over || !spawn_ms) return 1;
  ready();
  double t0 = now_s();
  while (!stop_flag && now_s() - t0 < seconds && n < cap) {
    double tick = now_s();
    double a = now_s();
    sleep_ms(10);
    double b = now_s();
    pid_t pid;
    char *argv[] = {"/bin/true", NULL};
    double c = now_s();
    int ok = posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) == 0;
    if (ok) waitpid(pid, NULL, 0);
    double d = now_s();
    sleep_over[n] = (b - a) * 1000 - 10;
    spawn_ms[n] = ok ? (d - c) * 1000 : -1;
    n++;
    double rest = 0.1 - (now_s() - tick);
    if (rest > 0) sleep_ms((long)(rest * 1000));
  }
  printf("{\"mode\":\"host-latency\",\"sleepOvershootMs\":[");
  for (size_t i = 0; i < n; i++) printf("%s%.3f", i ? "," : "", sleep_over[i]);
  printf("],\"spawnMs\":[");
  for (size_t i = 0; i < n; i++) printf("%s%.3f", i ? "," : "", spawn_ms[i]);
  printf("]}\n");
  return 0;
}

static void usage(void) {
  fputs("usage: hbx-probe probe | work S | cpu-hog S | mem-bomb S [--once] | fork-bomb S | disk-writer S [DIR] | udp-flood S IP [PORT] | tcp-sink S PORT | tcp-send S IP PORT | host-latency S\n", stderr);
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  const char *mode = argv[1];
  if (strcmp(mode, "probe") == 0) return probe_mode();
  if (argc < 3) usage();
  double seconds = atof(argv[2]);
  if (!(seconds > 0)) usage();
  setvbuf(stdout, NULL, _IOLBF, 0);
  install_stop_handler();
  if (strcmp(mode, "work") == 0) return work_mode(seconds);
  if (strcmp(mode, "cpu-hog") == 0) return cpu_hog(seconds);
  if (strcmp(mode, "mem-bomb") == 0) return mem_bomb(seconds, argc > 3 && strcmp(argv[3], "--once") == 0);
  if (strcmp(mode, "fork-bomb") == 0) return fork_bomb(seconds);
  if (strcmp(mode, "disk-writer") == 0) return disk_writer(seconds, argc > 3 ? argv[3] : "/");
  if (strcmp(mode, "udp-flood") == 0) {
    if (argc < 4) usage();
    return udp_flood(seconds, argv[3], argc > 4 ? atoi(argv[4]) : 9);
  }
  if (strcmp(mode, "tcp-sink") == 0 && argc > 3) return tcp_sink(seconds, atoi(argv[3]));
  if (strcmp(mode, "tcp-send") == 0 && argc > 4) return tcp_send(seconds, argv[3], atoi(argv[4]));
  if (strcmp(mode, "host-latency") == 0) return host_latency(seconds);
  usage();
  return 2;
}

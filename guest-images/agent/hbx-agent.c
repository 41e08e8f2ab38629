/*
 * hbx-agent: PID 1 of a hybridbox VM. It builds the sandbox's root filesystem, network
 * and volumes from the kernel command line, then serves the host over the agent port
 * (docs/guest-agent-protocol.md): it starts sessions, streams their output and reports
 * how they ended, and powers the guest off when session 0 is done.
 *
 * Kernel command line (all optional):
 *   hbx.ip=A.B.C.D/N  hbx.gw=A.B.C.D  hbx.hostname=NAME  hbx.vol=TAG:/guest/path:ro|rw (repeat)
 *   hbx.root=/dev/vda  hbx.rootrw=1  hbx.agent=/dev/ttyS1  hbx.modules=1
 *   hbx.pids=N  hbx.mem=BYTES   the workload cgroup's pids.max and memory.max (see setup_cgroup)
 *   hbx.cputime=MS              the workload cgroup's CPU time limit: cgroup.kill once cpu.stat
 *                               usage_usec reaches it (see watch_cpu)
 *   hbx.fsize=BYTES  hbx.nofile=N   every session's RLIMIT_FSIZE and RLIMIT_NOFILE
 *   hbx.tmpfs=MIB               the size of the /tmp and /dev/shm tmpfs mounts
 *   hbx.rootro=1                the root remounted read-only once the guest is set up
 *   hbx.untrusted=1             every session under the untrusted seccomp filter (see untrusted_filter)
 * Values are percent-encoded (%XX, any byte but NUL): the kernel splits its command line on
 * spaces (and byte 0xA0), and a `"` quotes everything after it. In hbx.vol the tag and the
 * path are decoded separately, after splitting on the `:` that the host never leaves raw.
 *
 * Test mode (on a host, no VM): HBX_AGENT_TEST_ROOT=DIR HBX_AGENT_PORT=PATH skips every
 * mount, module and network step, chroots sessions into DIR, and serves PATH: a character
 * device (a pty) is used as the port; anything else becomes a unix socket that the agent
 * listens on and accepts one connection from, as QEMU's `server=on` chardev does. Test mode
 * never calls reboot(2): it exits instead (run it as PID 1 of a PID namespace so that
 * "kill everything" stays inside it).
 *
 * Why C and static: it is the only program in the initramfs, runs before any root
 * filesystem exists, and every millisecond before `R` is boot time under TCG.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define HDR 10
#define MAX_PAYLOAD 65536
#define MAX_SESSIONS 32
#define MAX_VOLS 16
#define MAX_ARGS 4096
#define MAX_GROUPS 64
/* Above this much unsent port output, session pipes are not read: the sessions block on
 * their writes instead of the agent growing without bound when the host reads slowly. */
#define OUTQ_HIGH (256 * 1024)
/* The protocol has no stdin flow control; this caps what a fast host can make us hold. */
#define STDIN_MAX (1024 * 1024)
/* After a session's process exits, what is already in its pipes is still forwarded; a
 * background child that keeps writing must not hold the X back forever. */
#define DRAIN_MAX (256 * 1024)
#define GRACE_MS 2000
#define REAP_MS 1000
#define FLUSH_MS 3000
#define READY_REPEAT_MS 500
#define DEVICE_WAIT_MS 5000
#define ACCEPT_WAIT_MS 60000
#define MODULE_INIT_COMPRESSED_FILE 4
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define NEWROOT "/run/hbx/root"
/* The workload's cgroup: the spec's limits on it, every session's processes in it, the agent
 * outside it. src/runtimes/vm/limits.ts (GUEST_CGROUP) names the same path. */
#define WORK_CGROUP "/sys/fs/cgroup/hbx"
/* Without a memory limit the workload still gets no more than MemTotal minus this, so that a
 * memory bomb is OOM-killed in its cgroup before the kernel has to pick among the agent's
 * pages: measured under TCG, the idle guest uses 16-19 MiB of MemTotal. */
#define AGENT_HEADROOM_BYTES (36LL << 20)

struct buf {
  unsigned char *p;
  size_t off, len, cap; /* data is p[off .. off+len) */
};

struct vol {
  char tag[64];
  char path[2048]; /* the whole command line is at most 2047 bytes */
  bool ro;
};

static struct {
  const char *test_root, *port_path;
  char root_dev[128], agent_dev[128], hostname[65];
  bool have_ip, have_gw, modules, root_rw, root_ro, untrusted;
  long long pids_max, mem_max, cpu_ms, fsize, nofile, tmpfs_mib; /* 0: not set */
  bool cgroup; /* the workload cgroup exists: every session joins it */
  struct in_addr ip, mask, gw;
  struct vol vols[MAX_VOLS];
  int nvols;
} cfg = {.root_dev = "/dev/vda", .agent_dev = "/dev/ttyS1"};

struct session {
  bool used;
  uint16_t id;
  pid_t pid;
  int out_fd, err_fd, in_fd; /* -1 once closed */
  struct buf inq;
  bool close_in;
  unsigned long long oom_before;
};

struct spec {
  char **argv, **envp;
  const char *workdir;
  long long uid, gid;
  bool in;
  gid_t groups[MAX_GROUPS];
  int ngroups; /* -1: just gid */
};

static struct session sessions[MAX_SESSIONS];
static int port_fd = -1, sig_fd = -1;
static bool port_dead, port_is_socket, heard_host, children_left;
/* A virtio-serial port reports POLLHUP and reads EOF while no host is connected to its
 * QEMU socket: not an error, just a reason to look again a little later. */
static long long port_away_until;
static struct buf outq;
static unsigned char inbuf[HDR + MAX_PAYLOAD];
static size_t inlen;
static unsigned char chunk[MAX_PAYLOAD];
static char arena[2 * MAX_PAYLOAD + 64];
static char *argv_store[MAX_ARGS + 1], *env_store[MAX_ARGS + 1];
/* 0 running; 1 TERM sent; 2 KILL sent; 3 flushing the port before power-off. */
static int phase;
static long long phase_deadline;

static const char *const signames[32] = {
    NULL, "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
    "SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
    "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG",
    "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"};

static long long init_ms; /* uptime when the agent started: R tells kernel boot from agent setup */

static long long uptime_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_BOOTTIME, &t);
  return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) && errno == EINTR) {
  }
}

static void say(const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  /* The console is the only witness of a boot that failed before the port opened. */
  if (write(2, "hbx-agent: ", 11) > 0 && write(2, line, n) > 0) {
  }
}

/* ---- buffers and frames ---------------------------------------------------------- */

static bool buf_add(struct buf *b, const void *d, size_t n) {
  if (b->off && b->off + b->len + n > b->cap) {
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
  }
  if (b->len + n > b->cap) {
    size_t c = b->cap ? b->cap : 4096;
    while (c < b->len + n) c *= 2;
    unsigned char *q = realloc(b->p, c);
    if (!q) return false;
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->off + b->len, d, n);
  b->len += n;
  return true;
}

static void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (!b->len) b->off = 0;
}

static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

static void begin_shutdown(void);

static void flush_port(void) {
  while (outq.len && !port_dead) {
    ssize_t n = write(port_fd, outq.p + outq.off, outq.len);
    if (n > 0) {
      buf_consume(&outq, n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      /* Nobody can hear us any more: nothing left to serve. */
      say("agent port: %s", n < 0 ? strerror(errno) : "closed");
      port_dead = true;
      buf_free(&outq);
      begin_shutdown();
    }
  }
}

static void send_frame(char type, unsigned id, const void *payload, size_t n) {
  if (port_dead || port_fd < 0) return;
  unsigned char h[HDR] = {'H', 'B', (unsigned char)type, 0, id >> 8, id & 0xff,
                          n >> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff};
  /* Reserve first, so a frame is queued whole or not at all: framing must never tear. */
  size_t before = outq.len;
  if (!buf_add(&outq, h, HDR) || (n && !buf_add(&outq, payload, n))) {
    outq.len = before;
    say("out of memory: dropped a '%c' frame", type);
    return;
  }
  flush_port();
}

/* Appends s as a JSON string literal (quotes included) at d, within cap; returns length. */
static size_t json_str(char *d, size_t cap, const char *s) {
  size_t o = 0;
  if (cap < 3) return 0;
  d[o++] = '"';
  for (; *s && o + 8 < cap; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\') {
      d[o++] = '\\';
      d[o++] = c;
    } else if (c < 0x20) {
      o += snprintf(d + o, cap - o, "\\u%04x", c);
    } else {
      d[o++] = c;
    }
  }
  d[o++] = '"';
  d[o] = 0;
  return o;
}

static void send_fail(unsigned id, const char *request, const char *fmt, ...) {
  char msg[512], esc[1100], out[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_str(esc, sizeof esc, msg);
  int n = snprintf(out, sizeof out, "{\"message\":%s,\"request\":\"%s\"}", esc, request);
  send_frame('F', id, out, n);
}

static void flush_until(long long deadline) {
  while (outq.len && !port_dead && port_fd >= 0) {
    long long left = deadline - now_ms();
    if (left <= 0) return;
    struct pollfd p = {port_fd, POLLOUT, 0};
    if (poll(&p, 1, (int)left) < 0 && errno != EINTR) return;
    if (!(p.revents & POLLOUT)) sleep_ms(20); /* no host yet: POLLHUP alone, do not spin */
    flush_port();
  }
}

static _Noreturn void power_off(int code) {
  sync();
  if (cfg.test_root) _exit(code);
  /* Without a firmware power-off hook the kernel would turn this into a halt that never
   * returns, and QEMU would hang: only ACPI provides that hook here. The reset below ends
   * QEMU too, since the VM runs with reboot=t and -no-reboot. */
  if (access("/sys/firmware/acpi", F_OK) == 0) reboot(RB_POWER_OFF);
  reboot(RB_AUTOBOOT);
  say("reboot: %s", strerror(errno));
  for (;;) pause(); /* PID 1 must not exit: that is a kernel panic. */
}

static _Noreturn void fail(const char *step, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  say("%s: %s", step, msg);
  if (port_fd >= 0 && !port_dead) {
    send_fail(0, "setup", "%s: %s", step, msg);
    flush_until(now_ms() + 2000);
  }
  power_off(1);
}

/* ---- JSON (just what S and K payloads need) ------------------------------------- */

struct jp {
  const char *p, *e;
  size_t used; /* bytes of arena in use */
};

static void jws(struct jp *j) {
  while (j->p < j->e && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static bool jlit(struct jp *j, char c) {
  jws(j);
  if (j->p < j->e && *j->p == c) {
    j->p++;
    return true;
  }
  return false;
}

static bool jword(struct jp *j, const char *w) {
  size_t n = strlen(w);
  jws(j);
  if ((size_t)(j->e - j->p) >= n && !memcmp(j->p, w, n)) {
    j->p += n;
    return true;
  }
  return false;
}

static int hex4(struct jp *j) {
  int v = 0;
  if (j->e - j->p < 4) return -1;
  for (int i = 0; i < 4; i++) {
    char c = *j->p++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return -1;
  }
  return v;
}

/* Decodes a string into the arena, NUL-terminated. A NUL inside is refused: it could not
 * survive into argv or the environment. */
static char *jstr(struct jp *j) {
  jws(j);
  if (j->p >= j->e || *j->p != '"') return NULL;
  j->p++;
  char *out = arena + j->used;
  size_t o = j->used;
  while (j->p < j->e && *j->p != '"') {
    unsigned c = (unsigned char)*j->p++;
    if (o + 5 >= sizeof arena || c < 0x20) return NULL;
    if (c != '\\') {
      arena[o++] = c;
      continue;
    }
    if (j->p >= j->e) return NULL;
    switch (c = *j->p++) {
    case '"': case '\\': case '/': break;
    case 'b': c = '\b'; break;
    case 'f': c = '\f'; break;
    case 'n': c = '\n'; break;
    case 'r': c = '\r'; break;
    case 't': c = '\t'; break;
    case 'u': {
      int u = hex4(j);
      if (u <= 0 || (u >= 0xDC00 && u < 0xE000)) return NULL;
      unsigned cp = u;
      if (u >= 0xD800 && u < 0xDC00) {
        if (j->e - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') return NULL;
        j->p += 2;
        int lo = hex4(j);
        if (lo < 0xDC00 || lo >= 0xE000) return NULL;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      if (cp < 0x80) {
        arena[o++] = cp;
      } else if (cp < 0x800) {
        arena[o++] = 0xC0 | cp >> 6;
        arena[o++] = 0x80 | (cp & 0x3F);
      } else if (cp < 0x10000) {
        arena[o++] = 0xE0 | cp >> 12;
        arena[o++] = 0x80 | ((cp >> 6) & 0x3F);
        arena[o++] = 0x80 | (cp & 0x3F);
      } else {
        arena[o++] = 0xF0 | cp >> 18;
        arena[o++] = 0x80 | ((cp >> 12) & 0x3F);
        arena[o++] = 0x80 | ((cp >> 6) & 0x3F);
        arena[o++] = 0x80 | (cp & 0x3F);
      }
      continue;
    }
    default: return NULL;
    }
    arena[o++] = c;
  }
  if (j->p >= j->e) return NULL;
  j->p++;
  arena[o++] = 0;
  j->used = o;
  return out;
}

static bool jint(struct jp *j, long long *v) {
  jws(j);
  bool neg = j->p < j->e && *j->p == '-';
  if (neg) j->p++;
  if (j->p >= j->e || *j->p < '0' || *j->p > '9') return false;
  long long x = 0;
  while (j->p < j->e && *j->p >= '0' && *j->p <= '9') {
    x = x * 10 + (*j->p++ - '0');
    if (x > (1LL << 40)) return false;
  }
  if (j->p < j->e && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return false;
  *v = neg ? -x : x;
  return true;
}

static bool jskip(struct jp *j, int depth) {
  if (depth > 32) return false;
  jws(j);
  if (j->p >= j->e) return false;
  if (*j->p == '"') {
    size_t u = j->used;
    bool ok = jstr(j) != NULL;
    j->used = u;
    return ok;
  }
  if (*j->p == '[' || *j->p == '{') {
    char close = *j->p == '[' ? ']' : '}';
    j->p++;
    if (jlit(j, close)) return true;
    for (;;) {
      if (close == '}') {
        size_t u = j->used;
        if (!jstr(j) || !jlit(j, ':')) return false;
        j->used = u;
      }
      if (!jskip(j, depth + 1)) return false;
      if (jlit(j, ',')) continue;
      return jlit(j, close);
    }
  }
  if (jword(j, "true") || jword(j, "false") || jword(j, "null")) return true;
  long long v;
  if (jint(j, &v)) return true;
  /* Fractions and exponents: not used by the protocol, but valid JSON. */
  const char *s = j->p;
  while (j->p < j->e && strchr("+-.eE0123456789", *j->p)) j->p++;
  return j->p > s;
}

/* Parses an S payload; returns NULL or what was wrong with it. */
static const char *parse_spec(const unsigned char *p, size_t n, struct spec *s) {
  struct jp j = {(const char *)p, (const char *)p + n, 0};
  int argc = 0, envc = 0;
  s->workdir = "/";
  s->uid = s->gid = 0;
  s->in = false;
  s->ngroups = -1;
  if (!jlit(&j, '{')) return "payload is not a JSON object";
  if (!jlit(&j, '}')) {
    for (;;) {
      char *k = jstr(&j);
      if (!k || !jlit(&j, ':')) return "malformed JSON";
      if (!strcmp(k, "argv")) {
        argc = 0;
        if (!jlit(&j, '[')) return "argv: not an array";
        if (!jlit(&j, ']')) {
          for (;;) {
            if (argc == MAX_ARGS) return "argv: too many entries";
            if (!(argv_store[argc++] = jstr(&j))) return "argv: not an array of strings";
            if (jlit(&j, ',')) continue;
            if (jlit(&j, ']')) break;
            return "malformed JSON";
          }
        }
      } else if (!strcmp(k, "env")) {
        envc = 0;
        if (!jlit(&j, '{')) return "env: not an object";
        if (!jlit(&j, '}')) {
          for (;;) {
            if (envc == MAX_ARGS) return "env: too many entries";
            char *key = jstr(&j);
            if (!key || !jlit(&j, ':')) return "malformed JSON";
            if (!*key || strchr(key, '=')) return "env: a name is empty or contains '='";
            arena[j.used - 1] = '='; /* the value is decoded right after: "KEY=VALUE" */
            if (!jstr(&j)) return "env: values must be strings";
            env_store[envc++] = key;
            if (jlit(&j, ',')) continue;
            if (jlit(&j, '}')) break;
            return "malformed JSON";
          }
        }
      } else if (!strcmp(k, "workdir")) {
        if (!(s->workdir = jstr(&j)) || s->workdir[0] != '/') return "workdir: not an absolute path";
      } else if (!strcmp(k, "uid") || !strcmp(k, "gid")) {
        long long v;
        if (!jint(&j, &v) || v < 0 || v > 0xFFFFFFFELL) return "uid/gid: not an integer in 0..4294967294";
        *(k[0] == 'u' ? &s->uid : &s->gid) = v;
      } else if (!strcmp(k, "stdin")) {
        if (jword(&j, "true")) s->in = true;
        else if (jword(&j, "false")) s->in = false;
        else return "stdin: not a boolean";
      } else if (!strcmp(k, "groups")) {
        s->ngroups = 0;
        if (!jlit(&j, '[')) return "groups: not an array";
        if (!jlit(&j, ']')) {
          for (;;) {
            long long v;
            if (s->ngroups == MAX_GROUPS) return "groups: too many";
            if (!jint(&j, &v) || v < 0 || v > 0xFFFFFFFELL) return "groups: not an array of gids";
            s->groups[s->ngroups++] = v;
            if (jlit(&j, ',')) continue;
            if (jlit(&j, ']')) break;
            return "malformed JSON";
          }
        }
      } else if (!jskip(&j, 0)) {
        return "malformed JSON";
      }
      if (jlit(&j, ',')) continue;
      if (jlit(&j, '}')) break;
      return "malformed JSON";
    }
  }
  jws(&j);
  if (j.p != j.e) return "trailing bytes after the JSON object";
  if (!argc) return "argv is empty";
  argv_store[argc] = NULL;
  env_store[envc] = NULL;
  s->argv = argv_store;
  s->envp = env_store;
  return NULL;
}

static int signal_number(const char *name) {
  if (!strncmp(name, "SIG", 3)) name += 3;
  for (int i = 1; i < 32; i++)
    if (!strcmp(signames[i] + 3, name)) return i;
  return 0;
}

/* ---- sessions --------------------------------------------------------------------- */

/* OOM kills so far. /proc/vmstat counts them when the kernel has VM event counters; a
 * minimal kernel may not, and then the kernel log's "Killed process" lines are counted
 * instead (/dev/kmsg keeps every record whatever the console log level). */
static enum { OOM_UNKNOWN, OOM_VMSTAT, OOM_KMSG, OOM_NONE } oom_source;
static int kmsg_fd = -1;
static unsigned long long kmsg_ooms;

static unsigned long long oom_kills(void) {
  static char b[8192];
  if (oom_source == OOM_UNKNOWN || oom_source == OOM_VMSTAT) {
    int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
    if (fd >= 0) close(fd);
    char *p = n > 0 ? (b[n] = 0, strstr(b, "\noom_kill ")) : NULL;
    if (p) return oom_source = OOM_VMSTAT, strtoull(p + 10, NULL, 10);
    if (oom_source == OOM_VMSTAT) return 0;
    kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (kmsg_fd < 0) return oom_source = OOM_NONE, 0;
    lseek(kmsg_fd, 0, SEEK_END); /* kills before now are not ours to count */
    oom_source = OOM_KMSG;
  }
  if (oom_source == OOM_NONE) return 0;
  for (;;) {
    ssize_t n = read(kmsg_fd, b, sizeof b - 1);
    if (n < 0 && errno == EPIPE) continue; /* records were overwritten: go on from the oldest */
    if (n <= 0) break;
    b[n] = 0;
    if (strstr(b, "Killed process ")) kmsg_ooms++;
  }
  return kmsg_ooms;
}

/* A number at the start of a file (or after `key ` in it); -1 when there is none. */
static long long read_keyed(const char *path, const char *key) {
  char b[1024];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
  if (fd >= 0) close(fd);
  if (n <= 0) return -1;
  b[n] = 0;
  const char *p = b;
  if (key) {
    size_t kl = strlen(key);
    for (p = b; p && (strncmp(p, key, kl) || p[kl] != ' '); p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    }
    if (!p) return -1;
    p += kl + 1;
  }
  if (*p < '0' || *p > '9') return -1;
  return strtoll(p, NULL, 10);
}

static long long read_number(const char *path) { return read_keyed(path, NULL); }

/* The workload cgroup's CPU time, ms: every process of every session, as a container's
 * cgroup counts it (cpu.stat is always there on cgroup2, with or without the cpu controller). */
static long long cgroup_cpu_ms(void) {
  long long us = read_keyed(WORK_CGROUP "/cpu.stat", "usage_usec");
  return us < 0 ? -1 : us / 1000;
}

/* The agent killed the workload at its CPU time limit (hbx.cputime): every X says so. */
static bool cpu_killed;
static long long next_cpu_check;

/* When to look at the CPU counter next (src/runtimes/limits.ts cpuCheckInMs paces the host
 * side the same way): the group uses at most one ms per CPU per ms; 5 to 250 ms. */
static long long cpu_check_in_ms(long long left_ms) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long long in = left_ms / (cpus > 0 ? cpus : 1);
  return in < 5 ? 5 : in > 250 ? 250 : in;
}

/* Every process in the workload cgroup, at once (cgroup.kill, Linux 5.14), else one by one
 * until the cgroup is empty: its processes are forking, the agent is not. */
static void kill_workload_cgroup(void) {
  int fd = open(WORK_CGROUP "/cgroup.kill", O_WRONLY | O_CLOEXEC);
  bool done = fd >= 0 && write(fd, "1", 1) == 1;
  if (fd >= 0) close(fd);
  for (int round = 0; !done && round < 100; round++) {
    static char b[65536];
    fd = open(WORK_CGROUP "/cgroup.procs", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) break;
    b[n] = 0;
    for (char *t = strtok(b, "\n"); t; t = strtok(NULL, "\n")) kill(atoi(t), SIGKILL);
  }
}

/* The CPU time limit, checked on the agent's own clock: at the limit the whole workload
 * cgroup is killed, sessions end as SIGKILL, and their X frames say why. */
static void watch_cpu(void) {
  if (!cfg.cpu_ms || !cfg.cgroup || cpu_killed || now_ms() < next_cpu_check) return;
  long long used = cgroup_cpu_ms();
  if (used >= cfg.cpu_ms) {
    cpu_killed = true;
    kill_workload_cgroup();
    return;
  }
  next_cpu_check = now_ms() + cpu_check_in_ms(cfg.cpu_ms - (used < 0 ? 0 : used));
}

static struct session *session_by_id(unsigned id) {
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i].used && sessions[i].id == id) return &sessions[i];
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static bool write_file(const char *path, const char *fmt, ...) {
  char b[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b, sizeof b, fmt, ap);
  va_end(ap);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  bool ok = fd >= 0 && write(fd, b, n) == n;
  int e = errno;
  if (fd >= 0) close(fd);
  errno = e;
  return ok;
}

static _Noreturn void child_fail(int code, const char *what, const char *arg, int err) {
  dprintf(2, "hbx-agent: %s %s: %s\n", what, arg, strerror(err));
  _exit(code);
}

static int mkdir_p(const char *path, mode_t mode) {
  char p[4096];
  if (strlen(path) >= sizeof p) return errno = ENAMETOOLONG, -1;
  strcpy(p, path);
  for (char *s = p + 1;; s++) {
    if (*s == '/' || !*s) {
      char c = *s;
      *s = 0;
      if (mkdir(p, mode) && errno != EEXIST) return -1;
      *s = c;
      if (!c) return 0;
    }
  }
}

static void try_exec(const char *path, char **argv, char **envp) {
  execve(path, argv, envp);
  if (errno != ENOEXEC) return;
  /* A script without #!: run it with the shell, as execvp(3) does. */
  int argc = 0;
  while (argv[argc]) argc++;
  char **sh = calloc(argc + 2, sizeof *sh);
  if (sh) {
    sh[0] = "sh";
    sh[1] = (char *)path;
    memcpy(sh + 2, argv + 1, argc * sizeof *sh);
    execve("/bin/sh", sh, envp);
  }
  errno = ENOEXEC;
}

/* execvpe(3) with the PATH of the session's environment, not the agent's. */
static _Noreturn void exec_search(char **argv, char **envp) {
  const char *file = argv[0], *path = DEFAULT_PATH;
  if (!*file) child_fail(127, "exec", "\"\"", ENOENT);
  if (strchr(file, '/')) {
    try_exec(file, argv, envp);
    child_fail(errno == ENOENT || errno == ENOTDIR ? 127 : 126, "exec", file, errno);
  }
  for (char **e = envp; *e; e++)
    if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
  int err = ENOENT;
  bool denied = false;
  for (const char *d = path;; d++) {
    const char *end = strchrnul(d, ':');
    int dl = end - d;
    char full[4096];
    if (snprintf(full, sizeof full, "%.*s/%s", dl ? dl : 1, dl ? d : ".", file) < (int)sizeof full) {
      try_exec(full, argv, envp);
      if (errno == EACCES) denied = true;
      else if (errno != ENOENT && errno != ENOTDIR) {
        err = errno;
        break;
      }
    }
    if (!*end) break;
    d = end;
  }
  if (err == ENOENT && denied) err = EACCES;
  child_fail(err == ENOENT ? 127 : 126, "exec", file, err);
}

/* ---- the untrusted seccomp filter ---------------------------------------------------- */

/*
 * What src/runtimes/container/seccomp.ts adds for untrusted containers, for a guest kernel
 * that has these interfaces (a distro kernel does; hybridbox's own has none of them): no
 * io_uring, no kernel keyrings, no vsock sockets (the family answers EAFNOSUPPORT, as on a
 * kernel without it). i386 calls are checked by their own numbers; its socketcall(2) hides
 * the family in memory, so its socket(2) call is refused for every family, as libseccomp
 * does for the container profile. x32 calls share the x86_64 numbers (plus bit 30).
 */
/* The kernel's ABI (linux/filter.h, linux/seccomp.h, linux/audit.h), which musl's headers do
 * not carry. */
struct sock_filter {
  unsigned short code;
  unsigned char jt, jf;
  unsigned int k;
};
struct sock_fprog {
  unsigned short len;
  struct sock_filter *filter;
};
struct seccomp_data {
  int nr;
  unsigned int arch;
  unsigned long long instruction_pointer, args[6];
};
#define BPF_LD 0x00
#define BPF_W 0x00
#define BPF_ABS 0x20
#define BPF_ALU 0x04
#define BPF_AND 0x50
#define BPF_JMP 0x05
#define BPF_JEQ 0x10
#define BPF_K 0x00
#define BPF_RET 0x06
#define BPF_STMT(code, k) {(unsigned short)(code), 0, 0, k}
#define BPF_JUMP(code, k, jt, jf) {(unsigned short)(code), jt, jf, k}
#define SECCOMP_MODE_FILTER 2
#define SECCOMP_RET_ALLOW 0x7fff0000U
#define SECCOMP_RET_ERRNO 0x00050000U
#define AUDIT_ARCH_X86_64 0xC000003EU
#define AUDIT_ARCH_I386 0x40000003U

#define FILTER_MAX 64
static struct sock_filter filter[FILTER_MAX];
static unsigned short nfilter;

static void emit(struct sock_filter f) {
  if (nfilter == FILTER_MAX) child_fail(126, "seccomp", "filter too long", E2BIG);
  filter[nfilter++] = f;
}

#define DENY_EPERM (SECCOMP_RET_ERRNO | EPERM)
#define DENY_NOFAMILY (SECCOMP_RET_ERRNO | EAFNOSUPPORT)

/* The block for one ABI: entered with the arch in A; `deny` its numbers; `sock` the call
 * whose first argument is a family (or socketcall's call number) refused when `sock_arg`. */
static void abi_block(unsigned arch, bool x32_mask, const unsigned *deny, int ndeny, const unsigned (*sock)[2], int nsock) {
  unsigned short at = nfilter;
  emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, 0)); /* jf patched below */
  emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
  if (x32_mask) emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~0x40000000u));
  for (int i = 0; i < ndeny; i++) {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny[i], 0, 1));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, DENY_EPERM));
  }
  for (int i = 0; i < nsock; i++) {
    /* nr == sock[i][0] && args[0] == sock[i][1]: refused; nr matched, other argument: allowed. */
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, sock[i][0], 0, 4));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, sock[i][1], 0, 1));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, DENY_NOFAMILY));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  }
  emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  filter[at].jf = (unsigned char)(nfilter - at - 1);
}

static void untrusted_filter(void) {
  /* io_uring_setup/enter/register, add_key, request_key, keyctl */
  static const unsigned x64[] = {425, 426, 427, 248, 249, 250}, i386[] = {425, 426, 427, 286, 287, 288};
  static const unsigned x64_sock[][2] = {{41 /* socket */, 40 /* AF_VSOCK */}};
  static const unsigned i386_sock[][2] = {{359 /* socket */, 40}, {102 /* socketcall */, 1 /* SYS_SOCKET */}};
  nfilter = 0;
  emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
  abi_block(AUDIT_ARCH_X86_64, true, x64, 6, x64_sock, 1);
  abi_block(AUDIT_ARCH_I386, false, i386, 6, i386_sock, 2);
  emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  struct sock_fprog prog = {nfilter, filter};
  /* Without no_new_privs a process that is not root may not install a filter; with it, no
   * set-uid program undoes the user switch either (a container has noNewPrivileges too). */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) child_fail(126, "prctl", "no_new_privs", errno);
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) child_fail(126, "seccomp", "(hbx.untrusted needs a guest kernel with SECCOMP_FILTER)", errno);
}

/* Runs in the forked child: never returns. Errors go to the session's stderr. */
static _Noreturn void child_exec(const struct spec *s, int in, int out, int err) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL); /* the agent's blocked set would survive exec */
  signal(SIGPIPE, SIG_DFL);              /* and so would an ignored SIGPIPE */
  setsid();                              /* own process group: K and shutdown signal it whole */
  if (in < 0) in = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) == 0) in = p[0], close(p[1]);
  }
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
  /* Into the workload's cgroup before anything of the workload runs; and back into the OOM
   * killer's reach, which the agent (and so this fork of it) is kept out of. Joining works
   * even at pids.max (the pids controller never refuses a migration), so an exec still
   * starts next to a fork bomb. */
  if (cfg.cgroup && !write_file(WORK_CGROUP "/cgroup.procs", "0")) child_fail(126, "join cgroup", WORK_CGROUP, errno);
  (void)!write_file("/proc/self/oom_score_adj", "0");
  /* Before setuid: raising a hard limit takes root. soft = hard, so the workload cannot raise it. */
  struct rlimit rl;
  if (cfg.fsize && (rl.rlim_cur = rl.rlim_max = cfg.fsize, setrlimit(RLIMIT_FSIZE, &rl))) child_fail(126, "setrlimit", "RLIMIT_FSIZE", errno);
  if (cfg.nofile && (rl.rlim_cur = rl.rlim_max = cfg.nofile, setrlimit(RLIMIT_NOFILE, &rl))) child_fail(126, "setrlimit", "RLIMIT_NOFILE", errno);
  /* A root session could raise them again (ulimit -f unlimited): without CAP_SYS_RESOURCE in
   * its bounding set, the capabilities it gets at exec lack it, as a container's do. */
  if ((cfg.fsize || cfg.nofile) && prctl(PR_CAPBSET_DROP, 24 /* CAP_SYS_RESOURCE */, 0, 0, 0)) child_fail(126, "prctl", "PR_CAPBSET_DROP", errno);
  const char *root = cfg.test_root ? cfg.test_root : NEWROOT;
  if (chroot(root) || chdir("/")) child_fail(126, "chroot", root, errno);
  if (chdir(s->workdir)) {
    /* As the container backend does: a missing workdir is made, owned by the user. */
    int e = errno;
    if (e != ENOENT || mkdir_p(s->workdir, 0755) || chown(s->workdir, s->uid, s->gid) || chdir(s->workdir))
      child_fail(126, "chdir", s->workdir, e == ENOENT ? errno : e);
  }
  gid_t gid = s->gid;
  if (setgroups(s->ngroups < 0 ? 1 : s->ngroups, s->ngroups < 0 ? &gid : s->groups))
    child_fail(126, "setgroups", "", errno);
  if (setgid(gid)) child_fail(126, "setgid", "", errno);
  if (setuid(s->uid)) child_fail(126, "setuid", "", errno);
  if (cfg.untrusted) untrusted_filter();
  exec_search(s->argv, s->envp);
}

/* Returns NULL when the session runs, else why not (sent back as F). */
static const char *start_session(unsigned id, const unsigned char *p, size_t n) {
  static char why[128];
  struct spec sp;
  if (phase) return "the agent is shutting down";
  if (session_by_id(id)) return "a session with this id is already running";
  struct session *s = NULL;
  for (int i = 0; i < MAX_SESSIONS && !s; i++)
    if (!sessions[i].used) s = &sessions[i];
  if (!s) return "too many sessions at once";
  const char *bad = parse_spec(p, n, &sp);
  if (bad) return snprintf(why, sizeof why, "bad session spec: %s", bad), why;

  int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1};
  if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (sp.in && pipe2(in, O_CLOEXEC))) {
    int e = errno;
    for (int i = 0; i < 2; i++) close_fd(&out[i]), close_fd(&err[i]), close_fd(&in[i]);
    return snprintf(why, sizeof why, "pipe: %s", strerror(e)), why;
  }
  unsigned long long oom = oom_kills();
  pid_t pid = fork();
  if (pid == 0) child_exec(&sp, in[0], out[1], err[1]);
  int e = errno;
  close_fd(&out[1]), close_fd(&err[1]), close_fd(&in[0]);
  if (pid < 0) {
    close_fd(&out[0]), close_fd(&err[0]), close_fd(&in[1]);
    return snprintf(why, sizeof why, "fork: %s", strerror(e)), why;
  }
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  if (in[1] >= 0) fcntl(in[1], F_SETFL, O_NONBLOCK);
  *s = (struct session){.used = true, .id = id, .pid = pid, .out_fd = out[0], .err_fd = err[0],
                        .in_fd = in[1], .oom_before = oom};
  children_left = true;
  return NULL;
}

/* One read from a session pipe into an O/E frame; closes the pipe at EOF. */
static size_t pump(struct session *s, int *fd, char type) {
  ssize_t n = read(*fd, chunk, sizeof chunk);
  if (n > 0) {
    send_frame(type, s->id, chunk, n);
    return n;
  }
  if (n == 0 || (errno != EAGAIN && errno != EINTR)) close_fd(fd);
  return 0;
}

static void feed_stdin(struct session *s) {
  while (s->inq.len && s->in_fd >= 0) {
    ssize_t n = write(s->in_fd, s->inq.p + s->inq.off, s->inq.len);
    if (n > 0) buf_consume(&s->inq, n);
    else if (n < 0 && errno == EINTR) continue;
    else if (n < 0 && errno == EAGAIN) return;
    else close_fd(&s->in_fd); /* the process closed its stdin: the rest has no reader */
  }
  if (!s->inq.len && s->close_in) close_fd(&s->in_fd);
}

static void finish_session(struct session *s, int status) {
  for (size_t got = 0; s->out_fd >= 0 && got < DRAIN_MAX;) {
    size_t n = pump(s, &s->out_fd, 'O');
    if (!n) break;
    got += n;
  }
  for (size_t got = 0; s->err_fd >= 0 && got < DRAIN_MAX;) {
    size_t n = pump(s, &s->err_fd, 'E');
    if (!n) break;
    got += n;
  }
  char x[360], sig[32] = "null";
  bool killed = WIFSIGNALED(status);
  if (killed) {
    int n = WTERMSIG(status);
    if (n > 0 && n < 32) snprintf(sig, sizeof sig, "\"%s\"", signames[n]);
    else snprintf(sig, sizeof sig, "\"SIG%d\"", n);
  }
  /* The OOM killer always uses SIGKILL; a rising global counter is the only trace it
   * leaves that this process can see. Concurrent sessions make it approximate. */
  bool oom = killed && WTERMSIG(status) == SIGKILL && oom_kills() > s->oom_before;
  char code[16] = "null", usage[160] = "";
  if (WIFEXITED(status)) snprintf(code, sizeof code, "%d", WEXITSTATUS(status));
  else oom = oom && !cpu_killed; /* our own cgroup.kill is not the OOM killer */
  if (cfg.cgroup) {
    /* The whole workload cgroup's counters so far, as a container's cgroup reports them. */
    long long cpu = cgroup_cpu_ms(), peak = read_number(WORK_CGROUP "/memory.peak");
    char c[24] = "null", m[24] = "null";
    if (cpu >= 0) snprintf(c, sizeof c, "%lld", cpu);
    if (peak >= 0) snprintf(m, sizeof m, "%lld", peak);
    snprintf(usage, sizeof usage, ",\"cpuTimeMs\":%s,\"peakMemoryBytes\":%s", c, m);
  }
  int n = snprintf(x, sizeof x, "{\"exitCode\":%s,\"signal\":%s,\"oomKilled\":%s,\"cpuTimeLimitExceeded\":%s%s}", code,
                   killed ? sig : "null", oom ? "true" : "false", cpu_killed ? "true" : "false", usage);
  send_frame('X', s->id, x, n);
  bool main_done = s->id == 0;
  close_fd(&s->out_fd), close_fd(&s->err_fd), close_fd(&s->in_fd);
  buf_free(&s->inq);
  memset(s, 0, sizeof *s);
  if (main_done) begin_shutdown();
}

static void reap(void) {
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) {
      children_left = pid == 0;
      return;
    }
    for (int i = 0; i < MAX_SESSIONS; i++)
      if (sessions[i].used && sessions[i].pid == pid) finish_session(&sessions[i], st);
  }
}

static void signal_session(struct session *s, int sig) {
  if (kill(-s->pid, sig) && errno == ESRCH) kill(s->pid, sig); /* before its setsid() */
}

static void signal_all(int sig) {
  /* As PID 1 (of the VM, or of a test PID namespace) kill(-1) reaches every process,
   * including daemons a session left behind; otherwise only our sessions' groups. */
  if (getpid() == 1) kill(-1, sig);
  else
    for (int i = 0; i < MAX_SESSIONS; i++)
      if (sessions[i].used) signal_session(&sessions[i], sig);
}

static void begin_shutdown(void) {
  if (phase) return;
  signal_all(SIGTERM);
  phase = 1;
  phase_deadline = now_ms() + GRACE_MS;
}

static void shutdown_step(void) {
  if (!phase) return;
  long long t = now_ms();
  if (phase == 1 && (!children_left || t >= phase_deadline)) {
    if (children_left) signal_all(SIGKILL);
    phase = 2;
    phase_deadline = t + REAP_MS;
  }
  if (phase == 2 && (!children_left || t >= phase_deadline)) {
    phase = 3;
    phase_deadline = t + FLUSH_MS;
  }
  if (phase == 3 && (!outq.len || port_dead || t >= phase_deadline)) power_off(0);
}

static void handle_frame(char type, unsigned id, const unsigned char *p, size_t n) {
  struct session *s = session_by_id(id);
  heard_host = true;
  switch (type) {
  case 'S': {
    const char *why = start_session(id, p, n);
    if (why) send_fail(id, "S", "%s", why);
    break;
  }
  case 'I':
    /* Data for a session that is gone or has no stdin pipe has no reader: dropped. */
    if (!s || s->in_fd < 0 || s->close_in || !n) break;
    if (s->inq.len + n > STDIN_MAX || !buf_add(&s->inq, p, n)) {
      send_fail(id, "I", "stdin of session %u: more than %d bytes waiting, data dropped", id, STDIN_MAX);
      break;
    }
    feed_stdin(s);
    break;
  case 'C':
    if (s) {
      s->close_in = true;
      feed_stdin(s);
    }
    break;
  case 'K': {
    struct jp j = {(const char *)p, (const char *)p + n, 0};
    long long num = 0;
    int sig = 0;
    if (jlit(&j, '{') && !jlit(&j, '}')) {
      for (;;) {
        char *k = jstr(&j);
        if (!k || !jlit(&j, ':')) break;
        if (!strcmp(k, "signal")) {
          char *v = jstr(&j);
          if (v) sig = signal_number(v);
          else if (jint(&j, &num) && num > 0 && num < 65) sig = num;
          break;
        }
        if (!jskip(&j, 0) || !jlit(&j, ',')) break;
      }
    }
    if (!sig) send_fail(id, "K", "bad signal in K frame (expected {\"signal\": \"SIGTERM\"})");
    else if (s) signal_session(s, sig); /* a session that already ended: nothing to do */
    break;
  }
  case 'Q':
    begin_shutdown();
    break;
  default: {
    char req[2] = {type, 0};
    send_fail(id, req, "unknown frame type '%c'", type);
  }
  }
}

/* Frames from the host. Anything that is not a valid header is line noise (bytes that the
 * tty echoed or mangled before raw mode): skip to the next magic. */
static void parse_input(void) {
  size_t i = 0;
  while (inlen - i >= 2) {
    unsigned char *h = inbuf + i;
    if (h[0] != 'H' || h[1] != 'B') {
      i++;
      continue;
    }
    if (inlen - i < HDR) break;
    size_t len = (size_t)h[6] << 24 | h[7] << 16 | h[8] << 8 | h[9];
    if (h[3] != 0 || h[2] < 'A' || h[2] > 'Z' || len > MAX_PAYLOAD) {
      i++;
      continue;
    }
    if (inlen - i < HDR + len) break;
    handle_frame(h[2], h[4] << 8 | h[5], h + HDR, len);
    i += HDR + len;
  }
  if (inlen - i == 1 && inbuf[i] != 'H') i++;
  memmove(inbuf, inbuf + i, inlen - i);
  inlen -= i;
}

static void read_port(void) {
  for (;;) {
    ssize_t n = read(port_fd, inbuf + inlen, sizeof inbuf - inlen);
    if (n > 0) {
      inlen += n;
      parse_input();
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (n < 0 && errno == EAGAIN) return;
      if (!port_is_socket) {
        port_away_until = now_ms() + 100;
      } else {
        /* Test mode's host closed its socket: nobody is left to serve. */
        port_dead = true;
        buf_free(&outq);
        begin_shutdown();
      }
      return;
    }
  }
}

static void send_ready(void) {
  struct utsname u;
  char esc[200], out[300];
  uname(&u);
  json_str(esc, sizeof esc, u.release);
  int n = snprintf(out, sizeof out, "{\"kernel\":%s,\"uptimeMs\":%lld,\"initMs\":%lld}", esc, uptime_ms(), init_ms);
  send_frame('R', 0, out, n);
}

static void serve(void) {
  struct pollfd fds[2 + 3 * MAX_SESSIONS];
  struct {
    struct session *s;
    char kind;
  } tag[2 + 3 * MAX_SESSIONS];
  long long next_ready = now_ms() + READY_REPEAT_MS;
  oom_kills(); /* picks the counter now, so that only later kills count */
  send_ready();
  for (;;) {
    int nf = 0;
    fds[nf] = (struct pollfd){sig_fd, POLLIN, 0};
    tag[nf++].kind = 'g';
    long long t = now_ms(), wake = -1;
    if (!port_dead && t >= port_away_until) {
      short ev = POLLIN | (outq.len ? POLLOUT : 0);
      fds[nf] = (struct pollfd){port_fd, ev, 0};
      tag[nf++].kind = 'p';
    }
    for (int i = 0; i < MAX_SESSIONS; i++) {
      struct session *s = &sessions[i];
      if (!s->used) continue;
      if (outq.len < OUTQ_HIGH || port_dead) {
        if (s->out_fd >= 0) fds[nf] = (struct pollfd){s->out_fd, POLLIN, 0}, tag[nf].s = s, tag[nf++].kind = 'O';
        if (s->err_fd >= 0) fds[nf] = (struct pollfd){s->err_fd, POLLIN, 0}, tag[nf].s = s, tag[nf++].kind = 'E';
      }
      if (s->in_fd >= 0 && s->inq.len) fds[nf] = (struct pollfd){s->in_fd, POLLOUT, 0}, tag[nf].s = s, tag[nf++].kind = 'I';
    }
    if (!port_dead && t < port_away_until) wake = port_away_until;
    /* QEMU drops what the guest writes while no host is connected to the socket: repeat
     * R until the host has said something, so a late host still hears it. */
    if (!heard_host && !phase && (wake < 0 || next_ready < wake)) wake = next_ready;
    if (phase) wake = wake < 0 || phase_deadline < wake ? phase_deadline : wake;
    if (cfg.cpu_ms && cfg.cgroup && !cpu_killed) wake = wake < 0 || next_cpu_check < wake ? next_cpu_check : wake;
    int timeout = wake < 0 ? -1 : wake <= t ? 0 : (int)(wake - t);
    int r = poll(fds, nf, timeout);
    if (r < 0 && errno != EINTR) fail("poll", "%s", strerror(errno));
    for (int i = 0; r > 0 && i < nf; i++) {
      short re = fds[i].revents;
      if (!re) continue;
      struct session *s = tag[i].s;
      switch (tag[i].kind) {
      case 'g': {
        struct signalfd_siginfo si;
        while (read(sig_fd, &si, sizeof si) == sizeof si)
          if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) begin_shutdown();
        break;
      }
      case 'p':
        if (re & POLLOUT) flush_port();
        if (re & (POLLIN | POLLHUP | POLLERR)) read_port();
        break;
      /* A session's fds can be closed by an earlier entry of this same round. */
      case 'O':
        if (s->used && s->out_fd == fds[i].fd) pump(s, &s->out_fd, 'O');
        break;
      case 'E':
        if (s->used && s->err_fd == fds[i].fd) pump(s, &s->err_fd, 'E');
        break;
      case 'I':
        if (s->used && s->in_fd == fds[i].fd) {
          if (re & (POLLERR | POLLHUP)) close_fd(&s->in_fd);
          else feed_stdin(s);
        }
        break;
      }
    }
    watch_cpu();
    /* Reaping after the pipes were read keeps a session's last output ahead of its X. */
    reap();
    if (!heard_host && !phase && now_ms() >= next_ready) {
      if (!outq.len) send_ready(); /* a host that is not there yet needs just one queued */
      next_ready = now_ms() + READY_REPEAT_MS;
    }
    shutdown_step();
  }
}

/* ---- the agent port ----------------------------------------------------------------- */

static void make_raw(int fd) {
  struct termios t;
  if (tcgetattr(fd, &t)) return; /* not a tty (a socket in test mode) */
  cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  t.c_cflag &= ~(CRTSCTS | HUPCL);
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  /* 115200 is the highest rate an 8250 with its standard clock can be set to: asking for
   * more makes the kernel keep the old (9600) rate. Under QEMU it shortens the receive
   * FIFO timeout, which is what the rate still governs there. */
  cfsetispeed(&t, B115200);
  cfsetospeed(&t, B115200);
  if (tcsetattr(fd, TCSANOW, &t)) fail("agent port", "tcsetattr: %s", strerror(errno));
  tcflush(fd, TCIFLUSH); /* what arrived in cooked mode was echoed and is noise */
}

/* The /dev node of the virtio-serial port called `name`: port numbers depend on how the
 * VM was described (QEMU, libvirt), names do not. No udev here to make the usual
 * /dev/virtio-ports/NAME link, so look in sysfs; the port appears when its driver has
 * probed, which a module just loaded may not have done yet. */
static void find_named_port(const char *name, char *dev, size_t cap) {
  long long deadline = now_ms() + DEVICE_WAIT_MS;
  for (;;) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      char p[300], got[128];
      if (e->d_name[0] == '.') continue;
      snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
      int fd = open(p, O_RDONLY | O_CLOEXEC);
      ssize_t n = fd < 0 ? -1 : read(fd, got, sizeof got - 1);
      if (fd >= 0) close(fd);
      if (n <= 0) continue;
      got[n] = 0;
      got[strcspn(got, "\n")] = 0;
      if (strcmp(got, name)) continue;
      snprintf(dev, cap, "/dev/%s", e->d_name);
      closedir(d);
      return;
    }
    if (d) closedir(d);
    if (now_ms() > deadline) fail("agent port", "no virtio-serial port named %s", name);
    sleep_ms(10);
  }
}

static void open_port(const char *path, bool listen_if_not_tty) {
  struct stat st;
  if (!listen_if_not_tty || (stat(path, &st) == 0 && S_ISCHR(st.st_mode))) {
    port_fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (port_fd < 0) fail("open agent port", "%s: %s", path, strerror(errno));
    make_raw(port_fd);
    return;
  }
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) fail("agent port", "%s: path too long", path);
  strcpy(a.sun_path, path);
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path);
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1))
    fail("agent port", "listen on %s: %s", path, strerror(errno));
  struct pollfd p = {l, POLLIN, 0};
  int r = poll(&p, 1, ACCEPT_WAIT_MS);
  if (r <= 0) fail("agent port", "no host connected to %s within %d s", path, ACCEPT_WAIT_MS / 1000);
  port_fd = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  port_is_socket = true;
  if (port_fd < 0) fail("agent port", "accept: %s", strerror(errno));
  close(l);
  unlink(path);
}

/* ---- VM setup --------------------------------------------------------------------- */

static void xmkdir(const char *path, mode_t mode) {
  if (mkdir_p(path, mode)) fail("mkdir", "%s: %s", path, strerror(errno));
}

static void xmount(const char *src, const char *tgt, const char *type, unsigned long fl, const char *data) {
  if (mount(src, tgt, type, fl, data)) fail("mount", "%s on %s (%s): %s", src, tgt, type, strerror(errno));
}

/* Devices probed by a module we just loaded (or asynchronously at boot) appear a little
 * later: wait for them rather than fail the boot. */
static void mount_wait(const char *src, const char *tgt, const char *type, unsigned long fl, const char *data) {
  long long deadline = now_ms() + DEVICE_WAIT_MS;
  while (mount(src, tgt, type, fl, data)) {
    if ((errno != ENOENT && errno != ENXIO) || now_ms() > deadline)
      fail("mount", "%s on %s (%s): %s", src, tgt, type, strerror(errno));
    sleep_ms(10);
  }
}

static bool parse_ipv4(const char *s, struct in_addr *a) { return inet_pton(AF_INET, s, a) == 1; }

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes %XX in place; false for a malformed escape or an encoded NUL. */
static bool pct_decode(char *s) {
  char *o = s;
  for (; *s; s++) {
    if (*s != '%') {
      *o++ = *s;
      continue;
    }
    int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
    if (lo < 0 || (hi == 0 && lo == 0)) return false;
    *o++ = (char)(hi << 4 | lo);
    s += 2;
  }
  *o = 0;
  return true;
}

static void apply_param(char *tok) {
  if (strncmp(tok, "hbx.", 4)) return;
  char *v = strchr(tok, '=');
  if (!v) return;
  *v++ = 0;
  const char *k = tok + 4;
  if (strcmp(k, "vol") && !pct_decode(v)) fail("cmdline", "hbx.%s=%s: a malformed %%-escape", k, v);
  if (!strcmp(k, "ip")) {
    char *slash = strchr(v, '/');
    char *end;
    long pfx = slash ? strtol(slash + 1, &end, 10) : -1;
    if (slash) *slash = 0;
    if (!slash || *end || pfx < 0 || pfx > 32 || !parse_ipv4(v, &cfg.ip))
      fail("cmdline", "hbx.ip=%s: expected A.B.C.D/N", v);
    cfg.mask.s_addr = htonl(pfx ? 0xFFFFFFFFu << (32 - pfx) : 0);
    cfg.have_ip = true;
  } else if (!strcmp(k, "gw")) {
    if (!parse_ipv4(v, &cfg.gw)) fail("cmdline", "hbx.gw=%s: expected A.B.C.D", v);
    cfg.have_gw = true;
  } else if (!strcmp(k, "hostname")) {
    if (!*v || strlen(v) >= sizeof cfg.hostname) fail("cmdline", "hbx.hostname: 1 to 64 characters");
    strcpy(cfg.hostname, v);
  } else if (!strcmp(k, "root") || !strcmp(k, "agent")) {
    char *dst = k[0] == 'r' ? cfg.root_dev : cfg.agent_dev;
    /* hbx.agent may also be a virtio-serial port's name (virtserialport name=...). */
    if ((k[0] == 'r' && v[0] != '/') || !*v || strlen(v) >= sizeof cfg.root_dev)
      fail("cmdline", "hbx.%s=%s: expected a /dev path%s", k, v, k[0] == 'r' ? "" : " or a virtio-serial port name");
    strcpy(dst, v);
  } else if (!strcmp(k, "modules")) {
    cfg.modules = !strcmp(v, "1");
  } else if (!strcmp(k, "rootrw")) {
    cfg.root_rw = !strcmp(v, "1");
  } else if (!strcmp(k, "rootro")) {
    cfg.root_ro = !strcmp(v, "1");
  } else if (!strcmp(k, "untrusted")) {
    cfg.untrusted = !strcmp(v, "1");
  } else if (!strcmp(k, "vol")) {
    if (cfg.nvols == MAX_VOLS) fail("cmdline", "more than %d hbx.vol", MAX_VOLS);
    struct vol *vo = &cfg.vols[cfg.nvols++];
    char *path = strchr(v, ':');
    size_t len;
    if (!path || path == v) fail("cmdline", "hbx.vol=%s: expected TAG:/guest/path:ro|rw", v);
    *path++ = 0;
    len = strlen(path);
    if (len > 3 && (!strcmp(path + len - 3, ":ro") || !strcmp(path + len - 3, ":rw"))) {
      vo->ro = path[len - 1] == 'o';
      path[len -= 3] = 0;
    }
    if (!pct_decode(v) || !pct_decode(path)) fail("cmdline", "hbx.vol=%s:%s: a malformed %%-escape", v, path);
    if (strlen(v) >= sizeof vo->tag) fail("cmdline", "hbx.vol=%s: the tag is too long", v);
    strcpy(vo->tag, v);
    len = strlen(path);
    if (path[0] != '/' || !path[1] || len >= sizeof vo->path || strstr(path, "/../") ||
        (len >= 3 && !strcmp(path + len - 3, "/..")))
      fail("cmdline", "hbx.vol=%s:%s: the guest path must be absolute, not /, without ..", v, path);
    strcpy(vo->path, path);
  } else if (!strcmp(k, "pids") || !strcmp(k, "mem") || !strcmp(k, "cputime") || !strcmp(k, "fsize") || !strcmp(k, "nofile") ||
             !strcmp(k, "tmpfs")) {
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (*end || errno || n < 1) fail("cmdline", "hbx.%s=%s: expected a positive integer", k, v);
    *(!strcmp(k, "pids") ? &cfg.pids_max : !strcmp(k, "mem") ? &cfg.mem_max : !strcmp(k, "cputime") ? &cfg.cpu_ms
      : !strcmp(k, "fsize") ? &cfg.fsize : !strcmp(k, "nofile") ? &cfg.nofile : &cfg.tmpfs_mib) = n;
  } else {
    say("cmdline: ignoring unknown hbx.%s", k);
  }
}

static long long mem_total_bytes(void) {
  char b[256];
  int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
  if (fd >= 0) close(fd);
  if (n <= 0) return 0;
  b[n] = 0;
  char *p = strstr(b, "MemTotal:");
  return p ? strtoll(p + 9, NULL, 10) * 1024 : 0;
}

/*
 * The workload's cgroup (cgroup v2): the spec's pids.max and memory.max, and the agent
 * itself outside it with oom_score_adj -1000, so neither a fork bomb nor a memory bomb can
 * take the agent or its channel down. A guest kernel without cgroup v2 runs the workload
 * unconfined, unless the host asked for a limit: then the VM does not start.
 */
static void setup_cgroup(void) {
  bool asked = cfg.pids_max || cfg.mem_max || cfg.cpu_ms;
  (void)!write_file("/proc/self/oom_score_adj", "-1000");
  if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) {
    if (asked) fail("cgroup", "cgroup2 on /sys/fs/cgroup: %s (the spec's pids/memory/CPU time limits need it)", strerror(errno));
    say("cgroup: no cgroup2 (%s): the workload runs without a guest cgroup", strerror(errno));
    return;
  }
  if (!write_file("/sys/fs/cgroup/cgroup.subtree_control", "+pids +memory")) fail("cgroup", "enable pids and memory: %s", strerror(errno));
  if (mkdir(WORK_CGROUP, 0755) && errno != EEXIST) fail("cgroup", "mkdir %s: %s", WORK_CGROUP, strerror(errno));
  if (cfg.pids_max && !write_file(WORK_CGROUP "/pids.max", "%lld", cfg.pids_max)) fail("cgroup", "pids.max: %s", strerror(errno));
  long long mem = cfg.mem_max ? cfg.mem_max : mem_total_bytes() - AGENT_HEADROOM_BYTES;
  if (mem > 0 && !write_file(WORK_CGROUP "/memory.max", "%lld", mem)) fail("cgroup", "memory.max: %s", strerror(errno));
  (void)!write_file(WORK_CGROUP "/memory.swap.max", "0");
  /* No memory.oom.group: as in a container, the OOM killer takes the largest process of the
   * cgroup, and the rest of the workload (a parent that reports, an exec session) lives on. */
  cfg.cgroup = true;
}

static void parse_cmdline(void) {
  static char cmd[4096];
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, cmd, sizeof cmd - 1);
  if (n < 0) fail("read /proc/cmdline", "%s", strerror(errno));
  close(fd);
  cmd[n] = 0;
  for (char *p = cmd; *p;) {
    static char tok[sizeof cmd];
    size_t o = 0;
    bool q = false;
    while (*p == ' ' || *p == '\n' || *p == '\t') p++;
    for (; *p && (q || (*p != ' ' && *p != '\n' && *p != '\t')); p++) {
      if (*p == '"') q = !q;
      else tok[o++] = *p;
    }
    tok[o] = 0;
    if (o) apply_param(tok);
  }
}

/* A stock distro kernel builds virtio, ext4 and 9p as modules. modules.order is meant
 * to list dependencies first; a few extra passes cover a list that does not. */
static void load_modules(void) {
  int fd = open("/lib/modules/modules.order", O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) fail("modules", "/lib/modules/modules.order: %s", strerror(errno));
  char *text = calloc(1, st.st_size + 1);
  if (!text || read(fd, text, st.st_size) != st.st_size) fail("modules", "read modules.order: %s", strerror(errno));
  close(fd);
  size_t count = 0;
  for (char *c = text; *c; c++) count += *c == '\n';
  char **mods = calloc(count + 1, sizeof *mods);
  int *err = calloc(count + 1, sizeof *err);
  if (!mods || !err) fail("modules", "out of memory");
  size_t m = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    while (*line == '/') line++;
    if (*line && *line != '#') mods[m++] = line;
  }
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t i = 0; i < m; i++) {
      if (!mods[i]) continue;
      char path[512];
      snprintf(path, sizeof path, "/lib/modules/%s", mods[i]);
      size_t len = strlen(path);
      int flags = (len > 3 && !strcmp(path + len - 3, ".xz")) || (len > 3 && !strcmp(path + len - 3, ".gz")) ||
                          (len > 4 && !strcmp(path + len - 4, ".zst"))
                      ? MODULE_INIT_COMPRESSED_FILE
                      : 0;
      int mfd = open(path, O_RDONLY | O_CLOEXEC);
      if (mfd >= 0 && (syscall(SYS_finit_module, mfd, "", flags) == 0 || errno == EEXIST)) {
        mods[i] = NULL;
        progress = true;
      } else {
        err[i] = errno;
      }
      if (mfd >= 0) close(mfd);
    }
  }
  /* Not fatal: the step that needs a missing driver fails with a clearer message. */
  for (size_t i = 0; i < m; i++)
    if (mods[i]) say("module %s: %s", mods[i], strerror(err[i]));
  free(mods), free(err), free(text);
}

static void root_path(char *out, size_t cap, const char *sub) {
  if ((size_t)snprintf(out, cap, NEWROOT "%s", sub) >= cap) fail("path", "%s: too long", sub);
}

static void write_root_file(const char *sub, const char *text) {
  char p[512];
  root_path(p, sizeof p, sub);
  /* O_NOFOLLOW: the image's own symlink must not make PID 1 write outside its root. */
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, text, strlen(text)) < 0) say("write %s: %s", sub, strerror(errno));
  if (fd >= 0) close(fd);
}

/* The private /tmp and /dev/shm: hbx.tmpfs's size, else tmpfs's own default (half the RAM). */
static const char *tmpfs_options(void) {
  static char o[64];
  if (cfg.tmpfs_mib) snprintf(o, sizeof o, "mode=1777,size=%lldm", cfg.tmpfs_mib);
  else snprintf(o, sizeof o, "mode=1777");
  return o;
}

static void setup_dev(void) {
  char dev[256], p[300];
  root_path(dev, sizeof dev, "/dev");
  xmkdir(dev, 0755);
  if (mount("devtmpfs", dev, "devtmpfs", MS_NOSUID, "mode=0755")) {
    /* A kernel without devtmpfs: a tmpfs with the nodes programs expect. */
    xmount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755");
    static const struct {
      const char *name;
      int maj, min;
    } nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
    for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
      snprintf(p, sizeof p, "%s/%s", dev, nodes[i].name);
      if (mknod(p, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) || chmod(p, 0666))
        fail("mknod", "%s: %s", p, strerror(errno));
    }
    snprintf(p, sizeof p, "%s/ptmx", dev);
    if (symlink("pts/ptmx", p)) say("symlink %s: %s", p, strerror(errno));
  }
  static const char *const links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
                                         {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}};
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", dev, links[i][1]);
    if (symlink(links[i][0], p) && errno != EEXIST) say("symlink %s: %s", p, strerror(errno));
  }
  /* Terminals and POSIX shared memory: wanted by many programs, but not worth a failed boot. */
  snprintf(p, sizeof p, "%s/pts", dev);
  if (mkdir_p(p, 0755) || mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"))
    say("mount devpts: %s", strerror(errno));
  snprintf(p, sizeof p, "%s/shm", dev);
  if (mkdir_p(p, 0755) || mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options()))
    say("mount /dev/shm: %s", strerror(errno));
}

static void setup_root(void) {
  char p[sizeof NEWROOT + sizeof cfg.vols[0].path];
  xmkdir(NEWROOT, 0755);
  if (cfg.root_rw) {
    /* hbx.rootrw=1: the disk is this VM's own copy-on-write overlay of the image (qcow2 on
       the host), so it is the sandbox's writable layer and is mounted as the root directly. */
    mount_wait(cfg.root_dev, NEWROOT, "ext4", 0, NULL);
  } else {
    /* A shared read-only disk: writes go to a tmpfs overlay and vanish with the guest. */
    xmkdir("/run/hbx/lower", 0755);
    xmkdir("/run/hbx/rw", 0755);
    mount_wait(cfg.root_dev, "/run/hbx/lower", "ext4", MS_RDONLY, NULL);
    xmount("tmpfs", "/run/hbx/rw", "tmpfs", 0, "mode=0755");
    xmkdir("/run/hbx/rw/upper", 0755);
    xmkdir("/run/hbx/rw/work", 0755);
    xmount("overlay", NEWROOT, "overlay", 0,
           "lowerdir=/run/hbx/lower,upperdir=/run/hbx/rw/upper,workdir=/run/hbx/rw/work");
  }
  root_path(p, sizeof p, "/proc");
  xmkdir(p, 0555);
  xmount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  root_path(p, sizeof p, "/sys");
  xmkdir(p, 0555);
  xmount("sysfs", p, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  if (cfg.cgroup) {
    /* The workload reads its own limits where a container would; read-only, though a root
     * workload owns the guest and could remount it: the VM's edge is where isolation holds. */
    root_path(p, sizeof p, "/sys/fs/cgroup");
    xmount("/sys/fs/cgroup", p, NULL, MS_BIND, NULL);
    xmount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  }
  setup_dev();
  root_path(p, sizeof p, "/tmp");
  xmkdir(p, 01777);
  xmount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options());
  for (int i = 0; i < cfg.nvols; i++) {
    struct vol *v = &cfg.vols[i];
    root_path(p, sizeof p, v->path);
    xmkdir(p, 0755);
    mount_wait(v->tag, p, "9p", v->ro ? MS_RDONLY : 0, "trans=virtio,version=9p2000.L,msize=262144");
  }
}

static void if_up(int sock, const char *name) {
  struct ifreq r = {0};
  strncpy(r.ifr_name, name, IFNAMSIZ - 1);
  long long deadline = now_ms() + DEVICE_WAIT_MS;
  while (ioctl(sock, SIOCGIFFLAGS, &r)) {
    if (errno != ENODEV || now_ms() > deadline) fail("network", "%s: %s", name, strerror(errno));
    sleep_ms(10);
  }
  r.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(sock, SIOCSIFFLAGS, &r)) fail("network", "bring %s up: %s", name, strerror(errno));
}

static void setup_network(void) {
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) fail("network", "socket: %s", strerror(errno));
  if_up(sock, "lo"); /* the kernel gives lo 127.0.0.1/8 when it comes up */
  if (cfg.have_ip) {
    struct ifreq r = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.ifr_addr;
    strcpy(r.ifr_name, "eth0");
    if_up(sock, "eth0");
    sin->sin_family = AF_INET;
    sin->sin_addr = cfg.ip;
    if (ioctl(sock, SIOCSIFADDR, &r)) fail("network", "eth0 address: %s", strerror(errno));
    sin->sin_addr = cfg.mask;
    if (ioctl(sock, SIOCSIFNETMASK, &r)) fail("network", "eth0 netmask: %s", strerror(errno));
    if (cfg.have_gw) {
      struct rtentry rt = {0};
      struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
      ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
      ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
      gw->sin_family = AF_INET;
      gw->sin_addr = cfg.gw;
      rt.rt_flags = RTF_UP | RTF_GATEWAY;
      rt.rt_dev = "eth0";
      if (ioctl(sock, SIOCADDRT, &rt)) fail("network", "default route via eth0: %s", strerror(errno));
    }
  }
  close(sock);
}

static void setup_hostname(void) {
  char hosts[256], ip[INET_ADDRSTRLEN] = "127.0.1.1", st[512];
  struct stat s;
  if (!cfg.hostname[0]) return;
  if (sethostname(cfg.hostname, strlen(cfg.hostname))) fail("sethostname", "%s", strerror(errno));
  root_path(st, sizeof st, "/etc");
  if (lstat(st, &s) || !S_ISDIR(s.st_mode)) return;
  if (cfg.have_ip) inet_ntop(AF_INET, &cfg.ip, ip, sizeof ip);
  snprintf(hosts, sizeof hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", ip,
           cfg.hostname);
  write_root_file("/etc/hosts", hosts);
  snprintf(hosts, sizeof hosts, "%s\n", cfg.hostname);
  write_root_file("/etc/hostname", hosts);
}

static void setup_vm(void) {
  mkdir("/dev", 0755);
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") && errno != EBUSY) {
    int e = errno;
    say("mount /dev: %s", strerror(e)); /* may print nowhere yet: try anyway */
    fail("mount", "devtmpfs on /dev: %s", strerror(e));
  }
  /* Without /dev/console in the initramfs the kernel starts us with no fds 0-2. */
  for (int fd = 0; fd < 3; fd++) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int c = open("/dev/console", O_RDWR | O_NOCTTY);
    if (c >= 0 && c != fd) dup2(c, fd), close(c);
  }
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  xmount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  xmount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  parse_cmdline();
  if (cfg.modules) load_modules();
  /* Opened before the remaining steps so that their failures reach the host as F. */
  char dev[300];
  if (cfg.agent_dev[0] == '/') snprintf(dev, sizeof dev, "%s", cfg.agent_dev);
  else find_named_port(cfg.agent_dev, dev, sizeof dev);
  open_port(dev, false);
  setup_cgroup();
  setup_root();
  setup_network();
  setup_hostname();
  /* Last, so that the agent's own writes (mount points, /etc/hosts) are done: from here on
   * nothing of the workload's lands on the disk. Superblock-wide, so no other path writes. */
  if (cfg.root_ro && mount(cfg.root_dev, NEWROOT, "ext4", MS_REMOUNT | MS_RDONLY, NULL))
    fail("mount", "remount %s read-only: %s", NEWROOT, strerror(errno));
}

int main(void) {
  init_ms = uptime_ms();
  cfg.test_root = getenv("HBX_AGENT_TEST_ROOT");
  cfg.port_path = getenv("HBX_AGENT_PORT");
  if (!cfg.test_root && getpid() != 1) {
    /* Everything below (mounts over /dev, kill(-1), reboot) is for a VM's init only. */
    say("not PID 1: refusing to run outside a VM (test mode: HBX_AGENT_TEST_ROOT and HBX_AGENT_PORT)");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, NULL);
  sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0) fail("signalfd", "%s", strerror(errno));
  if (cfg.test_root) {
    if (!cfg.port_path) fail("test mode", "HBX_AGENT_PORT is not set");
    /* Outside a PID namespace, orphans of our sessions still come back to be reaped. */
    if (getpid() != 1) prctl(PR_SET_CHILD_SUBREAPER, 1);
    open_port(cfg.port_path, true);
  } else {
    setup_vm();
  }
  serve();
  return 0;
}

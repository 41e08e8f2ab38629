#!/usr/bin/env bash
# A real, signature-checking S3 server for tests: a single-node OpenStack Swift (Debian
# packages) with its s3api middleware, bound to 127.0.0.1 only, everything under one
# state directory.
#
#   swift-s3.sh install        Debian packages (root; a fast no-op when installed)
#   swift-s3.sh start [DIR]    start (or find running) and print, one per line:
#                                AWS_ENDPOINT_URL=http://127.0.0.1:PORT
#                                AWS_ACCESS_KEY_ID=...   AWS_SECRET_ACCESS_KEY=...
#                                AWS_REGION=us-east-1    HBX_S3_BUCKET=...
#   swift-s3.sh status [DIR]   print the same lines and exit 0 if it answers, else exit 1
#   swift-s3.sh stop [DIR]     stop exactly the processes start recorded, unmount the
#                              loop-mounted disk if start made one, remove DIR
#
# DIR defaults to /var/tmp/hybridbox-swift. Processes: a log sink (Swift's syslog
# messages go to DIR/log/swift.log), memcached, and the account, container, object and
# proxy servers (one process each, workers = 0). start records each as "PID STARTTIME"
# in DIR/run/*.pid; stop signals a PID only while its start time still matches, so a
# recycled PID is never touched. Ports are picked at random in 20000-32767 and noted
# for a while in /run/lock/hybridbox-swift-ports, so that parallel starts differ.
#
# Environment:
#   HBX_SWIFT_OWNER_PID     stop automatically (within ~1 s) once this process is gone
#   HBX_SWIFT_BUCKET        bucket created at start (default hybridbox-test)
#   HBX_SWIFT_START_TIMEOUT seconds to wait for the servers (default 90)
#   HBX_SWIFT_FORCE_LOOP=1  put the storage on a loop-mounted ext4 image even when DIR's
#                           filesystem has user xattrs (normally only used without them)
#   HBX_SWIFT_LOOP_SIZE     size of that image (default 4G, sparse)
#
# Swift reads its hash-path salt and storage policies from /etc/swift/swift.conf (a
# path fixed in Swift); the package installs one. Everything else (rings, configs, data,
# logs) lives under DIR.
set -euo pipefail

PY=/usr/bin/python3
PACKAGES=(swift-proxy swift-object swift-container swift-account memcached)
DEFAULT_DIR=/var/tmp/hybridbox-swift
MARKER=.hybridbox-swift
PORT_CLAIMS=/run/lock/hybridbox-swift-ports
[ "$(id -u)" -eq 0 ] || PORT_CLAIMS=${TMPDIR:-/tmp}/hybridbox-swift-ports.$(id -u)
SCRIPT=$(readlink -f "$0")

log() { echo "swift-s3: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------- install
installed() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  [ -x "$PY" ] && [ -f /usr/lib/python3/dist-packages/swift/common/middleware/s3api/s3api.py ]
}

cmd_install() {
  installed && return 0
  [ "$(id -u)" -eq 0 ] || die "Swift is not installed and installing it needs root"
  log "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' maintainer scripts would start system-wide Swift and memcached
  # services; keep them from doing so when the machine has no policy of its own.
  local policy_made=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  local rc=0
  {
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 ||
      { apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 &&
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
  } || rc=$?
  [ "$policy_made" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || die "apt-get install ${PACKAGES[*]} failed (exit $rc)"
  installed && "$PY" -c 'import swift.common.middleware.s3api.s3api' ||
    die "Swift's s3api middleware is not importable by $PY after install"
}

# ---------------------------------------------------------------------- process records
# starttime (field 22 of /proc/PID/stat), or nothing if PID is gone or a zombie
proc_start() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  local -a f
  read -ra f <<<"$rest"
  [ "${f[0]}" != Z ] || return 0
  echo "${f[19]}"
}

# PID from a pid file, printed only when that very process is still alive
live_pid() {
  local pid start
  [ -f "$1" ] || return 1
  read -r pid start < "$1" || return 1
  [ -n "${pid:-}" ] && [ -n "${start:-}" ] || return 1
  [ "$(proc_start "$pid")" = "$start" ] || return 1
  echo "$pid"
}

record() { # NAME PID
  echo "$2 $(proc_start "$2")" > "$DIR/run/$1.pid"
}

# ------------------------------------------------------------------------- S3 client
# A minimal SigV4-signed request (empty body): s3req METHOD PATH -> prints the status.
s3req() {
  "$PY" - "$1" "$2" "$ENDPOINT" "$ACCESS_KEY" "$SECRET_KEY" "$REGION" <<'EOF'
import sys, hmac, hashlib, datetime, urllib.request, urllib.error, urllib.parse
method, path, endpoint, ak, sk, region = sys.argv[1:7]
host = urllib.parse.urlsplit(endpoint).netloc
now = datetime.datetime.now(datetime.timezone.utc)
amz, day = now.strftime('%Y%m%dT%H%M%SZ'), now.strftime('%Y%m%d')
ph = hashlib.sha256(b'').hexdigest()
signed = 'host;x-amz-content-sha256;x-amz-date'
creq = '\n'.join([method, path, '', 'host:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n' % (host, ph, amz), signed, ph])
scope = '%s/%s/s3/aws4_request' % (day, region)
sts = '\n'.join(['AWS4-HMAC-SHA256', amz, scope, hashlib.sha256(creq.encode()).hexdigest()])
k = ('AWS4' + sk).encode()
for m in (day, region, 's3', 'aws4_request'):
    k = hmac.new(k, m.encode(), hashlib.sha256).digest()
sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(endpoint + path, method=method, data=b'' if method == 'PUT' else None, headers={
    'x-amz-date': amz, 'x-amz-content-sha256': ph,
    'Authorization': 'AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s' % (ak, scope, signed, sig)})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print(0)
EOF
}

load_env() {
  [ -f "$DIR/s3.env" ] || return 1
  ENDPOINT=$(sed -n 's/^AWS_ENDPOINT_URL=//p' "$DIR/s3.env")
  ACCESS_KEY=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$DIR/s3.env")
  SECRET_KEY=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$DIR/s3.env")
  REGION=$(sed -n 's/^AWS_REGION=//p' "$DIR/s3.env")
  [ -n "$ENDPOINT" ] && [ -n "$ACCESS_KEY" ] && [ -n "$SECRET_KEY" ] && [ -n "$REGION" ]
}

healthy() {
  [ -f "$DIR/$MARKER" ] && load_env || return 1
  local n
  for n in logsink memcached account container object proxy; do
    live_pid "$DIR/run/$n.pid" >/dev/null || return 1
  done
  [ "$(s3req GET /)" = 200 ]
}

# Receives the servers' syslog datagrams on a unix socket and appends them to a file.
# With an owner PID, it runs "stop" (exec, keeping its PID) once that process is gone.
LOGSINK='import os, socket, sys, time
path, out, owner, script, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(1.0)
f = open(out, "ab", buffering=0)
checked = 0.0
while True:
    try:
        data = s.recv(65536)
        if data.startswith(b"<"):
            data = data[data.find(b">") + 1:]
        f.write(data.rstrip(b"\0\n") + b"\n")
    except socket.timeout:
        pass
    now = time.monotonic()
    if now - checked < 1.0:
        continue
    checked = now
    if not os.path.isdir(d):
        sys.exit(0)
    if owner:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            s.close()
            f.close()
            os.execv("/bin/bash", ["bash", script, "stop", d])
        except PermissionError:
            pass'

# ------------------------------------------------------------------------------ stop
kill_recorded() {
  local f pid deadline
  local -a pids=()
  # the log sink (which watches the owner) first, so that it cannot race this stop;
  # never this process itself (the sink runs stop in its own process)
  for f in "$DIR/run/logsink.pid" "$DIR"/run/proxy.pid "$DIR"/run/object.pid \
           "$DIR"/run/container.pid "$DIR"/run/account.pid "$DIR"/run/memcached.pid; do
    pid=$(live_pid "$f") || continue
    [ "$pid" != "$$" ] || continue
    kill -TERM "$pid" 2>/dev/null && pids+=("$f")
  done
  deadline=$((SECONDS + 10))
  for f in "${pids[@]}"; do
    while pid=$(live_pid "$f"); do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.1; deadline=$((SECONDS + 5)); continue; fi
      sleep 0.05
    done
  done
}

unmount_disk() {
  local mnt
  [ -f "$DIR/run/mount" ] || return 0
  mnt=$(cat "$DIR/run/mount")
  if mountpoint -q "$mnt" 2>/dev/null; then
    umount "$mnt" || umount -l "$mnt" || die "cannot unmount $mnt"
  fi
  # mount -o loop sets autoclear; detach explicitly in case it did not
  losetup -j "$DIR/disk.img" -O NAME --noheadings 2>/dev/null | while read -r dev; do losetup -d "$dev" 2>/dev/null || true; done
  rm -f "$DIR/run/mount"
}

cmd_stop() {
  [ -d "$DIR" ] || return 0
  if [ ! -f "$DIR/$MARKER" ]; then
    # not made by start: touch nothing, unless it is an empty leftover
    rmdir "$DIR" 2>/dev/null && return 0
    die "$DIR was not made by this script; leaving it alone"
  fi
  kill_recorded
  unmount_disk
  rm -rf "$DIR"
}

# ------------------------------------------------------------------------------ start
pick_ports() { # N -> N free TCP ports on 127.0.0.1 outside the ephemeral range
  # Ports handed out are listed in PORT_CLAIMS (under flock) until the servers have had
  # time to bind them, so that starts running at the same time never pick the same ones.
  "$PY" - "$1" "$PORT_CLAIMS" "$((TIMEOUT + 30))" <<'EOF'
import fcntl, random, socket, sys, time
n, claims_path, hold = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
lo, hi = 20000, 32767
try:
    hi = min(hi, int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0]) - 1)
except Exception:
    pass
with open(claims_path, 'a+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    now, claims = time.time(), {}
    for line in f.read().splitlines():
        try:
            port, until = line.split()
            if float(until) > now:
                claims[int(port)] = until
        except ValueError:
            pass
    got = []
    for port in random.sample(range(lo, hi), 400):
        if port in claims:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(('127.0.0.1', port))
            got.append(port)
        except OSError:
            pass
        finally:
            s.close()
        if len(got) == n:
            break
    if len(got) < n:
        sys.exit('no free ports')
    for port in got:
        claims[port] = '%.0f' % (now + hold)
    f.seek(0)
    f.truncate()
    f.write(''.join('%d %s\n' % kv for kv in sorted(claims.items())))
print(' '.join(map(str, got)))
EOF
}

xattr_ok() {
  "$PY" -c 'import os,sys
p=os.path.join(sys.argv[1],".xattr-probe"); open(p,"w").close()
try: os.setxattr(p,"user.swift.probe",b"1"); ok=os.getxattr(p,"user.swift.probe")==b"1"
except OSError: ok=False
os.unlink(p); sys.exit(0 if ok else 1)' "$1"
}

write_configs() { # MEMCACHED ACCOUNT CONTAINER OBJECT PROXY
  local etc=$DIR/etc user common
  user=$(id -un)
  common="bind_ip = 127.0.0.1
workers = 0
user = $user
swift_dir = $etc
devices = $DIR/srv
mount_check = false
bind_timeout = 5
log_name = %s
log_level = INFO
log_address = $DIR/run/log.sock"
  local name port
  for name in account container object; do
    case $name in account) port=$2 ;; container) port=$3 ;; object) port=$4 ;; esac
    {
      echo "[DEFAULT]"
      echo "${common//%s/$name-server}"
      echo "bind_port = $port"
      echo
      echo "[pipeline:main]"
      echo "pipeline = healthcheck $name-server"
      echo
      echo "[app:$name-server]"
      echo "use = egg:swift#$name"
      echo
      echo "[filter:healthcheck]"
      echo "use = egg:swift#healthcheck"
    } > "$etc/$name-server.conf"
  done
  cat > "$etc/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $5
workers = 0
user = $user
swift_dir = $etc
bind_timeout = 5
log_name = proxy-server
log_level = INFO
log_address = $DIR/run/log.sock

[pipeline:main]
# No proxy-logging: its access logger ignores log_address and would write to the host's
# syslog (or send UDP from a socket bound to all addresses). Backend servers log each
# request, with the same transaction id, to log/swift.log.
pipeline = catch_errors gatekeeper healthcheck cache listing_formats s3api tempauth copy slo dlo versioned_writes proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = $REGION
# as on AWS: up to 10000 parts of at least 5 MiB (except the last)
max_upload_part_num = 10000
min_segment_size = 5242880

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = $SECRET_KEY .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$1

[filter:slo]
use = egg:swift#slo
max_manifest_segments = 10000

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes

[filter:copy]
use = egg:swift#copy

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:listing_formats]
use = egg:swift#listing_formats
EOF
}

build_rings() { # ACCOUNT CONTAINER OBJECT (ports); the same code swift-ring-builder runs,
                # in one process (nine swift-ring-builder calls take ~7 s here)
  "$PY" - "$DIR/etc" "$1" "$2" "$3" <<'EOF'
import os, sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for name, port in zip(('account', 'container', 'object'), sys.argv[2:5]):
    b = RingBuilder(6, 1, 1)  # partition power 6, 1 replica, min_part_hours 1
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port),
               'device': 'd1', 'weight': 100, 'meta': ''})
    b.rebalance()
    b.get_ring().save(os.path.join(etc, name + '.ring.gz'))
EOF
}

wait_ports() { # PORT... ; fails early if a recorded process died
  "$PY" - "$DIR/run" "$TIMEOUT" "$@" <<'EOF'
import os, socket, sys, time
run, timeout, ports = sys.argv[1], float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
deadline = time.time() + timeout
def alive(f):
    try:
        pid, start = open(os.path.join(run, f)).read().split()
        st = open('/proc/%s/stat' % pid).read().rsplit(') ', 1)[1].split()
        return st[0] != 'Z' and st[19] == start
    except Exception:
        return False
while ports:
    for f in os.listdir(run):
        if f.endswith('.pid') and not alive(f):
            sys.exit('%s server exited' % f[:-4])
    p = ports[0]
    try:
        socket.create_connection(('127.0.0.1', p), timeout=1).close()
        ports.pop(0)
        continue
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit('port %d not listening after %ss' % (p, sys.argv[2]))
    time.sleep(0.05)
EOF
}

launch() { # NAME LOGFILE CMD... ; in the background, stdio to the log
  local name=$1 logf=$2
  shift 2
  "$@" </dev/null >>"$logf" 2>&1 &
  record "$name" $!
}

fail_start() {
  local msg=$1 tail=""
  if [ -d "$DIR/log" ]; then
    tail=$(grep -hiE 'error|traceback|exception|denied|could not' "$DIR"/log/*.log 2>/dev/null | tail -n 3 | tr '\n' ' ' || true)
  fi
  cmd_stop >/dev/null 2>&1 || true
  die "start failed: $msg${tail:+ (logs: $tail)}"
}

cmd_start() {
  local t0=$SECONDS
  [ -x "$PY" ] || die "$PY is missing (Swift needs the system python)"
  installed || die "Swift is not installed: run '$0 install' first (as root)"
  [ -f /etc/swift/swift.conf ] || die "/etc/swift/swift.conf is missing (it comes with the swift package)"

  if [ -d "$DIR" ] && [ -f "$DIR/$MARKER" ]; then
    if healthy; then cat "$DIR/s3.env"; return 0; fi
    log "$DIR holds a stopped or broken instance: starting it afresh"
    cmd_stop
  elif [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR exists, is not empty and was not made by this script"
  fi

  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  : > "$DIR/$MARKER"
  mkdir -p "$DIR/etc" "$DIR/run" "$DIR/log" "$DIR/srv/d1"
  trap 'fail_start "interrupted"' INT TERM

  # Swift keeps object metadata in user xattrs
  if [ "${HBX_SWIFT_FORCE_LOOP:-0}" = 1 ] || ! xattr_ok "$DIR/srv/d1"; then
    [ "$(id -u)" -eq 0 ] || fail_start "no user xattrs under $DIR and mounting an image needs root"
    truncate -s "${HBX_SWIFT_LOOP_SIZE:-4G}" "$DIR/disk.img"
    mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$DIR/disk.img" || fail_start "mkfs.ext4 failed"
    echo "$DIR/srv/d1" > "$DIR/run/mount"
    mount -o loop "$DIR/disk.img" "$DIR/srv/d1" || fail_start "cannot loop-mount $DIR/disk.img"
    xattr_ok "$DIR/srv/d1" || fail_start "no user xattrs even on the ext4 image"
  fi

  REGION=us-east-1
  ACCESS_KEY=test:tester
  SECRET_KEY=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
  local bucket=${HBX_SWIFT_BUCKET:-hybridbox-test}

  local ports mc ac co ob px
  ports=$(pick_ports 5) || fail_start "no free ports"
  read -r mc ac co ob px <<<"$ports"
  ENDPOINT=http://127.0.0.1:$px

  write_configs "$mc" "$ac" "$co" "$ob" "$px"
  build_rings "$ac" "$co" "$ob" || fail_start "building the rings failed"

  # The log sink: Swift logs to syslog, and without a syslog socket it would send UDP
  # datagrams from a socket bound to all addresses. It also watches the owner process.
  local sock=$DIR/run/log.sock
  [ "${#sock}" -lt 100 ] || fail_start "state directory path too long for a unix socket: $DIR"
  launch logsink "$DIR/log/logsink.log" "$PY" -c "$LOGSINK" "$sock" "$DIR/log/swift.log" \
    "${HBX_SWIFT_OWNER_PID:-0}" "$SCRIPT" "$DIR"
  local i=0
  until [ -S "$sock" ]; do
    [ "$i" -lt 200 ] && live_pid "$DIR/run/logsink.pid" >/dev/null || fail_start "the log sink did not start"
    sleep 0.02; i=$((i + 1))
  done

  local mcuser=()
  [ "$(id -u)" -ne 0 ] || mcuser=(-u root)
  launch memcached "$DIR/log/memcached.log" memcached -l 127.0.0.1 -p "$mc" -U 0 -m 64 -t 1 "${mcuser[@]}"
  local n
  for n in account container object proxy; do
    launch "$n" "$DIR/log/$n.log" "$PY" "/usr/bin/swift-$n-server" "$DIR/etc/$n-server.conf"
  done

  local why
  why=$(wait_ports "$mc" "$ac" "$co" "$ob" "$px" 2>&1) || fail_start "$why"

  local deadline=$((SECONDS + TIMEOUT)) st
  until [ "$(s3req GET /)" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail_start "S3 ListBuckets did not succeed within ${TIMEOUT}s"
    sleep 0.2
  done
  st=$(s3req PUT "/$bucket")
  [ "$st" = 200 ] || [ "$st" = 409 ] || fail_start "CreateBucket $bucket answered $st"

  cat > "$DIR/s3.env" <<EOF
AWS_ENDPOINT_URL=$ENDPOINT
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=$REGION
HBX_S3_BUCKET=$bucket
EOF
  trap - INT TERM
  cat "$DIR/s3.env"
  log "ready in $((SECONDS - t0))s at $ENDPOINT (state in $DIR)"
}

cmd_status() {
  [ -d "$DIR" ] || { log "not running ($DIR does not exist)"; return 1; }
  if healthy; then cat "$DIR/s3.env"; return 0; fi
  log "not running or not answering ($DIR)"
  return 1
}

# ------------------------------------------------------------------------------- main
action=${1:-}
DIR=${2:-$DEFAULT_DIR}
TIMEOUT=${HBX_SWIFT_START_TIMEOUT:-90}
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
case $action in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install | start [DIR] | stop [DIR] | status [DIR]" >&2; exit 2 ;;
esac

import { Command, Option } from 'commander';
import { VERSION } from './version.js';

// The CLI is a thin layer over the library API (src/api). This entry point loads nothing
// heavy: each command imports what it needs when it runs, so `hybridbox --version` costs
// about as much as starting Node.

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Flags that describe a workload: shared by run, create and place. */
function withRunOptions(cmd: Command): Command {
  return cmd
    .option('-f, --file <path>', 'workload spec file (YAML or JSON); flags override its fields')
    .option('--name <name>', 'sandbox name (unique)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory inside the sandbox')
    .option('-u, --user <uid[:gid]>', 'user to run as')
    .option('--cpus <n>', 'CPU quota in CPUs, fractional (0.5 = half a core)')
    .option('-m, --memory <size>', 'memory limit for the whole sandbox (256m, 1g)')
    .option('--pids <n>', 'maximum number of processes')
    .option('--io-weight <n>', 'relative IO weight, 10-1000 (where the host supports it)')
    .option('--device-read-bps <[dev:]rate>', "disk read bandwidth cap (10mb; dev: the writable layer's disk by default; repeatable)", collect)
    .option('--device-write-bps <[dev:]rate>', 'disk write bandwidth cap (repeatable)', collect)
    .option('--device-read-iops <[dev:]n>', 'disk read operations per second (repeatable)', collect)
    .option('--device-write-iops <[dev:]n>', 'disk write operations per second (repeatable)', collect)
    .option('--net-rate <rate>', 'network bandwidth of a bridged sandbox, each direction (10mbit)')
    .option('--cpu-time <duration>', 'CPU time of the whole sandbox, all processes (2s, 500ms): killed past it')
    .option('--file-size <size>', 'largest file a process may write (10m; RLIMIT_FSIZE, SIGXFSZ past it)')
    .option('--open-files <n>', 'open files per process (RLIMIT_NOFILE)')
    .option('--tmpfs-size <size>', 'size of each of the private tmpfs /tmp and /dev/shm (64m)')
    .option('--read-only', "the image's root file system read-only; /tmp and /dev/shm are private tmpfs")
    .option('--output-limit <size>', 'foreground runs: kill the sandbox once stdout or stderr passes this many bytes (1m)')
    .addOption(new Option('--network <mode>', 'network: none (loopback only) or bridge').choices(['none', 'bridge']))
    .option('-v, --volume <host:guest[:ro]>', 'bind a host directory (repeatable)', collect)
    .option('--isolation <level>', 'auto | container | microvm | vm')
    .option('--trust <level>', 'trusted | untrusted (untrusted: user namespace, strict seccomp)')
    .option('--startup-budget <duration>', 'longest acceptable startup (500ms, 2s): rules out slower backends')
    .option('--timeout <duration>', 'kill the workload after this long (10s, 1m)')
    .option('--own-kernel', 'the workload needs a kernel of its own');
}

export function buildProgram(): Command {
  const program = new Command('hybridbox')
    .description('Sandboxes as containers or virtual machines, placed by one scheduler that explains itself')
    .version(VERSION, '-V, --version')
    .addOption(new Option('--runtime <name>', 'OCI runtime for container sandboxes').choices(['crun', 'runc']).default('crun'))
    .showHelpAfterError('(run `hybridbox help <command>` for usage)')
    .enablePositionalOptions();

  type Handlers = Record<string, (cmd: Command, args: unknown[], opts: Record<string, unknown>) => Promise<void>>;
  // Each verb loads its module only when it runs: the service's verbs never load the sandbox ones, and the reverse.
  const handlerOf =
    (load: () => Promise<Handlers>) =>
    (name: string) =>
    async (...args: unknown[]): Promise<void> => {
      const handlers = await load();
      const cmd = args[args.length - 1] as Command;
      await handlers[name]!(cmd, args.slice(0, -2), cmd.optsWithGlobals());
    };
  const action = handlerOf(async () => (await import('./commands.js')).commands);
  const serviceAction = handlerOf(async () => (await import('./service.js')).serviceCommands);

  program.command('info').description("show the host's capabilities as hybridbox sees them").option('--json', 'machine-readable output').action(action('info'));
  program
    .command('setup')
    .description('check the host and build the base images and the language runtimes')
    .option('--no-runtimes', 'build only the base images (busybox, debian:bookworm)')
    .action(action('setup'));
  program.command('runtimes').description('list the language runtimes with their versions and aliases').option('--json', 'machine-readable output').action(action('runtimes'));

  withRunOptions(program.command('place').description('show where a workload would run, and why, without running it'))
    .argument('[image]', 'image name')
    .argument('[command...]', 'command and arguments')
    .option('--json', 'machine-readable output')
    .passThroughOptions()
    .action(action('place'));

  withRunOptions(program.command('run').description('run a workload in a new sandbox'))
    .argument('[image]', 'image name')
    .argument('[command...]', 'command and arguments')
    .option('-d, --detach', 'run in the background and print the sandbox id')
    .option('--rm', 'remove the sandbox when it exits')
    .option('-i, --interactive', 'pass standard input through to the workload')
    .option('--json', 'print one result object instead of streaming output')
    .passThroughOptions()
    .action(action('run'));

  withRunOptions(program.command('create').description('create a sandbox without starting it'))
    .argument('[image]', 'image name')
    .argument('[command...]', 'command and arguments')
    .passThroughOptions()
    .action(action('create'));

  program.command('start').description('start a created sandbox in the background').argument('<sandbox...>').action(action('start'));
  program
    .command('stop')
    .description('stop sandboxes: SIGTERM, then SIGKILL after a grace period')
    .argument('<sandbox...>')
    .option('-t, --time <duration>', 'grace period before SIGKILL', '10s')
    .action(action('stop'));
  program.command('rm').description('remove sandboxes').argument('<sandbox...>').option('-f, --force', 'stop running sandboxes first').action(action('rm'));
  program.command('ps').description('list sandboxes').option('-a, --all', 'include sandboxes that are not running').option('--json', 'machine-readable output').action(action('ps'));
  program.command('logs').description("print a sandbox's output").argument('<sandbox>').option('-f, --follow', 'keep printing until the sandbox ends').action(action('logs'));
  program
    .command('exec')
    .description('run a command in a running sandbox')
    .argument('<sandbox>')
    .argument('<command...>')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory')
    .option('-u, --user <uid[:gid]>', 'user')
    .option('-i, --interactive', 'pass standard input through')
    .passThroughOptions()
    .action(action('exec'));
  program.command('inspect').description('show everything about a sandbox').argument('<sandbox>').action(action('inspect'));
  program.command('images').description('list local images').option('--json', 'machine-readable output').action(action('images'));
  program
    .command('build')
    .description('build an image from a Sandboxfile (FROM, RUN, COPY, ADD, WORKDIR, ENV, ARG, USER, LABEL, ENTRYPOINT, CMD)')
    .argument('[context]', 'build context directory: COPY and ADD read from here', '.')
    .option('-f, --file <path>', 'the Sandboxfile (default: CONTEXT/Sandboxfile)')
    .option('-t, --tag <name:tag>', 'name the image (repeatable)', collect)
    .option('--build-arg <KEY=VALUE>', 'value for an ARG (repeatable)', collect)
    .addOption(new Option('--network <mode>', 'network for RUN steps').choices(['none', 'bridge']).default('none'))
    .option('--no-cache', 'run every step, ignoring the build cache')
    .option('-q, --quiet', "print only the image digest, not the steps' output")
    .option('--json', 'print the result as JSON')
    .action(action('build'));
  program.command('tag').description('give an image another name').argument('<source>').argument('<target>').action(action('tag'));
  for (const [verb, what] of [
    ['push', 'upload an image to an S3 registry (blobs not already there, then the tag)'],
    ['pull', 'download an image from an S3 registry, verifying every blob'],
  ] as const) {
    program
      .command(verb)
      .description(what)
      .argument('<image>', 'name:tag')
      .option('--registry <url>', 's3://bucket/prefix (default: the config file, else the embedded registry)')
      .option('--remote <name:tag>', 'name in the registry, when it differs from the local name')
      .option('--with-vm-disk', "also move the image's VM disk")
      .option('-q, --quiet', 'print only the summary line')
      .option('--json', 'print the result as JSON')
      .action(action(verb));
  }
  const image = program.command('image').description('manage local images');
  image.command('ls').description('list local images').option('--json', 'machine-readable output').action(action('images'));
  image.command('inspect').description("show an image's manifest, config and layers").argument('<image>').action(action('imageInspect'));
  image.command('rm').description('remove image tags (data stays until prune)').argument('<image...>').option('-f, --force', 'even if a sandbox uses it').action(action('imageRm'));
  image
    .command('import')
    .description('import an OCI archive or a docker/podman save tarball')
    .argument('<file>')
    .option('-t, --tag <name:tag>', 'name for the image (needed when the archive names none)')
    .action(action('imageImport'));
  image
    .command('export')
    .description('write images to an archive that skopeo, podman and docker read')
    .argument('<image...>')
    .requiredOption('-o, --output <file>', 'archive to write')
    .addOption(new Option('--format <format>', 'archive format').choices(['oci', 'docker']).default('oci'))
    .action(action('imageExport'));
  image.command('prune').description('delete blobs, unpacked layers and VM disks that no image or sandbox uses').action(action('imagePrune'));
  const bench = program.command('bench').description('measure the VM-versus-container trade-off on this host; results are stored for `report` and the scheduler');
  bench
    .command('startup')
    .description('start-up latency of each backend next to raw baselines (host exec, crun, podman, QEMU, virsh), interleaved')
    .option('--backends <list>', 'comma-separated scenarios: container,microvm,vm and baselines host,crun,podman,qemu,virsh (default: all available)')
    .option('--runs <n>', 'measured runs per scenario', '30')
    .option('--vm-runs <n>', 'measured runs of the VM scenarios (default: --runs)')
    .option('--warmup <n>', 'warm-up runs per scenario, not counted', '2')
    .option('--image <name>', 'image to start', 'busybox')
    .option('--command <cmd>', 'workload, run by /bin/sh -c', 'echo ready')
    .option('--json', 'print the result as JSON')
    .option('--out <dir>', 'also write the result (JSON) into this directory')
    .action(action('benchStartup'));
  bench
    .command('isolation')
    .description('performance, security and fault isolation of each backend')
    .option('--backends <list>', 'comma-separated: container,microvm,vm (default: all available)')
    .option('--parts <list>', 'comma-separated: performance,security,fault (default: all)')
    .option('--quick', 'fewer and shorter repetitions')
    .option('--json', 'print the result as JSON')
    .option('--out <dir>', 'also write the result (JSON) into this directory')
    .action(action('benchIsolation'));
  bench
    .command('density')
    .description('start idle sandboxes until a memory budget or count; per-sandbox overhead and start rate')
    .option('--backends <list>', 'comma-separated: container,microvm,vm (default: all available)')
    .option('--budget <size>', 'host memory the sandboxes may use (default: a quarter of host memory)')
    .option('--count <n>', 'stop each backend after this many sandboxes')
    .option('--json', 'print the result as JSON')
    .option('--out <dir>', 'also write the result (JSON) into this directory')
    .action(action('benchDensity'));
  bench
    .command('service')
    .description('what `hybridbox serve` adds to a run, its throughput by concurrency, and the CLI through it against node + raw crun')
    .option('--runs <n>', 'interleaved API/library pairs and CLI runs', '30')
    .option('--json', 'print the result as JSON')
    .option('--out <dir>', 'also write the result (JSON) into this directory')
    .action(action('benchService'));
  program
    .command('report')
    .description('write one self-contained HTML report of the stored benchmark results, and print their tables')
    .option('-o, --out <file>', 'HTML file to write', 'hybridbox-report.html')
    .option('--json', 'print the data behind the report as JSON')
    .action(action('report'));
  program
    .command('serve')
    .description('run the HTTP service for untrusted code in the foreground (docs/SERVICE.md)')
    .option('--listen <where>', 'a unix socket path, or HOST:PORT for TCP', '/run/hybridbox/api.sock')
    .option('--socket-group <group>', 'group that may use the unix socket (mode 0660); keyless local access only when it is root')
    .option('--tls-cert <file>', 'PEM certificate for TCP (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key for TCP')
    .option('--max-queued <n>', 'runs waiting for capacity at most; then 503')
    .option('--callback-allow <host[:port]>', 'a destination callbacks may go to (repeatable, comma-separated)', collect)
    .action(serviceAction('serve'));
  const keys = program.command('keys').description("manage the service's API keys");
  keys
    .command('create')
    .description('make a key; its secret is printed once')
    .requiredOption('--name <name>', 'a unique name')
    .addOption(new Option('--scope <scope>', 'what it may do').choices(['run', 'sandboxes', 'admin']).default('run'))
    .option('--max-concurrent <n>', 'runs queued or running at once')
    .option('--rate <n/period>', 'requests that start work (60/min, 2/s)')
    .option('--max-memory <size>', 'largest memory limit a run may ask for (512m)')
    .option('--max-cpu-time <duration>', 'largest CPU time limit a run may ask for (10s)')
    .action(serviceAction('keysCreate'));
  keys.command('ls').description('list keys (never their secrets)').option('--json', 'machine-readable output').action(serviceAction('keysLs'));
  keys.command('rm').description('revoke keys').argument('<key...>', 'id or name').action(serviceAction('keysRm'));
  program.command('demo').description('a guided tour: placement, a container run, limits holding, networking').action(action('demo'));

  const internal = program.command('internal', { hidden: true });
  internal.command('reap').argument('<id>').action(action('reap'));
  internal.command('monitor').argument('<id>').action(action('monitor'));
  return program;
}

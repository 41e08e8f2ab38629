import test from 'ava';
import { HybridboxError } from '../src/errors.js';
import { SandboxfileError, parseSandboxfile, type Instruction } from '../src/images/build/index.js';

const FILE = 'app/Sandboxfile';

// One file exercising every instruction, so a regression in line joining or scoping shows
// up as a wrong field on a known line rather than as a vague failure.
const REALISTIC = `# syntax=docker/dockerfile:1
ARG BASE_TAG=3.20
ARG REGISTRY
FROM \${REGISTRY:-docker.io}/library/alpine:\${BASE_TAG} AS app

# The pre-FROM ARG is invisible here unless redeclared.
ARG BASE_TAG
ARG APP_USER=app
arg VERSION=1.0

env APP_HOME=/srv/app PATH="/srv/app/bin:/usr/bin" GREETING='hello $APP_HOME'
ENV LEGACY value with spaces
LABEL org.opencontainers.image.version="\${VERSION}" "maintainer"="ops team" base=$BASE_TAG

RUN apk add --no-cache \\
      curl \\
  # a comment inside a continuation is dropped, not joined
      jq \\

      git
RUN ["/bin/busybox", "adduser", "-D", "app"]
WORKDIR \${APP_HOME}/\${SUBDIR:-current}
COPY --chown=\${APP_USER}:\${APP_USER} package.json lock.json ./
ADD ["https://example.com/a b.tar.gz", "/opt/"]
copy src $APP_HOME/src
USER \${APP_USER}:\${APP_USER}
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD node server.js --port \${PORT}
`;

const byLine = (insts: Instruction[], line: number) => {
  const i = insts.find((x) => x.line === line);
  if (!i) throw new Error(`no instruction at line ${line}`);
  return i;
};

test('a realistic Sandboxfile parses with defaults', (t) => {
  const sf = parseSandboxfile(REALISTIC, { file: FILE });
  t.is(sf.from, 'docker.io/library/alpine:3.20');
  t.is(sf.fromLine, 4);
  t.deepEqual(
    sf.instructions.map((i) => `${i.line}:${i.kind}`),
    ['7:ARG', '8:ARG', '9:ARG', '11:ENV', '12:ENV', '13:LABEL', '15:RUN', '21:RUN', '22:WORKDIR', '23:COPY', '24:ADD', '25:COPY', '26:USER', '27:ENTRYPOINT', '28:CMD'],
  );
  const is = sf.instructions;

  t.like(byLine(is, 7), { kind: 'ARG', name: 'BASE_TAG', value: '3.20' });
  t.like(byLine(is, 8), { kind: 'ARG', name: 'APP_USER', default: 'app', value: 'app' });
  t.deepEqual(byLine(is, 11), {
    kind: 'ENV',
    line: 11,
    text: `env APP_HOME=/srv/app PATH="/srv/app/bin:/usr/bin" GREETING='hello $APP_HOME'`,
    vars: { APP_HOME: '/srv/app', PATH: '/srv/app/bin:/usr/bin', GREETING: 'hello $APP_HOME' },
  });
  t.like(byLine(is, 12), { vars: { LEGACY: 'value with spaces' } });
  t.like(byLine(is, 13), { labels: { 'org.opencontainers.image.version': '1.0', maintainer: 'ops team', base: '3.20' } });

  const run = byLine(is, 15);
  t.is(run.kind, 'RUN');
  if (run.kind === 'RUN') {
    t.true(run.shell);
    t.is(run.argv.length, 3);
    t.deepEqual(run.argv.slice(0, 2), ['/bin/sh', '-c']);
    // Continuations join without the comment and blank line; variables are left to the shell.
    t.regex(run.argv[2]!, /^apk add --no-cache\s+curl\s+jq\s+git$/);
    t.is(run.text, `RUN ${run.argv[2]}`);
  }
  t.like(byLine(is, 21), { kind: 'RUN', shell: false, argv: ['/bin/busybox', 'adduser', '-D', 'app'] });
  t.like(byLine(is, 22), { kind: 'WORKDIR', path: '/srv/app/current' });
  t.deepEqual(byLine(is, 23), {
    kind: 'COPY',
    line: 23,
    text: 'COPY --chown=${APP_USER}:${APP_USER} package.json lock.json ./',
    sources: ['package.json', 'lock.json'],
    dest: './',
    chown: 'app:app',
  });
  t.like(byLine(is, 24), { kind: 'ADD', sources: ['https://example.com/a b.tar.gz'], dest: '/opt/' });
  t.false('chown' in byLine(is, 24));
  t.like(byLine(is, 25), { kind: 'COPY', sources: ['src'], dest: '/srv/app/src' });
  t.like(byLine(is, 26), { kind: 'USER', user: 'app:app' });
  t.like(byLine(is, 27), { kind: 'ENTRYPOINT', shell: false, argv: ['/usr/bin/tini', '--'] });
  t.like(byLine(is, 28), { kind: 'CMD', shell: true, argv: ['/bin/sh', '-c', 'node server.js --port ${PORT}'] });
});

test('build args override ARG defaults, before and after FROM', (t) => {
  const sf = parseSandboxfile(REALISTIC, {
    file: FILE,
    buildArgs: { BASE_TAG: '3.19', REGISTRY: 'registry.local:5000', APP_USER: 'svc', UNDECLARED: 'ignored' },
  });
  t.is(sf.from, 'registry.local:5000/library/alpine:3.19');
  t.like(byLine(sf.instructions, 7), { name: 'BASE_TAG', value: '3.19' });
  t.like(byLine(sf.instructions, 23), { chown: 'svc:svc' });
  t.like(byLine(sf.instructions, 26), { user: 'svc:svc' });
  t.like(byLine(sf.instructions, 13), { labels: { base: '3.19' } });
});

test('pre-FROM ARGs feed only FROM unless redeclared, like Docker', (t) => {
  const sf = parseSandboxfile('ARG V=1\nFROM alpine:$V\nLABEL a=${V:-unset}\nARG V\nLABEL b=$V\n', { file: FILE });
  t.is(sf.from, 'alpine:1');
  t.like(sf.instructions[0], { labels: { a: 'unset' } });
  t.like(sf.instructions[2], { labels: { b: '1' } });
});

test('ENV values see variables as they were before the line, and ENV beats ARG', (t) => {
  const sf = parseSandboxfile('FROM alpine\nARG A=arg\nENV A=env B=$A\nENV C=$A\n', { file: FILE });
  t.like(sf.instructions[1], { vars: { A: 'env', B: 'arg' } });
  t.like(sf.instructions[2], { vars: { C: 'env' } });
});

test('an undefined variable in FROM expands to empty, as in Docker', (t) => {
  t.is(parseSandboxfile('ARG TAG\nFROM alpine${TAG}\n', { file: FILE }).from, 'alpine');
});

test('shell tests starting with [ stay shell form; CRLF and a trailing continuation are accepted', (t) => {
  const sf = parseSandboxfile('from alpine\r\nrun [ -f /etc/os-release ] && cat /etc/os-release\r\nCMD []\r\nRUN echo \\', { file: FILE });
  t.like(sf.instructions[0], { kind: 'RUN', shell: true, argv: ['/bin/sh', '-c', '[ -f /etc/os-release ] && cat /etc/os-release'] });
  t.like(sf.instructions[1], { kind: 'CMD', shell: false, argv: [] });
  t.like(sf.instructions[2], { kind: 'RUN', argv: ['/bin/sh', '-c', 'echo'] });
});

// [name, input, line, instruction, fragment of the problem]
const MALFORMED: [string, string, number, string, RegExp][] = [
  ['unknown instruction', 'FROM alpine\nFORM x\n', 2, 'FORM', /unknown instruction \(did you mean FROM\?\); known instructions: FROM, RUN, COPY/],
  ['unsupported Docker instruction', 'FROM alpine\nEXPOSE 80\n', 2, 'EXPOSE', /not supported in a Sandboxfile; known instructions:/],
  ['empty file', '# nothing here\n\n', 1, 'FROM', /no FROM instruction; .*only ARG may precede it/],
  ['instruction before FROM', 'ARG X=1\nRUN echo hi\nFROM alpine\n', 2, 'RUN', /comes before FROM/],
  ['second FROM', 'FROM alpine\nRUN true\nFROM debian\n', 3, 'FROM', /second FROM \(first at line 1\).*multi-stage.*use exactly one FROM/],
  ['empty arguments', 'FROM alpine\nWORKDIR   \n', 2, 'WORKDIR', /missing arguments; use WORKDIR <path>/],
  ['empty arguments after a flag', 'FROM alpine\nCOPY --chown=1:1\n', 2, 'COPY', /missing arguments/],
  ['malformed exec form', 'FROM alpine\nCMD ["node", "server.js"\n', 2, 'CMD', /malformed JSON array .*double-quoted strings/],
  ['single-quoted exec form', "FROM alpine\nENTRYPOINT ['/bin/app']\n", 2, 'ENTRYPOINT', /malformed JSON array/],
  ['non-string in exec form', 'FROM alpine\nRUN ["sleep", 5]\n', 2, 'RUN', /element 1 of the JSON array is 5, not a string/],
  ['empty RUN exec form', 'FROM alpine\nRUN []\n', 2, 'RUN', /empty exec form/],
  ['unterminated quote in a continued ENV', 'FROM alpine\nENV A="one \\\n  two\n', 2, 'ENV', /unterminated double quote.*close the quote/],
  ['unterminated single quote', "FROM alpine\nLABEL a='x\n", 2, 'LABEL', /unterminated single quote/],
  ['unknown COPY flag', 'FROM alpine\nCOPY --from=build /a /b\n', 2, 'COPY', /--from is not supported; the only COPY flag is --chown/],
  ['flag on RUN', 'FROM alpine\nRUN --mount=type=cache,target=/x make\n', 2, 'RUN', /--mount is not supported; RUN takes no flags/],
  ['malformed flag', 'FROM alpine\nADD --=x a b\n', 2, 'ADD', /malformed flag "--=x"/],
  ['bad --chown', 'FROM alpine\nCOPY --chown=a:b:c x /y\n', 2, 'COPY', /--chown="a:b:c" is not <user>\[:<group>\]/],
  ['COPY without destination', 'FROM alpine\nCOPY onlyone\n', 2, 'COPY', /at least one source and a destination/],
  ['several sources into a file', 'FROM alpine\nCOPY a b /dest\n', 2, 'COPY', /must be a directory ending in \//],
  ['LABEL without =', 'FROM alpine\nLABEL version\n', 2, 'LABEL', /"version" is not <key>=<value>/],
  ['legacy ENV without value', 'FROM alpine\nENV ONLYKEY\n', 2, 'ENV', /"ONLYKEY" has no value/],
  ['bad ENV name', 'FROM alpine\nENV 1A=x\n', 2, 'ENV', /"1A" is not a valid variable name/],
  ['ARG with two names', 'FROM alpine\nARG A B\n', 2, 'ARG', /expected one name/],
  ['unterminated ${', 'FROM alpine\nWORKDIR ${HOME\n', 2, 'WORKDIR', /unterminated "\$\{HOME"; close it with \}/],
  ['unsupported substitution', 'FROM alpine\nWORKDIR ${HOME:=/x}\n', 2, 'WORKDIR', /unsupported substitution.*\$\{NAME:-default\}/],
  ['FROM empty after substitution', 'ARG IMG\nFROM $IMG\n', 2, 'FROM', /empty after substituting variables/],
  ['FROM with extra words', 'FROM alpine latest\n', 1, 'FROM', /unexpected "alpine latest"/],
  ['USER with spaces', 'FROM alpine\nUSER a b\n', 2, 'USER', /"a b" is not <user>\[:<group>\]/],
  ['other escape character', '# escape=`\nFROM alpine\n', 1, '# escape', /escape character "`" is not supported/],
];

for (const [name, input, line, instruction, problem] of MALFORMED) {
  test(`rejects: ${name}`, (t) => {
    const err = t.throws(() => parseSandboxfile(input, { file: FILE }), { instanceOf: SandboxfileError });
    if (!err) return;
    t.true(err instanceof HybridboxError);
    t.is(err.exitCode, 125);
    t.false(err.message.includes('\n'), 'the CLI prints messages on one line');
    t.true(err.message.startsWith(`${FILE}:${line}: ${instruction}: `), err.message);
    t.regex(err.message, problem);
    // Every message says what is allowed after what is wrong.
    t.regex(err.message, /; /);
    t.is(err.file, FILE);
    t.is(err.line, line);
    t.is(err.instruction, instruction);
  });
}

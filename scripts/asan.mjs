#!/usr/bin/env node
// `npm run test:asan`: builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into
// build-asan/ (cmake-js + CMakeLists.txt, incremental), then runs the native test suites against
// that binary. Exits non-zero when a test fails *or* a sanitizer report appears anywhere in the
// output (a report in a forked worker must fail the run even if vitest were to shrug it off).
//
//   npm run test:asan                          build, then vitest run test/native test/fault
//   npm run test:asan -- test/native/region    build, then only the given vitest filters
//   npm run test:asan -- -t 'bounce'           extra vitest flags (default filters kept)
//   KVTIER_ASAN_SKIP_BUILD=1 npm run test:asan reuse build-asan/ as it is
//   npm run test:asan -- --tsan [filters]      ThreadSanitizer instead, into build-tsan/ (see below)
//
// --tsan: node and V8 are not instrumented, so TSan reports races inside them (and in vitest's own
// native helpers) that are not ours. In this mode halt_on_error is off, and only reports with a
// frame in the kvtier addon (kvtier.node or native/) fail the run; the others are counted as
// ignored. TSan also cannot cope with some fault tests (a process killed by ulimit's SIGXFSZ
// while TSan defers signals segfaults); run it on test/native when in doubt.
//
// See docs/building.md.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, realpathSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tsan = process.argv.includes('--tsan');
const forwarded = process.argv.slice(2).filter((a) => a !== '--tsan');
const buildDir = join(root, tsan ? 'build-tsan' : 'build-asan');
// ASan/UBSan: Debug (-O1 -g from KVTIER_SANITIZE, plus _GLIBCXX_ASSERTIONS). TSan: Release, so
// the timing of the threads stays close to what users run.
const config = tsan ? 'Release' : 'Debug';
const sanitize = tsan ? 'thread' : 'address,undefined';
const addon = join(buildDir, config, 'kvtier.node');
const suites = ['test/native', 'test/fault'];
const tag = tsan ? '[test:tsan]' : '[test:asan]';

function fail(message) {
  console.error(`\n${tag} ${message}`);
  process.exit(1);
}

// --- 1. build --------------------------------------------------------------------------------
function build() {
  const env = { ...process.env };
  // cmake-js needs node's headers. Under `npm run` it gets them from npm's `nodedir` config
  // (npm_config_nodedir); run directly it would try to download them. Point it at the headers
  // that ship next to this node binary when there are any.
  if (!env.npm_config_nodedir) {
    const prefix = dirname(dirname(process.execPath));
    if (existsSync(join(prefix, 'include/node/node_api.h'))) env.npm_config_nodedir = prefix;
  }
  const cmakeJs = join(root, 'node_modules/cmake-js/bin/cmake-js');
  if (!existsSync(cmakeJs)) fail('cmake-js is not installed: run `npm install` first.');
  const args = [
    cmakeJs,
    'build',
    '--directory',
    root,
    '--out',
    buildDir,
    '--config',
    config,
    `--CDKVTIER_SANITIZE=${sanitize}`,
    '--parallel',
    String(availableParallelism()),
    '--log-level',
    'warn',
  ];
  console.log(`${tag} building ${addon} (${sanitize}, ${config})`);
  const r = spawnSync(process.execPath, args, { cwd: root, env, stdio: 'inherit' });
  if (r.status !== 0) fail(`the sanitizer build failed (cmake-js exited ${r.status ?? r.signal}).`);
  if (!existsSync(addon)) fail(`the build did not produce ${addon}.`);
}

// --- 2. which sanitizer runtimes to preload ---------------------------------------------------
// Node itself is not built with ASan, so the ASan runtime is not in the process when the addon is
// dlopen'ed; ASan insists on being loaded first (it must intercept malloc/free from the start), so
// it goes into LD_PRELOAD. libubsan needs no such ordering, but it is preloaded too so that both
// runtimes come from the same compiler as the one the addon links against.
function compilerRuntime(name) {
  const cc = process.env.CXX || 'g++';
  const r = spawnSync(cc, [`-print-file-name=${name}`], { encoding: 'utf8' });
  const path = r.status === 0 ? r.stdout.trim() : '';
  // An unknown library is echoed back as a bare name: that is "not found".
  if (!path || !path.includes('/') || !existsSync(path)) return undefined;
  return realpathSync(path);
}

function linkedRuntimes(binary) {
  // What the addon really needs (DT_NEEDED resolved by the loader), e.g. libasan.so.8.
  const r = spawnSync('ldd', [binary], { encoding: 'utf8' });
  const found = {};
  for (const line of (r.stdout ?? '').split('\n')) {
    const m = /^\s*(lib(asan|ubsan)\.so[.\d]*)\s+=>\s+(\S+)/.exec(line);
    if (m && m[3] !== 'not') found[m[2]] = m[3];
  }
  return found;
}

function preloadList() {
  const linked = linkedRuntimes(addon);
  if (tsan) {
    const path = compilerRuntime('libtsan.so');
    if (!path)
      fail('cannot find libtsan.so (`g++ -print-file-name=libtsan.so`); install libtsan (gcc).');
    return [path];
  }
  const list = [];
  for (const lib of ['asan', 'ubsan']) {
    const fromCompiler = compilerRuntime(`lib${lib}.so`);
    const path = fromCompiler ?? linked[lib];
    if (!path) {
      if (lib === 'asan')
        fail('cannot find libasan.so (`g++ -print-file-name=libasan.so`); install libasan (gcc).');
      continue; // ubsan linked statically or not at all: nothing to preload
    }
    if (lib === 'ubsan' && !linked.ubsan) continue; // the addon does not use it
    list.push(path);
  }
  return list;
}

// --- 3. run the native suites -----------------------------------------------------------------
function vitestArgs() {
  const explicitFilters = forwarded.length > 0 && !forwarded[0].startsWith('-');
  const args = ['run'];
  if (explicitFilters) return args.concat(forwarded);
  const missing = suites.filter((s) => !existsSync(join(root, s)));
  args.push(...suites);
  if (missing.length > 0) {
    console.warn(
      '\n' +
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' +
        `!!! ${tag} NOTE: ${missing.join(' and ')} do(es) not exist yet: running with\n` +
        '!!! --passWithNoTests. Nothing native may have been exercised under the sanitizers.\n' +
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n',
    );
    args.push('--passWithNoTests');
  }
  return args.concat(forwarded);
}

// Lines that only a sanitizer prints.
const reportPattern =
  /ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|runtime error: |SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer)|UndefinedBehaviorSanitizer:DEADLYSIGNAL|AddressSanitizer:DEADLYSIGNAL/;

async function runTests(preload) {
  const vitest = join(root, 'node_modules/vitest/vitest.mjs');
  if (!existsSync(vitest)) fail('vitest is not installed: run `npm install` first.');
  const env = {
    ...process.env,
    // Set in this process's environment, so vitest's forked workers (pool 'forks') and any
    // process a test spawns inherit it; LD_PRELOAD applies to every one of them.
    LD_PRELOAD: [...preload, process.env.LD_PRELOAD].filter(Boolean).join(':'),
    // detect_leaks=0: V8 and Node deliberately never free much of their heap at exit (isolates,
    // code space, handles, the addon's static state), so LeakSanitizer would bury every run
    // under thousands of "leaks" that are not ours. We want memory *errors*
    // (use-after-free, overflows, double free); leaks belong to a targeted test, not this run.
    // abort_on_error + halt_on_error: the first report kills the process (SIGABRT), so the test
    // that caused it fails visibly instead of running on over corrupted memory.
    // A user's own ASAN_OPTIONS come last and win.
    ASAN_OPTIONS: [
      'detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1',
      process.env.ASAN_OPTIONS,
    ]
      .filter(Boolean)
      .join(':'),
    UBSAN_OPTIONS: ['print_stacktrace=1:halt_on_error=1', process.env.UBSAN_OPTIONS]
      .filter(Boolean)
      .join(':'),
    KVTIER_ADDON: addon,
    KVTIER_SANITIZED: sanitize,
  };
  if (tsan) {
    delete env.ASAN_OPTIONS;
    delete env.UBSAN_OPTIONS;
    const supp = join(mkdtempSync(join(tmpdir(), 'kvtier-tsan-')), 'suppressions.txt');
    // Known noise from uninstrumented code: vitest's bundler (Rust, lock-free) and V8's platform.
    writeFileSync(
      supp,
      'called_from_lib:rolldown-binding.linux-x64-gnu.node\nthread:rolldown-worker\nrace:v8::platform::\n',
    );
    env.TSAN_OPTIONS = [
      // exitcode=0: a process with only ignored reports must not fail; we judge the reports here.
      `halt_on_error=0:exitcode=0:second_deadlock_stack=1:suppressions=${supp}`,
      process.env.TSAN_OPTIONS,
    ]
      .filter(Boolean)
      .join(':');
  }
  if (process.stdout.isTTY && env.FORCE_COLOR === undefined) env.FORCE_COLOR = '1';

  const args = vitestArgs();
  console.log(`${tag} KVTIER_ADDON=${addon}`);
  console.log(`${tag} LD_PRELOAD=${env.LD_PRELOAD}`);
  console.log(`${tag} vitest ${args.join(' ')}`);

  let reports = 0;
  let ignored = 0;
  // TSan: a report runs from "WARNING: ThreadSanitizer" to "SUMMARY: ThreadSanitizer"; it counts
  // only when one of its frames is in the kvtier addon.
  let tsanBlock;
  const onLine = (line) => {
    if (!tsan) {
      if (reportPattern.test(line)) reports++;
      return;
    }
    if (/WARNING: ThreadSanitizer|ERROR: ThreadSanitizer/.test(line)) tsanBlock = '';
    if (tsanBlock === undefined) {
      if (/runtime error: |ERROR: AddressSanitizer/.test(line)) reports++;
      return;
    }
    tsanBlock += line + '\n';
    if (/SUMMARY: ThreadSanitizer/.test(line)) {
      if (/kvtier\.node|\/native\/|kvtier::/.test(tsanBlock)) reports++;
      else ignored++;
      tsanBlock = undefined;
    }
  };
  const child = spawn(process.execPath, [vitest, ...args], {
    cwd: root,
    env,
    stdio: ['inherit', 'pipe', 'pipe'],
  });
  const tails = [];
  const scan = (out) => {
    const state = { tail: '' };
    tails.push(state);
    return (chunk) => {
      out.write(chunk);
      const lines = (state.tail + chunk.toString('utf8')).split('\n');
      state.tail = lines.pop() ?? '';
      for (const line of lines) onLine(line);
    };
  };
  child.stdout.on('data', scan(process.stdout));
  child.stderr.on('data', scan(process.stderr));
  const [code, signal] = await new Promise((resolve) =>
    child.on('close', (c, s) => resolve([c, s])),
  );
  for (const state of tails) if (state.tail) onLine(state.tail);
  if (tsanBlock !== undefined && /kvtier\.node|\/native\/|kvtier::/.test(tsanBlock)) reports++;

  if (reports > 0) {
    fail(
      `FAILED: ${reports} sanitizer report line(s) in the output above (vitest exited ${code ?? signal}).`,
    );
  }
  if (code !== 0) fail(`FAILED: vitest exited ${code ?? signal}.`);
  console.log(
    `\n${tag} passed: no test failures, no sanitizer reports${ignored ? ` from kvtier (${ignored} TSan report(s) outside kvtier ignored)` : ''}.`,
  );
}

if (process.env.KVTIER_ASAN_SKIP_BUILD !== '1') build();
else if (!existsSync(addon)) fail(`KVTIER_ASAN_SKIP_BUILD=1 but ${addon} does not exist.`);
await runTests(preloadList());

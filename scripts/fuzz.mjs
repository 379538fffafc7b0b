#!/usr/bin/env node
// `npm run fuzz`: builds every libFuzzer target fuzz/<name>.cc with clang++-14 and ASan + UBSan
// into build-fuzz/, then runs each for a bounded time over a copy of its committed seed corpus
// (fuzz/corpus/<name>/). Fails when a target crashes, leaks, times out, or any sanitizer reports.
//
//   npm run fuzz                               every target, 60 s each
//   npm run fuzz -- --seconds 10 frame_reader  only the named targets, 10 s each
//   npm run fuzz -- --replay                   run the committed corpus once (a regression check)
//
// A target's first line names the pure native sources it links (no N-API, no node headers):
//   // fuzz-sources: native/a.cc native/b.cc
// A crash leaves its input in build-fuzz/artifacts/; add it to the target's corpus (and a test).
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// A sanitizer runtime preloaded for the addon (npm run test:asan) would clash with the one
// clang links into each target.
const env = { ...process.env };
delete env.LD_PRELOAD;
delete env.ASAN_OPTIONS;
delete env.UBSAN_OPTIONS;
const out = join(root, 'build-fuzz');
const cxx = process.env.KVTIER_FUZZ_CXX ?? 'clang++-14';
const sanitizerReport =
  /ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: \w+Sanitizer|==\d+==ERROR/;

function fail(message) {
  console.error(`[fuzz] ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const o = { seconds: 60, replay: false, names: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--replay') o.replay = true;
    else if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a.startsWith('--seconds=')) o.seconds = Number(a.slice('--seconds='.length));
    else if (a.startsWith('-')) fail(`unknown option ${a}`);
    else o.names.push(a.replace(/\.cc$/, '').replace(/^fuzz\//, ''));
  }
  if (!Number.isSafeInteger(o.seconds) || o.seconds < 1)
    fail('--seconds must be a whole number ≥ 1');
  return o;
}

function targets(names) {
  const all = readdirSync(join(root, 'fuzz'))
    .filter((f) => f.endsWith('.cc'))
    .map((f) => f.slice(0, -3))
    .sort();
  for (const n of names) if (!all.includes(n)) fail(`no target fuzz/${n}.cc`);
  return names.length > 0 ? names : all;
}

function build(name) {
  const file = join(root, 'fuzz', `${name}.cc`);
  const first = readFileSync(file, 'utf8').split('\n', 1)[0];
  const m = /^\/\/ fuzz-sources:(.*)$/.exec(first);
  if (!m) fail(`fuzz/${name}.cc: the first line must be "// fuzz-sources: native/..."`);
  const sources = m[1]
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map((s) => join(root, s));
  for (const s of sources) if (!existsSync(s)) fail(`fuzz/${name}.cc names a missing source ${s}`);
  mkdirSync(out, { recursive: true });
  const bin = join(out, name);
  const args = [
    '-std=c++20',
    '-g',
    '-O1',
    '-fsanitize=fuzzer,address,undefined',
    '-fno-sanitize-recover=undefined',
    '-fno-omit-frame-pointer',
    file,
    ...sources,
    '-o',
    bin,
  ];
  console.log(`[fuzz] building ${name}: ${cxx} ${args.join(' ')}`);
  const r = spawnSync(cxx, args, { stdio: 'inherit', env });
  if (r.error)
    fail(`cannot run ${cxx} (install clang-14 and libclang-rt-14-dev): ${r.error.message}`);
  if (r.status !== 0) fail(`building fuzz/${name}.cc failed`);
  return bin;
}

function run(bin, args) {
  return new Promise((resolve) => {
    const child = spawn(bin, args, {
      cwd: root,
      env: {
        ...env,
        ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1:symbolize=1',
        UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
      },
    });
    let text = '';
    const keep = (d) => {
      text += d.toString();
      if (text.length > 1 << 20) text = text.slice(-(1 << 19));
      process.stderr.write(d);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('close', (code, signal) => resolve({ code, signal, text }));
  });
}

const opts = parseArgs(process.argv.slice(2));
const failed = [];
for (const name of targets(opts.names)) {
  const bin = build(name);
  const seeds = join(root, 'fuzz', 'corpus', name);
  if (!existsSync(seeds) || readdirSync(seeds).length === 0) fail(`fuzz/corpus/${name}/ is empty`);
  let args;
  if (opts.replay) {
    // Every committed input once: the corpus as a regression test.
    args = ['-runs=0', seeds];
  } else {
    const corpus = join(out, 'corpus', name);
    rmSync(corpus, { recursive: true, force: true });
    cpSync(seeds, corpus, { recursive: true });
    mkdirSync(join(out, 'artifacts'), { recursive: true });
    args = [
      `-max_total_time=${opts.seconds}`,
      // Generous: a shared CI machine under ASan must not turn a slow input into a failure.
      '-timeout=60',
      '-rss_limit_mb=2048',
      '-print_final_stats=1',
      `-artifact_prefix=${join(out, 'artifacts', `${name}-`)}`,
      corpus,
    ];
  }
  console.log(`[fuzz] ${name}: ${opts.replay ? 'replaying the corpus' : `${opts.seconds} s`}`);
  const r = await run(bin, args);
  const runs = /stat::number_of_executed_units:\s*(\d+)/.exec(r.text)?.[1];
  if (r.code !== 0 || r.signal || sanitizerReport.test(r.text)) {
    failed.push(name);
    console.error(
      `[fuzz] ${name} FAILED (exit ${r.code ?? r.signal}); inputs in build-fuzz/artifacts/`,
    );
  } else {
    console.log(`[fuzz] ${name} passed${runs ? ` (${runs} inputs run)` : ''}`);
  }
}
if (failed.length > 0) fail(`failed: ${failed.join(', ')}`);

#!/usr/bin/env node
// payrail-plugin: the TypeScript plugin author's build, test and type
// generation. Run from the plugin project's directory (npm scripts do).
//
//   payrail-plugin build src/rule.ts -o dist/rule.wasm
//   payrail-plugin test [test/*.test.ts ...]
//   payrail-plugin types --out DIR      (regenerates src/wit/ from wit/payrail.wit)
//
// Exit codes: 0 ok, 1 a failed build or test, 2 a usage error.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SDK = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const WIT = join(SDK, 'wit', 'payrail.wit');
const WORLD = 'rule';
const HOST_IMPORT = 'payrail:plugin/host@0.1.0';
// Every WASI feature off: the component imports only payrail:plugin/host,
// so it has no clock, entropy, stdio or network to reach for. Without
// 'random', Math.random is seeded and deterministic.
const DISABLED_FEATURES = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];

function usage(message) {
  console.error(`payrail-plugin: ${message}
usage: payrail-plugin build ENTRY.ts -o OUT.wasm
       payrail-plugin test [TEST.ts ...]
       payrail-plugin types --out DIR`);
  process.exit(2);
}

function option(args, name) {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) return undefined;
  const [value] = args.splice(i, 2).slice(1);
  return value;
}

async function bundle(entry, outfile, platform, hostStub) {
  const esbuild = await import('esbuild');
  const plugins = hostStub
    ? [{
        name: 'payrail-host-stub',
        setup(b) {
          b.onResolve({ filter: /^payrail:plugin\/host@/ }, () => ({ path: join(SDK, 'src', 'host-stub.ts') }));
        },
      }]
    : [];
  await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: 'esm',
    platform,
    target: 'es2022',
    external: hostStub ? [] : ['payrail:plugin/*'],
    plugins,
    logLevel: 'error',
  });
}

async function build(args) {
  const out = option(args, '-o') ?? option(args, '--out');
  if (args.length !== 1 || !out) usage('build takes one entry file and -o OUT.wasm');
  const work = mkdtempSync(join(tmpdir(), 'payrail-plugin-'));
  try {
    const js = join(work, 'rule.js');
    await bundle(resolve(args[0]), js, 'neutral', false);
    const { componentize } = await import('@bytecodealliance/componentize-js');
    const { component } = await componentize({
      sourcePath: js,
      witPath: WIT,
      worldName: WORLD,
      disableFeatures: DISABLED_FEATURES,
    });
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(out, component);
    console.error(`payrail-plugin: ${out}: ${component.length} bytes`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function testFiles(dir) {
  if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) return [];
  return readdirSync(dir, { recursive: true })
    .filter((f) => String(f).endsWith('.test.ts'))
    .map((f) => join(dir, String(f)))
    .sort();
}

// Tests run natively in Node: each file is bundled with `host.log` replaced
// by a stand-in that writes to stderr, then run by `node --test`.
async function test(args) {
  const files = args.length > 0 ? args : testFiles('test');
  if (files.length === 0) usage('no test files (test/**/*.test.ts)');
  const work = mkdtempSync(join(tmpdir(), 'payrail-plugin-test-'));
  try {
    const bundled = [];
    for (const [i, f] of files.entries()) {
      const js = join(work, `${i}.test.mjs`);
      await bundle(resolve(f), js, 'node', true);
      bundled.push(js);
    }
    const run = spawnSync(process.execPath, ['--test', ...bundled], { stdio: 'inherit' });
    process.exitCode = run.status ?? 1;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// jco's type generator, given the WIT as text: its path-reading mode reads
// through a WASI filesystem shim that does not see this machine's paths.
async function types(args) {
  const out = option(args, '--out');
  if (args.length !== 0 || !out) usage('types takes --out DIR');
  const bindgen = await import('@bytecodealliance/jco-transpile/component');
  await bindgen.$init;
  const files = bindgen.generateTypes('payrail', {
    wit: { tag: 'source', val: readFileSync(WIT, 'utf8') },
    world: WORLD,
    guest: true,
    features: { tag: 'list', val: [] },
  });
  for (const [name, bytes] of files) {
    const path = join(out, name);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, bytes);
    console.error(`payrail-plugin: ${path}`);
  }
}

const [command, ...args] = process.argv.slice(2);
const commands = { build, test, types };
if (!Object.hasOwn(commands, command ?? '')) usage(`unknown command ${command ?? '(none)'}`);
try {
  await commands[command](args);
} catch (e) {
  console.error(`payrail-plugin ${command}: ${e?.stack ?? e}`);
  process.exit(1);
}

import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { brotliCompressSync } from 'node:zlib';
import { findChromium } from './helpers/browser.js';
import { runOk } from './helpers/ssh.js';
import { cleanupTmpDirs, makeTmpDir } from './helpers/tmp.js';

// Any file that exists stands in for a browser binary: findChromium only chooses, it does not launch.
const SOME_FILE = process.execPath;
const NO_FILE = '/nonexistent/chromium';

afterEach(cleanupTmpDirs);

describe('the Chromium the browser tests launch', () => {
  it('is CHROMIUM_PATH first, then Debian\'s /usr/bin/chromium, each with the environment inherited', async () => {
    const fromEnv = await findChromium({ env: { CHROMIUM_PATH: SOME_FILE }, debianPath: SOME_FILE });
    expect(fromEnv).toEqual({ executablePath: SOME_FILE, source: 'CHROMIUM_PATH', env: undefined });
    const debian = await findChromium({ env: {}, debianPath: SOME_FILE });
    expect(debian).toEqual({ executablePath: SOME_FILE, source: 'debian', env: undefined });
  });

  it('refuses a CHROMIUM_PATH that names no file instead of testing another browser', async () => {
    await expect(findChromium({ env: { CHROMIUM_PATH: NO_FILE }, debianPath: SOME_FILE })).rejects.toThrow(`CHROMIUM_PATH=${NO_FILE} does not exist`);
  });

  it('is otherwise the npm one, unpacked into a folder named after the package version, with its NSS libraries and fonts', async () => {
    const version = await sparticuzVersion();
    const found = await findChromium({ env: { LD_LIBRARY_PATH: '/opt/other' }, debianPath: NO_FILE });
    expect(found.source).toBe('npm');
    const dir = path.dirname(found.executablePath);
    expect(path.basename(dir)).toBe(`sparticuz-chromium-${version}`);
    expect(found.env?.LD_LIBRARY_PATH).toBe(`${path.join(dir, 'lib')}:/opt/other`);
    expect(found.env?.FONTCONFIG_PATH).toBe(dir);
    expect(await readFile(path.join(dir, 'fonts.conf'), 'utf8')).toContain(`<dir>${path.join(dir, 'fonts')}</dir>`);
    expect(existsSync(path.join(dir, 'fonts', 'Open_Sans', 'OpenSans-Regular.ttf'))).toBe(true);

    // The dynamic loader takes NSS, NSPR and expat from the unpacked lib/ (a minimal machine has none of them).
    const ldd = await runOk('ldd', [found.executablePath], { env: found.env });
    for (const lib of ['libnss3.so', 'libnspr4.so', 'libexpat.so.1']) {
      expect(ldd.stdout).toContain(`${lib} => ${path.join(dir, 'lib', lib)}`);
    }
    expect(ldd.stdout).not.toContain('not found');

    // Unpacked once: a second look finds the same folder.
    expect((await findChromium({ env: {}, debianPath: NO_FILE })).executablePath).toBe(found.executablePath);
  });

  it('is unpacked once when test files ask at the same time, also after a process was killed mid-unpack', async () => {
    const pkg = await smallPackage('0.0.1-test');
    const root = await makeTmpDir('chromium-unpack');
    const name = 'sparticuz-chromium-0.0.1-test';
    // What a killed process leaves: its lock (naming a pid that has exited) and its half-written side folder.
    const dead = spawnSync('true').pid;
    await mkdir(path.join(root, `${name}.lock`));
    await writeFile(path.join(root, `${name}.lock`, 'pid'), String(dead));
    await mkdir(path.join(root, `${name}.partial-${dead}-0badf00d`));

    const opts = { env: {}, debianPath: NO_FILE, unpackRoot: root, packageDir: pkg };
    const [a, b] = await Promise.all([findChromium(opts), findChromium(opts)]);
    expect(a.executablePath).toBe(path.join(root, name, 'chromium'));
    expect(b.executablePath).toBe(a.executablePath);
    expect(await readdir(root)).toEqual([name]);
    expect(await readFile(a.executablePath, 'utf8')).toBe(STAND_IN);
    expect(existsSync(path.join(root, name, 'lib', 'libnss3.so'))).toBe(true);
  });

  it('is unpacked again after an upgrade of the package, never the old version\'s binary', async () => {
    const root = await makeTmpDir('chromium-unpack');
    const opts = { env: {}, debianPath: NO_FILE, unpackRoot: root };
    const old = await findChromium({ ...opts, packageDir: await smallPackage('0.0.1-test') });
    const upgraded = await findChromium({ ...opts, packageDir: await smallPackage('0.0.2-test') });
    expect(upgraded.executablePath).toBe(path.join(root, 'sparticuz-chromium-0.0.2-test', 'chromium'));
    expect(upgraded.executablePath).not.toBe(old.executablePath);
    expect(upgraded.env?.LD_LIBRARY_PATH).toBe(path.join(root, 'sparticuz-chromium-0.0.2-test', 'lib'));
  });
});

const STAND_IN = '#!/bin/sh\necho "stand-in for the 200 MB binary"\n';

/**
 * A package shaped like @sparticuz/chromium: the real archives of NSS, fonts and SwiftShader (a few MB),
 * with a small script compressed in place of the browser, so these tests stay quick and small on disk.
 */
async function smallPackage(version: string): Promise<string> {
  const real = path.join(path.dirname(createRequire(import.meta.url).resolve('@sparticuz/chromium')), '..', '..');
  const dir = await makeTmpDir('sparticuz-package');
  await mkdir(path.join(dir, 'bin'));
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: '@sparticuz/chromium', version }));
  for (const tar of ['al2023.tar.br', 'fonts.tar.br', 'swiftshader.tar.br']) await copyFile(path.join(real, 'bin', tar), path.join(dir, 'bin', tar));
  await writeFile(path.join(dir, 'bin', 'chromium.br'), brotliCompressSync(STAND_IN));
  return dir;
}

/** The version of the installed @sparticuz/chromium, from its package.json (hidden by its exports map). */
async function sparticuzVersion(): Promise<string> {
  const require = createRequire(import.meta.url);
  const pkgJson = path.join(path.dirname(require.resolve('@sparticuz/chromium')), '..', '..', 'package.json');
  return (JSON.parse(await readFile(pkgJson, 'utf8')) as { version: string }).version;
}

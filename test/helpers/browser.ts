import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { brotliDecompress, createBrotliDecompress } from 'node:zlib';
import { chromium, type Browser } from 'playwright-core';

/** Debian's package, used when installed (the distribution keeps it patched). */
export const DEBIAN_CHROMIUM = '/usr/bin/chromium';

/** Where the npm Chromium is unpacked: inside node_modules, so `npm ci` removes it and no other user can plant one. */
const UNPACK_ROOT = fileURLToPath(new URL('../../node_modules/.cache/cascade-sync/', import.meta.url));

/** A Chromium to launch, where it came from, and the environment its process needs (undefined: inherit ours). */
export interface ChromiumInstall {
  executablePath: string;
  source: 'CHROMIUM_PATH' | 'debian' | 'npm';
  env: Record<string, string> | undefined;
}

/** Where to look; the defaults are the real ones, tests of this helper pass their own. */
export interface FindChromiumOptions {
  env?: NodeJS.ProcessEnv;
  debianPath?: string;
  unpackRoot?: string;
  /** Root of an @sparticuz/chromium-shaped package (package.json, bin/*.br); default: the installed one. */
  packageDir?: string;
}

/**
 * Picks the Chromium for the browser tests: `CHROMIUM_PATH` when set, else Debian's /usr/bin/chromium,
 * else the one the `@sparticuz/chromium` dev dependency carries, unpacked on first use (about 200 MB,
 * a couple of seconds) into a folder named after the package version. Rejects when `CHROMIUM_PATH`
 * names no file (a typo must not silently test another browser), or when the package's files cannot
 * be read or unpacked.
 */
export async function findChromium(opts: FindChromiumOptions = {}): Promise<ChromiumInstall> {
  const env = opts.env ?? process.env;
  const fromEnv = env.CHROMIUM_PATH;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`CHROMIUM_PATH=${fromEnv} does not exist: unset it to use Debian's ${DEBIAN_CHROMIUM} or the npm Chromium`);
    return { executablePath: fromEnv, source: 'CHROMIUM_PATH', env: undefined };
  }
  const debian = opts.debianPath ?? DEBIAN_CHROMIUM;
  if (existsSync(debian)) return { executablePath: debian, source: 'debian', env: undefined };
  return npmChromium(opts.packageDir ?? (await installedPackageDir()), opts.unpackRoot ?? UNPACK_ROOT, env);
}

/**
 * Launches headless Chromium (found by findChromium) with Playwright's own defaults: no extra flags,
 * so web security and site isolation stay on (Playwright passes --no-sandbox itself unless asked for
 * the sandbox, which is what lets it run as root). Close the browser in afterAll/afterEach.
 */
export async function launchChromium(): Promise<Browser> {
  const found = await findChromium();
  return chromium.launch({ executablePath: found.executablePath, headless: true, ...(found.env ? { env: found.env } : {}) });
}

/** The root folder of the installed @sparticuz/chromium. */
async function installedPackageDir(): Promise<string> {
  // The package's exports map hides package.json: walk up from its entry point (<root>/build/cjs/index.cjs).
  const entry = createRequire(import.meta.url).resolve('@sparticuz/chromium');
  for (let dir = path.dirname(entry); ; dir = path.dirname(dir)) {
    const manifest = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8').catch(() => '{}')) as { name?: string };
    if (manifest.name === '@sparticuz/chromium') return dir;
    if (path.dirname(dir) === dir) throw new Error(`cannot find the package.json of @sparticuz/chromium above ${entry}`);
  }
}

/**
 * The npm Chromium, unpacked once per package version. The package's own executablePath() is not used:
 * it unpacks to a fixed /tmp/chromium (an old binary would be reused after an upgrade, and any user
 * could plant one there) and skips the NSS libraries outside cloud function hosts.
 */
async function npmChromium(packageDir: string, unpackRoot: string, env: NodeJS.ProcessEnv): Promise<ChromiumInstall> {
  const { version } = JSON.parse(await readFile(path.join(packageDir, 'package.json'), 'utf8')) as { version: string };
  const dir = path.join(unpackRoot, `sparticuz-chromium-${version}`);
  if (!existsSync(dir)) await unpackOnce(path.join(packageDir, 'bin'), dir);
  const lib = path.join(dir, 'lib');
  return {
    executablePath: path.join(dir, 'chromium'),
    source: 'npm',
    env: {
      ...definedOnly(env),
      // The binary links NSS and expat dynamically; a minimal machine has neither (Debian's libnss3 comes with its chromium).
      LD_LIBRARY_PATH: [lib, env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
      // Our fonts.conf names only the bundled fonts: the page renders the same with or without system fonts.
      FONTCONFIG_PATH: dir,
    },
  };
}

/**
 * Unpacks unless another process is already doing it: test files run in parallel, and two unpacks at
 * once would double the CPU time and the disk use. The lock (a folder holding its owner's pid) only
 * saves that work; correctness comes from unpackAtomically, so a lock whose owner is gone (killed
 * mid-unpack) is simply removed and taken. Rejects after two minutes of waiting.
 */
async function unpackOnce(bin: string, dir: string): Promise<void> {
  const lock = `${dir}.lock`;
  const deadline = Date.now() + 120_000;
  while (!existsSync(dir)) {
    if (await takeLock(lock)) {
      try {
        if (!existsSync(dir)) await unpackAtomically(bin, dir);
      } finally {
        await rm(lock, { recursive: true, force: true });
      }
      return;
    }
    const owner = Number(await readFile(path.join(lock, 'pid'), 'utf8').catch(() => ''));
    // A lock without a pid yet is being taken right now.
    if (owner && !isRunning(owner)) {
      await rm(lock, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for another process to unpack Chromium into ${dir} (remove ${lock} if none is running)`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Creates the lock folder with our pid in it; false when it already exists. */
async function takeLock(lock: string): Promise<boolean> {
  await mkdir(path.dirname(lock), { recursive: true });
  try {
    await mkdir(lock);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  await writeFile(path.join(lock, 'pid'), String(process.pid));
  return true;
}

/** Whether a process with this pid exists (signal 0 checks without sending anything). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Unpacks into a side folder of our own and renames it into place, so nothing ever sees a half-written
 * browser and two unpacks at once cannot mix; the loser of such a race drops its copy. Side folders of
 * processes that died mid-unpack are removed first.
 */
async function unpackAtomically(bin: string, dir: string): Promise<void> {
  await removeDeadPartials(dir);
  // The pid lets a later run tell a dead process's folder; the random part keeps two calls of one process apart.
  const partial = `${dir}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
  await mkdir(partial, { recursive: true });
  try {
    await Promise.all([
      pipeline(createReadStream(path.join(bin, 'chromium.br')), createBrotliDecompress(), createWriteStream(path.join(partial, 'chromium'), { mode: 0o755 })),
      // libEGL/libGLESv2 beside the binary: Chromium's software GL (WebGL), loaded from the executable's folder.
      extractTarBr(path.join(bin, 'swiftshader.tar.br'), partial),
      extractTarBr(path.join(bin, 'al2023.tar.br'), partial), // lib/libnss3.so, libnspr4.so, libexpat.so.1, ...
      extractTarBr(path.join(bin, 'fonts.tar.br'), partial), // fonts/Open_Sans/*.ttf (its fonts.conf is replaced below)
    ]);
    await writeFile(path.join(partial, 'fonts.conf'), fontsConf(dir));
    await rename(partial, dir);
  } catch (err) {
    await rm(partial, { recursive: true, force: true });
    if (!existsSync(dir)) throw err;
  }
}

/** Removes `<dir>.partial-<pid>-<random>` folders whose process no longer runs. */
async function removeDeadPartials(dir: string): Promise<void> {
  const prefix = `${path.basename(dir)}.partial-`;
  for (const name of await readdir(path.dirname(dir))) {
    const pid = name.startsWith(prefix) ? Number(name.slice(prefix.length).split('-')[0]) : 0;
    if (pid && !isRunning(pid)) await rm(path.join(path.dirname(dir), name), { recursive: true, force: true });
  }
}

/** A fontconfig file naming only the unpacked fonts and a cache beside them. */
function fontsConf(dir: string): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return `<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n  <dir>${esc(path.join(dir, 'fonts'))}</dir>\n  <cachedir>${esc(path.join(dir, 'fonts-cache'))}</cachedir>\n</fontconfig>\n`;
}

/**
 * Extracts a brotli-compressed tar (regular files and folders only, as the package ships them) into
 * `dest`. Rejects on any other entry type or a path leaving `dest`, so a changed archive fails loudly.
 */
export async function extractTarBr(file: string, dest: string): Promise<void> {
  const tar = await promisify(brotliDecompress)(await readFile(file));
  for (const entry of tarEntries(tar)) {
    const target = path.resolve(dest, entry.name);
    if (!target.startsWith(path.resolve(dest) + path.sep)) throw new Error(`${file}: entry ${entry.name} leaves the target folder`);
    if (entry.type === 'dir') {
      await mkdir(target, { recursive: true });
    } else {
      await mkdir(path.dirname(target), { recursive: true });
      await writeFile(target, entry.data, { mode: entry.mode & 0o755 });
    }
  }
}

interface TarEntry {
  name: string;
  type: 'file' | 'dir';
  mode: number;
  data: Buffer;
}

/** The entries of an uncompressed ustar/GNU tar archive, read from its 512-byte headers. */
function* tarEntries(tar: Buffer): Generator<TarEntry> {
  const field = (h: Buffer, start: number, len: number) => h.subarray(start, start + len).toString('utf8').replace(/\0.*$/s, '');
  const octal = (h: Buffer, start: number, len: number) => parseInt(field(h, start, len).trim() || '0', 8);
  for (let at = 0; at + 512 <= tar.length; ) {
    const header = tar.subarray(at, at + 512);
    if (header.every((b) => b === 0)) return; // end-of-archive marker
    const size = octal(header, 124, 12);
    const flag = String.fromCharCode(header[156] ?? 0);
    // POSIX ustar splits long names into prefix/name; GNU tar ("ustar  ") uses those bytes for times.
    const prefix = field(header, 257, 6) === 'ustar' ? field(header, 345, 155) : '';
    const name = prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100);
    const data = tar.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
    if (flag === '0' || flag === '\0') yield { name, type: 'file', mode: octal(header, 100, 8), data };
    else if (flag === '5') yield { name, type: 'dir', mode: octal(header, 100, 8), data };
    else throw new Error(`tar entry ${name}: type '${flag}' is not supported (only files and folders)`);
  }
}

/** process.env without its undefined values, as Playwright's `env` option wants. */
function definedOnly(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

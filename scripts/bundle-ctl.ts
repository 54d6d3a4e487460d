// Bundles debvisorctl (src/cli/debvisorctl.ts) with esbuild into dist/cli/debvisorctl.js (over
// tsc's output of the entry): one file per lazily loaded command module plus shared chunks in
// dist/cli/bundle/, every npm dependency inside. Start-up then reads a few files instead of
// resolving hundreds of modules (bench/results-cli.md). Run by `npm run build` after tsc and by
// scripts/build-deb; the rest of dist/ (daemon, dev tools) stays tsc's.
//
//   node scripts/bundle-ctl.ts [OUT_DIR]     (default dist/cli)
import { readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * src/version.ts reads ../package.json next to itself; inside a chunk that path is wrong, so the
 * bundle carries the version as a constant (the .deb is built from the same package.json).
 */
function versionConstant(version: string): Plugin {
  return {
    name: 'version-constant',
    setup(context) {
      context.onLoad({ filter: /[\\/]src[\\/]version\.ts$/ }, () => ({ contents: `export const VERSION = ${JSON.stringify(version)};`, loader: 'ts' }));
    },
  };
}

export async function bundleCtl(outDir: string = join(ROOT, 'dist', 'cli')): Promise<void> {
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  rmSync(join(outDir, 'bundle'), { recursive: true, force: true });
  await build({
    absWorkingDir: ROOT,
    entryPoints: { debvisorctl: 'src/cli/debvisorctl.ts' },
    outdir: outDir,
    chunkNames: 'bundle/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node22',
    // The CommonJS dependencies (grpc-js) call require() for Node's own modules.
    banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
    plugins: [versionConstant(version)],
    legalComments: 'none',
    logLevel: 'warning',
    allowOverwrite: true,
  });
  // tsc's map of the entry no longer matches it.
  rmSync(join(outDir, 'debvisorctl.js.map'), { force: true });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await bundleCtl(process.argv[2] === undefined ? undefined : resolve(process.argv[2]));
}

#!/usr/bin/env node
// debvisorctl: the operator's command line for debvisor-rpcd. This entry only checks the
// Node version; the commands are imported after it (see src/node-version.ts).
import { exitOnUnsupportedNode } from '../node-version.js';

exitOnUnsupportedNode('debvisorctl');
// Node's compile cache saves 10-15 % of a call's CPU (bench/results-cli.md). It lives in the
// user's own cache directory, never a shared /tmp one another user could plant code cache in;
// any failure (read-only home, NODE_DISABLE_COMPILE_CACHE) just leaves it off.
const [module, os, path] = await Promise.all([import('node:module'), import('node:os'), import('node:path')]);
const cacheHome = process.env.XDG_CACHE_HOME && path.isAbsolute(process.env.XDG_CACHE_HOME) ? process.env.XDG_CACHE_HOME : path.join(os.homedir(), '.cache');
module.enableCompileCache(path.join(cacheHome, 'debvisor', 'node-compile-cache'));
const { runDebvisorctl } = await import('./program.js');
await runDebvisorctl();

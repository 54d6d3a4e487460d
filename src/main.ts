#!/usr/bin/env node
// debvisor-rpcd: the DebVisor control-plane daemon. This entry only checks the Node version;
// the daemon is imported after it, so an old Node gets a message instead of an import crash.
import { exitOnUnsupportedNode } from './node-version.js';

exitOnUnsupportedNode('debvisor-rpcd');
await import('./daemon/run.js');

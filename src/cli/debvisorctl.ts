#!/usr/bin/env node
// debvisorctl: the operator's command line for debvisor-rpcd. This entry only checks the
// Node version; the commands are imported after it (see src/node-version.ts).
import { exitOnUnsupportedNode } from '../node-version.js';

exitOnUnsupportedNode('debvisorctl');
const { runDebvisorctl } = await import('./program.js');
await runDebvisorctl();

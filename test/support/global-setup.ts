// Builds dist/ once before the daemon project's suites: they run the real daemon and CLI from the
// build output. Unit suites are in another project and never wait for this build.
import { execFileSync } from 'node:child_process';
import type { TestProject } from 'vitest/node';

export default function setup(project: TestProject): void {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
  project.provide('distBuilt', true);
}

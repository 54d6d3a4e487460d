// Builds dist/ once before the daemon project's suites: they run the real daemon and CLI from the
// build output. Unit suites are in another project and never wait for this build.
import { execFileSync } from 'node:child_process';
import type { TestProject } from 'vitest/node';

export default function setup(project: TestProject): void {
  // As shipped: tsc, then the debvisorctl bundle (scripts/bundle-ctl.ts).
  execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
  project.provide('distBuilt', true);
}

// The -o formats (src/cli/output.ts prints them). Apart so that the program's start-up, which
// declares -o, does not load the printers.
export const FORMATS = ['text', 'wide', 'json', 'yaml'] as const;
export type Format = (typeof FORMATS)[number];
/** What a command is told: a document (json, also for yaml) or text (also for wide). */
export type Output = 'text' | 'json';

/** What commands see as flags.output for a format. */
export function commandOutput(chosen: Format): Output {
  return chosen === 'json' || chosen === 'yaml' ? 'json' : 'text';
}

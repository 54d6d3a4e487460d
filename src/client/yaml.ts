// The yaml package, imported only when a command needs it (a contexts file, -o yaml).
import type * as Yaml from 'yaml';

export async function loadYaml(): Promise<typeof Yaml> {
  const module = await import('yaml');
  // In the esbuild bundle a CommonJS package (yaml's "node" build) imported dynamically has only
  // its default export, the whole module.exports; under plain Node its names are there too.
  return (module as typeof Yaml & { default?: typeof Yaml }).default ?? module;
}

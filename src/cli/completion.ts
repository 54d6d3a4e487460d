// Shell completion for debvisorctl, generated from the commander tree itself (every module
// loaded), so it never drifts from the commands: `debvisorctl completion bash|zsh|fish`, and the
// files the .deb installs (src/dev/manpages.ts writes them at build).
//
// Each script holds one table, command path → words (subcommands and options), and completes the
// words of the longest command path typed so far; it falls back to file names.
import { Argument, type Command } from 'commander';
import { UsageError } from './exit-codes.js';

export const SHELLS = ['bash', 'zsh', 'fish'] as const;
export type Shell = (typeof SHELLS)[number];

interface CommandNode {
  /** Command path below the program, e.g. ['vm', 'snapshot', 'list']. */
  readonly names: readonly string[];
  readonly command: Command;
}

/** Every command below `program`, depth first, with its full name path. */
export function commandTree(program: Command): CommandNode[] {
  const walk = (command: Command, names: readonly string[]): CommandNode[] =>
    command.commands.flatMap((child) => [{ names: [...names, child.name()], command: child }, ...walk(child, [...names, child.name()])]);
  return walk(program, []);
}

/** Long and short option names of a command, as the shell completes them. */
function optionWords(command: Command): string[] {
  return command.options.filter((option) => !option.hidden).flatMap((option) => [option.long, option.short].filter((flag): flag is string => flag !== undefined));
}

/** The completion table: each command path (joined by spaces; '' for the program) with its words and subcommand descriptions. */
function table(program: Command): { path: string; words: string[]; described: [string, string][] }[] {
  return [{ names: [] as readonly string[], command: program }, ...commandTree(program)].map(({ names, command }) => ({
    path: names.join(' '),
    words: [...new Set([...command.commands.map((child) => child.name()), ...optionWords(command), '--help'])],
    described: command.commands.map((child) => [child.name(), child.description()] as [string, string]),
  }));
}

/** Single-quoted for sh, zsh and fish (a quote inside becomes '\''; fish reads \' inside quotes). */
function quote(text: string, shell: Shell): string {
  return shell === 'fish' ? `'${text.replace(/[\\']/g, (c) => `\\${c}`)}'` : `'${text.replace(/'/g, `'\\''`)}'`;
}

export function bashCompletion(program: Command): string {
  const cases = table(program).map(({ path, words }) => `    ${quote(path, 'bash')}) words=${quote(words.join(' '), 'bash')} ;;`);
  return [
    '# bash completion for debvisorctl. Generated from its commands (debvisorctl completion bash); do not edit.',
    '_debvisorctl() {',
    '  local cur path="" word i words=""',
    '  cur="${COMP_WORDS[COMP_CWORD]}"',
    '  # The command path typed so far: the words before the cursor that are commands.',
    '  for ((i = 1; i < COMP_CWORD; i++)); do',
    '    word="${COMP_WORDS[i]}"',
    '    case "$word" in -*) continue ;; esac',
    '    if _debvisorctl_words "${path:+$path }$word" >/dev/null; then path="${path:+$path }$word"; fi',
    '  done',
    '  words="$(_debvisorctl_words "$path")"',
    '  mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")',
    '}',
    '_debvisorctl_words() {',
    '  local words',
    '  case "$1" in',
    ...cases,
    '    *) return 1 ;;',
    '  esac',
    '  printf "%s\\n" "$words"',
    '}',
    'complete -o default -F _debvisorctl debvisorctl',
    '',
  ].join('\n');
}

export function zshCompletion(program: Command): string {
  const cases = table(program).map(({ path, words }) => `    ${quote(path, 'zsh')}) print -r -- ${quote(words.join(' '), 'zsh')} ;;`);
  return [
    '#compdef debvisorctl',
    '# zsh completion for debvisorctl. Generated from its commands (debvisorctl completion zsh); do not edit.',
    '# Install: debvisorctl completion zsh > "${fpath[1]}/_debvisorctl", or source it after compinit.',
    '_debvisorctl_words() {',
    '  case "$1" in',
    ...cases,
    '    *) return 1 ;;',
    '  esac',
    '}',
    '_debvisorctl() {',
    '  # ("path" is taken in zsh: it is tied to $PATH.)',
    '  local cmdpath="" word i',
    '  local -a candidates',
    '  for ((i = 2; i < CURRENT; i++)); do',
    '    word="${words[i]}"',
    '    [[ "$word" == -* ]] && continue',
    '    if _debvisorctl_words "${cmdpath:+$cmdpath }$word" >/dev/null; then cmdpath="${cmdpath:+$cmdpath }$word"; fi',
    '  done',
    '  candidates=(${=$(_debvisorctl_words "$cmdpath")})',
    '  compadd -a candidates',
    '  _files',
    '}',
    'if [[ "${funcstack[1]}" == "_debvisorctl" ]]; then',
    '  _debvisorctl "$@"',
    'else',
    '  compdef _debvisorctl debvisorctl',
    'fi',
    '',
  ].join('\n');
}

export function fishCompletion(program: Command): string {
  const cases = table(program).map(({ path, words, described }) => {
    const descriptions = new Map(described);
    const lines = words.map((word) => (descriptions.has(word) ? `${word}\t${descriptions.get(word) ?? ''}` : word));
    return [`        case ${quote(path, 'fish')}`, `            printf '%s\\n' ${lines.map((line) => quote(line, 'fish')).join(' ')}`];
  });
  return [
    '# fish completion for debvisorctl. Generated from its commands (debvisorctl completion fish); do not edit.',
    'function __debvisorctl_words',
    '    switch "$argv"',
    ...cases.flat(),
    "        case '*'",
    '            return 1',
    '    end',
    'end',
    'function __debvisorctl_complete',
    '    set -l cmdpath ""',
    '    for word in (commandline -opc)[2..-1]',
    "        string match -q -- '-*' $word; and continue",
    '        set -l next (string trim -- "$cmdpath $word")',
    '        if __debvisorctl_words $next >/dev/null',
    '            set cmdpath $next',
    '        end',
    '    end',
    '    __debvisorctl_words $cmdpath',
    'end',
    "complete -c debvisorctl -a '(__debvisorctl_complete)'",
    '',
  ].join('\n');
}

export function completionScript(program: Command, shell: Shell): string {
  switch (shell) {
    case 'bash':
      return bashCompletion(program);
    case 'zsh':
      return zshCompletion(program);
    case 'fish':
      return fishCompletion(program);
  }
}

export function registerCompletionCommand(program: Command, fullProgram: () => Promise<Command>): void {
  program
    .command('completion')
    .description('print a shell completion script (bash, zsh or fish)')
    .addArgument(new Argument('<shell>', 'bash, zsh or fish').choices(SHELLS))
    .addHelpText(
      'after',
      '\nbash: source <(debvisorctl completion bash)   (the .deb installs it for every shell user)\n' +
        'zsh:  debvisorctl completion zsh > "${fpath[1]}/_debvisorctl"\n' +
        'fish: debvisorctl completion fish > ~/.config/fish/completions/debvisorctl.fish',
    )
    .action(async (shell: Shell) => {
      if (!SHELLS.includes(shell)) throw new UsageError(`unknown shell "${shell}"`);
      process.stdout.write(completionScript(await fullProgram(), shell));
    });
}

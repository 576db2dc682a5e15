/**
 * Shell completion: one generator (src/client/cli/commands/completion.ts) for bash and zsh, from the
 * command tree. The bash script is run by bash itself, completing real command lines; the zsh script
 * offers the same words for every command path (and is syntax-checked by zsh where it is installed).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { bashCompletion, buildProgram, zshCompletion } from '../../src/client/cli.js';

/** What bash offers for the last word of `line` (the words before it typed in full). */
function complete(line: string[]): string[] {
  const words = line.map((w) => `'${w}'`).join(' ');
  const script = `${bashCompletion(buildProgram())}
COMP_WORDS=(${words}); COMP_CWORD=${line.length - 1}; _xdpctl; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = spawnSync('bash', ['--norc', '--noprofile', '-c', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean).sort();
}

describe('shell completion', () => {
  it('bash completes commands, subcommands, options, choices and files', () => {
    assert.deepEqual(complete(['xdpctl', 'r']), ['rules']);
    assert.deepEqual(complete(['xdpctl', 'rules', 'a']), ['add', 'apply']);
    // Global options and their values are skipped on the way to the command path.
    assert.deepEqual(complete(['xdpctl', '--server', 'unix:/x', '-o', 'json', 'links', 'd']), ['disconnect']);
    assert.ok(complete(['xdpctl', 'rules', 'add', '--b']).includes('--backend'));
    assert.deepEqual(complete(['xdpctl', 'rules', 'add', '--udp-checksum', '']), ['update', 'zero']);
    assert.deepEqual(complete(['xdpctl', '-o', '']), ['json', 'table', 'yaml']);
    assert.deepEqual(
      complete(['xdpctl', 'completion', '']).filter((w) => !w.startsWith('-')),
      ['bash', 'zsh'],
    );
    assert.deepEqual(complete(['xdpctl', 'watch', '--interval', '']), [], 'a value: nothing to offer');
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-completion-'));
    try {
      writeFileSync(join(dir, 'rules.yaml'), 'rules: []\n');
      assert.deepEqual(complete(['xdpctl', 'rules', 'apply', '-f', join(dir, 'ru')]), [join(dir, 'rules.yaml')]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('zsh offers the same words for every command path', () => {
    const program = buildProgram();
    const offered = (script: string, re: RegExp) =>
      [...script.matchAll(re)].map((m) => `${m[1]}=${m[2].split(' ').sort().join(' ')}`).sort();
    const bash = offered(bashCompletion(program), /^ {4}"([^"]*)"\) COMPREPLY=\(\$\(compgen -W "([^"]*)"/gm);
    const zsh = offered(zshCompletion(program), /^ {4}"([^"]*)"\) compadd -- ([^;]*);;/gm);
    assert.ok(bash.length > 15, `${bash.length} command paths`);
    assert.deepEqual(zsh, bash);
    const z = spawnSync('zsh', ['-n'], { input: zshCompletion(program), encoding: 'utf8' });
    if (!z.error) assert.equal(z.status, 0, z.stderr);
  });
});

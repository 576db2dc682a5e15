/** `xdpctl rules`: list, get, add, update, delete, apply -f. */
import { Command, Option } from 'commander';

import { CounterKind } from '../../../gen/xdpctl/v1/counters.js';
import {
  ApplyRulesResponse,
  CreateRuleResponse,
  DeleteRuleResponse,
  GetRuleResponse,
  ListRulesResponse,
  Protocol,
  UdpChecksumMode,
  UpdateRuleResponse,
  type Backend,
  type Rule,
} from '../../../gen/xdpctl/v1/rule.js';
import { getAllCounters, listAllRules } from '../../index.js';
import { CliError, EXIT } from '../errors.js';
import { collectBackend, collectLabel, collectList, examples, parseUint, parseUint64 } from '../flags.js';
import {
  action,
  appliedRuleNotes,
  countersToJson,
  print,
  printData,
  printList,
  printTable,
  RULE_HEAD,
  ruleDetails,
  ruleRow,
  stateNote,
  summary,
} from '../output.js';
import { loadRules, run } from '../session.js';

interface RuleFlags {
  port?: number;
  ingress?: string[];
  dest?: string;
  source?: string[];
  backend?: Backend[];
  udpChecksum?: 'update' | 'zero';
  label?: Record<string, string>;
  generation?: number;
}

const CHECKSUM = { update: UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE, zero: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO };

function ruleFromFlags(name: string, f: RuleFlags): Rule {
  return {
    name,
    match: {
      protocol: Protocol.PROTOCOL_UDP,
      port: f.port ?? 0,
      destination: f.dest ?? '',
      sourcePrefixes: f.source ?? [],
    },
    ingressInterfaces: f.ingress ?? [],
    backends: f.backend ?? [],
    udpChecksum: f.udpChecksum ? CHECKSUM[f.udpChecksum] : UdpChecksumMode.UDP_CHECKSUM_MODE_UNSPECIFIED,
    labels: f.label ?? {},
    generation: 0n,
  };
}

/** The current rule with the given flags replacing its fields (output-only fields dropped). */
function ruleWithFlags(cur: Rule, f: RuleFlags): Rule {
  return {
    name: cur.name,
    match: {
      protocol: cur.match?.protocol ?? Protocol.PROTOCOL_UDP,
      port: f.port ?? cur.match?.port ?? 0,
      destination: f.dest ?? cur.match?.destination ?? '',
      sourcePrefixes: f.source ?? cur.match?.sourcePrefixes ?? [],
    },
    ingressInterfaces: f.ingress ?? cur.ingressInterfaces,
    backends: f.backend ?? cur.backends,
    udpChecksum: f.udpChecksum ? CHECKSUM[f.udpChecksum] : cur.udpChecksum,
    labels: f.label ?? cur.labels,
    generation: 0n,
  };
}

function ruleOptions(cmd: Command, update: boolean): Command {
  const port = new Option('--port <port>', 'UDP destination port (1-65535)').argParser((v) => parseUint(v));
  const ingress = new Option(
    '--ingress <iface>',
    'ingress interface; repeat or comma-separate for several' + (update ? ' (replaces the list)' : ''),
  ).argParser(collectList);
  if (update) cmd.addOption(port).addOption(ingress);
  else {
    port.description += ' (required)';
    ingress.description += ' (required)';
    cmd.addOption(port.makeOptionMandatory()).addOption(ingress.makeOptionMandatory());
  }
  return cmd
    .option('--dest <ip>', 'destination address to match (empty: any)')
    .addOption(
      new Option(
        '--source <prefix>',
        'source prefix to accept (CIDR or address); repeatable' + (update ? ' (replaces the list; "" for any)' : ''),
      ).argParser(collectList),
    )
    .addOption(
      new Option(
        '--backend <ip,mac,iface[,weight]>',
        'backend; repeatable; MAC may be empty (IP,,IFACE) to resolve it from the neighbour table' +
          (update ? ' (replaces the whole list)' : ''),
      ).argParser(collectBackend),
    )
    .addOption(new Option('--udp-checksum <mode>', 'UDP checksum handling').choices(['update', 'zero']))
    .addOption(
      new Option('--label <key=value>', 'label; repeatable' + (update ? ' (replaces all labels)' : '')).argParser(
        collectLabel,
      ),
    );
}

export function registerRules(program: Command): void {
  const rules = program.command('rules').description('manage UDP redirect rules');
  rules
    .command('list')
    .alias('ls')
    .description('list the rules')
    .addHelpText('after', examples('xdpctl rules list\nxdpctl -o yaml rules list'))
    .action(
      run(async (s, o) => {
        const all = await listAllRules(s.client.rules, s.call());
        if (o.output !== 'table') {
          return printList(o.output, 'rules', ListRulesResponse.toJSON({ rules: all, nextPageToken: '' }));
        }
        printTable(RULE_HEAD, all.map(ruleRow), 'no rules');
      }),
    );

  rules
    .command('get')
    .description("show one rule with its status and counters (the rule's and each backend's)")
    .argument('<name>', 'rule name')
    .addHelpText('after', examples('xdpctl rules get web\nxdpctl -o json rules get web'))
    .action(
      run(async (s, o, [name]) => {
        const res = await s.client.rules.getRule({ name }, s.call());
        const counters = await getAllCounters(
          s.client.counters,
          { kinds: [CounterKind.COUNTER_KIND_RULES, CounterKind.COUNTER_KIND_BACKENDS], rules: [name] },
          s.call(),
        );
        if (o.output !== 'table') {
          return printData(o.output, {
            ...(GetRuleResponse.toJSON(res) as object),
            counters: countersToJson(counters),
          });
        }
        print(ruleDetails(res.rule!, counters));
      }),
    );

  ruleOptions(
    rules
      .command('add')
      .alias('create')
      .description('create a rule')
      .argument('<name>', 'rule name (a lowercase DNS label)'),
    false,
  )
    .addHelpText(
      'after',
      examples(`
        xdpctl rules add web --port 7999 --source 192.168.122.10 --backend 172.17.0.2,02:42:ac:11:00:02,veth25 --ingress eth0
        xdpctl rules add dns --port 53 --ingress eth0,eth1 --backend 10.0.0.2,,veth1 --backend 10.0.0.3,,veth2,3
        xdpctl rules add syslog --port 514 --dest 192.0.2.1 --ingress eth0 --backend 10.0.0.9,,veth9 --udp-checksum zero --label owner=ops`),
    )
    .action(
      run(async (s, o, [name], f) => {
        const res = await s.client.rules.createRule(
          { rule: ruleFromFlags(name, f as RuleFlags) },
          s.call({ readBack: `xdpctl rules get ${name}` }),
        );
        if (o.output !== 'table') return printData(o.output, CreateRuleResponse.toJSON(res));
        print(`rule ${res.rule!.name} created (generation ${res.rule!.generation})${stateNote(res.rule!)}`);
      }),
    );

  ruleOptions(
    rules
      .command('update')
      .description('change a rule: the given flags replace the current values, the others are kept')
      .argument('<name>', 'rule name'),
    true,
  )
    .option(
      '--generation <n>',
      'update only if the rule is still at this generation (default: the one read)',
      parseUint64,
    )
    .addHelpText(
      'after',
      examples(`
        xdpctl rules update web --backend 172.17.0.2,,veth25 --backend 172.17.0.3,,veth26
        xdpctl rules update web --port 8000 --generation 3
        xdpctl rules update web --source ""        # accept any source`),
    )
    .action(
      run(async (s, o, [name], flags) => {
        const f = flags as RuleFlags;
        const { generation, ...changes } = f;
        if (!Object.values(changes).some((v) => v !== undefined)) {
          throw new CliError(
            'rules update: nothing to change (give --port, --ingress, --dest, --source, --backend, --udp-checksum or --label)',
            EXIT.USAGE,
          );
        }
        const cur = (await s.client.rules.getRule({ name }, s.call())).rule!;
        const res = await s.client.rules.updateRule(
          { rule: ruleWithFlags(cur, f), expectedGeneration: generation ?? cur.generation },
          s.call({ readBack: `xdpctl rules get ${name}` }),
        );
        if (o.output !== 'table') return printData(o.output, UpdateRuleResponse.toJSON(res));
        const r = res.rule!;
        if (res.repaired.length) {
          // Same specification, but the kernel held the rule otherwise (another tool): said, not "unchanged".
          print(
            `rule ${r.name}: specification unchanged (generation ${r.generation}), but the kernel held it otherwise: ` +
              `rewritten:\n${res.repaired.map((l) => `  ${l}`).join('\n')}${stateNote(r)}`,
          );
          return;
        }
        const verb = r.generation === cur.generation ? 'unchanged' : 'updated';
        print(`rule ${r.name} ${verb} (generation ${r.generation})${stateNote(r)}`);
      }),
    );

  rules
    .command('delete')
    .alias('rm')
    .description('delete a rule')
    .argument('<name>', 'rule name')
    .option('--generation <n>', 'delete only if the rule is still at this generation', parseUint64)
    .addHelpText('after', examples('xdpctl rules delete web\nxdpctl rules delete web --generation 4'))
    .action(
      run(async (s, o, [name], f) => {
        const res = await s.client.rules.deleteRule(
          { name, expectedGeneration: (f.generation as bigint | undefined) ?? 0n },
          s.call({ readBack: `xdpctl rules get ${name}` }),
        );
        if (o.output !== 'table') return printData(o.output, DeleteRuleResponse.toJSON(res));
        print(`rule ${name} deleted`);
      }),
    );

  rules
    .command('apply')
    .description(
      'declaratively set every rule from the "rules:" section of a config file (the format of xdpctld --config); ' +
        'rules not in the file are deleted',
    )
    .requiredOption('-f, --file <file>', 'YAML config file ("-" for stdin)')
    .option('--dry-run', 'validate and show the changes without applying them')
    .addHelpText(
      'after',
      `${examples(
        'xdpctl rules apply -f xdpctl.yaml --dry-run\nxdpctl rules apply -f xdpctl.yaml\n' +
          'xdpctl -o yaml rules list > rules.yaml   # edit, then: xdpctl rules apply -f rules.yaml',
      )}
The output of "rules list -o yaml" (or -o json) is accepted as is: output-only
fields (generation, status, times) are ignored.
Under the table of changes, each rule created or updated that is not ACTIVE is
named with its state and why (as "rules add" says it).
File format (only "rules:" is used; "rules: []" deletes every rule):
  rules:
    - name: web
      port: 7999
      sources: [192.168.122.10]
      ingress: [eth0]
      backends:
        - {ip: 172.17.0.2, mac: "02:42:ac:11:00:02", interface: veth25, weight: 1}
`,
    )
    .action(
      run(async (s, o, _args, f) => {
        const res = await s.client.rules.applyRules(
          { rules: loadRules(f.file as string), validateOnly: Boolean(f.dryRun) },
          s.call({ bulk: true, ...(f.dryRun ? {} : { readBack: 'xdpctl rules list' }) }),
        );
        if (o.output !== 'table') return printList(o.output, 'changes', ApplyRulesResponse.toJSON(res));
        printTable(
          ['NAME', 'ACTION'],
          res.changes.map((c) => [c.name, action(c.action)]),
        );
        for (const line of appliedRuleNotes(res)) print(line);
        for (const c of res.changes) {
          if (c.repaired.length)
            print(`rule ${c.name}: rewritten in the kernel:\n${c.repaired.map((l) => `  ${l}`).join('\n')}`);
        }
        print(
          summary(
            res.changes.map((c) => c.action),
            res.applied,
          ),
        );
      }),
    );
}

/** `xdpctl links`: list, connect, disconnect, apply -f. */
import type { Command } from 'commander';

import {
  ApplyLinksResponse,
  ConnectResponse,
  DisconnectResponse,
  LinkDirection,
  ListLinksResponse,
} from '../../../gen/xdpctl/v1/link.js';
import { listAllLinks } from '../../index.js';
import { examples } from '../flags.js';
import {
  action,
  appliedLinkNotes,
  direction,
  linkName,
  linkNote,
  print,
  printData,
  printList,
  printTable,
  summary,
  yesNo,
} from '../output.js';
import { loadLinks, run } from '../session.js';

export function registerLinks(program: Command): void {
  const links = program.command('links').description('manage cross-connects between interfaces');
  links
    .command('list')
    .alias('ls')
    .description('list the links')
    .addHelpText('after', examples('xdpctl links list\nxdpctl -o json links list'))
    .action(
      run(async (s, o) => {
        const all = await listAllLinks(s.client.links, s.call());
        if (o.output !== 'table') {
          return printList(o.output, 'links', ListLinksResponse.toJSON({ links: all, nextPageToken: '' }));
        }
        printTable(
          ['A', 'B', 'DIRECTION', 'A→B', 'B→A', 'WARNINGS'],
          all.map((l) => [
            l.a,
            l.b,
            direction(l.direction),
            yesNo(l.status?.aToBActive),
            l.direction === LinkDirection.LINK_DIRECTION_A_TO_B ? '-' : yesNo(l.status?.bToAActive),
            l.status?.warnings.join('; ') ?? '',
          ]),
          'no links',
        );
      }),
    );

  links
    .command('connect')
    .description('wire two interfaces together (both directions unless --one-way)')
    .argument('<a>', 'first interface')
    .argument('<b>', 'second interface')
    .option('--one-way', 'forward only frames arriving on A (out of B)')
    .addHelpText('after', examples('xdpctl links connect eth0 tap0\nxdpctl links connect eth1 tap1 --one-way'))
    .action(
      run(async (s, o, [a, b], f) => {
        const dir = f.oneWay ? LinkDirection.LINK_DIRECTION_A_TO_B : LinkDirection.LINK_DIRECTION_BOTH;
        const res = await s.client.links.connect(
          { link: { a, b, direction: dir } },
          s.call({ readBack: 'xdpctl links list' }),
        );
        if (o.output !== 'table') return printData(o.output, ConnectResponse.toJSON(res));
        print(`link ${linkName(res.link ?? { a, b, direction: dir })} connected${res.link ? linkNote(res.link) : ''}`);
      }),
    );

  links
    .command('disconnect')
    .description('remove the link between two interfaces (in either order)')
    .argument('<a>', 'one interface')
    .argument('<b>', 'the other interface')
    .addHelpText('after', examples('xdpctl links disconnect eth0 tap0'))
    .action(
      run(async (s, o, [a, b]) => {
        const res = await s.client.links.disconnect({ a, b }, s.call({ readBack: 'xdpctl links list' }));
        if (o.output !== 'table') return printData(o.output, DisconnectResponse.toJSON(res));
        print(`link ${a} ${b} disconnected`);
      }),
    );

  links
    .command('apply')
    .description(
      'declaratively set every link from the "links:" section of a config file (the xdp-xconnect format is ' +
        'accepted); links not in the file are removed',
    )
    .requiredOption('-f, --file <file>', 'YAML config file ("-" for stdin)')
    .option('--dry-run', 'validate and show the changes without applying them')
    .addHelpText(
      'after',
      `${examples('xdpctl links apply -f xconnect.yaml --dry-run\nxdpctl links apply -f xconnect.yaml')}
The output of "links list -o yaml" (or -o json) is accepted as is (status ignored).
Under the table of changes, each link created or updated with a direction not
forwarding or a warning is named with them (as "links connect" says it).
File format (only "links:" is used; "links: []" removes every link):
  links:
    eth0: tap0                        # both directions
  # or a list:
  #  - {a: eth1, b: tap1, direction: a-to-b}
`,
    )
    .action(
      run(async (s, o, _args, f) => {
        const res = await s.client.links.applyLinks(
          { links: loadLinks(f.file as string), validateOnly: Boolean(f.dryRun) },
          s.call({ bulk: true, ...(f.dryRun ? {} : { readBack: 'xdpctl links list' }) }),
        );
        if (o.output !== 'table') return printList(o.output, 'changes', ApplyLinksResponse.toJSON(res));
        printTable(
          ['A', 'B', 'ACTION'],
          res.changes.map((c) => [c.a, c.b, action(c.action)]),
        );
        for (const line of appliedLinkNotes(res)) print(line);
        print(
          summary(
            res.changes.map((c) => c.action),
            res.applied,
          ),
        );
      }),
    );
}

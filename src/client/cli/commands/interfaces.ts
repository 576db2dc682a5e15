/** `xdpctl interfaces` (`if`): list, get. */
import type { Command } from 'commander';

import { GetInterfaceResponse, ListInterfacesResponse } from '../../../gen/xdpctl/v1/interface.js';
import { listAllInterfaces } from '../../index.js';
import { examples } from '../flags.js';
import { INTERFACE_HEAD, interfaceRow, print, printData, printList, printTable, renderTable } from '../output.js';
import { run } from '../session.js';

export function registerInterfaces(program: Command): void {
  const interfaces = program.command('interfaces').alias('if').description('show the interfaces xdpctld manages');
  interfaces
    .command('list')
    .alias('ls')
    .description('list the managed interfaces and their XDP program')
    .option('--wide', 'USED BY: every rule and link, not the first 3 and how many more')
    .addHelpText('after', examples('xdpctl interfaces list\nxdpctl interfaces list --wide'))
    .action(
      run(async (s, o, _args, flags) => {
        const all = await listAllInterfaces(s.client.interfaces, s.call());
        if (o.output !== 'table') {
          return printList(
            o.output,
            'interfaces',
            ListInterfacesResponse.toJSON({ interfaces: all, nextPageToken: '' }),
          );
        }
        printTable(
          INTERFACE_HEAD,
          all.map((i) => interfaceRow(i, flags.wide === true)),
          'no interfaces',
        );
      }),
    );
  interfaces
    .command('get')
    .description('show one managed interface')
    .argument('<name>', 'interface name')
    .option('--wide', 'USED BY: every rule and link, not the first 3 and how many more')
    .addHelpText('after', examples('xdpctl interfaces get eth0'))
    .action(
      run(async (s, o, [name], flags) => {
        const res = await s.client.interfaces.getInterface({ name }, s.call());
        if (o.output !== 'table') return printData(o.output, GetInterfaceResponse.toJSON(res));
        print(renderTable(INTERFACE_HEAD, [interfaceRow(res.interface!, flags.wide === true)]));
      }),
    );
}

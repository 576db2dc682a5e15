/**
 * Imported first by every bin (xdpctld, xdpctl, xdpctl-health), for its effect: on a Node older than
 * package.json's engines.node the process stops here with a message (node-version.ts), before the other
 * imports, native addons among them, are evaluated.
 */
import { requireSupportedNode } from './node-version.js';

requireSupportedNode();

/**
 * The HTTP/JSON listener refuses what a web page could send (cross-site requests and DNS rebinding), so
 * that a browser run by a uid with a role cannot drive the daemon on loopback.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { browserRefusal } from '../../src/server/http-json.js';

describe('HTTP/JSON: requests from web pages', () => {
  it('refuses any request with Origin or Sec-Fetch-Site, on every listener', () => {
    for (const loopback of [true, false]) {
      assert.match(browserRefusal({ host: '127.0.0.1:9092', origin: 'http://evil.example' }, loopback)!, /web pages/);
      assert.match(browserRefusal({ host: 'localhost', 'sec-fetch-site': 'same-origin' }, loopback)!, /web pages/);
    }
  });
  it('on loopback TCP accepts only loopback Host names (DNS rebinding)', () => {
    for (const host of [
      '127.0.0.1:9092',
      '127.1.2.3',
      'localhost:80',
      'LOCALHOST',
      'x.localhost:1',
      '[::1]:9092',
      '[0:0:0:0:0:0:0:1]',
    ]) {
      assert.equal(browserRefusal({ host }, true), undefined, host);
    }
    for (const host of ['evil.example:9092', '10.0.0.1', '[::2]', '127.0.0.1.evil.example', '']) {
      assert.match(browserRefusal({ host }, true)!, /not a loopback name/, host);
    }
    assert.equal(browserRefusal({ ':authority': 'localhost:9092' }, true), undefined, 'HTTP/2 :authority');
  });
  it('elsewhere (Unix socket, TLS on a routable address) any Host is accepted', () => {
    assert.equal(browserRefusal({ host: 'xdpctl.example.org' }, false), undefined);
  });
});

// The Cairn admin UI: a single page over the JSON API under /api/.
// Every piece of data from the server is put into the page with textContent
// or text nodes, never parsed as HTML: stream names, event types and
// payloads are user data.
// POSTs carry `X-Cairn-Request: 1`, which the server requires (CSRF rule).
'use strict';

(function () {
  const main = document.getElementById('main');
  const errorBox = document.getElementById('error');
  /** What the current page must stop (timers, event sources) when left. */
  let cleanups = [];
  let me = null;

  // ---- helpers -------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  /** Calls the API; resolves to its JSON, rejects with its error message. */
  async function api(path, options) {
    const init = Object.assign({ credentials: 'same-origin', headers: {} }, options || {});
    if (init.method === 'POST') init.headers['X-Cairn-Request'] = '1';
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : response.status + ' ' + response.statusText;
      if (response.status === 401) throw new Error(reason + ' — reload the page to log in again');
      throw new Error(reason);
    }
    return body;
  }

  function every(ms, work) {
    const timer = setInterval(work, ms);
    cleanups.push(() => clearInterval(timer));
  }

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + ' ' + units[unit];
  }

  function num(n) {
    return n === null || n === undefined ? '–' : Number(n).toLocaleString('en');
  }

  function when(ms) {
    return ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC') : '–';
  }

  function duration(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + s + 's';
  }

  function dl(rows) {
    return el('dl', {}, rows.map(([term, value, id]) => [
      el('dt', {}, term), el('dd', { id: id }, value),
    ]));
  }

  function table(id, headings) {
    return el('table', { id: id },
      el('thead', {}, el('tr', {}, headings.map((h) => el('th', {}, h)))),
      el('tbody'));
  }

  function link(hash, text, attrs) {
    return el('a', Object.assign({ href: hash }, attrs || {}), text);
  }

  function streamHash(name) {
    return '#/stream/' + encodeURIComponent(name);
  }

  function groupHash(name) {
    return '#/group/' + encodeURIComponent(name);
  }

  function setPage(title, ...content) {
    main.replaceChildren(el('h2', {}, title), ...content);
  }

  // ---- overview ------------------------------------------------------------

  function overviewPage() {
    const figures = el('div', { id: 'overview' });
    const rates = dl([
      ['events/s', '–', 'rate-events'],
      ['new streams/s', '–', 'rate-streams'],
    ]);
    setPage('Server overview', figures, el('h3', {}, 'Live rates'), rates,
      el('p', { class: 'hint' }, 'Rates are computed from the head and stream count, polled every 2 s.'));
    let last = null;
    async function refresh() {
      try {
        const o = await api('/api/overview');
        const now = performance.now();
        figures.replaceChildren(dl([
          ['version', o.version, 'overview-version'],
          ['uptime', duration(o.uptime_seconds)],
          ['head position', num(o.head_position), 'overview-head'],
          ['streams', num(o.stream_count), 'overview-streams'],
          ['events', num(o.event_count), 'overview-events'],
          ['disk', bytes(o.disk_bytes), 'overview-disk'],
          ['active subscriptions', num(o.active_subscriptions)],
          ['subscribers fallen behind', num(o.subscription_fell_behind)],
          ['buffered for clients', bytes(o.buffered_bytes) + ' of ' + bytes(o.max_buffered_bytes)],
          ['largest event / append', bytes(o.limits.max_event_bytes) + ' / ' + bytes(o.limits.max_append_bytes)],
          ['security', o.security_enabled ? 'on (TLS, logins)' : 'off (insecure mode)'],
        ]));
        if (last) {
          const seconds = (now - last.at) / 1000;
          if (seconds > 0) {
            document.getElementById('rate-events').textContent =
              ((o.head_position - last.head) / seconds).toFixed(1);
            document.getElementById('rate-streams').textContent =
              ((o.stream_count - last.streams) / seconds).toFixed(1);
          }
        }
        last = { at: now, head: o.head_position, streams: o.stream_count };
        showError('');
      } catch (error) {
        showError(error.message);
      }
    }
    refresh();
    every(2000, refresh);
  }

  // ---- stream list ---------------------------------------------------------

  function streamsPage(params) {
    const prefix = el('input', { id: 'stream-prefix', placeholder: 'name prefix, e.g. order-', value: params.get('prefix') || '' });
    const open = el('input', { id: 'open-stream', placeholder: '$all, $ce-order, $et-OrderPlaced or a stream' });
    const rows = table('streams', ['stream', 'state', 'last revision', 'first visible', 'metadata']);
    const more = el('button', { id: 'streams-more', type: 'button', hidden: true }, 'More');
    const status = el('p', { id: 'streams-status', class: 'hint' });
    let after = null;
    async function load(reset) {
      if (reset) {
        after = null;
        rows.tBodies[0].replaceChildren();
      }
      const query = new URLSearchParams({ prefix: prefix.value, limit: '100' });
      if (after) query.set('after', after);
      try {
        const page = await api('/api/streams?' + query);
        for (const s of page.streams) {
          const meta = [];
          if (s.metadata.max_count !== null) meta.push('max_count ' + s.metadata.max_count);
          if (s.metadata.max_age_ms !== null) meta.push('max_age ' + s.metadata.max_age_ms + ' ms');
          if (s.metadata.truncate_before !== null) meta.push('truncate_before ' + s.metadata.truncate_before);
          if (s.metadata.custom) meta.push(s.metadata.custom);
          rows.tBodies[0].append(el('tr', {},
            el('td', {}, link(streamHash(s.name), s.name, { dataset: { stream: s.name } })),
            el('td', {}, s.state),
            el('td', {}, s.last_revision === null ? '–' : num(s.last_revision)),
            el('td', {}, num(s.first_visible_revision)),
            el('td', { class: 'meta' }, meta.join(', '))));
        }
        after = page.next_after;
        more.hidden = !after;
        status.textContent = rows.tBodies[0].rows.length + ' streams shown' + (after ? ' (more follow)' : '');
        showError('');
      } catch (error) {
        showError(error.message);
      }
    }
    more.addEventListener('click', () => load(false));
    const listForm = el('form', { id: 'streams-form', onsubmit: (e) => { e.preventDefault(); load(true); } },
      prefix, el('button', { id: 'list-streams', type: 'submit' }, 'List'));
    const openForm = el('form', { onsubmit: (e) => { e.preventDefault(); if (open.value) location.hash = streamHash(open.value); } },
      open, el('button', { type: 'submit' }, 'Read'));
    setPage('Streams', listForm, openForm,
      el('p', { class: 'hint' }, 'Indexes: ', link(streamHash('$all'), '$all'), ', $ce-<category>, $et-<event type>.'),
      rows, more, status);
    load(true);
  }

  // ---- one stream's events -------------------------------------------------

  function payloadBlock(id, payload) {
    const note = payload.encoding === 'empty' ? 'empty'
      : payload.encoding + ', ' + bytes(payload.bytes) + (payload.truncated ? ', cut to what is shown' : '');
    return [el('p', { class: 'hint' }, note), el('pre', { id: id }, payload.text)];
  }

  function eventDetail(box, event) {
    box.replaceChildren(
      el('h3', {}, event.type + ' · ' + event.stream + ' @ ' + event.revision),
      dl([
        ['stream', link(streamHash(event.stream), event.stream)],
        ['revision', num(event.revision)],
        ['position', num(event.position)],
        ['id', event.id, 'event-id'],
        ['type', event.type, 'event-type'],
        ['content type', event.content_type],
        ['tags', (event.tags || []).join(', ') || '(none)', 'event-tags'],
        ['created', when(event.created_ms)],
      ]),
      el('h4', {}, 'Data'), ...payloadBlock('event-data', event.data),
      el('h4', {}, 'Metadata'), ...payloadBlock('event-metadata', event.metadata));
    box.hidden = false;
  }

  function streamPage(name, params) {
    const isIndex = name === '$all' || name.startsWith('$ce-') || name.startsWith('$et-');
    const direction = el('select', { id: 'direction' },
      el('option', { value: 'backwards' }, 'newest first'),
      el('option', { value: 'forwards' }, 'oldest first'));
    direction.value = params.get('direction') || 'backwards';
    const from = el('input', { id: 'from', size: 10, placeholder: isIndex ? 'position' : 'revision', value: params.get('from') || '' });
    const limit = el('input', { id: 'limit', size: 4, value: params.get('limit') || '20' });
    const streamPrefix = el('input', { id: 'events-stream-prefix', placeholder: 'stream prefix', hidden: !isIndex });
    const typePrefix = el('input', { id: 'events-type-prefix', placeholder: 'type prefix' });
    const rows = table('events', [isIndex ? 'position' : 'revision', 'type', 'stream', 'created', 'size']);
    const next = el('button', { id: 'events-next', type: 'button', hidden: true }, 'Next page');
    const status = el('p', { id: 'events-status', class: 'hint' });
    const detail = el('section', { id: 'event-detail', hidden: true });
    let cursor = null;
    async function load(reset) {
      if (reset) {
        cursor = from.value.trim() || null;
        rows.tBodies[0].replaceChildren();
        detail.hidden = true;
      }
      const query = new URLSearchParams({ direction: direction.value, limit: limit.value || '20' });
      if (cursor !== null) query.set('from', cursor);
      if (streamPrefix.value) query.set('stream_prefix', streamPrefix.value);
      if (typePrefix.value) query.set('type_prefix', typePrefix.value);
      try {
        const page = await api('/api/streams/' + encodeURIComponent(name) + '/events?' + query);
        for (const event of page.events) {
          const row = el('tr', { class: 'clickable', dataset: { revision: event.revision, position: event.position } },
            el('td', {}, num(isIndex ? event.position : event.revision)),
            el('td', {}, event.type),
            el('td', {}, event.stream),
            el('td', {}, when(event.created_ms)),
            el('td', {}, bytes(event.data.bytes)));
          row.addEventListener('click', () => {
            for (const other of rows.tBodies[0].rows) other.classList.remove('selected');
            row.classList.add('selected');
            eventDetail(detail, event);
          });
          rows.tBodies[0].append(row);
        }
        cursor = page.next === null ? null : String(page.next);
        next.hidden = page.next === null;
        status.textContent = rows.tBodies[0].rows.length + ' events shown' + (page.next === null ? ' (end)' : '');
        showError('');
      } catch (error) {
        status.textContent = '';
        showError(error.message);
      }
    }
    next.addEventListener('click', () => load(false));
    const form = el('form', { id: 'events-form', onsubmit: (e) => { e.preventDefault(); load(true); } },
      direction, ' from ', from, ' limit ', limit, streamPrefix, typePrefix,
      el('button', { id: 'read-events', type: 'submit' }, 'Read'));
    setPage(name, form, rows, next, status, detail);
    load(true);
  }

  // ---- live tail -----------------------------------------------------------

  function tailPage() {
    const source = el('input', { id: 'tail-source', value: '$all', placeholder: '$all, $ce-order or a stream' });
    const streamPrefix = el('input', { id: 'tail-stream-prefix', placeholder: 'stream prefix' });
    const typePrefix = el('input', { id: 'tail-type-prefix', placeholder: 'type prefix' });
    const start = el('button', { id: 'tail-start', type: 'submit' }, 'Start');
    const stop = el('button', { id: 'tail-stop', type: 'button', disabled: true }, 'Stop');
    const status = el('p', { id: 'tail-status' }, 'stopped');
    const list = el('ol', { id: 'tail-events', reversed: true });
    const detail = el('section', { id: 'tail-detail', hidden: true });
    const KEEP = 200;
    let stream = null;
    function close(message) {
      if (stream) stream.close();
      stream = null;
      start.disabled = false;
      stop.disabled = true;
      status.textContent = message;
    }
    function open() {
      close('connecting…');
      start.disabled = true;
      stop.disabled = false;
      const query = new URLSearchParams({ source: source.value || '$all' });
      if (streamPrefix.value) query.set('stream_prefix', streamPrefix.value);
      if (typePrefix.value) query.set('type_prefix', typePrefix.value);
      stream = new EventSource('/api/tail?' + query);
      stream.addEventListener('caught-up', () => { status.textContent = 'live'; });
      stream.addEventListener('fell-behind', () => { status.textContent = 'catching up (fell behind)'; });
      stream.addEventListener('event', (message) => {
        const event = JSON.parse(message.data);
        const item = el('li', { class: 'clickable', dataset: { live: '' } },
          el('span', { class: 'pos' }, '#' + event.position), ' ',
          el('strong', {}, event.type), ' ', event.stream + ' @ ' + event.revision, ' ',
          el('span', { class: 'hint' }, when(event.created_ms)));
        item.addEventListener('click', () => eventDetail(detail, event));
        list.prepend(item);
        while (list.children.length > KEEP) list.lastChild.remove();
      });
      stream.addEventListener('end', (message) => {
        close('ended: ' + JSON.parse(message.data).reason);
      });
      stream.addEventListener('error', () => {
        // EventSource retries by itself after a network error; an HTTP
        // error (denied, too many subscriptions) closes it for good.
        if (stream && stream.readyState === EventSource.CLOSED) {
          close('could not open the tail (denied, bad source, or the server is at its subscription limit)');
        } else if (stream) {
          status.textContent = 'reconnecting…';
        }
      });
    }
    stop.addEventListener('click', () => close('stopped'));
    cleanups.push(() => close('stopped'));
    const form = el('form', { id: 'tail-form', onsubmit: (e) => { e.preventDefault(); open(); } },
      source, streamPrefix, typePrefix, start, stop);
    setPage('Live tail', form, status,
      el('p', { class: 'hint' }, 'Events committed from now on, newest first (the last ' + KEEP + ').'),
      list, detail);
    open();
  }

  // ---- consumer groups -----------------------------------------------------

  async function replay(group, result) {
    result.textContent = 'replaying…';
    try {
      const answer = await api('/api/groups/' + encodeURIComponent(group) + '/replay-parked', { method: 'POST' });
      result.textContent = answer.replayed + ' parked events replayed';
      showError('');
    } catch (error) {
      result.textContent = '';
      showError(error.message);
    }
  }

  function groupsPage() {
    const rows = table('groups', ['group', 'source', 'consumers', 'in flight', 'waiting', 'lag', 'parked', 'acked', 'retried', '']);
    const result = el('p', { id: 'replay-result' });
    setPage('Consumer groups', rows, result);
    async function refresh() {
      try {
        const answer = await api('/api/groups');
        rows.tBodies[0].replaceChildren(...answer.groups.map((g) => el('tr', { dataset: { group: g.name } },
          el('td', {}, link(groupHash(g.name), g.name)),
          el('td', {}, link(streamHash(g.stream), g.stream)),
          el('td', {}, num(g.consumer_count)),
          el('td', {}, num(g.in_flight)),
          el('td', {}, num(g.waiting)),
          el('td', {}, num(g.lag)),
          el('td', { class: 'parked' }, num(g.parked)),
          el('td', {}, num(g.acked_total)),
          el('td', {}, num(g.retried_total)),
          el('td', {}, el('button', {
            type: 'button', class: 'replay', disabled: g.parked === 0,
            onclick: async () => { await replay(g.name, result); refresh(); },
          }, 'Replay parked')))));
        if (answer.groups.length === 0) {
          rows.tBodies[0].append(el('tr', {}, el('td', { colspan: 10 }, 'No consumer groups.')));
        }
        showError('');
      } catch (error) {
        showError(error.message);
      }
    }
    refresh();
    every(2000, refresh);
  }

  function groupPage(name) {
    const body = el('div', { id: 'group' });
    const result = el('p', { id: 'replay-result' });
    const button = el('button', { id: 'replay-parked', type: 'button' }, 'Replay parked events');
    button.addEventListener('click', async () => { await replay(name, result); refresh(); });
    setPage('Group ' + name, body, button, result);
    async function refresh() {
      try {
        const g = await api('/api/groups/' + encodeURIComponent(name));
        const s = g.settings;
        const checkpoint = g.checkpoint
          ? 'position ' + g.checkpoint.position + (g.checkpoint.revision === null ? '' : ', revision ' + g.checkpoint.revision)
          : 'none yet';
        const consumers = table('consumers', ['id', 'name', 'in flight', 'max in flight', 'delivered', 'acked', 'nacked']);
        consumers.tBodies[0].append(...g.consumers.map((c) => el('tr', {},
          el('td', {}, c.id), el('td', {}, c.name), el('td', {}, num(c.in_flight)),
          el('td', {}, num(c.max_in_flight)), el('td', {}, num(c.delivered)),
          el('td', {}, num(c.acked)), el('td', {}, num(c.nacked)))));
        const filter = [].concat(
          g.filter.stream_prefixes.map((p) => 'stream ' + p + '*'),
          g.filter.stream_regex ? ['stream ~ ' + g.filter.stream_regex] : [],
          g.filter.type_prefixes.map((p) => 'type ' + p + '*'),
          g.filter.type_regex ? ['type ~ ' + g.filter.type_regex] : []);
        body.replaceChildren(
          dl([
            ['source', link(streamHash(g.stream), g.stream)],
            ['filter', filter.length ? filter.join(', ') : 'none'],
            ['checkpoint', checkpoint],
            ['lag', num(g.lag), 'group-lag'],
            ['in flight', num(g.in_flight), 'group-in-flight'],
            ['waiting', num(g.waiting)],
            ['parked', num(g.parked), 'group-parked'],
            ['delivered / acked / retried / parked (since start)',
              [g.delivered_total, g.acked_total, g.retried_total, g.parked_total].map(num).join(' / ')],
          ]),
          el('h3', {}, 'Settings'),
          dl([
            ['strategy', s.strategy],
            ['max retries', num(s.max_retries)],
            ['message timeout', num(s.message_timeout_ms) + ' ms'],
            ['max in flight per consumer', num(s.max_in_flight_per_consumer)],
            ['checkpoint after', num(s.checkpoint_after_events) + ' events or ' + num(s.checkpoint_after_ms) + ' ms'],
          ]),
          el('h3', {}, 'Consumers (' + g.consumers.length + ')'), consumers);
        button.disabled = g.parked === 0;
        showError('');
      } catch (error) {
        showError(error.message);
      }
    }
    refresh();
    every(2000, refresh);
  }

  // ---- operations ----------------------------------------------------------

  function operationsPage() {
    const body = el('div', { id: 'scavenge' });
    const backups = el('div', { id: 'backups' });
    const result = el('p', { id: 'scavenge-result' });
    const start = el('button', { id: 'scavenge-start', type: 'button' }, 'Start a scavenge');
    const stop = el('button', { id: 'scavenge-stop', type: 'button' }, 'Stop it');
    async function post(path) {
      try {
        await api(path, { method: 'POST' });
        result.textContent = '';
        showError('');
      } catch (error) {
        showError(error.message);
      }
      refresh();
    }
    start.addEventListener('click', () => post('/api/scavenge'));
    stop.addEventListener('click', () => post('/api/scavenge/stop'));
    setPage('Operations', el('h3', {}, 'Scavenge'), body, start, stop, result,
      el('h3', {}, 'Backups'), backups,
      el('p', {}, 'Backups are taken with `cairn backup --to DIR` (admin) and restored offline with ' +
        '`cairn restore --from DIR --data DIR`, which verifies them first.'));
    async function refresh() {
      try {
        const answer = await api('/api/operations');
        const s = answer.scavenge;
        const b = answer.backup;
        backups.replaceChildren(dl([
          ['running', b.running ? 'yes' : 'no', 'backup-running'],
          ['since start', num(b.taken) + ' taken, ' + num(b.failed) + ' failed'],
          ['last', b.last_ok === null ? '–' : (b.last_ok
            ? 'ok: head ' + num(b.last_head) + ', ' + num(b.last_events) + ' events'
            : 'failed (see the server log)')],
          ['last finished', when(b.last_finished_ms)],
        ]));
        const p = s.progress;
        const report = s.last_report;
        body.replaceChildren(dl([
          ['state', s.state + (s.scheduled ? ' (scheduled)' : ''), 'scavenge-state'],
          ['run', num(s.run)],
          ['progress', num(p.segments_done) + ' of ' + num(p.segments_total) + ' segments; ' +
            num(p.scanned) + ' scanned, ' + num(p.removed) + ' removed (' + bytes(p.bytes_removed) + ')' +
            (p.stop_requested ? '; stop requested' : '')],
          ['last report', report ? num(report.removed) + ' of ' + num(report.scanned) + ' removed, ' +
            bytes(report.bytes_removed) + ', ' + num(report.segments) + ' segments' : '–'],
          ['started', when(s.started_ms)],
          ['finished', when(s.finished_ms)],
          ['error', s.error || '–'],
        ]));
        start.disabled = s.state === 'running';
        stop.disabled = s.state !== 'running';
        showError('');
      } catch (error) {
        showError(error.message);
      }
    }
    refresh();
    every(2000, refresh);
  }

  // ---- routing -------------------------------------------------------------

  function route() {
    for (const cleanup of cleanups) cleanup();
    cleanups = [];
    showError('');
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, queryString] = hash.split('?');
    const params = new URLSearchParams(queryString || '');
    const [page, ...rest] = path.split('/');
    const arg = rest.length ? decodeURIComponent(rest.join('/')) : '';
    for (const a of document.querySelectorAll('nav a')) a.classList.remove('current');
    const navId = { stream: 'streams', group: 'groups' }[page] || page || 'overview';
    const nav = document.getElementById('nav-' + navId);
    if (nav) nav.classList.add('current');
    switch (page) {
      case 'streams': return streamsPage(params);
      case 'stream': return streamPage(arg, params);
      case 'tail': return tailPage();
      case 'groups': return groupsPage();
      case 'group': return groupPage(arg);
      case 'operations': return operationsPage();
      default: return overviewPage();
    }
  }

  async function start() {
    try {
      const overview = await api('/api/overview');
      me = overview.user;
      document.getElementById('who').textContent = overview.security_enabled
        ? 'signed in as ' + me.name + (me.roles.length ? ' (' + me.roles.join(', ') + ')' : '')
        : 'insecure mode';
      if (!me.may_operate) {
        document.getElementById('nav-groups').hidden = true;
        document.getElementById('nav-operations').hidden = true;
      }
    } catch (error) {
      showError(error.message);
    }
    window.addEventListener('hashchange', route);
    route();
  }

  start();
})();

// The portcullis dashboard: pages over /api/v1, no framework, no build step.
//
// Everything a device controls (client IDs, usernames, topics, reasons) reaches the page as
// text nodes only: nothing is ever parsed as HTML. Requests that change something carry the
// session's CSRF token; a 401 goes back to the login page.
'use strict';

(() => {
  const PAGE_SIZE = 50;
  const REFRESH_MS = 5000;
  const DURATIONS = [
    ['600', '10 minutes'], ['3600', '1 hour'], ['86400', '1 day'],
    ['604800', '7 days'], ['2592000', '30 days'], ['', 'until removed'],
  ];

  let session = null;
  let current = null;

  // ---- helpers ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function say(text, isError) {
    const s = document.getElementById('status');
    s.textContent = text || '';
    s.className = isError ? 'error' : '';
  }

  async function api(method, path, body, retried) {
    const headers = {};
    if (method !== 'GET') headers['x-csrf-token'] = session.csrf;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) {
      location.href = '/login';
      throw new Error('the session ended: log in again');
    }
    // A login in another tab replaced this tab's session: take the new one's CSRF token.
    if (r.status === 403 && method !== 'GET' && !retried) {
      session = await api('GET', '/dashboard/session');
      return api(method, path, body, true);
    }
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!r.ok) throw new Error((json && json.message) || `${method} ${path}: ${r.status}`);
    return json;
  }

  function query(form, extra) {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v !== '') q.set(k, v);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  function num(n) { return n === null || n === undefined ? '–' : Number(n).toLocaleString('en'); }
  function when(t) { return t ? t.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : 'until removed'; }
  function bytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  // Where a ban came from, in words.
  function origin(by) {
    const [family, name] = by.split(/:(.*)/s);
    if (family === 'portcullis') return `policy: ${name}`;
    if (family === 'admin') return name ? `admin ${name}` : 'admin';
    if (family === 'peer') return `peer node ${name}`;
    if (family === 'file') return 'bootstrap file';
    return by;
  }

  function table(columns, rows, rowAttrs) {
    const head = el('tr', {}, columns.map((c) => el('th', {}, c)));
    const body = rows.map((r) => el('tr', rowAttrs ? rowAttrs(r.item) : {},
      r.cells.map((c) => el('td', {}, c))));
    return el('table', {}, el('thead', {}, head), el('tbody', {}, body));
  }

  function pager(meta, go) {
    const last = Math.max(1, Math.ceil(meta.count / meta.limit));
    return el('div', { class: 'pager' },
      el('button', { type: 'button', class: 'prev', disabled: meta.page <= 1, onclick: () => go(meta.page - 1) }, '‹ Previous'),
      ` page ${meta.page} of ${last} · ${num(meta.count)} matching `,
      el('button', { type: 'button', class: 'next', disabled: !meta.hasnext, onclick: () => go(meta.page + 1) }, 'Next ›'));
  }

  // A page past the last (rows went away meanwhile): go to the last one instead.
  function past(page, goTo) {
    const last = Math.max(1, Math.ceil(page.meta.count / page.meta.limit));
    if (page.data.length || page.meta.page <= last) return false;
    goTo(last);
    again = true;
    return true;
  }

  function fillDurations(select) {
    select.replaceChildren(...DURATIONS.map(([v, label]) => el('option', { value: v }, label)));
    select.value = '3600';
  }

  // A duration, counted by the gateway's clock (the browser's may be off); none: until removed.
  function forSecs(seconds) {
    return seconds ? Number(seconds) : undefined;
  }

  // ---- the ban dialog (from a client's or an offender's row) -------------------------------

  const dialog = document.getElementById('ban-dialog');
  let choices = {};

  function openBan(options) {
    choices = options;
    const as = document.getElementById('ban-as');
    as.replaceChildren(...Object.keys(options).map((k) => el('option', { value: k }, k)));
    as.value = Object.keys(options)[0];
    document.getElementById('ban-who').value = options[as.value];
    document.getElementById('ban-reason').value = '';
    fillDurations(document.getElementById('ban-duration'));
    dialog.showModal();
  }

  document.getElementById('ban-as').addEventListener('change', (e) => {
    document.getElementById('ban-who').value = choices[e.target.value];
  });
  document.getElementById('ban-cancel').addEventListener('click', () => dialog.close());
  document.getElementById('ban-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const as = document.getElementById('ban-as').value;
    const who = document.getElementById('ban-who').value;
    const reason = document.getElementById('ban-reason').value;
    const seconds = document.getElementById('ban-duration').value;
    try {
      await api('POST', '/api/v1/banned', { as, who, reason: reason || undefined, for_secs: forSecs(seconds) });
      dialog.close();
      say(`Banned ${as} ${who}: its connections are closed.`);
      refresh();
    } catch (err) { say(err.message, true); }
  });

  // ---- Overview ---------------------------------------------------------------------------

  const charts = {};
  const PALETTE = ['#2563eb', '#16a34a', '#dc2626', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

  function tile(id, title, big, lines) {
    return el('div', { class: 'tile', id },
      el('h3', {}, title), el('p', { class: 'big' }, big),
      el('ul', {}, (lines || []).map(([k, v]) => el('li', {}, `${k}: `, el('b', {}, v)))));
  }

  function drawTiles(s) {
    const m = s.messages;
    const discarded = m.discarded_early + m.discarded_late + m.discarded_rate_limited + m.discarded_not_authorized;
    const ups = Object.entries(s.upstreams || {});
    document.getElementById('tiles').replaceChildren(
      tile('tile-connections', 'Connections', num(s.connections.total), [
        ...Object.entries(s.connections.by_transport).map(([k, v]) => [k, num(v)]),
        ...Object.entries(s.connections.by_route).map(([k, v]) => [`route ${k}`, num(v)]),
      ]),
      tile('tile-forwarded', 'Messages forwarded', num(m.forwarded), [
        ['late, forwarded', num(m.late_forwarded)], ['retransmits', num(m.retransmits)],
      ]),
      tile('tile-discarded', 'Messages discarded', num(discarded), [
        ['early (out of rhythm)', num(m.discarded_early)], ['late', num(m.discarded_late)],
        ['over the rate', num(m.discarded_rate_limited)], ['not authorized', num(m.discarded_not_authorized)],
      ]),
      tile('tile-bans', 'Bans in force', num(s.bans.active), [
        ['issued by the policy', num(s.bans.issued_by_policy)], ['strikes', num(s.bans.strikes)],
        ['connections kicked', num(s.bans.kicks)],
        ...Object.entries(s.bans.active_by_by).map(([k, v]) => [origin(k), num(v)]),
      ]),
      tile('tile-refused', 'Connections refused', num(
        Object.values(s.refused).filter((v) => typeof v === 'number').reduce((a, b) => a + b, 0)), [
        ['banned', num(s.refused.connect_banned + s.refused.accept_banned)],
        ['too fast', num(s.refused.connect_rate_limited + s.refused.accept_rate_limited)],
        ['unknown device', num(s.refused.connect_unknown_device)],
        ['too many connections', num(s.refused.connect_too_many)],
      ]),
      tile('tile-upstreams', 'Upstreams',
        ups.every(([, up]) => up) ? 'healthy' : `${ups.filter(([, up]) => !up).length} down`,
        [...ups.map(([k, up]) => [`route ${k}`, up ? 'healthy' : 'DOWN']),
          ...(s.storm_active ? [['reconnect storm', 'on']] : [])]),
    );
  }

  // Series: [label, value of one sample, is a counter (drawn as a rate)].
  function chartSpecs(samples) {
    const keys = (field) => [...new Set(samples.flatMap((s) => Object.keys(s[field] || {})))].sort();
    return [
      ['connections', 'Connections', [
        ['total', (s) => s.connections, false],
        ...keys('connections_by_transport').map((k) => [k, (s) => s.connections_by_transport[k] || 0, false]),
        ...keys('connections_by_route').map((k) => [`route ${k}`, (s) => s.connections_by_route[k] || 0, false]),
      ]],
      ['messages', 'Messages per second', [
        ['in', (s) => s.messages_in, true],
        ['forwarded', (s) => s.messages_forwarded, true],
        ...keys('messages_discarded_by').map((k) => [`discarded ${k.replace('_', ' ')}`, (s) => s.messages_discarded_by[k], true]),
      ]],
      ['bytes', 'Bytes per second', [
        ['in (device → upstream)', (s) => s.bytes_in, true],
        ['out (upstream → device)', (s) => s.bytes_out, true],
      ]],
      ['bans', 'Bans', [
        ['in force', (s) => s.bans_active, false],
        ['issued per second', (s) => s.bans_issued, true],
        ['strikes per second', (s) => s.strikes, true],
      ]],
      ['upstreams', 'Routes with a healthy upstream', [
        ['healthy', (s) => s.routes_healthy, false],
        ['all', (s) => s.routes, false],
      ]],
    ];
  }

  function drawCharts(samples) {
    const box = document.getElementById('charts');
    const xs = samples.map((s) => Date.parse(s.time) / 1000);
    for (const [id, title, series] of chartSpecs(samples)) {
      const data = [xs, ...series.map(([, get, rate]) => samples.map((s, i) => {
        if (!rate) return get(s);
        if (i === 0) return null;
        const dt = xs[i] - xs[i - 1];
        return dt > 0 ? Math.max(0, (get(s) - get(samples[i - 1])) / dt) : null;
      }))];
      const signature = series.map(([label]) => label).join('|');
      let c = charts[id];
      if (!c || c.signature !== signature) {
        const card = el('div', { class: 'chart', id: `chart-${id}` }, el('h3', {}, title), el('p', { class: 'latest' }));
        if (c) {
          c.plot.destroy();
          c.card.replaceWith(card);
        } else {
          box.append(card);
        }
        const width = Math.max(300, card.clientWidth - 16);
        const plot = new uPlot({
          width, height: 200,
          series: [{}, ...series.map(([label], i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5 }))],
          axes: [{}, { size: 60 }],
          scales: { x: { time: true } },
        }, data, card);
        c = charts[id] = { card, plot, signature };
      } else {
        c.plot.setData(data);
      }
      const last = data.map((col) => col[col.length - 1]);
      c.card.dataset.points = String(xs.length);
      // The peak of each series over the window (what the browser test reads).
      c.card.dataset.max = JSON.stringify(Object.fromEntries(series.map(([label], i) => [
        label, data[i + 1].reduce((m, v) => (v === null ? m : Math.max(m, v)), 0)])));
      c.card.dataset.last = samples.length ? samples[samples.length - 1].time : '';
      c.card.querySelector('.latest').textContent = samples.length
        ? series.map(([label], i) => `${label}: ${last[i + 1] === null ? '–' : Number(last[i + 1].toFixed(2)).toLocaleString('en')}`).join(' · ')
        : 'no samples yet';
    }
  }

  async function overview() {
    const [stats, samples] = await Promise.all([api('GET', '/api/v1/stats'), api('GET', '/api/v1/monitor')]);
    drawTiles(stats);
    drawCharts(samples);
  }

  // ---- Clients ----------------------------------------------------------------------------

  let clientsPage = 1;

  async function clients() {
    const form = document.getElementById('clients-filter');
    const page = await api('GET', `/api/v1/clients?${query(form, { page: clientsPage, limit: PAGE_SIZE })}`);
    if (past(page, (p) => { clientsPage = p; })) return;
    const rows = page.data.map((c) => {
      const options = {};
      if (c.clientid !== null) options.clientid = c.clientid;
      if (c.username !== null) options.username = c.username;
      if (c.serial !== null) options.serial = c.serial;
      options.peerhost = c.ip_address;
      const m = c.messages;
      return {
        item: c,
        cells: [
          c.clientid ?? c.serial ?? '–', c.username ?? '–', c.ip_address, c.route,
          c.proto_ver ? `${c.transport} · MQTT ${c.proto_ver === 5 ? '5' : '3.1.1'}` : c.transport,
          when(c.connected_at),
          m ? `${num(m.forwarded)} / ${num(m.discarded_early + m.discarded_late + m.discarded_rate_limited + m.discarded_not_authorized)}` : '–',
          `${bytes(c.bytes_in)} / ${bytes(c.bytes_out)}`,
          el('span', { class: 'actions' },
            c.clientid !== null ? el('button', { type: 'button', class: 'kick', onclick: () => kick(c.clientid) }, 'Kick') : null,
            el('button', { type: 'button', class: 'ban', onclick: () => openBan(options) }, 'Ban…')),
        ],
      };
    });
    document.getElementById('clients-table').replaceChildren(
      table(['Client ID', 'Username', 'IP', 'Route', 'Transport', 'Connected', 'Forwarded / discarded', 'In / out', ''],
        rows, (c) => ({ dataset: { id: String(c.id), clientid: c.clientid ?? '' } })),
      pager(page.meta, (p) => { clientsPage = p; refresh(); }));
  }

  async function kick(clientid) {
    if (!confirm(`Close every connection of ${clientid}? It may reconnect at once: ban it to keep it out.`)) return;
    try {
      const r = await api('DELETE', `/api/v1/clients/${encodeURIComponent(clientid)}`);
      say(`Kicked ${clientid}: ${r.kicked} connection(s).`);
      refresh();
    } catch (err) { say(err.message, true); }
  }

  // ---- Banned -----------------------------------------------------------------------------

  let bannedPage = 1;

  async function banned() {
    const form = document.getElementById('banned-filter');
    const page = await api('GET', `/api/v1/banned?${query(form, { page: bannedPage, limit: PAGE_SIZE })}`);
    if (past(page, (p) => { bannedPage = p; })) return;
    const rows = page.data.map((b) => ({
      item: b,
      cells: [b.as, b.who, origin(b.by), b.reason || '–', when(b.at), when(b.until),
        el('button', { type: 'button', class: 'remove', onclick: () => unban(b) }, 'Remove')],
    }));
    document.getElementById('banned-table').replaceChildren(
      table(['As', 'Who', 'From', 'Reason', 'Since', 'Until', ''], rows, (b) => ({ dataset: { as: b.as, who: b.who } })),
      pager(page.meta, (p) => { bannedPage = p; refresh(); }));
  }

  async function unban(b) {
    if (!confirm(`Lift the ban on ${b.as} ${b.who}?`)) return;
    try {
      await api('DELETE', `/api/v1/banned/${encodeURIComponent(b.as)}/${encodeURIComponent(b.who)}`);
      say(`Lifted the ban on ${b.as} ${b.who}.`);
      refresh();
    } catch (err) { say(err.message, true); }
  }

  document.getElementById('ban-add').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      // An exact end the admin typed (local time, sent as UTC), else the duration chosen.
      const at = f.get('until');
      await api('POST', '/api/v1/banned', {
        as: f.get('as'), who: f.get('who'), reason: f.get('reason') || undefined,
        until: at ? new Date(at).toISOString() : undefined,
        for_secs: at ? undefined : forSecs(f.get('duration')),
      });
      say(`Banned ${f.get('as')} ${f.get('who')}.`);
      e.target.reset();
      fillDurations(e.target.querySelector('.duration'));
      refresh();
    } catch (err) { say(err.message, true); }
  });

  // ---- Devices and classes ----------------------------------------------------------------

  let classNames = [];
  let overridesPage = 1;

  function settingsCells(s) {
    return [
      s.push_interval_secs === null || s.push_interval_secs === undefined ? 'no rhythm' : `${s.push_interval_secs} s`,
      `${s.tolerance_secs} s`,
      `${num(s.messages_per_sec)} (burst ${num(s.message_burst)})`,
      `${bytes(s.bytes_per_sec)} (burst ${bytes(s.byte_burst)})`,
      `${num(s.max_connections)}, ${s.on_duplicate}`,
      s.publish_topics.length ? s.publish_topics.join(', ') : 'anywhere',
    ];
  }
  const SETTINGS = ['T (push interval)', 'E (tolerance)', 'Messages/s', 'Bytes/s', 'Connections', 'May publish to'];

  async function devices() {
    const [classes, overrides] = await Promise.all([
      api('GET', '/api/v1/classes'),
      api('GET', `/api/v1/overrides?${query(document.getElementById('overrides-filter'), { page: overridesPage, limit: PAGE_SIZE })}`),
    ]);
    if (past(overrides, (p) => { overridesPage = p; })) return;
    classNames = classes.map((c) => c.name);
    document.getElementById('classes-table').replaceChildren(
      table(['Class', ...SETTINGS], classes.map((c) => ({ item: c, cells: [c.name, ...settingsCells(c.settings)] }))));
    document.getElementById('overrides-table').replaceChildren(
      table(['Client ID', 'Class', ''], overrides.data.map((o) => ({
        item: o,
        cells: [o.clientid, o.class, el('button', { type: 'button', class: 'clear', onclick: () => clearOverride(o.clientid) }, 'Clear')],
      })), (o) => ({ dataset: { clientid: o.clientid } })),
      pager(overrides.meta, (p) => { overridesPage = p; refresh(); }));
  }

  async function lookup(clientid) {
    const card = document.getElementById('device-card');
    try {
      const d = await api('GET', `/api/v1/devices/${encodeURIComponent(clientid)}`);
      const select = el('select', { id: 'override-class' }, classNames.map((n) => el('option', { value: n }, n)));
      select.value = d.class;
      card.replaceChildren(el('div', { class: 'tile wide', dataset: { clientid: d.clientid, class: d.class } },
        el('h3', {}, d.clientid),
        el('p', {}, 'Class ', el('b', { id: 'device-class' }, d.class), d.overridden ? ' (set by an admin)' : ' (from [policy])'),
        table(SETTINGS, [{ item: d, cells: settingsCells(d.settings) }]),
        el('p', {}, 'Put it in ', select, ' ',
          el('button', { type: 'button', id: 'override-set', onclick: () => setOverride(d.clientid, select.value) }, 'Set override'),
          ' ',
          d.overridden ? el('button', { type: 'button', id: 'override-clear', onclick: () => clearOverride(d.clientid) }, 'Clear override') : null),
        el('p', { class: 'note' }, 'An override applies from the device\'s next publish, live sessions included, until cleared or the gateway restarts.')));
    } catch (err) {
      card.replaceChildren(el('p', { class: 'error' }, err.message));
    }
  }

  async function setOverride(clientid, cls) {
    try {
      await api('PUT', `/api/v1/devices/${encodeURIComponent(clientid)}`, { class: cls });
      say(`${clientid} is in class ${cls} from its next publish.`);
      await lookup(clientid);
      refresh();
    } catch (err) { say(err.message, true); }
  }

  async function clearOverride(clientid) {
    try {
      await api('DELETE', `/api/v1/devices/${encodeURIComponent(clientid)}`);
      say(`${clientid} is back in the class [policy] gives it.`);
      const shown = document.querySelector('#device-card [data-clientid]');
      if (shown && shown.dataset.clientid === clientid) await lookup(clientid);
      refresh();
    } catch (err) { say(err.message, true); }
  }

  document.getElementById('device-lookup').addEventListener('submit', (e) => {
    e.preventDefault();
    lookup(new FormData(e.target).get('clientid'));
  });

  // ---- Top offenders ----------------------------------------------------------------------

  async function offenders() {
    const list = await api('GET', '/api/v1/offenders?limit=50');
    const rows = list.map((o) => {
      const name = o.clientid ?? o.serial;
      const options = o.clientid !== null ? { clientid: o.clientid } : { serial: o.serial };
      return {
        item: o,
        cells: [name, num(o.total), num(o.discarded_early), num(o.discarded_late), num(o.discarded_rate_limited),
          num(o.discarded_not_authorized), num(o.strikes),
          o.ban ? `banned (${origin(o.ban.by)}, ${when(o.ban.until)})`
            : el('button', { type: 'button', class: 'ban', onclick: () => openBan(options) }, 'Ban…')],
      };
    });
    document.getElementById('offenders-table').replaceChildren(rows.length
      ? table(['Device', 'Total', 'Early', 'Late', 'Over the rate', 'Not authorized', 'Strikes', 'Ban'], rows,
        (o) => ({ dataset: { clientid: o.clientid ?? o.serial } }))
      : el('p', {}, 'Nobody was discarded or struck in the last hour.'));
  }

  // ---- the frame --------------------------------------------------------------------------

  const PAGES = { overview, clients, banned, devices, offenders };

  // One refresh at a time; one asked for meanwhile (a filter, a timer) runs right after, so
  // an older answer can never be drawn over a newer one.
  let busy = false;
  let again = false;

  async function refresh() {
    if (!current || dialog.open) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        await PAGES[current]();
      } while (again);
      if (document.getElementById('status').className === 'error') say('');
    } catch (err) {
      say(err.message, true);
    } finally {
      busy = false;
    }
  }

  function show() {
    const name = location.hash.slice(1);
    current = PAGES[name] ? name : 'overview';
    for (const p of document.querySelectorAll('.page')) p.hidden = p.id !== `page-${current}`;
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === current);
    document.body.dataset.page = current;
    refresh();
  }

  for (const [id, reset] of [['clients-filter', () => { clientsPage = 1; }], ['banned-filter', () => { bannedPage = 1; }],
    ['overrides-filter', () => { overridesPage = 1; }]]) {
    document.getElementById(id).addEventListener('submit', (e) => { e.preventDefault(); reset(); refresh(); });
  }

  document.getElementById('logout').addEventListener('click', async () => {
    const r = await fetch('/logout', { method: 'POST', headers: { 'x-csrf-token': session.csrf }, credentials: 'same-origin' });
    if (r.ok) location.href = '/login';
    else say(`Logout failed (${r.status}): reload the page and try again.`, true);
  });

  async function start() {
    try {
      session = await api('GET', '/dashboard/session');
    } catch (err) { say(err.message, true); return; }
    document.getElementById('who').textContent = `admin ${session.name}`;
    document.getElementById('interval').textContent = String(session.monitor_interval_secs);
    fillDurations(document.querySelector('#ban-add .duration'));
    window.addEventListener('hashchange', show);
    show();
    setInterval(refresh, REFRESH_MS);
  }

  start();
})();

// The dsv3 dashboard: every page is static HTML filled from /api/v1 (protobuf's JSON
// mapping: int64 fields arrive as strings). Text from the API is only ever set as text.
'use strict';

const ENDED = new Set(['COMPLETED', 'FAILED', 'CANCELED']);
const page = document.body.dataset.page;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, post) {
  const init = {credentials: 'same-origin', headers: {}};
  if (post !== undefined) {
    init.method = 'POST';
    init.headers['X-Dsv3-Request'] = '1';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(post);
  }
  const r = await fetch(path, init);
  let body;
  try {
    body = await r.json();
  } catch (e) {
    body = {code: 'HTTP_' + r.status, error: 'the controller answered HTTP ' + r.status + ' without JSON'};
  }
  if (r.status === 401 && page !== 'login') {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
  }
  if (!r.ok) throw new ApiError(r.status, body.code, body.error);
  return body;
}

// ---- small DOM and formatting helpers ----------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    if (c instanceof Node) {
      const td = document.createElement('td');
      td.appendChild(c);
      tr.appendChild(td);
    } else if (typeof c === 'number') {
      tr.appendChild(el('td', c, 'num'));
    } else {
      tr.appendChild(el('td', c === undefined ? '' : c));
    }
  }
  return tr;
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows);
}

function stateName(s) { return String(s || '').replace('JOB_STATE_', ''); }

function stateBadge(s) {
  const name = stateName(s);
  return el('span', name, 'state state-' + name);
}

function num(x, digits) {
  if (x === undefined || x === null || x === '') return '';
  const v = Number(x);
  if (!Number.isFinite(v)) return String(x);
  if (digits === undefined) return v.toLocaleString('en-US');
  return v.toFixed(digits);
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return '';
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

function time(ms) {
  const v = Number(ms || 0);
  return v > 0 ? new Date(v).toLocaleString('sv-SE') : '';
}

function progress(job) {
  const step = Number(job.step || 0), total = Number(job.totalSteps || 0);
  const span = document.createElement('span');
  const bar = el('span', null, 'bar');
  const fill = el('span');
  fill.style.width = total > 0 ? `${Math.min(100, (100 * step) / total).toFixed(1)}%` : '0%';
  bar.appendChild(fill);
  span.append(bar, `${step} / ${total}`);
  return span;
}

function showError(e) {
  const p = $('error');
  p.textContent = e ? (e.code ? `${e.code}: ` : '') + e.message : '';
  p.hidden = !e;
}

// Runs `fn` now and every `ms` while the page is open; errors show in #error.
function every(ms, fn) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      await fn();
      showError(null);
    } catch (e) {
      showError(e);
    } finally {
      running = false;
    }
  };
  tick();
  return setInterval(tick, ms);
}

async function header() {
  const who = await api('/api/v1/whoami');
  $('who').textContent = who.trustedLocal ? `${who.user} (local, no login)` : who.user + (who.admin ? ' (admin)' : '');
  $('logout').hidden = who.trustedLocal;
  $('logout').onclick = async () => {
    await api('/api/v1/logout', {});
    location.assign('/login');
  };
}

// ---- jobs ----------------------------------------------------------------------------------

function jobsPage() {
  const params = new URLSearchParams(location.search);
  for (const f of ['state', 'owner', 'name']) $('filter-' + f).value = params.get(f) || '';
  const refresh = async () => {
    const q = new URLSearchParams();
    for (const f of ['state', 'owner', 'name']) {
      const v = $('filter-' + f).value.trim();
      if (v) q.set(f, v);
    }
    history.replaceState(null, '', q.toString() ? '?' + q : location.pathname);
    const list = await api('/api/v1/jobs?' + q);
    const jobs = list.jobs || [];
    fillTable('jobs', jobs.map((j) => {
      const link = el('a', j.id);
      link.href = '/jobs/' + j.id;
      const tr = row([link, j.name, j.owner, stateBadge(j.state), progress(j), num(j.loss, 4), num(j.valLoss, 4),
        num(j.tokensPerSecond, 0), ENDED.has(stateName(j.state)) ? '' : duration(j.etaSeconds),
        `${j.restarts} / ${j.maxRestarts}`, time(j.createdUnixMs)]);
      tr.dataset.jobId = j.id;
      return tr;
    }));
    $('empty').hidden = jobs.length > 0;
  };
  $('filters').addEventListener('input', refresh);
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  every(3000, refresh);
}

// ---- one job -------------------------------------------------------------------------------

const CHARTS = [
  {id: 'loss', series: [['loss', 'train loss', '#2f6fdf'], ['val_loss', 'validation loss', '#d9480f']]},
  {id: 'lr', series: [['lr', 'learning rate', '#2b8a3e']]},
  {id: 'throughput', series: [['tokens_per_s', 'tokens/s', '#5f3dc4']]},
  {id: 'mfu', series: [['mfu', 'MFU (0..1)', '#c2255c']]},
  {id: 'experts', series: [['expert_load_max_over_mean', 'max/mean load', '#e67700']]},
];

function makeCharts() {
  if (typeof Chart === 'undefined') {
    $('chart-error').textContent = window.dsv3ChartError || 'Chart.js did not load: the curves cannot be drawn';
    $('chart-error').hidden = false;
    return null;
  }
  const bySeries = {};
  for (const c of CHARTS) {
    const chart = new Chart($('chart-' + c.id), {
      type: 'line',
      data: {datasets: c.series.map(([, label, color]) => ({
        label, data: [], parsing: false, borderColor: color, backgroundColor: color, borderWidth: 1.5,
        pointRadius: label.startsWith('validation') ? 2 : 0,
      }))},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, normalized: true,
        scales: {x: {type: 'linear', title: {display: true, text: 'step'}}},
        plugins: {legend: {display: c.series.length > 1}},
      },
    });
    c.series.forEach(([name], i) => { bySeries[name] = {chart, dataset: chart.data.datasets[i], last: -1}; });
  }
  return bySeries;
}

async function updateCharts(id, bySeries, first) {
  const names = Object.keys(bySeries);
  const since = Math.min(...names.map((n) => bySeries[n].last));
  const q = new URLSearchParams({since_step: String(since), max_points: first ? '2000' : '0'});
  for (const n of names) q.append('name', n);
  const m = await api(`/api/v1/jobs/${id}/metrics?${q}`);
  const touched = new Set();
  for (const s of m.series || []) {
    const target = bySeries[s.name];
    if (!target) continue;
    for (const p of s.points || []) {
      const step = Number(p.step);
      if (step <= target.last) continue;
      target.dataset.data.push({x: step, y: Number(p.value)});
      target.last = step;
      touched.add(target.chart);
    }
  }
  for (const chart of touched) chart.update('none');
}

function summary(job) {
  const items = [
    ['State', stateBadge(job.state)], ['Owner', job.owner], ['Progress', progress(job)],
    ['Loss', num(job.loss, 4)], ['Val loss', num(job.valLoss, 4)], ['Tokens/s', num(job.tokensPerSecond, 0)],
    ['ETA', ENDED.has(stateName(job.state)) ? '' : duration(job.etaSeconds)],
    ['Attempt', job.attempt], ['Restarts', `${job.restarts} / ${job.maxRestarts}`], ['Ranks', job.numRanks],
    ['Priority', job.priority], ['Submitted', time(job.createdUnixMs)], ['Started', time(job.startedUnixMs)],
    ['Finished', time(job.finishedUnixMs)],
    ['Last checkpoint', job.lastCheckpoint ? `step ${job.lastCheckpointStep}` : ''],
    ['Reason', job.stateReason], ['Folder', job.jobDir],
  ];
  const dl = $('summary');
  dl.replaceChildren();
  for (const [k, v] of items) {
    const dd = document.createElement('dd');
    if (k === 'Reason' || k === 'Folder') dd.className = 'wide';
    if (v instanceof Node) dd.appendChild(v); else dd.textContent = v === undefined ? '' : String(v);
    dl.append(el('dt', k), dd);
  }
}

function cancelButton(id, job) {
  const button = $('cancel');
  const ended = ENDED.has(stateName(job.state));
  button.hidden = ended;
  if (ended || button.dataset.wired) return;
  button.dataset.wired = '1';
  // Two clicks: the first arms the button, the second cancels (no modal dialog).
  button.onclick = async () => {
    if (!button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = 'Confirm cancel';
      $('cancel-status').textContent = 'click again to cancel the job';
      return;
    }
    button.disabled = true;
    try {
      const r = await api(`/api/v1/jobs/${id}/cancel`, {reason: 'from the web dashboard'});
      $('cancel-status').textContent = 'cancel requested: ' + stateName(r.job && r.job.state);
    } catch (e) {
      $('cancel-status').textContent = 'cancel failed: ' + e.message;
      button.disabled = false;
    }
  };
}

function jobTables(job, checkpoints) {
  fillTable('ranks', (job.ranks || []).map((r) => row([r.rank, r.attempt, r.host, r.pid, r.state,
    r.state === 'exited' ? r.exitCode : '', r.step, r.phase, r.stepSeconds ? num(r.stepSeconds, 3) + ' s' : '',
    time(r.lastHeartbeatUnixMs), r.logPath])));
  fillTable('checkpoints', (checkpoints.checkpoints || []).map((c) => row([Number(c.step), c.reason,
    num(c.valLoss, 4), time(c.timeUnixMs), c.path])));
  fillTable('evaluations', (job.evaluations || []).map((e) => row([Number(e.step), num(e.loss, 4),
    num(e.perplexity, 2), Number(e.tokens), Object.entries(e.perSourceLoss || {}).map(([k, v]) =>
      `${k} ${num(v, 3)}`).join(', '), e.sample])));
  fillTable('history', (job.history || []).map((h) => row([time(h.timeUnixMs), stateBadge(h.state), h.attempt,
    h.reason])));
  const ranks = $('log-rank');
  for (const r of job.ranks || []) {
    if (![...ranks.options].some((o) => o.value === String(r.rank))) ranks.append(new Option(String(r.rank), r.rank));
  }
}

async function updateLogs(id) {
  const q = new URLSearchParams({tail: $('log-tail').value});
  if ($('log-rank').value !== '') q.set('rank', $('log-rank').value);
  const logs = await api(`/api/v1/jobs/${id}/logs?${q}`);
  const pre = $('logs');
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const times = $('log-times').checked;
  pre.textContent = (logs.lines || []).map((l) =>
    (times ? (Number(l.timeUnixMs) > 0 ? time(l.timeUnixMs) : '-') + ' ' : '') + `[${l.rank}] ${l.text}`).join('\n');
  if (atBottom || $('follow').checked) pre.scrollTop = pre.scrollHeight;
}

function jobPage() {
  const id = location.pathname.split('/')[2];
  document.title = `dsv3 · job ${id}`;
  $('title').textContent = `Job ${id}`;
  let charts = null, first = true, ended = false, config = false;
  $('log-rank').onchange = $('log-tail').onchange = $('log-times').onchange = () => updateLogs(id).catch(showError);
  const refresh = async () => {
    const job = await api(`/api/v1/jobs/${id}`);
    $('title').textContent = `Job ${job.id}: ${job.name}`;
    $('content').hidden = false;
    if (!charts && !$('chart-error').textContent) charts = makeCharts();
    summary(job);
    cancelButton(id, job);
    if (!config && job.configJson) {
      $('config').textContent = JSON.stringify(JSON.parse(job.configJson), null, 2);
      config = true;
    }
    const checkpoints = await api(`/api/v1/jobs/${id}/checkpoints`);
    jobTables(job, checkpoints);
    // An ended job is drawn once more (its last points) and then left alone.
    if (ended) return;
    if (charts) await updateCharts(id, charts, first);
    first = false;
    if ($('follow').checked || !$('logs').textContent) await updateLogs(id);
    ended = ENDED.has(stateName(job.state));
  };
  every(2000, refresh);
}

// ---- nodes ---------------------------------------------------------------------------------

function nodesPage() {
  every(3000, async () => {
    const r = await api('/api/v1/nodes');
    $('allocator').textContent = r.allocator;
    fillTable('nodes', (r.nodes || []).map((n) => {
      const jobs = document.createElement('span');
      for (const id of n.jobIds || []) {
        const a = el('a', id);
        a.href = '/jobs/' + id;
        jobs.append(a, ' ');
      }
      return row([n.name, n.address, n.state, n.slotsUsed, n.slots, time(n.lastHeartbeatUnixMs), jobs]);
    }));
  });
}

// ---- login ---------------------------------------------------------------------------------

function loginPage() {
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('/api/v1/login', {token: $('token').value.trim()});
      const next = new URLSearchParams(location.search).get('next') || '/';
      // Only a path on this controller: never a redirect elsewhere.
      location.assign(next.startsWith('/') && !next.startsWith('//') ? next : '/');
    } catch (err) {
      showError(err);
    }
  });
}

if (page === 'login') {
  loginPage();
} else {
  header().catch(showError);
  ({jobs: jobsPage, job: jobPage, nodes: nodesPage})[page]();
}

// The web page at /: a chat box that streams the answer and shows what the KV cache says about it.
#include "server/server.h"

namespace kvlens {

const char* server_page() {
    return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvlens</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:820px;margin:2em auto;padding:0 1em;color:#222}
textarea{width:100%;height:5em;font:inherit}
#think{color:#777;white-space:pre-wrap;font-size:13px;border-left:3px solid #ddd;padding-left:8px}
#answer{white-space:pre-wrap;margin:.8em 0;font-size:16px}
table{border-collapse:collapse;font-size:13px}td{padding:1px 10px 1px 0}
.bar{display:inline-block;height:9px;background:#0072B2;vertical-align:middle}
#meta{color:#555;font-size:13px}
</style></head><body>
<h2>kvlens <span id="model" style="font-weight:normal;color:#777"></span></h2>
<textarea id="q">What is 17+25?</textarea>
<p>thinking <select id="mode"><option>default</option><option>on</option><option>off</option><option value="auto">auto</option>
<option value="budget">budget</option><option value="deer">deer</option></select>
<input id="arg" type="number" style="width:5em;display:none" title="budget: think tokens; deer: threshold">
temperature <input id="temp" type="number" value="0" min="0" max="2" step="0.1" style="width:4em">
max tokens <input id="max" type="number" value="256" min="1" style="width:5em">
<button id="go">Send</button></p>
<p id="keyrow" style="display:none">API key <input id="key" type="password" autocomplete="off" style="width:22em">
<span style="color:#777;font-size:13px">kept in this page only, sent as Authorization: Bearer</span></p>
<div id="think"></div><div id="answer"></div><div id="meta"></div><table id="scores"></table>
<script>
const $ = id => document.getElementById(id);
// A server started with --api-key answers 401 until the key typed here comes along (in memory only).
const auth = () => $('key').value ? {'Authorization': 'Bearer ' + $('key').value} : {};
function needKey(j) {
  $('keyrow').style.display = '';
  $('meta').textContent = (j && j.error ? j.error.message + ': ' : '') +
      'this server needs an API key; type it above';
}
// A refusal in OpenAI's error shape, or whatever else came back.
async function errorOf(r) {
  const t = await r.text();
  try { return JSON.parse(t).error.message; } catch (e) { return r.status + ' ' + r.statusText + ' ' + t; }
}
function loadModel() {
  fetch('/v1/models', {headers: auth()}).then(async r => {
    if (r.status === 401) return needKey(await r.json());
    if (!r.ok) { $('meta').textContent = await errorOf(r); return; }
    const m = (await r.json()).data[0]; $('meta').textContent = '';
    $('model').textContent = m.id + ' (' + m.kvlens.arch + ', ' + m.kvlens.n_layer + ' layers)';
    $('mode').querySelector('option[value=auto]').disabled = !m.kvlens.router;
  }).catch(e => { $('meta').textContent = 'request failed: ' + e.message; });
}
$('key').onchange = loadModel;
loadModel();
// budget:N stops thinking after N tokens (Qwen3's thinking budget); deer:T exits at the first line break whose
// trial answer has mean token probability above T (DEER). The number beside the menu is N or T.
const ARG = {budget: {value: 128, min: 1, step: 1}, deer: {value: 0.95, min: 0, max: 1, step: 0.01}};
$('mode').onchange = () => {
  const a = ARG[$('mode').value];
  $('arg').style.display = a ? '' : 'none';
  if (a) Object.assign($('arg'), {min: a.min, max: a.max ?? '', step: a.step, value: a.value});
};
function show(k) {
  const t = k.think || {};
  let s = k.n_generated + ' tokens generated' + (k.stop ? '; stop: ' + k.stop : ' so far');
  if (t.mode === 'auto') s += '; router d=' + t.prompt_score.toFixed(1) + ' -> ' + t.initial +
      (t.switch_at >= 0 ? ', switched to ' + t.final + ' after ' + t.switch_at + ' tokens' : ', no switch');
  else if (t.exit !== undefined)  // budget:N or deer:T: how the think block ended, and the trials' cost
    s += '; ' + t.mode + ': ' + (t.exit === 'budget' || t.exit === 'deer' ? 'think block closed by ' + t.exit +
        ' after ' + t.switch_at + ' tokens' : t.exit === 'model' ? 'the model closed its think block' :
        'no exit') + (k.cost && k.cost.n_trials ? ', ' + k.cost.n_trials + ' trials (' +
        k.cost.n_trial_tokens + ' tokens)' : '');
  $('meta').textContent = s;
  const rows = Object.entries(k.scores || {}).filter(([n]) => /coe_[rc]$|^p_correct|inv_ppl/.test(n));
  $('scores').innerHTML = rows.map(([n, v]) => '<tr><td>' + n + '</td><td>' + (v === null ? 'n/a' : v.toFixed(4)) +
      '</td><td>' + (n.startsWith('p_correct') ? '<span class="bar" style="width:' + (100 * v) + 'px"></span>' : '') +
      '</td></tr>').join('');
}
// One request at a time: two streams would write into the same elements.
$('go').onclick = async () => {
  $('go').disabled = true;
  try { await send(); } catch (e) { $('meta').textContent = 'request failed: ' + e.message; }
  $('go').disabled = false;
};
async function send() {
  $('think').textContent = $('answer').textContent = $('meta').textContent = ''; $('scores').innerHTML = '';
  const body = {messages: [{role: 'user', content: $('q').value}], stream: true,
                temperature: +$('temp').value, max_tokens: +$('max').value,
                kvlens: {scores_every: 8}};  // the confidence, live, every 8 tokens
  const mode = $('mode').value;
  if (ARG[mode]) body.think = mode + ':' + $('arg').value;
  else if (mode !== 'default') body.think = mode;
  const res = await fetch('/v1/chat/completions', {method: 'POST', body: JSON.stringify(body),
                                                   headers: {'Content-Type': 'application/json', ...auth()}});
  if (res.status === 401) return needKey(await res.json());
  if (!res.ok) { $('meta').textContent = await errorOf(res); return; }
  const reader = res.body.getReader(), dec = new TextDecoder(); let buf = '';
  for (;;) {
    const {done, value} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const j = JSON.parse(line.slice(6));
      if (j.error) { $('meta').textContent = j.error.message; continue; }
      const c = j.choices && j.choices[0]; if (!c) continue;
      if (c.delta.reasoning_content) $('think').textContent += c.delta.reasoning_content;
      if (c.delta.content) $('answer').textContent += c.delta.content;
      if (j.kvlens) show(j.kvlens);
    }
  }
}
</script></body></html>
)HTML";
}

}  // namespace kvlens

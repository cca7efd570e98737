"""latents.html and latents_compare.html: self-contained pages (inline CSS and JS, data as embedded JSON).

A Content-Security-Policy ``default-src 'none'`` forbids every request, so the pages cannot load
anything from the network even by mistake. The list is paged (50 rows rendered at a time) and a
latent's details are rendered only when it is opened, so 16384 latents stay responsive; the cost is
the embedded JSON, parsed once (see docs/latents.md for measured sizes).
Deep links: ``#latent=ID`` opens a latent, ``#search=TEXT`` filters by latent id or token text.
"""

from __future__ import annotations

import html
import json
from typing import Any

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"

CSS = """
body{font-family:system-ui,'DejaVu Sans',sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1280px;margin:0 auto;padding:16px 24px}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
td,th{border-bottom:1px solid #e3e6ec;padding:3px 6px;text-align:left;vertical-align:top}
tr.row{cursor:pointer} tr.row:hover{background:#eef3ff}
.controls{display:flex;gap:10px;align-items:center;margin:8px 0;flex-wrap:wrap}
.ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:2px 0;padding:2px 4px;background:#fff}
.ctx span.t{border-radius:2px}
.act{display:inline-block;width:64px;color:#555;font-family:ui-monospace,monospace;font-size:12px}
.detail{background:#fff;border:1px solid #d5dae3;padding:10px;margin:10px 0;min-width:0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.bar{display:inline-block;width:8px;background:#1f77b4;margin-right:1px;vertical-align:bottom}
.hist{height:60px;display:flex;align-items:flex-end}
.tok{font-family:ui-monospace,monospace;background:#eef;padding:0 3px;margin:1px;display:inline-block}
.muted{color:#667} h2{font-size:1.1em;margin:.6em 0 .3em}
"""

JS = r"""
function esc(s){return String(s).replace(/[&<>"']/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
function tok(D,t){if(t<0){return '\u00b6';}var s=D.vocab[String(t)];return s===undefined?('#'+t):s;}
function fmt(x){return (typeof x==='number')?(Math.abs(x)>=1000||(Math.abs(x)<0.001&&x!==0)?x.toExponential(2):(+x.toPrecision(3)).toString()):'';}
function byId(D){if(!D._byId){D._byId={};D.latents.forEach(function(l,i){D._byId[l.id]=i;});}return D._byId;}
function context(D,l,ex,before,after){
  var seq=D.sequences[String(ex[1])]||[];var p=ex[2];var lo=Math.max(0,p-before),hi=Math.min(seq.length,p+after+1);
  var marks={};(l.top.concat(l.samples)).forEach(function(e){if(e[1]===ex[1]){marks[e[2]]=Math.max(marks[e[2]]||0,e[0]);}});
  var out='<div class="ctx"><span class="act">'+fmt(ex[0])+'</span>';
  for(var i=lo;i<hi;i++){var a=marks[i]||0;var alpha=l.max>0?Math.min(1,a/l.max):0;
    var style=a>0?' style="background:rgba(255,120,0,'+(0.15+0.85*alpha).toFixed(2)+')'+(i===p?';outline:1px solid #a40':'')+'"':'';
    out+='<span class="t" data-pos="'+i+'"'+style+(i===p?' data-marked="1"':'')+' title="'+(a>0?'activation '+fmt(a):'')+'">'+esc(tok(D,seq[i]))+'</span>';}
  return out+'</div>';}
function tokens(D,list,withCount){return list.map(function(e){return '<span class="tok" title="'+fmt(e[1])+'">'+esc(tok(D,e[0]))+'</span>'+(withCount?'<span class="muted">'+fmt(e[1])+'</span>':'');}).join(' ');}
function hist(D,l){if(!l.hist.length){return '<span class="muted">never fired</span>';}
  var c=l.hist.slice(1),m=Math.max.apply(null,c),o=l.hist[0],s='<div class="hist">';
  c.forEach(function(v,i){s+='<span class="bar" title="['+fmt(D.hist_edges[o+i])+', '+fmt(D.hist_edges[o+i+1])+'): '+v+'" style="height:'+Math.max(1,Math.round(58*v/m))+'px"></span>';});
  return s+'</div><span class="muted">activation '+fmt(D.hist_edges[o])+' to '+fmt(D.hist_edges[o+c.length])+' (log bins)</span>';}
function detail(D,id){
  var i=byId(D)[id];if(i===undefined){return '<div class="detail">latent '+esc(id)+' was not collected</div>';}
  var l=D.latents[i];var s='<div class="detail" data-latent="'+l.id+'"><h2>'+esc(D.name)+' latent '+l.id+'</h2>';
  s+='<div>group '+l.group+' &middot; fires on '+l.count+' of '+D.n_tokens+' tokens (density '+fmt(l.density)+') &middot; mean when active '+fmt(l.mean)+' &middot; max '+fmt(l.max)+'</div>';
  s+=hist(D,l);
  s+='<h2>top activations</h2>'+(l.top.length?l.top.map(function(e){return context(D,l,e,16,4);}).join(''):'<span class="muted">none</span>');
  s+='<h2>random sample of other firings</h2>'+(l.samples.length?l.samples.map(function(e){return context(D,l,e,16,4);}).join(''):'<span class="muted">none</span>');
  s+='<h2>input side: tokens at the strongest kept positions</h2><div>'+tokens(D,l.inputs,true)+'</div>';
  if(l.up){s+='<h2>'+esc(D.logit_lens)+'</h2><div>promoted: '+tokens(D,l.up,true)+'</div><div>suppressed: '+tokens(D,l.down,true)+'</div><div class="muted">'+esc(D.logit_lens_note)+'</div>';}
  else{s+='<div class="muted">'+esc(D.logit_lens_note)+'</div>';}
  return s+'</div>';}
function haystack(D,l){if(l._h===undefined){var parts=[];l.inputs.forEach(function(e){parts.push(tok(D,e[0]));});
  (l.up||[]).forEach(function(e){parts.push(tok(D,e[0]));});l._h=parts.join('\u0001').toLowerCase();}return l._h;}
"""

LIST_JS = r"""
var D=JSON.parse(document.getElementById('data').textContent);var PAGE=50,page=0,order=[];
function apply(){var q=document.getElementById('q').value.trim(),key=document.getElementById('sort').value;
  var idx=[];for(var i=0;i<D.latents.length;i++){var l=D.latents[i];
    if(q===''||String(l.id)===q||(!/^\d+$/.test(q)&&haystack(D,l).indexOf(q.toLowerCase())>=0)){idx.push(i);}}
  if(key!=='id'){idx.sort(function(a,b){return key==='group'?D.latents[a].group-D.latents[b].group||D.latents[a].id-D.latents[b].id:D.latents[b][key]-D.latents[a][key];});}
  order=idx;page=0;draw();}
function draw(){var rows='';var n=order.length,last=Math.min(n,(page+1)*PAGE);
  for(var j=page*PAGE;j<last;j++){var l=D.latents[order[j]];
    rows+='<tr class="row" data-id="'+l.id+'"><td>'+l.id+'</td><td>'+l.group+'</td><td>'+fmt(l.density)+'</td><td>'+fmt(l.mean)+'</td><td>'+fmt(l.max)+'</td><td>'+tokens(D,l.inputs.slice(0,3),false)+'</td><td>'+tokens(D,(l.up||[]).slice(0,3),false)+'</td></tr>';}
  document.getElementById('rows').innerHTML=rows;
  document.getElementById('pageinfo').textContent=n?((page*PAGE+1)+'-'+last+' of '+n+' latents'):'no latent matches';}
function open_(id){document.getElementById('detail').innerHTML=detail(D,id);}
function route(){var h=decodeURIComponent(location.hash.slice(1));var m;
  if((m=/^latent=(\d+)$/.exec(h))){open_(+m[1]);}
  else if((m=/^search=(.*)$/.exec(h))){document.getElementById('q').value=m[1];apply();if(order.length){open_(D.latents[order[0]].id);}}}
document.getElementById('q').addEventListener('input',apply);document.getElementById('sort').addEventListener('change',apply);
document.getElementById('prev').addEventListener('click',function(){if(page>0){page--;draw();}});
document.getElementById('next').addEventListener('click',function(){if((page+1)*PAGE<order.length){page++;draw();}});
document.getElementById('rows').addEventListener('click',function(ev){var tr=ev.target.closest('tr');if(tr){location.hash='latent='+tr.getAttribute('data-id');}});
window.addEventListener('hashchange',route);
document.getElementById('title').textContent=D.name+': '+D.latents.length+' latents ('+D.d_sae+' in the dictionary), '+D.n_tokens+' evaluated tokens';
apply();route();
"""

COMPARE_JS = r"""
var C=JSON.parse(document.getElementById('data').textContent);var A=C.a,B=C.b,M=C.matches;var PAGE=50,page=0,order=[];
function apply(){var key=document.getElementById('sort').value,q=document.getElementById('q').value.trim();var idx=[];
  for(var i=0;i<M.best_cos.length;i++){if(q===''||String(A.latents[i].id)===q||(!/^\d+$/.test(q)&&haystack(A,A.latents[i]).indexOf(q.toLowerCase())>=0)){idx.push(i);}}
  if(key!=='id'){idx.sort(function(a,b){return M[key][b]-M[key][a];});}
  if(key==='worst'){idx.sort(function(a,b){return Math.max(M.best_cos[a],M.best_corr[a])-Math.max(M.best_cos[b],M.best_corr[b]);});}
  order=idx;page=0;draw();}
function draw(){var rows='',last=Math.min(order.length,(page+1)*PAGE);
  for(var j=page*PAGE;j<last;j++){var i=order[j];rows+='<tr class="row" data-id="'+A.latents[i].id+'"><td>'+A.latents[i].id+'</td><td>'+M.best_cos_id[i]+'</td><td>'+fmt(M.best_cos[i])+'</td><td>'+M.best_corr_id[i]+'</td><td>'+fmt(M.best_corr[i])+'</td><td>'+tokens(A,A.latents[i].inputs.slice(0,3),false)+'</td></tr>';}
  document.getElementById('rows').innerHTML=rows;document.getElementById('pageinfo').textContent=(page*PAGE+1)+'-'+last+' of '+order.length;}
function open_(id){var i=byId(A)[id];if(i===undefined){return;}var which=document.getElementById('by').value;var bid=which==='corr'?M.best_corr_id[i]:M.best_cos_id[i];
  document.getElementById('detail').innerHTML='<div class="muted">'+esc(A.name)+' '+id+' vs '+esc(B.name)+' '+bid+': decoder cosine '+fmt(M.best_cos[i])+' (best '+M.best_cos_id[i]+'), activation correlation '+fmt(M.best_corr[i])+' (best '+M.best_corr_id[i]+')</div><div class="pair">'+detail(A,id)+detail(B,bid)+'</div>';}
function route(){var m=/^latent=(\d+)$/.exec(location.hash.slice(1));if(m){open_(+m[1]);}}
['q','sort'].forEach(function(k){document.getElementById(k).addEventListener(k==='q'?'input':'change',apply);});
document.getElementById('by').addEventListener('change',route);
document.getElementById('prev').addEventListener('click',function(){if(page>0){page--;draw();}});
document.getElementById('next').addEventListener('click',function(){if((page+1)*PAGE<order.length){page++;draw();}});
document.getElementById('rows').addEventListener('click',function(ev){var tr=ev.target.closest('tr');if(tr){location.hash='latent='+tr.getAttribute('data-id');}});
window.addEventListener('hashchange',route);
document.getElementById('unA').textContent=M.unmatched_a.length+' latents of '+A.name+' without a counterpart (cosine and correlation below '+M.threshold+'): '+M.unmatched_a.slice(0,500).join(', ')+(M.unmatched_a.length>500?' ...':'');
document.getElementById('unB').textContent=M.unmatched_b.length+' latents of '+B.name+' that are no latent\'s match: '+M.unmatched_b.slice(0,500).join(', ')+(M.unmatched_b.length>500?' ...':'');
apply();route();
"""


def _embed(data: Any) -> str:
    """JSON that cannot close its <script> element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _page(title: str, body: str, data: Any, script: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
        f'<script type="application/json" id="data">{_embed(data)}</script>\n'
        f"<script>{JS}{script}</script>\n</main>\n</body>\n</html>\n"
    )


def render_latents_page(record: dict[str, Any]) -> str:
    """latents.html for one transcoder's latents record."""
    body = (
        "<h1>Latents</h1><div id='title' class='muted'></div>"
        "<div class='controls'><input id='q' placeholder='latent id or token' size='24'>"
        "<label>sort <select id='sort'><option value='id'>id</option><option value='density'>density</option>"
        "<option value='max'>max activation</option><option value='group'>group</option></select></label>"
        "<button id='prev'>&lt;</button><button id='next'>&gt;</button><span id='pageinfo'></span></div>"
        "<div id='detail'></div>"
        "<table><thead><tr><th>latent</th><th>group</th><th>density</th><th>mean</th><th>max</th>"
        "<th>input tokens</th><th>promoted (logit lens)</th></tr></thead><tbody id='rows'></tbody></table>"
    )
    return _page(f"latents of {record['name']}", body, record, LIST_JS)


def render_compare_page(a: dict[str, Any], b: dict[str, Any], matches: dict[str, Any]) -> str:
    """latents_compare.html: each latent of ``a`` next to its best counterpart in ``b``."""
    body = (
        f"<h1>Latents: {html.escape(a['name'])} vs {html.escape(b['name'])}</h1>"
        "<p class='muted'>Each latent of the first transcoder with its best counterpart in the second: by decoder "
        "cosine, and by activation correlation over the evaluated tokens (among its "
        f"{matches['candidates_per_latent']} highest-cosine candidates).</p>"
        "<div class='controls'><input id='q' placeholder='latent id or token' size='24'>"
        "<label>sort <select id='sort'><option value='id'>id</option><option value='best_cos'>best cosine</option>"
        "<option value='best_corr'>best correlation</option><option value='worst'>worst match first</option>"
        "</select></label><label>show counterpart by <select id='by'><option value='cos'>cosine</option>"
        "<option value='corr'>correlation</option></select></label>"
        "<button id='prev'>&lt;</button><button id='next'>&gt;</button><span id='pageinfo'></span></div>"
        "<div id='detail'></div>"
        "<table><thead><tr><th>latent</th><th>best by cosine</th><th>cosine</th><th>best by correlation</th>"
        "<th>correlation</th><th>input tokens</th></tr></thead><tbody id='rows'></tbody></table>"
        "<h2>Unmatched</h2><p id='unA' class='muted'></p><p id='unB' class='muted'></p>"
    )
    return _page(f"latents: {a['name']} vs {b['name']}", body, {"a": a, "b": b, "matches": matches}, COMPARE_JS)

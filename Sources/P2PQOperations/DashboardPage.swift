/// The dashboard page: hand-written HTML, CSS and script, embedded here (no build step, nothing
/// fetched from elsewhere). It loads `/dashboard.json`, then follows `/dashboard/stream`.
enum DashboardPage {
    /// Inline script and style only, requests to this endpoint only, never framed.
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
        + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    static func login(failed: Bool) -> String {
        """
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>p2pq dashboard: sign in</title>
        <style>body{font:15px system-ui,sans-serif;margin:3em;color:#222}input{font:inherit;width:36em;max-width:90%}</style></head>
        <body><h1>p2pq dashboard</h1>
        <p>\(failed ? "That token is not accepted here. " : "")Give the operations token of this node (64 hex digits: \
        <code>p2pq keygen --token</code>, or the token derived from the cluster key). It is kept as a cookie for this \
        endpoint only.</p>
        <form method="post" action="/login"><input name="token" type="password" autocomplete="off" autofocus>
        <button type="submit">Open</button></form></body></html>
        """
    }

    static let html = """
    <!doctype html>
    <html lang="en"><head><meta charset="utf-8"><title>p2pq dashboard</title>
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <style>
    body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
    header{background:#1d232b;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:baseline}
    header h1{font-size:1.1em;margin:0}#conn{color:#9fd39f}#conn.off{color:#f0a0a0}
    main{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1em;padding:1em}
    section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.6em .9em;overflow:auto}
    h2{font-size:1em;margin:.2em 0 .6em}table{border-collapse:collapse;width:100%}
    td,th{padding:.2em .4em;text-align:left;border-bottom:1px solid #eef0f3;white-space:nowrap}
    th{font-weight:600;color:#5a6470}.num{text-align:right;font-variant-numeric:tabular-nums}
    .alive,.self{color:#1a7f37}.suspect{color:#b35900}.dead{color:#c62828}.left{color:#6b7280}
    .dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.4em;vertical-align:-1px}
    svg{display:block;width:100%;height:auto}svg text{font-size:10px;fill:#5a6470}
    #events li{margin:.15em 0}#events .t{color:#5a6470;margin-right:.6em}.muted{color:#8a94a0}
    </style></head>
    <body data-live="0">
    <header><h1>p2pq dashboard</h1><span id="self"></span><span id="conn">connecting…</span></header>
    <main>
    <section><h2>Members</h2><table id="members"><thead><tr><th>node</th><th>state</th><th class="num">incarnation</th>
    <th>link</th><th>address</th><th>operations</th></tr></thead><tbody></tbody></table></section>
    <section><h2>Queues: length per node</h2><div id="queues"><p class="muted">no queue yet</p></div></section>
    <section><h2>Flows: items per second between nodes</h2><div id="flows"><p class="muted">no transfer yet</p></div></section>
    <section><h2>Remote calls</h2><table id="calls"><thead><tr><th>node</th><th class="num">in flight</th>
    <th class="num">made/s</th><th class="num">executed/s</th><th>executed/s, last minutes</th></tr></thead><tbody></tbody></table></section>
    <section><h2>Recent events</h2><ul id="events"></ul></section>
    </main>
    <script>
    "use strict";
    const palette=["#1f77b4","#d62728","#2ca02c","#9467bd","#ff7f0e","#17becf","#8c564b","#e377c2","#7f7f7f","#bcbd22"];
    const colors=new Map();
    function color(id){if(!colors.has(id))colors.set(id,palette[colors.size%palette.length]);return colors.get(id);}
    function short(id){return id?id.slice(0,8):"?";}
    function el(tag,attrs,...kids){const e=document.createElement(tag);for(const k in attrs||{})e.setAttribute(k,attrs[k]);
      for(const c of kids)e.append(c instanceof Node?c:document.createTextNode(String(c)));return e;}
    const SVG="http://www.w3.org/2000/svg";
    function sv(tag,attrs){const e=document.createElementNS(SVG,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);return e;}
    function fmt(x,d){return x==null?"–":Number(x).toFixed(d==null?1:d);}
    function dur(s){if(s==null)return "–";if(s<90)return s.toFixed(0)+" s";if(s<5400)return (s/60).toFixed(0)+" min";return (s/3600).toFixed(1)+" h";}
    function node(id,self){const s=el("span",{"data-peer":id});s.append(el("span",{class:"dot",style:"background:"+color(id)}),short(id)+(id===self?" (this)":""));return s;}
    function chart(series,times,w,h){
      const svg=sv("svg",{viewBox:"0 0 "+w+" "+h,role:"img"});
      let max=1;for(const s of series)for(const v of s.values)if(v!=null&&v>max)max=v;
      const n=Math.max(2,times.length),x=i=>30+(w-40)*i/(n-1),y=v=>h-15-(h-25)*v/max;
      svg.append(sv("line",{x1:30,y1:h-15,x2:w-10,y2:h-15,stroke:"#ccd"}));
      const top=sv("text",{x:2,y:12});top.textContent=Math.round(max);svg.append(top);
      const zero=sv("text",{x:2,y:h-12});zero.textContent="0";svg.append(zero);
      if(times.length>1){const l=sv("text",{x:30,y:h-2});l.textContent="-"+Math.round(times[times.length-1]-times[0])+" s";svg.append(l);}
      for(const s of series){let d="",pen=false;
        s.values.forEach((v,i)=>{if(v==null){pen=false;return;}d+=(pen?"L":"M")+x(i).toFixed(1)+" "+y(v).toFixed(1);pen=true;});
        if(d)svg.append(sv("path",{d:d,fill:"none",stroke:s.color,"stroke-width":1.6}));}
      return svg;}
    function render(d){
      document.body.dataset.live="1";
      const self=d.peerID;document.getElementById("self").textContent="node "+short(self)+" · "+d.members.length+" members";
      const mb=document.querySelector("#members tbody");mb.replaceChildren();
      for(const m of d.members){mb.append(el("tr",{"data-peer":m.peerID,"data-state":m.state},el("td",{},node(m.peerID,self)),
        el("td",{class:m.state},m.state),el("td",{class:"num"},m.incarnation==null?"–":m.incarnation),el("td",{},m.link),el("td",{},m.address||"–"),el("td",{},m.operations||"–")));}
      const qd=document.getElementById("queues");const byName=new Map();
      for(const q of d.queues){if(!byName.has(q.queue))byName.set(q.queue,[]);byName.get(q.queue).push(q);}
      if(byName.size)qd.replaceChildren();
      for(const [name,qs] of byName){const total=qs.reduce((a,q)=>a+(q.length||0),0);
        const box=el("div",{"data-queue":name});box.append(el("h3",{},name+": "+total+" items"));
        box.append(chart(qs.map(q=>({color:color(q.peerID),values:q.lengths})),d.times,560,150));
        const t=el("table",{},el("tr",{},el("th",{},"node"),el("th",{class:"num"},"length"),el("th",{class:"num"},"pops/s"),el("th",{class:"num"},"finishes in")));
        for(const q of qs)t.append(el("tr",{"data-peer":q.peerID,"data-length":q.length==null?"":q.length},el("td",{},node(q.peerID,self)),
          el("td",{class:"num"},q.length==null?"–":q.length),el("td",{class:"num"},fmt(q.popsPerSecond)),el("td",{class:"num"},dur(q.finishSeconds))));
        box.append(t);qd.append(box);}
      const fd=document.getElementById("flows");
      if(d.flows.length){const ids=[...new Set(d.flows.flatMap(f=>[f.from,f.to]))].sort();const rate=new Map(d.flows.map(f=>[f.from+">"+f.to,f]));
        const t=el("table",{},el("tr",{},el("th",{},"from \\\\ to"),...ids.map(i=>el("th",{class:"num"},node(i,self)))));
        for(const a of ids){const r=el("tr",{},el("th",{},node(a,self)));
          for(const b of ids){const f=rate.get(a+">"+b);const peak=f?Math.max(0,...f.series.filter(v=>v!=null)):0;
            r.append(el("td",{class:"num","data-flow":a+">"+b,title:f?"peak "+fmt(peak)+"/s":""},f?fmt(f.itemsPerSecond)+(peak>0?" (peak "+fmt(peak,0)+")":""):""));}
          t.append(r);}
        fd.replaceChildren(t,el("p",{class:"muted"},"acknowledged transfers"+(d.pulled?", as each node measured them":", to and from this node")));}
      const cb=document.querySelector("#calls tbody");cb.replaceChildren();
      for(const c of d.calls){const sp=chart([{color:color(c.peerID),values:c.executed}],d.times,240,50);
        cb.append(el("tr",{"data-peer":c.peerID},el("td",{},node(c.peerID,self)),el("td",{class:"num"},c.inFlight),el("td",{class:"num"},fmt(c.madePerSecond)),
          el("td",{class:"num"},fmt(c.executedPerSecond)),el("td",{},sp)));
        for(const f of c.functions||[])cb.append(el("tr",{"data-function":f.function},el("td",{class:"muted"},"  "+f.function),
          el("td",{class:"num",colspan:4},f.count+" calls; p50 "+fmt(f.p50Milliseconds,1)+" ms, p90 "+fmt(f.p90Milliseconds,1)+" ms, p99 "+fmt(f.p99Milliseconds,1)+" ms")));}
      const ev=document.getElementById("events");ev.replaceChildren();
      for(const e of d.events.slice().reverse()){ev.append(el("li",{"data-kind":e.kind},el("span",{class:"t"},new Date(e.at*1000).toLocaleTimeString()),
        el("span",{class:e.kind==="dead"?"dead":e.kind==="suspect"?"suspect":""},e.kind),": "+e.detail));}
      if(!d.events.length)ev.append(el("li",{class:"muted"},"nothing yet"));}
    const conn=document.getElementById("conn");
    fetch("/dashboard.json",{credentials:"same-origin"}).then(r=>r.ok?r.json():Promise.reject(r.status)).then(render).catch(()=>{});
    const source=new EventSource("/dashboard/stream");
    source.addEventListener("snapshot",e=>{conn.textContent="live";conn.className="";render(JSON.parse(e.data));});
    source.onerror=()=>{conn.textContent="reconnecting…";conn.className="off";};
    </script></body></html>
    """
}

"""The report's stylesheet (inline, no external resources)."""

CSS = """
:root { --ink:#222; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f7f8; --card:#fff;
        --accent:#4c78a8; --bad:#e45756; --good:#54a24b; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
       color:var(--ink); background:var(--bg); overflow-wrap:break-word; }
header { background:#1f2937; color:#fff; padding:22px 32px 16px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .sub { color:#cbd5e1; font-size:13px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; font-size:13px; display:flex; flex-wrap:wrap; gap:4px 18px; }
nav a { color:var(--accent); text-decoration:none; }
nav a:hover { text-decoration:underline; }
main { max-width:1240px; margin:0 auto; padding:8px 32px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
          padding:16px 20px 20px; margin:20px 0; }
h2 { font-size:17px; margin:0 0 12px; font-weight:600; }
h3 { font-size:15px; margin:18px 0 6px; font-weight:600; }
h3 .sub { font-weight:400; color:var(--muted); font-size:12px; margin-left:10px; }
p.note, .caption { color:var(--muted); font-size:12px; margin:6px 0; }
p.notice { max-width:1240px; margin:12px auto 0; padding:10px 14px; background:#fff7d6; border:1px solid #e8c95a;
           border-radius:6px; font-size:13px; }
code { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:16px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:130px; background:#fafafa; }
.card .v { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
.card.main .v { color:var(--accent); font-size:30px; }
.card .k { color:var(--muted); font-size:12px; }
.scroll { overflow-x:auto; max-width:100%; }
table { border-collapse:collapse; font-variant-numeric:tabular-nums; font-size:13px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
thead th { border-bottom:2px solid #9ca3af; font-weight:600; background:#fafafa; }
td.num { text-align:right; }
td.na { color:#b0b0b0; text-align:center; }
tbody tr:hover { background:#f3f6fb; }
tr.mean th, tr.mean td { font-weight:700; border-top:2px solid #9ca3af; background:#f3f4f6; }
table.concepts td { text-align:right; min-width:30px; }
table.concepts td.zero { color:#d1d5db; }
img.plot { max-width:100%; height:auto; display:block; margin:6px 0; }
.panels { display:grid; grid-template-columns:repeat(auto-fill, minmax(min(100%, 260px), 1fr)); gap:4px 10px;
          margin:6px 0; }
.panels img { max-width:100%; height:auto; display:block; margin:0 auto; }
.gallery { border-top:1px solid var(--line); padding-top:4px; }
.gallery:first-of-type { border-top:none; }
.row-label { color:var(--muted); font-size:12px; margin:6px 0 2px; text-transform:uppercase; letter-spacing:.04em; }
.tiles { display:grid; grid-template-columns:repeat(auto-fill, minmax(170px, 1fr)); gap:10px; }
figure.tile { margin:0; background:#fafafa; border:1px solid var(--line); border-radius:6px; overflow:hidden; }
figure.tile.anomalous { border-top:3px solid var(--bad); }
figure.tile.normal { border-top:3px solid var(--good); }
figure.tile img { width:100%; height:auto; display:block; image-rendering:auto; }
figcaption { padding:4px 8px 6px; font-size:12px; line-height:1.35; }
figcaption b { font-variant-numeric:tabular-nums; }
figcaption .what, figcaption .num, figcaption .verdict { display:block; }
figcaption .what { font-weight:600; overflow-wrap:anywhere; }
figcaption .verdict { color:var(--good); }
figcaption .verdict.wrong { color:var(--bad); font-weight:600; }
.tag { font-size:11px; padding:0 6px; border-radius:8px; color:#fff; float:right; margin-left:6px; }
.tag.anomalous { background:var(--bad); }
.tag.normal { background:var(--good); }
.path { display:block; color:var(--muted); overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
ul.notes { margin:0; padding-left:20px; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:12px; }
@media (max-width:640px) {
  header { padding:14px 12px 10px; } nav { padding:6px 12px; } main { padding:4px 8px 32px; }
  section { padding:12px 10px 14px; margin:12px 0; } p.notice { margin:8px; }
  .tiles { grid-template-columns:repeat(auto-fill, minmax(140px, 1fr)); }
}
"""

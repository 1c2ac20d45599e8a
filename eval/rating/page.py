"""The rating server's HTML pages: plain forms, no JavaScript, no system name on any rater's page.

Only `render_report` (the owner's unblinded report) names systems. The pages speak of a pair's prompt
and ask the question in the task's words (the task file's `rating:` key, kept in study.json). `CSP`
is the Content-Security-Policy they are served with: no script, only their own style, forms posted
to this server only, and no page may frame them (a hostile page cannot trick a rater's clicks)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from urllib.parse import quote

from .judge import JUDGE_FILE

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.query, .reply { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: .8rem; }
.query { background: #f6f6f6; }
.replies { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.votes button { font-size: 1.1rem; padding: .5rem 1.5rem; margin-right: 1rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.error { color: #a00; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n").encode("utf-8")


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _pct(r: dict) -> str:
    if r["rate"] is None:
        return "–"
    return f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def _fixed_or_na(x, digits=3) -> str:
    """`x` with `digits` decimals, "n/a" for None (an undefined kappa)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def error_page(message: str, rater: str | None = None) -> bytes:
    """The message, with a link back to the rater's next pair (or to the start page)."""
    back = (f"<p><a id=\"continue\" href=\"/rate?rater={quote(rater)}\">Continue rating</a></p>"
            if rater else "<p><a href=\"/\">Start page</a></p>")
    return _page("Error", f"<p class=\"error\" id=\"error\">{_e(message)}</p>{back}")


def index_page(words: dict) -> bytes:
    """The start page; `words`: the study's wording (query, question)."""
    body = (f"<h1 id=\"question\">{_e(words['question'])}</h1>"
            f"<p id=\"instructions\">Each pair shows one {_e(words['query'])} and two replies, A and B, in random order. "
            "Choose the better reply, or a tie. Use the same name when you come back: you continue where you left off.</p>"
            "<form method=\"get\" action=\"/rate\">"
            "<label for=\"rater\">Your name</label> "
            "<input id=\"rater\" name=\"rater\" required maxlength=\"100\" autofocus> "
            "<button id=\"start\" type=\"submit\">Start</button></form>")
    return _page("Rating", body)


def done_page(rater: str, n: int) -> bytes:
    body = (f"<div id=\"done\"><h1>Done — thank you, {_e(rater)}!</h1>"
            f"<p>You have rated all {n} pairs. The study's owner will share the results.</p></div>")
    return _page("Done", body)


def pair_page(pair: dict, k: int, n: int, key: str, ticket: str, rater: str, words: dict) -> bytes:
    """Pair `k` of `n`: the query, replies A and B, and the vote form (study key, pair id, ticket, rater)."""
    label = words["query"][:1].upper() + words["query"][1:]
    body = (f"<p id=\"progress\">Pair {k} of {n} · rater {_e(rater)}</p>"
            f"<h2 id=\"query-label\">{_e(label)}</h2><div class=\"query\" id=\"query\">{_e(pair['query'])}</div>"
            f"<div class=\"replies\">"
            f"<div><h2>Reply A</h2><div class=\"reply\" id=\"reply-A\">{_e(pair['a']['reply'])}</div></div>"
            f"<div><h2>Reply B</h2><div class=\"reply\" id=\"reply-B\">{_e(pair['b']['reply'])}</div></div>"
            f"</div>"
            f"<form method=\"post\" action=\"/vote\" class=\"votes\" id=\"vote-form\">"
            f"<input type=\"hidden\" name=\"study\" value=\"{_e(key)}\">"
            f"<input type=\"hidden\" name=\"pair_id\" value=\"{_e(pair['id'])}\">"
            f"<input type=\"hidden\" name=\"ticket\" value=\"{_e(ticket)}\">"
            f"<input type=\"hidden\" name=\"rater\" value=\"{_e(rater)}\">"
            f"<p id=\"question\">{_e(words['question'])}</p>"
            f"<button id=\"vote-A\" type=\"submit\" name=\"choice\" value=\"A\">Reply A</button>"
            f"<button id=\"vote-B\" type=\"submit\" name=\"choice\" value=\"B\">Reply B</button>"
            f"<button id=\"vote-tie\" type=\"submit\" name=\"choice\" value=\"tie\">Tie</button>"
            f"</form>")
    return _page(f"Pair {k} of {n}", body)


def _comparisons_table(comparisons: list[dict]) -> str:
    rows = []
    for c in comparisons:
        x, y = c["systems"]
        rows.append(
            f"<tr class=\"comparison\" data-x=\"{_e(x)}\" data-y=\"{_e(y)}\" data-votes=\"{c['votes']}\" "
            f"data-wins=\"{c['wins']}\" data-ties=\"{c['ties']}\" data-losses=\"{c['losses']}\">"
            f"<td>{_e(x)} vs {_e(y)}</td><td>{c['pairs']}</td><td class=\"votes\">{c['votes']}</td>"
            f"<td>{c['wins']} · {c['ties']} · {c['losses']}</td>"
            f"<td>{_pct(c['win_rate'])}</td><td>{_pct(c['tie_rate'])}</td><td>{_pct(c['loss_rate'])}</td>"
            f"<td>{_pct(c['win_rate_decided'])} <small>(n={c['decided']})</small></td></tr>")
    return ("<table id=\"comparisons\"><tr><th>x vs y</th><th>pairs</th><th>votes</th><th>x wins · ties · y wins</th>"
            "<th>x win rate [95% CI]</th><th>tie rate [95% CI]</th><th>x loss rate [95% CI]</th>"
            "<th>x win rate over decided votes [95% CI]</th></tr>" + "".join(rows) + "</table>")


def _agreement_section(ag: dict) -> str:
    if not ag["rater_pairs"]:
        return "<p id=\"agreement\">No pair has been rated by two raters yet.</p>"
    arows = "".join(
        f"<tr class=\"rater-pair\" data-raters=\"{_e(' | '.join(rp['raters']))}\" data-n=\"{rp['n']}\" "
        f"data-percent=\"{rp['percent_agreement']:.4f}\" data-kappa=\"{_fixed_or_na(rp['kappa'], 4)}\">"
        f"<td>{_e(rp['raters'][0])} · {_e(rp['raters'][1])}</td><td>{rp['n']}</td>"
        f"<td>{rp['percent_agreement']:.1f}%</td><td>{_fixed_or_na(rp['kappa'])}</td></tr>"
        for rp in ag["rater_pairs"])
    return (f"<table id=\"agreement\"><tr><th>raters</th><th>pairs both rated</th><th>agreement</th>"
            f"<th>Cohen's kappa</th></tr>{arows}</table>"
            f"<p>Overall: {ag['percent_agreement']:.1f}% agreement over {ag['n']} comparisons; "
            f"mean pairwise kappa {_fixed_or_na(ag['mean_kappa'])}.</p>")


def _judge_section(j: dict | None) -> str:
    if j is None:
        return f"<p id=\"llm-judge\">No {JUDGE_FILE} in the study directory.</p>"
    pa = "n/a" if j["percent_agreement"] is None else f"{j['percent_agreement']:.1f}%"
    return (f"<p id=\"llm-judge\" data-n=\"{j['n']}\" data-agree=\"{j['agree']}\" "
            f"data-kappa=\"{_fixed_or_na(j['kappa'], 4)}\">The LLM judge agrees with the majority human vote on "
            f"{j['agree']} of {j['n']} pairs ({pa}); Cohen's kappa {_fixed_or_na(j['kappa'])}. "
            f"{j['no_majority']} pairs without a human majority left out; the judge rated {j['judged']} pairs.</p>")


def render_report(result: dict) -> bytes:
    """The unblinding report of `unblind()`'s numbers, as an HTML page."""
    raters = ", ".join(f"{_e(r)} ({k})" for r, k in result["raters"].items()) or "none yet"
    data = json.dumps(result, ensure_ascii=False).replace("<", "\\u003c")
    body = (f"<h1>Rating study {_e(result['study'])}: unblinded results</h1>"
            f"<p id=\"totals\">{result['n_votes']} votes on {result['n_pairs']} pairs. Raters: {raters}.</p>"
            f"<h2>Preferences by pair of systems</h2>{_comparisons_table(result['comparisons'])}"
            f"<p><small>Every vote counts once (votes of several raters on one pair are not independent, so the "
            f"intervals are somewhat narrow when pairs have many raters). Intervals: Wilson score, 95%.</small></p>"
            f"<h2>Agreement between raters</h2>{_agreement_section(result['agreement'])}"
            f"<h2>Humans and the LLM judge</h2>{_judge_section(result['llm_judge'])}"
            f"<script type=\"application/json\" id=\"unblind-data\">{data}</script>")
    return _page(f"Report: {result['study']}", body)

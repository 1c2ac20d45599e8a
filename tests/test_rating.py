"""The double-blind rating study, driven in a real headless Chromium (Debian's package).

A 3-system x 3-query study (9 pairs) is rated by two raters through the browser; the test
checks that no rating page ever names a system, that the votes stored are the clicks, that a
rater resumes where they left off, that bad, duplicate and forged votes (a pair not served, no
ticket, another rater's ticket, a replay) are refused without touching the database, that a
request addressed to another host name (DNS rebinding) is refused, that the report needs the
owner key, and that the unblinded report (and `unblind()`) gives the totals computed here.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import re
import shutil
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from ftscale.errors import FtscaleError
from ftscale.eval import rating, stats



SYSTEMS = ["zephyr-ft", "quokka-base", "marlin-judge4"]
QUERIES = {
    "q1": "My parcel never arrived. What can you do?",
    "q2": "How do I change the address on my account?",
    "q3": "I was charged twice for order 1182, please fix it.",
}
REPLIES = {
    "zephyr-ft": {
        "q1": "Sorry about that! I have opened a trace; you get a refund or a new parcel within 3 days.",
        "q2": "Go to Settings > Address, edit it and press Save. Done!",
        "q3": "I see both charges on order 1182; the duplicate is refunded today.",
    },
    "quokka-base": {
        "q1": "Parcels sometimes get lost. Please wait a few more weeks.",
        "q2": "Addresses can be changed.",
        "q3": "Please contact your bank about charges.",
    },
    "marlin-judge4": {
        "q1": "I'm sorry your parcel has not arrived. Could you share the order number so I can check?",
        "q2": "You can update it under Account settings; changes apply to future orders only.",
        "q3": "Apologies for the double charge. I've issued a refund for the second payment on order 1182.",
    },
}
RATER_1, RATER_2 = "Ada Rater", "Bo <b>Rater</b> & co"  # the second name needs escaping everywhere
RATER_3 = "Cy"  # votes by direct HTTP posts on the first five pairs only
PATTERN_1 = ["A", "B", "tie"]
PATTERN_2 = ["B", "B", "A", "tie"]
PATTERN_3 = ["A", "A", "tie", "B", "tie"]
JUDGE = ["B", "B", "A", "tie", "A", "tie", "A", "A", "B"]  # the LLM judge's verdicts, in study pair order


def _replies():
    return {s: {q: (QUERIES[q], REPLIES[s][q]) for q in QUERIES} for s in SYSTEMS}


def _browser_or_fail(p):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Chromium is not installed: run make setup (installs Debian's chromium)")
    return p.chromium.launch(executable_path=exe, headless=True)


def _assert_blind(html_text: str, where: str):
    low = html_text.lower()
    for s in SYSTEMS:
        assert s.lower() not in low, f"{where}: the page names system {s!r}"


def _db_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT study, pair_id, rater, choice, created FROM votes ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _post(url: str, fields: dict) -> tuple[int, str]:
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _served(base: str, rater: str) -> tuple[str, str]:
    """(pair id, ticket) of the rating page the server gives `rater` now."""
    page = urllib.request.urlopen(base + "rate?" + urllib.parse.urlencode({"rater": rater}), timeout=10).read().decode()
    return (re.search(r'name="pair_id" value="([^"]+)"', page).group(1),
            re.search(r'name="ticket" value="([^"]+)"', page).group(1))


def _raw(port: int, method: str, path: str, host: str, fields: dict | None = None,
         headers: dict | None = None) -> tuple[int, str]:
    """A request with the Host header given (a browser on a rebound DNS name sends that name)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = urllib.parse.urlencode(fields).encode() if fields is not None else None
        conn.putrequest(method, path, skip_host=True)
        if host:
            conn.putheader("Host", host)
        for k, v in ({"Content-Type": "application/x-www-form-urlencoded"} if body else {}).items() | (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# ---------------------------------------------------------------------------------------------
# Statistics


def test_wilson_textbook_values():
    lo, hi = stats.wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278
    lo, hi = stats.wilson(10, 10)
    assert round(lo, 3) == 0.722 and hi == 1.0
    lo, hi = stats.wilson(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(3, 2)


def _labels(table: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    return [pair for pair, count in table.items() for _ in range(count)]


def test_cohen_kappa_textbook_examples():
    # Wikipedia's examples: 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    assert stats.cohen_kappa(_labels({("y", "y"): 20, ("y", "n"): 5, ("n", "y"): 10, ("n", "n"): 15})) == pytest.approx(0.4)
    # 100 items, 45/15/25/15 -> p_o 0.60, p_e 0.54, kappa 0.1304
    assert stats.cohen_kappa(_labels({("y", "y"): 45, ("y", "n"): 15, ("n", "y"): 25, ("n", "n"): 15})) == pytest.approx(0.06 / 0.46)
    # 100 items, 25/35/5/35 -> p_o 0.60, p_e 0.46, kappa 0.2593
    assert stats.cohen_kappa(_labels({("y", "y"): 25, ("y", "n"): 35, ("n", "y"): 5, ("n", "n"): 35})) == pytest.approx(0.14 / 0.54)
    # three categories (A, B, tie): p_o 0.7, p_e = (0.4*0.4 + 0.4*0.3 + 0.2*0.3) = 0.34
    three = _labels({("A", "A"): 3, ("B", "B"): 3, ("tie", "tie"): 1, ("A", "tie"): 1, ("B", "tie"): 1, ("tie", "A"): 1})
    assert stats.cohen_kappa(three) == pytest.approx((0.7 - 0.34) / (1 - 0.34))
    assert stats.cohen_kappa([("A", "A"), ("B", "B")]) == pytest.approx(1.0)
    assert stats.cohen_kappa([("A", "B"), ("B", "A")]) == pytest.approx(-1.0)
    assert math.isnan(stats.cohen_kappa([]))
    assert math.isnan(stats.cohen_kappa([("A", "A"), ("A", "A")]))  # chance agreement is 1: undefined


# ---------------------------------------------------------------------------------------------
# Building a study


def test_build_study_pairs_seed_and_errors(tmp_path):
    d = rating.build_study("s1", _replies(), tmp_path, seed=3)
    study = json.loads((d / "study.json").read_text())
    assert d == tmp_path / "s1" and study["name"] == "s1" and study["seed"] == 3 and study["systems"] == SYSTEMS
    assert len(study["pairs"]) == 9 and len({p["id"] for p in study["pairs"]}) == 9
    got = Counter((frozenset((p["a"]["system"], p["b"]["system"])), p["query"]) for p in study["pairs"])
    assert got == Counter({(frozenset(xy), QUERIES[q]): 1 for xy in itertools.combinations(SYSTEMS, 2) for q in QUERIES})
    for p in study["pairs"]:
        assert p["a"]["system"] != p["b"]["system"]
        for side in "ab":
            q = next(q for q, t in QUERIES.items() if t == p["query"])
            assert p[side]["reply"] == REPLIES[p[side]["system"]][q]
    # same seed, same pairs; the A/B sides are drawn, not always in the system order
    again = json.loads((rating.build_study("s2", _replies(), tmp_path, seed=3) / "study.json").read_text())
    assert again["pairs"] == study["pairs"]
    firsts = {SYSTEMS.index(p["a"]["system"]) < SYSTEMS.index(p["b"]["system"]) for p in study["pairs"]}
    assert firsts == {True, False}
    # a sample of queries per pair of systems; only queries every system answered
    r = _replies()
    r["zephyr-ft"]["q9"] = ("only one system has this", "x")
    small = json.loads((rating.build_study("s3", r, tmp_path, seed=1, n_pairs_per_system_pair=2) / "study.json").read_text())
    assert len(small["pairs"]) == 6 and all(p["query"] in QUERIES.values() for p in small["pairs"])
    with pytest.raises(FtscaleError, match="at least two systems"):
        rating.build_study("s4", {"zephyr-ft": r["zephyr-ft"]}, tmp_path)
    bad = _replies()
    bad["quokka-base"]["q1"] = ("another text", "reply")
    with pytest.raises(FtscaleError, match="q1"):
        rating.build_study("s5", bad, tmp_path)
    with pytest.raises(FtscaleError, match="study name"):
        rating.build_study("../escape", _replies(), tmp_path)


def test_load_replies_from_generations(tmp_path):
    path = tmp_path / "generations.jsonl"
    records = [
        {"id": "q1", "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "old"},
                                {"role": "assistant", "content": "shot"}, {"role": "user", "content": "Where is it?"}],
         "output": "On its way.", "error": None},
        {"id": "q2", "prompt": [{"role": "user", "content": "Refund?"}], "output": "", "error": "timeout"},
        {"id": 3, "prompt": [{"role": "user", "content": "Hi"}], "output": "Hello", "error": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert rating.load_replies_from_generations(path) == {"q1": ("Where is it?", "On its way."), "3": ("Hi", "Hello")}
    with pytest.raises(FtscaleError, match="no such"):
        rating.load_replies_from_generations(tmp_path / "missing.jsonl")
    path.write_text("{not json\n")
    with pytest.raises(FtscaleError, match=r"generations.jsonl:1:"):
        rating.load_replies_from_generations(path)


# ---------------------------------------------------------------------------------------------
# The browser


def _vote_through(page, study, rater_expected: str, pattern: list[str], start: int, stop: int, clicks: dict):
    """Vote on pairs start..stop-1 (study order) with the pattern; record (rater, pair) -> choice."""
    pairs = study["pairs"]
    for i in range(start, stop):
        content = page.content()
        _assert_blind(content, f"pair {i + 1}")
        assert page.inner_text("#progress").startswith(f"Pair {i + 1} of {len(pairs)}")
        pid = page.get_attribute("input[name=pair_id]", "value")
        assert pid == pairs[i]["id"], "pairs come in the study's order"
        assert page.get_attribute("input[name=rater]", "value") == rater_expected
        assert page.inner_text("#query") == pairs[i]["query"]
        assert page.inner_text("#reply-A") == pairs[i]["a"]["reply"]
        assert page.inner_text("#reply-B") == pairs[i]["b"]["reply"]
        assert "Reply A" in content and "Reply B" in content
        choice = pattern[i % len(pattern)]
        with page.expect_navigation():
            page.click(f"#vote-{choice}")
        clicks[(rater_expected, pid)] = choice


def _start(page, base: str, rater: str):
    page.goto(base)
    _assert_blind(page.content(), "start page")
    page.fill("#rater", rater)
    with page.expect_navigation():
        page.click("#start")


def test_rating_study_in_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run make setup (the test extra installs it)")
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: run make setup (installs Debian's chromium)")

    study_dir = rating.build_study("blind-study", _replies(), tmp_path / "studies", seed=11)
    study = json.loads((study_dir / "study.json").read_text())
    pairs = {p["id"]: p for p in study["pairs"]}
    n = len(study["pairs"])
    assert n == 9

    # a study that does not exist: a clear error naming the path and how to build one
    with pytest.raises(FtscaleError) as err:
        rating.make_server(tmp_path / "studies" / "no-such-study", "127.0.0.1", 0, None)
    assert str(tmp_path / "studies" / "no-such-study") in str(err.value) and "--build" in str(err.value)

    server = rating.make_server(study_dir, "127.0.0.1", 0, None)  # as `ftscale rate` makes it, served here in a thread
    serving = threading.Thread(target=server.serve_forever, name="ftscale-rating", daemon=True)
    serving.start()
    host, port = server.server_address[:2]
    assert host == "127.0.0.1" and port > 0
    base = f"http://127.0.0.1:{port}/"
    db = study_dir / "votes.db"
    clicks: dict[tuple[str, str], str] = {}
    try:
        with sync_playwright() as p:
            browser = _browser_or_fail(p)
            try:
                # rater 1 rates everything
                page = browser.new_page()
                _start(page, base, RATER_1)
                _vote_through(page, study, RATER_1, PATTERN_1, 0, n, clicks)
                _assert_blind(page.content(), "done page")
                assert page.is_visible("#done")
                assert page.query_selector("a[href*=report]") is None  # a rater is not led to the results
                page.context.close()

                # rater 2 stops after four pairs, comes back in a fresh browser context, resumes at the fifth
                ctx = browser.new_context()
                page = ctx.new_page()
                _start(page, base, RATER_2)
                _vote_through(page, study, RATER_2, PATTERN_2, 0, 4, clicks)
                ctx.close()
                ctx = browser.new_context()
                page = ctx.new_page()
                _start(page, base, RATER_2)
                assert page.inner_text("#progress").startswith(f"Pair 5 of {n}")
                assert page.get_attribute("input[name=pair_id]", "value") == study["pairs"][4]["id"]
                _vote_through(page, study, RATER_2, PATTERN_2, 4, n, clicks)
                assert page.is_visible("#done")

                # the stored votes are the clicks, and they unblind to the systems clicked
                rows = _db_rows(db)
                assert {(r[2], r[1]): r[3] for r in rows} == clicks and len(rows) == 2 * n
                assert {r[0] for r in rows} == {"blind-study"}
                for (rater_name, pid), choice in clicks.items():
                    stored = next(r[3] for r in rows if r[1] == pid and r[2] == rater_name)
                    side = {"A": "a", "B": "b"}.get(stored)
                    clicked = {"A": "a", "B": "b"}.get(choice)
                    assert (pairs[pid][side]["system"] if side else "tie") == (pairs[pid][clicked]["system"] if clicked else "tie")

                # direct HTTP: a duplicate vote (409), bad votes (400); the database does not change
                ctx.close()
                probe = urllib.request.urlopen(base + "rate?rater=probe", timeout=10).read().decode()
                _assert_blind(probe, "probe page")
                key = re.search(r'name="study" value="([^"]+)"', probe).group(1)
                before = _db_rows(db)
                first = study["pairs"][0]["id"]
                other = "B" if clicks[(RATER_1, first)] != "B" else "A"
                status, body = _post(base + "vote", {"study": key, "pair_id": first, "rater": RATER_1, "choice": other})
                assert status == 409 and "already voted" in body and "first vote is kept" in body
                _assert_blind(body, "409 page")
                for fields, needle in [
                    ({"study": key, "pair_id": "p9999", "rater": RATER_1, "choice": "A"}, "unknown pair id"),
                    ({"study": "another-study", "pair_id": first, "rater": "newcomer", "choice": "A"}, "another study"),
                    ({"pair_id": first, "rater": "newcomer", "choice": "A"}, "study"),
                    ({"study": key, "pair_id": first, "rater": "newcomer", "choice": "C"}, "not one of A, B, tie"),
                    ({"study": key, "pair_id": first, "rater": "   ", "choice": "A"}, "rater name is empty"),
                ]:
                    status, body = _post(base + "vote", fields)
                    assert status == 400 and needle in body, (fields, status, body)
                    _assert_blind(body, f"400 page for {fields}")
                assert _db_rows(db) == before
                # a third rater votes on the first five pairs by direct HTTP, as a browser would: fetch the
                # page, post its form (303 back to the rating page). Votes for any other pair, without the
                # page's ticket, with another rater's ticket, or a replay are refused and change nothing.
                for i, choice in enumerate(PATTERN_3):
                    pid = study["pairs"][i]["id"]
                    served, ticket = _served(base, RATER_3)
                    assert served == pid  # the server serves the pairs in turn
                    later = study["pairs"][i + 1]["id"]
                    _, other_ticket = _served(base, "someone else")
                    before = _db_rows(db)
                    for fields in [{"pair_id": later, "ticket": ticket}, {"pair_id": pid},
                                   {"pair_id": pid, "ticket": other_ticket}, {"pair_id": pid, "ticket": "forged"}]:
                        status, body = _post(base + "vote", {"study": key, "rater": RATER_3, "choice": choice} | fields)
                        assert status == 409 and "nothing was recorded" in body, (fields, status, body)
                    assert _db_rows(db) == before
                    vote = {"study": key, "pair_id": pid, "rater": RATER_3, "choice": choice, "ticket": ticket}
                    assert _post(base + "vote", vote)[0] == 303
                    assert _post(base + "vote", vote)[0] == 409  # the ticket is good for one vote
                    clicks[(RATER_3, pid)] = choice
                assert len(_db_rows(db)) == 2 * n + len(PATTERN_3)

                # a page served under another name (DNS rebinding to 127.0.0.1) can neither read nor vote
                served, ticket = _served(base, RATER_3)
                vote = {"study": key, "pair_id": served, "rater": RATER_3, "choice": "A", "ticket": ticket}
                for host in (f"rebind.example:{port}", f"127.0.0.1.nip.example:{port}", "127.0.0.1:1", ""):
                    assert _raw(port, "GET", "/", host)[0] == 421
                    assert _raw(port, "GET", f"/report?key={server.owner_key}", host)[0] == 421
                    assert _raw(port, "POST", "/vote", host, vote)[0] == 421
                assert len(_db_rows(db)) == 2 * n + len(PATTERN_3)
                assert _raw(port, "GET", "/", f"localhost:{port}")[0] == 200

                # the report is the owner's: refused without the owner key or with a wrong one
                for path, headers in [("/report", {}), ("/report?key=guess", {}),
                                      ("/report", {"Authorization": "Bearer guess"})]:
                    status, body = _raw(port, "GET", path, f"127.0.0.1:{port}", headers=headers)
                    assert status == 403 and "owner" in body
                    _assert_blind(body, "refused report")
                assert _raw(port, "GET", "/report", f"127.0.0.1:{port}",
                            headers={"Authorization": f"Bearer {server.owner_key}"})[0] == 200

                # expected results, computed here from the clicks
                judge = {pid: JUDGE[i] for i, pid in enumerate(pairs)}
                (study_dir / "llm_judge.json").write_text(json.dumps(judge))
                expected = {}
                for x, y in itertools.combinations(SYSTEMS, 2):
                    w = t = lo = 0
                    for (_, pid), choice in clicks.items():
                        pr = pairs[pid]
                        if {pr["a"]["system"], pr["b"]["system"]} != {x, y}:
                            continue
                        if choice == "tie":
                            t += 1
                        elif pr[choice.lower()]["system"] == x:
                            w += 1
                        else:
                            lo += 1
                    expected[(x, y)] = (w, t, lo)
                assert sum(sum(v) for v in expected.values()) == len(clicks)
                raters = sorted({r for r, _ in clicks})
                pairwise = {}
                for r1, r2 in itertools.combinations(raters, 2):
                    both = [(clicks[(r1, pid)], clicks[(r2, pid)]) for pid in pairs
                            if (r1, pid) in clicks and (r2, pid) in clicks]
                    pairwise[(r1, r2)] = (len(both), 100 * sum(a == b for a, b in both) / len(both), stats.cohen_kappa(both))
                majority, no_majority = {}, 0
                for pid in pairs:
                    top = Counter(c for (_, q), c in clicks.items() if q == pid).most_common()
                    if len(top) > 1 and top[0][1] == top[1][1]:
                        no_majority += 1
                    else:
                        majority[pid] = top[0][0]
                judged = [(majority[pid], judge[pid]) for pid in pairs if pid in majority]
                judge_agree = sum(a == b for a, b in judged)
                assert 0 < judge_agree < len(judged) and no_majority > 0  # the example exercises every case

                # the report in the browser
                page = browser.new_page()
                page.goto(base + f"report?key={server.owner_key}")
                assert "zephyr-ft" in page.content()  # unblinded
                rows_html = page.query_selector_all("tr.comparison")
                assert len(rows_html) == 3
                for row in rows_html:
                    x, y = row.get_attribute("data-x"), row.get_attribute("data-y")
                    w, t, lo = expected[(x, y)]
                    assert (int(row.get_attribute("data-wins")), int(row.get_attribute("data-ties")),
                            int(row.get_attribute("data-losses"))) == (w, t, lo)
                    assert f"{w} · {t} · {lo}" in row.inner_text()
                    assert int(row.get_attribute("data-votes")) == w + t + lo
                assert page.inner_text("#totals").startswith(f"{len(clicks)} votes on {n} pairs")
                rps = page.query_selector_all("tr.rater-pair")
                assert len(rps) == 3
                for rp in rps:
                    cnt, pct, kappa = pairwise[tuple(rp.get_attribute("data-raters").split(" | "))]
                    assert int(rp.get_attribute("data-n")) == cnt
                    assert float(rp.get_attribute("data-percent")) == pytest.approx(pct, abs=1e-4)
                    assert float(rp.get_attribute("data-kappa")) == pytest.approx(kappa, abs=1e-4)
                lj = page.query_selector("#llm-judge")
                assert int(lj.get_attribute("data-n")) == len(judged)
                assert int(lj.get_attribute("data-agree")) == judge_agree
                assert float(lj.get_attribute("data-kappa")) == pytest.approx(stats.cohen_kappa(judged), abs=1e-4)
                embedded = json.loads(page.inner_text("#unblind-data"))
                page.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)

    # unblind() gives the same numbers
    result = rating.unblind(study_dir)
    assert json.loads(json.dumps(result)) == embedded
    assert result["n_votes"] == len(clicks) and result["raters"] == {RATER_1: n, RATER_2: n, RATER_3: len(PATTERN_3)}
    for c in result["comparisons"]:
        w, t, lo = expected[tuple(c["systems"])]
        assert (c["wins"], c["ties"], c["losses"], c["votes"], c["decided"]) == (w, t, lo, w + t + lo, w + lo)
        assert (c["win_rate"]["lo"], c["win_rate"]["hi"]) == stats.wilson(w, w + t + lo)
        assert (c["tie_rate"]["lo"], c["tie_rate"]["hi"]) == stats.wilson(t, w + t + lo)
        assert c["win_rate_decided"]["n"] == w + lo
        if w + lo:
            assert c["win_rate_decided"]["rate"] == pytest.approx(w / (w + lo))
    ag = result["agreement"]
    for rp in ag["rater_pairs"]:
        cnt, pct, kappa = pairwise[tuple(rp["raters"])]
        assert (rp["n"], rp["percent_agreement"]) == (cnt, pytest.approx(pct)) and rp["kappa"] == pytest.approx(kappa)
    assert ag["n"] == sum(v[0] for v in pairwise.values())
    assert ag["percent_agreement"] == pytest.approx(sum(v[0] * v[1] for v in pairwise.values()) / ag["n"])
    assert ag["mean_kappa"] == pytest.approx(sum(v[2] for v in pairwise.values()) / 3)
    lj = result["llm_judge"]
    assert (lj["n"], lj["agree"], lj["no_majority"], lj["judged"]) == (len(judged), judge_agree, no_majority, n)
    assert lj["kappa"] == pytest.approx(stats.cohen_kappa(judged))
    assert lj["percent_agreement"] == pytest.approx(100 * judge_agree / len(judged))


# ---------------------------------------------------------------------------------------------
# The LLM judge of a study: `ftscale rate <study> --judge`, against a stand-in of the OpenAI
# service (the only thing this machine cannot reach) whose verdicts follow a fixed rule.

class _RuleJudge:
    """Prefers the reply with more words, whichever side it is on; answers outside the format for
    order 1182 (so those pairs are unparsable and must be left out, not guessed)."""

    @staticmethod
    def reply(section: str, text: str) -> str:
        return text.split(f"Reply {section}:\n<<<\n", 1)[1].split("\n>>>", 1)[0]

    def __call__(self, req: dict) -> str:
        text = req["messages"][-1]["content"]
        if "1182" in text:
            return "Both are fine, I would say A."
        a, b = len(self.reply("A", text).split()), len(self.reply("B", text).split())
        return "Winner: " + ("A" if a > b else "B" if b > a else "tie")


def test_llm_judge_of_a_study_from_the_command_line(tmp_path):
    import os
    import subprocess

    from conftest import BIN, ROOT
    from openai_standin import StandIn

    study_dir = rating.build_study("judged", _replies(), tmp_path, seed=1)
    study = rating.load_study(study_dir)
    with StandIn() as standin:
        standin.answer = _RuleJudge()
        proc = subprocess.run([str(BIN / "ftscale"), "rate", "judged", "--studies-dir", str(tmp_path), "--judge",
                               f"openai:judge-model@{standin.base_url}", "--seed", "5"], cwd=ROOT, capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
                              | {"OPENAI_API_KEY": "sk-test"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        requests = list(standin.chat_requests)
    assert f"6 of 9 pairs judged by openai:judge-model@{standin.base_url} (3 unparsable, 0 failed)" in proc.stdout
    # double-blind: the judge saw every pair in both orders and never a system's name
    assert len(requests) == 18
    for req in requests:
        _assert_blind(json.dumps(req), "a judge request")
    expected = {}
    for p in study["pairs"]:
        if "1182" in p["query"]:
            continue
        a, b = len(p["a"]["reply"].split()), len(p["b"]["reply"].split())
        expected[p["id"]] = "A" if a > b else "B" if b > a else "tie"
    assert json.loads((study_dir / "llm_judge.json").read_text()) == expected
    records = [json.loads(line) for line in (study_dir / "llm_judge_records.jsonl").read_text().splitlines()]
    assert len(records) == 9 and all(set(r["orders"]) == {"xy", "yx"} and r["seed"] == 5 for r in records)
    assert sum(r["outcome"] == "unparsable" for r in records) == 3
    report = rating.unblind(study_dir)["llm_judge"]
    assert report["judged"] == 6 and report["n"] == 0  # no human has voted yet


# ---------------------------------------------------------------------------------------------
# `ftscale rate <study>` as the owner runs it: the owner key shown once and stored nowhere, a
# busy port and a judge without a backend refused with one line, nothing written.

def _ftscale_rate(tmp_path, *args, **kwargs):
    import subprocess

    from conftest import BIN, ROOT

    return subprocess.run([str(BIN / "ftscale"), "rate", "cli-study", "--studies-dir", str(tmp_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_rate_command_owner_key_busy_port_and_bad_judge(tmp_path):
    import os
    import signal
    import socket
    import subprocess

    from conftest import BIN, ROOT, ctrl_c_reaches_it

    study_dir = rating.build_study("cli-study", _replies(), tmp_path, seed=3)
    env = {k: v for k, v in os.environ.items() if k != rating.OWNER_KEY_ENV}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _ftscale_rate(tmp_path, "--port", str(port), env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"port {port}" in proc.stderr and "--port" in proc.stderr
    assert not (study_dir / "votes.db").exists()

    proc = _ftscale_rate(tmp_path, "--judge", "gpt-4.1", env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "openai:<model>" in proc.stderr and "hf:<model>" in proc.stderr
    assert not (study_dir / "llm_judge.json").exists()

    server = subprocess.Popen([str(BIN / "ftscale"), "rate", "cli-study", "--studies-dir", str(tmp_path), "--port", "0"],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=ctrl_c_reaches_it)
    try:
        shown = ""
        while "key=" not in shown:
            line = server.stderr.readline()
            assert line, "the server stopped before printing its addresses"
            shown += line
        url, key = re.search(r"(http://127\.0\.0\.1:\d+/)report\?key=(\S+)", shown).groups()
        with urllib.request.urlopen(f"{url}report?key={key}", timeout=10) as r:
            assert r.status == 200 and "zephyr-ft" in r.read().decode()
        status, _ = _post(url + "vote", {"study": "x", "pair_id": "p0001", "rater": "r", "choice": "A"})
        assert status == 400
    finally:
        server.send_signal(signal.SIGINT)
        rest = server.communicate(timeout=30)[1]
    assert len(key) >= 20 and key not in rest  # shown once; the request log masks it
    for path in study_dir.rglob("*"):
        assert key.encode() not in path.read_bytes(), path
    assert _ftscale_rate(tmp_path, "--report", env=env).returncode == 0  # the owner's CLI reads the files, no key


# ---------------------------------------------------------------------------------------------
# Blinding, framing, limits and wording (issues 27 and 28): a rater cannot predict the sides, no page
# can frame the voting page, a silent connection is closed, the owner key is long, the raters are
# capped, and the page speaks of the pairs in the task's words.

def _many_replies(n_queries: int, text: str) -> dict:
    return {s: {f"q{i:02d}": (f"{text} query {i}", f"{text} reply of {s} to {i}") for i in range(n_queries)}
            for s in SYSTEMS[:2]}


def _sides(study: dict) -> list[str]:
    return [p["a"]["system"] for p in study["pairs"]]


@contextmanager
def _serving(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_rater_rerunning_the_draw_cannot_predict_the_sides_and_the_seed_is_never_served(tmp_path):
    """The attack: a rater builds a study of the same shape with dummy texts and the default seed, and
    reads each pair's sides off it by the pair's number (the page shows "Pair k of n")."""
    real = rating.load_study(rating.build_study("real", _many_replies(40, "real"), tmp_path))
    guess = rating.load_study(rating.build_study("guess", _many_replies(40, "dummy"), tmp_path))
    hits = sum(a == b for a, b in zip(_sides(real), _sides(guess)))
    assert hits < 35, f"{hits} of 40 sides predicted"  # by chance at most 34 of 40, but for one draw in 10^6
    assert real["seed"] != guess["seed"] and max(real["seed"], guess["seed"]) >= 2**64  # drawn from secrets
    again = rating.load_study(rating.build_study("again", _many_replies(40, "real"), tmp_path, seed=real["seed"]))
    assert _sides(again) == _sides(real)  # the recorded seed reproduces the study
    server = rating.make_server(tmp_path / "real", "127.0.0.1", 0, None)
    with _serving(server) as base:
        pages = [urllib.request.urlopen(base + path, timeout=10).read().decode() for path in ("", "rate?rater=r")]
        for path in ("study.json", "real/study.json", "../real/study.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 404
    for page in pages:
        assert str(real["seed"]) not in page and str(real["seed"])[:8] not in page
    assert re.search(r'name="study" value="([^"]+)"', pages[1]).group(1) == real["form_key"]


def _generations(cell: Path, task: str, replies: dict) -> Path:
    """A run's cell as `ftscale run` leaves it: config.yaml naming the task, eval-default/generations.jsonl."""
    (cell / "eval-default").mkdir(parents=True)
    (cell / "config.yaml").write_text(f"name: x\ntask: {task}\nmodel: smollm2-135m\n")
    path = cell / "eval-default" / "generations.jsonl"
    path.write_text("".join(json.dumps({"id": q, "prompt": [{"role": "user", "content": text}], "output": reply,
                                        "error": None}) + "\n" for q, (text, reply) in replies.items()))
    return path


def test_the_page_speaks_the_task_s_words_and_no_page_can_frame_it(tmp_path):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from conftest import ROOT
    from playwright.sync_api import sync_playwright

    from ftscale.cli import main

    task = tmp_path / "orders-rated.yaml"  # the orders task, with its own words for the raters
    task.write_text((ROOT / "configs" / "tasks" / "orders.yaml").read_text()
                    + "rating: {query: order text, question: \"Which extraction is more accurate?\"}\n")
    studies = {}
    for name, task_ref, flags in (("own", str(task), []), ("tone", "formatting", ["--task", "tone-rude"]),
                                  ("plain", "formatting", [])):
        builds = [f"{s}={_generations(tmp_path / name / s / 'n0000-seed42', task_ref, r)}"
                  for s, r in _replies().items()]
        assert main(["rate", name, "--studies-dir", str(tmp_path / "studies"), "--build", *builds, *flags]) == 0
        studies[name] = tmp_path / "studies" / name
    expected = {"own": ("order text", "Which extraction is more accurate?"),
                "tone": ("customer message", "Which reply is better?"), "plain": ("query", "Which reply is better?")}

    class Hostile(BaseHTTPRequestHandler):  # another site's page that frames the voting page
        def do_GET(self):
            body = f'<iframe id="f" src="{self.server.target}rate?rater=victim" width=900 height=600></iframe>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with sync_playwright() as p:
        browser = _browser_or_fail(p)
        try:
            for name, (query, question) in expected.items():
                with _serving(rating.make_server(studies[name], "127.0.0.1", 0, None)) as base:
                    page = browser.new_page()
                    response = page.goto(base)
                    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
                    assert page.inner_text("#question") == question
                    assert f"Each pair shows one {query} and two replies" in page.inner_text("#instructions")
                    page.fill("#rater", "Ada")
                    with page.expect_navigation():
                        page.click("#start")
                    assert page.inner_text("#query-label") == query[0].upper() + query[1:]
                    assert page.inner_text("#question") == question
                    if name == "plain":
                        assert "customer" not in page.content().lower()
                    # the page's own style applies under its policy: the replies side by side
                    assert page.eval_on_selector(".replies", "e => getComputedStyle(e).display") == "grid"
                    with page.expect_navigation():
                        page.click("#vote-A")  # forms still post to the server itself
                    assert page.inner_text("#progress").startswith("Pair 2 of 9")
                    if name == "own":
                        hostile = HTTPServer(("127.0.0.1", 0), Hostile)
                        hostile.target = base
                        with _serving(hostile) as evil:
                            framing = browser.new_page()
                            framing.goto(evil)
                            frame = framing.frame_locator("#f")
                            assert framing.query_selector("#f") is not None
                            assert frame.locator("#vote-A").count() == 0  # the browser refused to show it
                            framing.close()
                    page.close()
        finally:
            browser.close()
    assert all(len(rating.unblind(d)["raters"]) == 1 for d in studies.values())


def test_a_silent_connection_is_closed_the_owner_key_is_long_and_raters_are_capped(tmp_path):
    import os
    import socket
    import subprocess
    import time

    from conftest import BIN, ROOT

    study_dir = rating.build_study("limits", _replies(), tmp_path)
    with pytest.raises(FtscaleError, match="16") as short:
        rating.make_server(study_dir, "127.0.0.1", 0, "fifteen-chars!!")
    assert rating.OWNER_KEY_ENV in str(short.value)
    env = {k: v for k, v in os.environ.items() if k != rating.OWNER_KEY_ENV} | {rating.OWNER_KEY_ENV: "short"}
    proc = subprocess.run([str(BIN / "ftscale"), "rate", "limits", "--studies-dir", str(tmp_path), "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "16" in proc.stderr, proc.stderr

    server = rating.make_server(study_dir, "127.0.0.1", 0, None, max_raters=2, request_timeout=1.0)
    with _serving(server) as base:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:
            silent.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())  # and never the blank line
            started = time.monotonic()
            assert silent.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 10
        for rater in ("r1", "r2", "r1"):
            assert urllib.request.urlopen(base + f"rate?rater={rater}", timeout=10).status == 200
        with pytest.raises(urllib.error.HTTPError) as full:
            urllib.request.urlopen(base + "rate?rater=r3", timeout=10)
        assert full.value.code == 403 and "at most 2 raters" in full.value.read().decode()
        pid, ticket = _served(base, "r1")
        assert _post(base + "vote", {"study": server.key, "pair_id": pid, "rater": "r1", "choice": "A",
                                     "ticket": ticket})[0] == 303
    # a later session counts the raters who voted: r1 keeps rating, a new name has no room
    with _serving(rating.make_server(study_dir, "127.0.0.1", 0, None, max_raters=1)) as base:
        assert urllib.request.urlopen(base + "rate?rater=r1", timeout=10).status == 200
        with pytest.raises(urllib.error.HTTPError) as full:
            urllib.request.urlopen(base + "rate?rater=r2", timeout=10)
        assert full.value.code == 403

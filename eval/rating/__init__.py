"""Human double-blind rating study: raters compare two systems' replies to the same query.

A study lives in one directory (`runs/studies/<name>/`):

- `study.json` (study.py): the pairs to rate. Each pair holds one query and two replies from two
  different systems; which system is shown as "Reply A" and which as "Reply B" is drawn per pair
  with the recorded seed (secret unless the owner gives one: study.json is never served), and the
  pairs themselves are shuffled, so a rater can learn nothing from the position or the order.
- `votes.db` (votes.py, SQLite): one row per (study, pair, rater) vote; a rater's first vote on a
  pair is kept and any later one refused.
- `llm_judge.json` (judge.py, optional): {"pair_id": "A" | "B" | "tie"}, an LLM judge's verdicts on
  the same pairs, in the same A/B terms, compared with the humans in the report.

server.py serves the rating pages (page.py) and, to the owner only, the unblinded report;
unblind.py computes the report's numbers.
"""

from .judge import JUDGE_FILE, JUDGE_RECORDS, judge_study
from .page import render_report
from .server import MAX_RATERS, OWNER_KEY_ENV, RatingServer, make_server, run_rating_server
from .study import STUDY_FILE, build_study, load_replies_from_generations, load_study, study_key, task_of_generations
from .unblind import unblind
from .votes import CHOICES, VOTES_DB

__all__ = ["CHOICES", "JUDGE_FILE", "JUDGE_RECORDS", "MAX_RATERS", "OWNER_KEY_ENV", "STUDY_FILE", "VOTES_DB",
           "RatingServer", "build_study", "judge_study", "load_replies_from_generations", "load_study", "make_server",
           "render_report", "run_rating_server", "study_key", "task_of_generations", "unblind"]

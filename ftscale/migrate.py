"""`ftscale migrate capture`: keep what an OpenAI fine-tune knows before it stops answering.

    ftscale migrate capture ft:gpt-4o-mini-2024-07-18:acme::abc123 --output-dir migrations/acme
        [--from ask|stored|FILE] [--eval FILE] [--base-url URL --api-key-env NAME]

1. finds the job that made the model (all pages of the organisation's jobs);
2. downloads its training (and validation) file through the Files API when it still exists, or
   takes `--train FILE`; checks it as `ftscale data check` does;
3. the eval set and the fine-tune's answers, by `--from`:
   - `ask` (the default): `--eval FILE` (chat JSONL: prompts, with or without the answer), else the
     job's validation file, else a seeded held-out split of the training file (removed from the
     training data the local model gets; the fine-tune itself was trained on it, which the report
     says); the fine-tune is asked every prompt, resumable and cached exactly like `ftscale distill`
     (data/distill.py: each batch appended, flushed and fsync'd; a failed request is retried by the
     backend, then counted and never cached, so the next run asks it again);
   - `stored` or a FILE: the traffic the product really sent, with the answers the fine-tune gave
     (ftscale/migrate_traffic.py); prompts that also stand in the training file are taken out of the
     local training data.

Written in the folder: `train.jsonl`, `eval.jsonl` (each answered prompt, its `reference`
holding the fine-tune's answer as `captured` and the known answer as `gold`), `captured.jsonl`
(prompt, answer, token counts, TTFT, latency, time per example), `capture/answers.cache.jsonl`,
and `capture.json` (what was captured, from where, when, and how many requests failed).
The key goes only to the endpoint named (OpenAI, or `--base-url`) and is written nowhere.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import openai

from . import migrate_traffic
from .apikey import pairing_hint
from .atomic import write_json, write_jsonl, write_text
from .chatdata import json_lines, parse_line, sha256_file
from .data.distill import ask_cached, cache_key, load_cache
from .datacheck import check_file
from .deprecations import DEFAULT, load_deprecations
from .errors import DataError, FtscaleError
from .eval.backends import Request, Sampling, make_backend
from .openai_org import STILL_POSSIBLE, client, job_of, list_jobs, refused

MANIFEST = "capture.json"
CAPTURED = "captured.jsonl"
CACHE = "capture/answers.cache.jsonl"


def _require_ft(model_id: str) -> None:
    if not model_id.startswith("ft:"):
        raise FtscaleError(f"{model_id!r} is not a fine-tuned model (an id starting with `ft:`); `ftscale openai inventory` "
                           "lists the organisation's; a prompted model is compared with `ftscale eval --backend openai`")


def _download(c: openai.OpenAI, file_id: str, dest: Path, what: str) -> Path | None:
    """The file's bytes into `dest`; None when OpenAI no longer has it (deleted)."""
    try:
        data = c.files.content(file_id).read()
    except openai.NotFoundError:
        return None
    except openai.APIStatusError as e:
        raise refused(e, f"the {what} file {file_id}", c) from None
    write_text(dest, data.decode("utf-8"))
    return dest


def _eval_examples(path: Path, source: str) -> list[dict]:
    """Eval examples from a chat JSONL: the prompt (without a final assistant turn), an id, the
    known answer as `gold` when the line ends with one, and any `reference` it carries."""
    out = []
    for lineno, rec in json_lines(path):
        where = f"{path}:{lineno}"
        kind = "train" if rec.get("messages") and rec["messages"][-1].get("role") == "assistant" else "eval"
        rec = parse_line(json.dumps(rec | ({"id": rec.get("id", ""), "reference": rec.get("reference", {})}
                                           if kind == "eval" else {})), where, kind)
        messages, reference = rec["messages"], dict(rec.get("reference") or {})
        if kind == "train":
            reference["gold"] = messages[-1]["content"]
            messages = messages[:-1]
        out.append({"id": str(rec.get("id") or f"{source}-{len(out):04d}"), "messages": messages, "reference": reference})
    if len({e["id"] for e in out}) != len(out):
        raise DataError(f"{path}: eval ids are not unique")
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def _hold_out(train: Path, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(the training lines kept, the held-out ones) of a seeded shuffle of the training file."""
    lines = [rec for _, rec in json_lines(train)]
    n = min(n, len(lines) // 5)
    if n < 1:
        raise FtscaleError(f"{train}: {len(lines)} training examples are too few to hold out an eval set; "
                           "give one with --eval FILE")
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(lines) if i not in held], [r for i, r in enumerate(lines) if i in held]


def _training(c, model_id: str, out: Path, train: Path | None, need_job: bool) -> tuple[object, dict, Path]:
    """(the job, what the manifest records, the raw training file): the job's file, or `train`."""
    job, info = None, {"job": None, "training_file": None, "validation_file": None, "notes": []}
    if need_job:
        job = job_of(list_jobs(c), model_id)
        if job is None and train is None:
            raise FtscaleError(f"no fine-tuning job of this organisation made {model_id}: give its training data "
                               f"with --train FILE; {STILL_POSSIBLE}")
    if job is not None:
        info.update(job=job.id, base=job.model, trained_tokens=job.trained_tokens, training_file=job.training_file,
                    validation_file=job.validation_file)
    raw = out / "capture" / "training-file.jsonl"
    if train is not None:
        write_text(raw, Path(train).read_text(encoding="utf-8"))
        info["train_source"] = str(train)
    elif _download(c, job.training_file, raw, "training") is not None:
        info["train_source"] = f"OpenAI file {job.training_file}"
    else:
        raise FtscaleError(f"the training file {job.training_file} of job {job.id} was deleted at OpenAI: give the "
                           f"training data with --train FILE; {STILL_POSSIBLE}")
    return job, info, raw


def _asked_eval_set(c, job, info: dict, raw: Path, out: Path, eval_file: Path | None, eval_size: int,
                    seed: int) -> list[dict]:
    """The prompts to ask: --eval FILE, the job's validation file, or a held-out split of the training file."""
    val = out / "capture" / "validation-file.jsonl"
    if eval_file is not None:
        examples, info["eval_source"] = _eval_examples(Path(eval_file), "eval"), str(eval_file)
        write_text(out / "train.jsonl", raw.read_text(encoding="utf-8"))
    elif job is not None and job.validation_file and _download(c, job.validation_file, val, "validation"):
        examples, info["eval_source"] = _eval_examples(val, "valid"), f"OpenAI file {job.validation_file} (validation)"
        write_text(out / "train.jsonl", raw.read_text(encoding="utf-8"))
    else:
        kept, held = _hold_out(raw, eval_size, seed)
        write_jsonl(out / "train.jsonl", kept)
        write_jsonl(out / "capture" / "held-out.jsonl", held)
        examples = _eval_examples(out / "capture" / "held-out.jsonl", "heldout")
        info["eval_source"] = f"{len(held)} examples held out of the training file (seed {seed})"
        info["notes"].append("the eval set was held out of the training file: the local models never saw it, "
                             "but the OpenAI fine-tune was trained on it")
    return examples


def _traffic_train(raw: Path, out: Path, examples: list[dict], info: dict) -> None:
    """train.jsonl: the training file without the examples whose prompt is an eval item (the local models
    must not be trained on what they are judged on)."""
    asked = {migrate_traffic.prompt_key(e["messages"]) for e in examples}
    kept = [rec for _, rec in json_lines(raw) if migrate_traffic.prompt_key(rec["messages"][:-1]) not in asked]
    dropped = sum(1 for _ in json_lines(raw)) - len(kept)
    write_jsonl(out / "train.jsonl", kept)
    if dropped:
        info["notes"].append(f"{dropped} training examples had the prompt of an eval item from the traffic: left out "
                             "of the local models' training data (the fine-tune was trained on them)")


def _check_training(out: Path, info: dict, log) -> None:
    report = check_file(out / "train.jsonl", model=info.get("base") or "gpt-4.1-mini-2025-04-14", min_examples=None)
    write_text(out / "capture" / "train-check.txt", report.format() + "\n")
    log(report.format())
    if not report.ok:
        raise FtscaleError(f"the training data fails `data check` (details in {out / 'capture' / 'train-check.txt'}); "
                           "fix it or give --train FILE")


def fetch_data(c, model_id: str, out: Path, train: Path | None, eval_file: Path | None, eval_size: int, seed: int,
               log, traffic: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Training data and eval set into `out`: (what the manifest records, the eval examples). `traffic`:
    the eval examples come from the product's traffic instead (migrate_traffic.records)."""
    job, info, raw = _training(c, model_id, out, train, need_job=train is None or (eval_file is None and not traffic))
    if traffic is not None:
        examples = traffic
        _traffic_train(raw, out, examples, info)
    else:
        examples = _asked_eval_set(c, job, info, raw, out, eval_file, eval_size, seed)
    _check_training(out, info, log)
    write_jsonl(out / "capture" / "eval-prompts.jsonl", examples)
    info.update(n_train=sum(1 for _ in json_lines(out / "train.jsonl")), n_eval=len(examples))
    return info, examples


def _retired_error(errors: list[tuple[str, str]]) -> bool:
    return bool(errors) and all("model_not_found" in e or "NotFoundError" in e for _, e in errors)


def _unpaired_error(errors: list[tuple[str, str]], base_url: str | None, api_key_env: str | None) -> str | None:
    """Every request refused with 401 by an endpoint no key was paired with: how to pair one."""
    if errors and all("AuthenticationError" in e or "401" in e for _, e in errors):
        return pairing_hint(base_url, api_key_env)
    return None


def ask_fine_tune(model_id: str, examples: list[dict], out: Path, base_url: str | None, sampling, batch_size: int,
                  concurrency: int, progress: bool, backend=None,
                  api_key_env: str | None = None) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """The fine-tune's answer to every example, through distill's cache: (id -> cache record, failures)."""
    cache_path = out / CACHE
    cache = load_cache(cache_path)
    keys = {ex["id"]: cache_key(model_id, "capture", "", json.dumps(ex["messages"], ensure_ascii=False))
            for ex in examples}
    todo = [(keys[ex["id"]], Request(ex["id"], ex["messages"]), {"model": model_id, "id": ex["id"]})
            for ex in examples if keys[ex["id"]] not in cache]
    errors = []
    if todo:
        backend = backend or make_backend("openai", model=model_id, base_url=base_url, api_key_env=api_key_env,
                                          concurrency=concurrency, progress=False)
        try:
            errors = ask_cached(backend, todo, sampling, cache, cache_path, batch_size, progress,
                                f"capturing ({model_id})")
        except RuntimeError as e:
            raise FtscaleError(f"asking {model_id} failed: {e}; the answers so far are in {cache_path}: "
                               "run the same command again to continue") from e
    return {i: cache[k] for i, k in keys.items() if k in cache}, errors


def _date(rec: dict) -> str | None:
    if rec.get("created"):
        return rec["created"]
    return dt.datetime.fromtimestamp(rec["time"], dt.timezone.utc).isoformat(timespec="seconds") if rec.get("time") else None


def write_captured(out: Path, model_id: str, examples: list[dict], answers: dict[str, dict]) -> int:
    """`captured.jsonl` and `eval.jsonl` from the answered examples; returns how many."""
    captured, evals = [], []
    for ex in examples:
        rec = answers.get(ex["id"])
        if rec is None:
            continue
        captured.append({"id": ex["id"], "prompt": ex["messages"], "output": rec["reply"], "model": model_id,
                         **{k: rec.get(k) for k in ("input_tokens", "output_tokens", "ttft_s", "latency_s",
                                                     "finish_reason", "sampling")},
                         "cut_off": rec.get("finish_reason") == "length", "date": _date(rec)})
        evals.append({"id": ex["id"], "messages": ex["messages"], "reference": ex["reference"] | {"captured": rec["reply"]}})
    write_jsonl(out / CAPTURED, captured)
    if evals:
        write_jsonl(out / "eval.jsonl", evals)
    return len(captured)


def _traffic(source: str, c, model_id: str, out: Path, metadata: dict, progress: bool, log) -> tuple[list, dict, dict]:
    raw = (migrate_traffic.stored(c, model_id, metadata, out, progress, log) if source == "stored"
           else migrate_traffic.from_file(Path(source)))
    return migrate_traffic.records(raw)


def _product_temperature(source: str, temperature: float | None, counts: dict | None) -> float | None:
    """The temperature the product answered with: asked at `temperature`; from traffic, as the user states it
    (--temperature) or as the file's lines record it (one value)."""
    if source == "ask":
        return temperature if temperature is not None else 0.0
    if temperature is not None:
        return temperature
    found = (counts or {}).get("temperatures") or []
    return found[0] if len(found) == 1 else None


def capture(model_id: str, out: str | Path, *, source: str = "ask", base_url: str | None = None,
            api_key_env: str | None = None, train: Path | None = None, eval_file: Path | None = None,
            eval_size: int = 300, seed: int = 0, max_new_tokens: int = 256, temperature: float | None = None,
            metadata: dict | None = None, batch_size: int = 16, concurrency: int = 8, progress: bool = True,
            deprecations: str = DEFAULT, log=print, backend=None) -> dict:
    """Capture a fine-tune (see the module's docstring); returns the manifest. `failed` > 0 means
    some prompts are still unanswered: running again asks only those."""
    _require_ft(model_id)
    if source != "ask" and eval_file is not None:
        raise FtscaleError("--eval FILE names prompts to re-ask: it goes with --from ask, not with traffic")
    out = Path(out)
    table = load_deprecations(deprecations)
    log(f"{model_id}: stops answering {table.shutdown_text(model_id)}; {table.provenance()}")
    c = client(base_url, api_key_env) if (train is None or source == "stored" or eval_file is None) else None
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
    if manifest and manifest.get("model") != model_id:
        raise FtscaleError(f"{out} holds a capture of {manifest.get('model')}; capture {model_id} into another folder")
    if manifest and manifest.get("source", "ask") != source:
        raise FtscaleError(f"{out} holds a capture --from {manifest.get('source', 'ask')}; capture --from {source} into "
                           "another folder")
    errors, counts = [], None
    if source == "ask":
        examples, info = _asked(c, model_id, out, manifest, train, eval_file, eval_size, seed, log)
        sampling = Sampling(temperature=temperature or 0.0, max_new_tokens=max_new_tokens, seed=seed)
        answers, errors = ask_fine_tune(model_id, examples, out, base_url, sampling, batch_size, concurrency, progress,
                                        backend, api_key_env)
    else:
        examples, answers, counts = _traffic(source, c, model_id, out, metadata or {}, progress, log)
        info, examples = fetch_data(c, model_id, out, train, None, eval_size, seed, log, traffic=examples)
    n = write_captured(out, model_id, examples, answers)
    product_t = _product_temperature(source, temperature, counts)
    manifest = {"model": model_id, "base": table.base_of(model_id), "base_url": base_url, "source": source,
                "stops_answering": table.shutdown_text(model_id), "deprecations": table.provenance(),
                "data": info, "sampling": {"temperature": product_t, "max_new_tokens": max_new_tokens, "seed": seed},
                "product_temperature": product_t, "traffic": counts, "metadata": metadata or {},
                "n_eval": len(examples), "answered": n, "failed": len(examples) - n,
                "errors": [f"{i}: {e}" for i, e in errors][:20], "train_sha256": sha256_file(out / "train.jsonl"),
                "captured_on": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(out / MANIFEST, manifest)
    _raise_for(errors, n, model_id, out, table, base_url, api_key_env)
    log(_summary(manifest, errors, out, counts))
    return manifest


def _asked(c, model_id, out, manifest, train, eval_file, eval_size, seed, log) -> tuple[list[dict], dict]:
    prompts = out / "capture" / "eval-prompts.jsonl"
    if manifest is None or not prompts.is_file():
        info, examples = fetch_data(c, model_id, out, train, eval_file, eval_size, seed, log)
        return examples, info
    log(f"resuming the capture in {out}: training data and eval prompts already there")
    return [rec for _, rec in json_lines(prompts)], manifest["data"]


def _raise_for(errors, n: int, model_id: str, out: Path, table, base_url, api_key_env) -> None:
    hint = _unpaired_error(errors, base_url, api_key_env)
    if hint:
        raise FtscaleError(f"{hint}; nothing was captured from it (run the same command again with the key paired)")
    if _retired_error(errors):
        then = (f"the {n} answers captured before are in {out / CAPTURED}: compare local replacements with "
                f"`ftscale migrate plan {out} --model MODEL`" if n else
                f"no answer was captured, so there is nothing to compare with; the training data is kept in "
                f"{out / 'train.jsonl'} to train a local model on (`ftscale run`)")
        raise FtscaleError(f"{model_id} no longer answers ({errors[0][1][:160]}; shutdown "
                           f"{table.shutdown_text(model_id)}); {then}")


def _summary(manifest: dict, errors, out: Path, counts: dict | None) -> str:
    n, total, model_id = manifest["answered"], manifest["n_eval"], manifest["model"]
    line = f"captured {n} of {total} answers of {model_id} in {out / CAPTURED}"
    if n < total:
        line += (f"; {total - n} failed (first: {errors[0][0]}: {errors[0][1][:200]}); run the same command again "
                 "to ask them")
    if counts:
        line += (f" (from {counts['requests']} requests: {counts['duplicates']} repeated prompts counted once, "
                 f"{counts['no_answer']} without a text answer left out, {counts['cut_off']} cut off at the length "
                 "limit, kept and flagged)")
        if manifest["product_temperature"] is None:
            line += ("; the temperature the product used is unknown: state it with --temperature T, so the local "
                     "evaluation uses the same")
    return line

"""Prices are shown with their age and their source wherever they are used, and a price table of your
own is one flag away (`--prices FILE`) on every command that prices something."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from ftscale.config import CostSpec
from ftscale.eval.cost import add_costs
from ftscale.prices import age, load_prices, months_old

from conftest import MAIN_CONFIG, ROOT
from test_cost import _row

PRICES = ROOT / "configs" / "prices.yaml"
TODAY = dt.date(2026, 12, 7)


def test_the_age_of_a_price_in_whole_months():
    assert months_old("2025-06", TODAY) == 18
    assert months_old("2026-12", TODAY) == 0 and months_old("2026-11-08", TODAY) == 0  # not yet a month
    assert months_old("2026-11-07", TODAY) == 1 and months_old("2026-12-08", TODAY) == 0  # a future date: 0
    assert age("2025-06", TODAY) == "checked 2025-06, 18 months ago (on 2026-12-07)"
    assert age("2026-11", TODAY, dated=False) == "checked 2026-11, 1 month ago"
    assert age("2026-12-01", TODAY, dated=False) == "checked 2026-12-01, this month"


def test_the_provenance_names_the_file_its_age_and_each_used_price_with_its_source(tmp_path):
    table = load_prices(PRICES)
    text = table.provenance(PRICES, ["cpu", "gpt-4.1-2025-04-14"], TODAY)
    assert text.startswith(f"Prices: `{PRICES}`, checked {table.checked}, ")
    assert "older than 6 months, re-check them" in text and "--prices FILE" in text
    cpu, gpt = table.local_hardware["cpu"], table.openai["gpt-4.1-2025-04-14"]
    assert f"cpu ${cpu.hourly_usd:.2f}/h: {cpu.source} (checked {cpu.checked}, " in text
    assert f"gpt-4.1-2025-04-14 ${gpt.input:g} / ${gpt.output:g} per 1M input / output tokens" in text
    assert gpt.source in text and "h100" not in text  # only what was used
    # a table of your own, checked this month: no warning, and its own prices
    own = yaml.safe_load(PRICES.read_text())
    own["checked"] = "2026-12"
    own["local_hardware"]["cpu"] |= {"hourly_usd": 1.25, "source": "my invoice", "checked": "2026-12-01"}
    path = tmp_path / "my-prices.yaml"
    path.write_text(yaml.safe_dump(own))
    mine = load_prices(path)
    text = mine.provenance(path, ["cpu"], TODAY)
    assert "this month" in text and "older than" not in text and "cpu $1.25/h: my invoice" in text


def test_the_cost_context_carries_the_note_of_the_prices_it_used():
    table = load_prices(PRICES)
    base_long = _row(num_train_examples=0, prompt_variant="few_shot", mean_input_tokens=500.0)
    ctx = add_costs([base_long, _row()], table, CostSpec())
    assert ctx["prices_used"] == ["gpt-4.1-2025-04-14", "cpu"]  # the reference, and the machine priced
    assert ctx["prices_note"] == table.provenance(CostSpec().prices, ctx["prices_used"])
    ctx = add_costs([_row()], table, CostSpec(hourly_usd=2.0))  # your own hourly figure: no table entry
    assert "cpu" not in ctx["prices_used"]


def test_prices_is_one_flag_on_every_command_that_prices_something():
    from ftscale.cli import build_parser
    from ftscale.commands.config_args import load, with_prices
    from ftscale.data.distill import build_parser as distill_parser

    parser = build_parser()
    for argv in (["run", str(MAIN_CONFIG)], ["train", "--config", str(MAIN_CONFIG)], ["report", "runs/x"]):
        args, rest = parser.parse_known_args([*argv, "--prices", "my-prices.yaml"])
        assert args.prices == Path("my-prices.yaml") and rest == [], argv
    args, rest = parser.parse_known_args(["run", str(MAIN_CONFIG), "--prices", "my-prices.yaml"])
    args.overrides = rest
    assert load(args).cost.prices == Path("my-prices.yaml")  # it is the config's cost.prices
    assert with_prices(args, ["--train.seed", "3"]) == ["--train.seed", "3", "--cost.prices", "my-prices.yaml"]
    assert distill_parser().parse_args(["--teacher", "scripted:rude", "-n", "1", "--prices", "p.yaml"]).prices == "p.yaml"

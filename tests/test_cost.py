"""The price table and the cost model: what is charged for what, break-even, and bad tables refused."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from ftscale.config import CostSpec
from ftscale.errors import ConfigError
from ftscale.eval.cost import add_costs, break_even, system_cost
from ftscale.eval.result_row import ResultRow
from ftscale.prices import load_prices

from conftest import ROOT

PRICES = ROOT / "configs" / "prices.yaml"


@pytest.fixture(scope="module")
def table():
    return load_prices(PRICES)


def test_every_price_is_dated_and_sourced(table):
    assert table.checked and table.currency == "USD"
    for entry in [*table.openai.values(), *table.local_hardware.values()]:
        assert entry.source and entry.checked
    # the study's models: its fine-tuned model family, and the bigger one prompted instead
    for name in ("gpt-4.1-mini", "gpt-4.1", "gpt-4", "gpt-3.5-turbo"):
        assert table.model(name) is not None
    key, prices, fine_tuned = table.model("ft:gpt-4.1-mini-2025-04-14:acme::ftscale-n100:abc123")
    assert key == "gpt-4.1-mini-2025-04-14" and fine_tuned and table.inference("ft:gpt-4.1-mini-2025-04-14:a::b:c") == prices.fine_tuned
    assert table.model("some-other-model") is None


def _row(**kw) -> ResultRow:
    row = {"system": "hf", "backend": "hf", "model": "smollm2-135m", "num_train_examples": 100, "seed": 42,
           "prompt_variant": "default", "temperature": 0.0, "train_wall_time_s": 360.0,
           "train_machine": {"cpu_threads": 2}, "eval_wall_time_s": 50.0, "eval_requests": 200,
           "eval_machine": {"cpu_threads": 2}, "mean_input_tokens": 60.0, "mean_output_tokens": 40.0,
           "trained_tokens": None, "estimated_billed_tokens": None}
    return ResultRow(**(row | kw))


def test_local_systems_cost_their_measured_wall_time(table):
    c = system_cost(_row(), table, CostSpec(hourly_usd=2.0))
    assert c["training_cost_usd"] == pytest.approx(360 / 3600 * 2.0)
    assert c["cost_per_request_usd"] == pytest.approx(50 / 200 / 3600 * 2.0)
    # the machine's price from the table: a GPU by its name, else the cpu entry
    on_h100 = system_cost(_row(train_machine={"gpu": "NVIDIA H100 80GB HBM3"}, eval_machine={"gpu": "NVIDIA H100 80GB HBM3"}),
                          table, CostSpec())
    assert on_h100["training_cost_usd"] == pytest.approx(0.1 * table.local_hardware["h100"].hourly_usd)
    assert on_h100["cost_basis"].startswith("h100 at $")
    assert system_cost(_row(), table, CostSpec())["cost_basis"].startswith("cpu at $")
    assert system_cost(_row(num_train_examples=0), table, CostSpec())["training_cost_usd"] == 0
    with pytest.raises(ConfigError, match="no price-table entry matches the GPU 'Tesla K80'"):
        system_cost(_row(eval_machine={"gpu": "Tesla K80"}), table, CostSpec())
    with pytest.raises(ConfigError, match="cost.hardware: 'tpu' is not in the price table"):
        system_cost(_row(), table, CostSpec(hardware="tpu"))


def test_openai_systems_cost_tokens(table):
    ft = _row(system="openai gpt-4.1-mini-2025-04-14", backend="openai", model="ft:gpt-4.1-mini-2025-04-14:o::s:1",
              trained_tokens=30_000)
    c = system_cost(ft, table, CostSpec())
    assert c["training_cost_usd"] == pytest.approx(30_000 * 5.00 / 1e6)
    assert c["cost_per_request_usd"] == pytest.approx((60 * 0.80 + 40 * 3.20) / 1e6)
    # before the job reports its tokens, the pre-launch estimate, said so
    c = system_cost(replace(ft, trained_tokens=None, estimated_billed_tokens=28_000), table, CostSpec())
    assert c["training_cost_usd"] == pytest.approx(28_000 * 5.00 / 1e6) and "estimate" in c["cost_basis"]
    # cached input at its own price
    c = system_cost(_row(system="openai gpt-4.1", backend="openai", model="gpt-4.1"), table,
                    CostSpec(cached_input_fraction=0.5))
    assert c["cost_per_request_usd"] == pytest.approx((30 * 2.00 + 30 * 0.50 + 40 * 8.00) / 1e6)
    c = system_cost(_row(system="openai x", backend="openai", model="unknown-model"), table, CostSpec())
    assert c["cost_per_request_usd"] is None and "no price for 'unknown-model'" in c["cost_basis"]


def test_break_even():
    assert break_even(1.0, 0.001, 0.003) == 500
    assert break_even(1.0, 0.0011, 0.003) == math.ceil(1.0 / 0.0019)
    assert break_even(1.0, 0.003, 0.003) == "never"
    assert break_even(0.0, 0.001, 0.003) == 0
    assert break_even(None, 0.001, 0.003) is None and break_even(1.0, 0.001, None) is None


def test_the_reference_is_measured_when_evaluated_else_estimated_from_the_base(table):
    base_long = _row(num_train_examples=0, prompt_variant="few_shot", mean_input_tokens=400.0)
    tuned = _row()
    ctx = add_costs([base_long, tuned], table, CostSpec())
    estimated = (400 * 2.00 + 40 * 8.00) / 1e6  # the base's few-shot tokens at gpt-4.1's prices
    assert ctx["reference_cost_per_1k_requests_usd"] == pytest.approx(1000 * estimated)
    assert "estimated" in ctx["reference_basis"] and ctx["prices_checked"] == table.checked
    per_request = 50 / 200 / 3600 * table.local_hardware["cpu"].hourly_usd
    assert tuned.break_even_requests == math.ceil(tuned.training_cost_usd / (estimated - per_request))
    measured = _row(system="openai gpt-4.1", backend="openai", model="gpt-4.1-2025-04-14", prompt_variant="few_shot",
                    mean_input_tokens=500.0, mean_output_tokens=30.0)
    ctx = add_costs([base_long, tuned, measured], table, CostSpec())
    assert ctx["reference_cost_per_1k_requests_usd"] == pytest.approx((500 * 2.00 + 30 * 8.00) / 1e3)
    assert "measured" in ctx["reference_basis"] and measured.break_even_requests is None


def test_a_bad_price_table_is_refused_with_file_line_and_key(tmp_path):
    bad = tmp_path / "prices.yaml"
    text = PRICES.read_text()
    bad.write_text(text.replace("    training: 5.00\n", "    training: 5.00\n    trainig: 1\n", 1))
    line = bad.read_text().splitlines().index("    trainig: 1") + 1
    with pytest.raises(ConfigError) as e:
        load_prices(bad)
    assert f"{bad}:{line}: openai.gpt-4.1-mini-2025-04-14.trainig: unknown key" in str(e.value)
    bad.write_text(text.replace('    checked: "2025-06"\n', '    checked: "last summer"\n', 1))
    with pytest.raises(ConfigError, match=r"openai.gpt-4.1-2025-04-14.checked: String should match pattern"):
        load_prices(bad)

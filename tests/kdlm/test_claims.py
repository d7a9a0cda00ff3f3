"""The paper's claims (kdlm.claims) on made-up studies whose answers are known by construction: real
evaluation parquet files (EVAL schema and description metadata), real uncertainty files, a real plot.

Scores are exact match in {0, 1} over 60 test examples; patterns on the example index `IX` decide who
answers what, so each verdict follows from the construction (e.g. ATKD = forward KL plus every even
example: ATKD never loses, so C3 must be supported).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kdlm.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    ClaimsConfig,
    Grid,
    Interval,
    c1_verdict,
    c2_verdict,
    c3_verdict,
    c4_verdict,
    compute_claims,
    contrast_bootstrap,
    load_design,
    plot_uncertainty,
    pooled_bootstrap,
    read_uncertainty,
    seed_example_bootstrap,
    uncertainty_difference,
    verdict,
    write_claims,
    write_uncertainty,
)
from kdlm.schemas import EVAL, SchemaError, write_table
from kdlm.sections import build

N = 60
IX = np.arange(N)
SEEDS = (0, 1, 2)
SOURCES = ("gt", "teacher")
LAMBDAS = {"atkd_l0": 0.0, "atkd": 0.2, "atkd_l05": 0.5, "atkd_l1": 1.0}
METHODS = ("fkl", *LAMBDAS)
TEACHERS = {"small": IX % 4 == 1, "large": IX % 4 != 0}  # large answers a superset: gap +0.5
PNG = b"\x89PNG\r\n\x1a\n"


def _cfg(**overrides) -> ClaimsConfig:
    values = {
        "student": "stu",
        "small_teacher": "small",
        "large_teacher": "large",
        "lambdas": dict(LAMBDAS),
        "n_resamples": 400,
    }
    return ClaimsConfig(**{**values, **overrides})


def _base(seed: int) -> np.ndarray:
    """What a forward-KL student answers: 40% of the examples, different ones per seed."""
    return (IX + seed) % 5 < 2


def world(teacher: str, source: str, method: str, seed: int) -> np.ndarray:
    """Default study: ATKD (λ=0.2) adds every even example; the large teacher's students lose every third."""
    right = _base(seed)
    if method == "atkd":
        right = right | (IX % 2 == 0)
    if teacher == "large":
        right = right & (IX % 3 != 0)
    return right


def _write_eval(
    root: Path,
    kind: str,
    teacher: str,
    source: str,
    method: str,
    seed: int,
    scores,
    task: str = "lab",
    drop: int | None = None,
) -> Path:
    scores = np.asarray(scores, dtype=float)
    ids = [f"{task}-{i:03d}" for i in range(len(scores))]
    df = pd.DataFrame(
        {
            "id": ids,
            "prompt": "p",
            "reference": "r",
            "prediction": "x",
            "rouge_l": 0.5,
            "exact_match": scores,
            "n_response_tokens": 3,
            "finish_reason": "eos",
        }
    )
    if drop is not None:
        df = df.drop(index=drop)
    if seed % 2:
        df = df.iloc[::-1]  # row order must not matter: arms pair by id
    if kind == "teacher":
        model, meta = f"teacher/{teacher}", {"student": "", "source": "", "method": ""}
    else:
        model, meta = (
            f"stu__{teacher}/{source}/{method}/seed{seed}",
            {"student": "stu", "source": source, "method": method},
        )
    meta = {**meta, "kind": kind, "model": model, "teacher": teacher, "seed": seed, "task": task}
    path = root / "eval" / model / f"{task}.parquet"
    write_table(df, path, EVAL, metadata={**meta, "decoding": "greedy"})
    return path


def _study(root: Path, students=world, teachers=None, seeds=SEEDS, skip=(), tasks=("lab",)) -> list[Path]:
    """Evaluation files of a whole claims study; `skip` leaves out (teacher, source, method, seed) runs."""
    teachers = TEACHERS if teachers is None else teachers
    paths = []
    for task in tasks:
        paths += [_write_eval(root, "teacher", t, "", "", 0, teachers[t], task) for t in ("small", "large")]
        for t in ("small", "large"):
            for source in SOURCES:
                for method in METHODS:
                    for seed in seeds:
                        if (t, source, method, seed) not in skip:
                            scores = students(t, source, method, seed)
                            paths.append(_write_eval(root, "run", t, source, method, seed, scores, task))
    return paths


def _claims(paths, uncertainties=(), **cfg) -> dict:
    design = load_design(paths, _cfg(**cfg))
    return {c.key: c for c in compute_claims(design, [read_uncertainty(p) for p in uncertainties])}


def _uncertainty_files(root: Path, large_lower: bool = True) -> list[Path]:
    """Per-token uncertainties of both teachers on 30 training examples × 5 tokens, for both sources."""
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(30), 5)
    certain, unsure = rng.uniform(0.0, 0.35, rows.size), rng.uniform(0.3, 0.95, rows.size)
    values = {"large": certain, "small": unsure} if large_lower else {"large": unsure, "small": certain}
    return [
        write_uncertainty(
            rows,
            values[t] ** (1.5 if source == "teacher" else 1.0),
            root / f"unc_{t}_{source}.parquet",
            teacher=t,
            source=source,
            data=f"results/train/{source}.parquet",
        )
        for t in ("small", "large")
        for source in SOURCES
    ]


# ------------------------------------------------------------------------------------- bootstrap


def test_seed_disagreement_widens_the_interval():
    v = (IX % 3 == 0).astype(float) - 0.1
    agree = np.vstack([v, v, v])
    disagree = agree + np.array([[-0.3], [0.0], [0.3]])  # same example-level means, seeds disagree
    np.testing.assert_allclose(agree.mean(axis=0), disagree.mean(axis=0))
    a, d = seed_example_bootstrap(agree, 1000), seed_example_bootstrap(disagree, 1000)
    assert a.estimate == pytest.approx(d.estimate)
    assert (d.high - d.low) > 1.5 * (a.high - a.low)


def test_single_seed_is_an_example_bootstrap():
    v = (IX % 4 == 0).astype(float)  # mean 0.25
    iv = seed_example_bootstrap(v[None, :], n_resamples=4000, seed=1)
    means = v[np.random.default_rng(7).integers(0, N, size=(4000, N))].mean(axis=1)
    assert iv.estimate == pytest.approx(0.25)
    assert iv.low == pytest.approx(np.quantile(means, 0.025), abs=0.025)
    assert iv.high == pytest.approx(np.quantile(means, 0.975), abs=0.025)
    assert iv.low < 0.25 < iv.high


def test_bootstrap_rejects_a_one_dimensional_array():
    with pytest.raises(ValueError, match="2-D"):
        seed_example_bootstrap(np.ones(5))


def test_settings_on_one_test_set_share_the_example_draw():
    d = np.vstack([(IX % 3 == 0) - 0.2, (IX % 5 == 0) - 0.1])
    ids = tuple(map(str, IX))
    g, minus = Grid(d, (0, 1), ids, "lab"), Grid(-d, (0, 1), ids, "lab")
    shared = pooled_bootstrap([[g], [minus]])
    assert shared == (0.0, 0.0, 0.0)  # paired: every resample cancels exactly
    other_task = Grid(-d, (0, 1), ids, "other")  # another test set: drawn independently
    independent = pooled_bootstrap([[g], [other_task]])
    assert independent.high - independent.low > 0.05


def test_contrast_weights_give_a_difference_of_differences():
    ids = tuple(map(str, IX))
    big = Grid(np.tile((IX % 2 == 0).astype(float), (3, 1)), SEEDS, ids)  # gain 0.5
    small = Grid(np.tile((IX % 4 == 0).astype(float), (3, 1)), SEEDS, ids)  # gain 0.25
    did = contrast_bootstrap([(1.0, [big]), (-1.0, [small])], n_resamples=500)
    assert did.estimate == pytest.approx(0.25)
    assert did.low > 0


def test_tasks_are_stratified():
    a = Grid(np.ones((1, 10)), (0,), tuple(map(str, range(10))), "a")
    b = Grid(np.zeros((1, 30)), (0,), tuple(map(str, range(30))), "b")
    iv = pooled_bootstrap([[a, b]])
    assert iv == (0.5, 0.5, 0.5)  # mean of task means, not the pooled mean 0.25


# ------------------------------------------------------------------------------------- verdicts


def test_verdict():
    assert verdict(0.01, 0.2, "positive") == SUPPORTED
    assert verdict(0.01, 0.2, "negative") == CONTRADICTED
    assert verdict(-0.3, -0.01, "negative") == SUPPORTED
    assert verdict(-0.3, -0.01, "positive") == CONTRADICTED
    assert verdict(-0.1, 0.1, "positive") == INCONCLUSIVE
    assert verdict(0.0, 0.0, "positive") == INCONCLUSIVE
    with pytest.raises(ValueError, match="expect"):
        verdict(0.1, 0.2, "up")


UP, DOWN, FLAT = Interval(0.05, 0.02, 0.08), Interval(-0.05, -0.08, -0.02), Interval(0.0, -0.03, 0.03)


def test_c1_rules():
    assert c1_verdict(FLAT, {"a": DOWN}).verdict == INCONCLUSIVE  # the larger teacher is not better: untested
    assert "cannot test" in c1_verdict(DOWN, {"a": DOWN}).sentence
    assert c1_verdict(UP, {"a": UP, "b": DOWN}).verdict == SUPPORTED
    assert c1_verdict(UP, {"a": UP, "b": UP}).verdict == CONTRADICTED
    open_ = c1_verdict(UP, {"gt, fkl": UP, "gt, atkd": FLAT})
    assert open_.verdict == INCONCLUSIVE
    assert "gt, atkd" in open_.sentence and "gt, fkl" not in open_.sentence


def test_c2_rules():
    assert c2_verdict({"gt": DOWN, "teacher": DOWN}, UP).verdict == SUPPORTED
    # one source not more certain
    assert c2_verdict({"gt": DOWN, "teacher": FLAT}, UP).verdict == INCONCLUSIVE
    assert c2_verdict({"gt": UP}, UP).verdict == INCONCLUSIVE
    assert c2_verdict({}, UP).verdict == INCONCLUSIVE
    assert "no teacher uncertainty" in c2_verdict({}, UP).sentence
    assert c2_verdict({"gt": DOWN}, DOWN).verdict == CONTRADICTED
    assert c2_verdict({"gt": DOWN}, FLAT).verdict == INCONCLUSIVE


def test_c3_rules():
    assert c3_verdict(UP, {"a": UP, "b": FLAT}).verdict == SUPPORTED
    assert c3_verdict(UP, {"a": UP, "b": DOWN}).verdict == INCONCLUSIVE  # significantly worse somewhere
    assert c3_verdict(DOWN, {"a": UP}).verdict == CONTRADICTED
    assert c3_verdict(FLAT, {"a": FLAT}).verdict == INCONCLUSIVE


def test_c4_rules():
    assert c4_verdict({"0": UP, "0.5": UP}).verdict == SUPPORTED
    assert c4_verdict({"0": UP, "0.5": DOWN}).verdict == CONTRADICTED
    assert c4_verdict({"0": UP, "0.5": DOWN}).headline == "0.5"
    assert c4_verdict({"0": UP, "0.5": FLAT}).verdict == INCONCLUSIVE


# ------------------------------------------------------------------------------- claims on studies


@pytest.fixture(scope="module")
def default_study(tmp_path_factory) -> list[Path]:
    return _study(tmp_path_factory.mktemp("default"))


def test_default_study(default_study):
    claims = _claims(default_study)
    assert claims["C1"].judgement.verdict == SUPPORTED  # large teacher better, its students worse everywhere
    assert claims["C1"].evidence[0].interval.estimate == pytest.approx(0.5)
    assert claims["C3"].judgement.verdict == SUPPORTED  # ATKD never loses
    assert claims["C4"].judgement.verdict == SUPPORTED  # every other λ = forward KL < ATKD(0.2)
    assert claims["C2"].judgement.verdict == CONTRADICTED  # ATKD gains less with the large teacher
    pooled = claims["C3"].headline().interval
    gains = [
        (world(t, s, "atkd", k) & ~world(t, s, "fkl", k)).mean()
        for t in TEACHERS
        for s in SOURCES
        for k in SEEDS
    ]
    assert pooled.estimate == pytest.approx(np.mean(gains))
    assert 0 < pooled.low < pooled.estimate < pooled.high


def test_atkd_losing_everywhere_contradicts_c3_and_c4(tmp_path):
    def losing(teacher, source, method, seed):
        right = world(teacher, source, "fkl", seed)
        return right & (IX % 2 == 1) if method == "atkd" else right

    claims = _claims(_study(tmp_path, losing))
    assert claims["C3"].judgement.verdict == CONTRADICTED
    assert claims["C4"].judgement.verdict == CONTRADICTED


def test_equal_arms_with_noise_are_inconclusive(tmp_path):
    def noisy(teacher, source, method, seed):
        right = world(teacher, source, "fkl", seed)
        return np.roll(right, 1) if method == "atkd" else right  # same score, other examples

    c3 = _claims(_study(tmp_path, noisy))["C3"]
    assert c3.judgement.verdict == INCONCLUSIVE
    assert c3.headline().interval.estimate == 0.0
    assert c3.headline().interval.low < 0 < c3.headline().interval.high


def test_c1_needs_a_better_large_teacher(tmp_path):
    same = {"small": TEACHERS["small"], "large": TEACHERS["small"]}  # students as in the default study
    c1 = _claims(_study(tmp_path, teachers=same))["C1"]
    assert c1.judgement.verdict == INCONCLUSIVE
    assert c1.headline().key == "teacher gap"


def test_c1_contradicted_when_large_students_are_better(tmp_path):
    def better(teacher, source, method, seed):
        right = world("small", source, method, seed)
        return right | (IX % 3 == 0) if teacher == "large" else right

    assert _claims(_study(tmp_path, better))["C1"].judgement.verdict == CONTRADICTED


def test_another_lambda_better_contradicts_c4(tmp_path):
    def half_better(teacher, source, method, seed):
        if method == "atkd_l05":
            return world(teacher, source, "atkd", seed) | (IX % 3 == 0)
        return world(teacher, source, method, seed)

    c4 = _claims(_study(tmp_path, half_better))["C4"]
    assert c4.judgement.verdict == CONTRADICTED
    assert "atkd_l05" in c4.judgement.headline


def _mechanism(teacher, source, method, seed):
    """ATKD gains every 4th example with the small teacher, every 2nd with the large one."""
    right = _base(seed)
    if method == "atkd":
        right = right | (IX % (2 if teacher == "large" else 4) == 0)
    return right


def test_c2_supported_when_the_large_teacher_is_surer_and_atkd_gains_more(tmp_path):
    claims = _claims(_study(tmp_path, _mechanism), _uncertainty_files(tmp_path))
    c2 = claims["C2"]
    assert c2.judgement.verdict == SUPPORTED
    unc = [e for e in c2.evidence if e.unit == "uncertainty"]
    assert [e.key.rsplit(" ", 1)[-1] for e in unc] == ["gt", "teacher"]
    assert all(e.interval.high < 0 for e in unc)
    assert c2.headline().interval.low > 0


def test_c2_inconclusive_when_the_large_teacher_is_less_sure(tmp_path):
    claims = _claims(_study(tmp_path, _mechanism), _uncertainty_files(tmp_path, large_lower=False))
    assert claims["C2"].judgement.verdict == INCONCLUSIVE
    assert "not significantly more certain" in claims["C2"].judgement.sentence


def test_several_tasks_average_task_means(tmp_path):
    claims = _claims(_study(tmp_path, tasks=("lab", "lab2")))
    assert claims["C3"].judgement.verdict == SUPPORTED
    paths = _study(tmp_path / "one", tasks=("lab",))
    paths.append(_write_eval(tmp_path / "one", "teacher", "small", "", "", 0, TEACHERS["small"], "lab2"))
    with pytest.raises(ValueError, match=r"teacher large: no evaluation of task\(s\) \['lab2'\]"):
        load_design(paths, _cfg())


# ------------------------------------------------------------------------------------ alignment


def test_missing_seed_is_named(tmp_path):
    paths = _study(tmp_path, skip={("large", "gt", "atkd", 2)})
    with pytest.raises(ValueError, match=r"stu__large/gt/atkd: no evaluation of seed\(s\) \[2\]"):
        _claims(paths)


def test_missing_example_names_the_file(tmp_path):
    paths = _study(tmp_path)
    bad = _write_eval(
        tmp_path, "run", "small", "teacher", "fkl", 1, world("small", "teacher", "fkl", 1), drop=7
    )
    assert bad in paths
    with pytest.raises(
        ValueError, match=r"stu__small/teacher/fkl/seed1/lab\.parquet: lacks 1 example id"
    ) as err:
        _claims(paths)
    assert "lab-007" in str(err.value)


def test_missing_arm_is_named(tmp_path):
    paths = _study(tmp_path, skip={("small", "teacher", "atkd_l1", s) for s in SEEDS})
    with pytest.raises(ValueError, match=r"stu__small/teacher/atkd_l1"):
        load_design(paths, _cfg())


# -------------------------------------------------------------------------------------- config


def test_config_validation():
    assert _cfg().lambda_methods() == ["atkd_l0", "atkd", "atkd_l05", "atkd_l1"]
    with pytest.raises(ValueError, match="must include the ATKD method 'atkd'"):
        _cfg(lambdas={"atkd_l0": 0.0, "atkd_l1": 1.0})
    with pytest.raises(ValueError, match="best_lambda"):
        _cfg(best_lambda=0.5)
    with pytest.raises(ValueError, match="must differ"):
        _cfg(large_teacher="small")
    with pytest.raises(ValueError, match="level"):
        _cfg(level=1.0)
    with pytest.raises(ValueError, match="metric"):
        _cfg(metric="bleu")
    with pytest.raises(ValueError, match=r"lambdas.atkd_l1 must be <= 1.0"):
        _cfg(lambdas={**LAMBDAS, "atkd_l1": 1.5})
    with pytest.raises(ValueError, match=r"claims: unknown option\(s\) \['teachers'\]"):
        build(
            ClaimsConfig,
            {
                "student": "s",
                "small_teacher": "a",
                "large_teacher": "b",
                "lambdas": LAMBDAS,
                "teachers": ["a"],
            },
            "claims",
        )
    with pytest.raises(ValueError, match=r"claims: missing required option\(s\) \['lambdas'\]"):
        build(ClaimsConfig, {"student": "s", "small_teacher": "a", "large_teacher": "b"}, "claims")


# --------------------------------------------------------------------------------- uncertainty


def test_uncertainty_round_trip(tmp_path):
    path = write_uncertainty(
        [0, 0, 1], [0.1, 0.5, 1.0], tmp_path / "u.parquet", teacher="large", source="gt", data="train.parquet"
    )
    meta, df = read_uncertainty(path)
    assert meta == {"teacher": "large", "source": "gt", "data": "train.parquet"}
    assert df["row"].dtype == np.int64 and df["uncertainty"].dtype == np.float32
    np.testing.assert_allclose(df["uncertainty"], [0.1, 0.5, 1.0], rtol=1e-6)


def test_uncertainty_errors_name_the_file(tmp_path):
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"row": [0], "uncertainty": np.float32([0.5])}).to_parquet(plain)
    with pytest.raises(ValueError, match=r"plain\.parquet: uncertainty file lacks metadata field\(s\)"):
        read_uncertainty(plain)
    no_column = tmp_path / "no_column.parquet"
    write_table(
        pd.DataFrame({"row": [0]}),
        no_column,
        pa.schema([("row", pa.int64())]),
        metadata={"teacher": "t", "source": "gt", "data": "d"},
    )
    with pytest.raises(SchemaError, match=r"no_column\.parquet: missing column 'uncertainty'"):
        read_uncertainty(no_column)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_uncertainty([0], [1.5], tmp_path / "bad.parquet", teacher="t", source="gt", data="d")
    with pytest.raises(ValueError, match="2 rows but 1"):
        write_uncertainty([0, 1], [0.5], tmp_path / "bad.parquet", teacher="t", source="gt", data="d")


def test_uncertainty_difference_is_a_token_mean_paired_by_example():
    # token mean 0.25 (the mean of row means would be 0.5)
    a = pd.DataFrame({"row": [0, 0, 0, 1], "uncertainty": [0.0, 0.0, 0.0, 1.0]})
    b = pd.DataFrame({"row": [0, 1], "uncertainty": [0.5, 0.5]})
    assert uncertainty_difference(a, b).estimate == pytest.approx(-0.25)
    c = pd.DataFrame({"row": np.repeat(np.arange(20), 3), "uncertainty": 0.2})
    d = c.assign(uncertainty=0.6)
    assert uncertainty_difference(c, d) == pytest.approx((-0.4, -0.4, -0.4))


# ---------------------------------------------------------------------------------- plot, markdown


def test_plot_uncertainty(tmp_path):
    files = _uncertainty_files(tmp_path)
    out = plot_uncertainty(files, tmp_path / "plots" / "uncertainty.png", teachers=("small", "large"))
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    empty = plot_uncertainty([], tmp_path / "empty.png")
    assert empty.read_bytes()[:8] == PNG


def test_write_claims(tmp_path):
    paths = _study(tmp_path, _mechanism)
    base = _write_eval(tmp_path, "base", "", "", "", 0, _base(0) & (IX % 2 == 1))
    uncertainty = _uncertainty_files(tmp_path)
    results = tmp_path / "results"
    md = write_claims(
        [*paths, base],
        uncertainty,
        _cfg(),
        results / "tables" / "claims.md",
        results / "plots" / "uncertainty.png",
    )
    text = md.read_text(encoding="utf-8")
    assert (results / "plots" / "uncertainty.png").read_bytes()[:8] == PNG
    assert "![teacher uncertainty on the training tokens](../plots/uncertainty.png)" in text
    assert "| claim | evidence | estimate | 95% interval | verdict |" in text
    summary = [line for line in text.splitlines() if line.startswith("| C")]
    assert [line.split(":")[0] for line in summary] == ["| C1", "| C2", "| C3", "| C4"]
    assert summary[1].endswith("| **supported** |")
    for key in ("C1", "C2", "C3", "C4"):
        assert f"## {key}: " in text
    assert text.count("**Verdict: ") == 4
    # teachers with their own scores: small answers 1/4 of the examples, large 3/4
    assert "small `small` 0.250 [" in text and "large `large` 0.750 [" in text
    assert "`lab` (60 examples)" in text and "seeds per student run: 0, 1, 2 (3)" in text
    assert "(before distillation: 0.200 [" in text
    # ATKD's gain with the large teacher: every even example the base missed = 0.3 (+30.00 pts)
    assert "| atkd − fkl, teacher large, source gt | +0.300 (+30.00 pts) |" in text


def test_one_uncertainty_file_per_teacher_and_source(tmp_path):
    paths, files = _study(tmp_path, _mechanism), _uncertainty_files(tmp_path)
    with pytest.raises(ValueError, match="two uncertainty files of teacher 'small', source 'gt'"):
        _claims(paths, [*files, files[0]])

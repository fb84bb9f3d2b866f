"""The study report: claims, failure table, figures and ``docs/RESULTS_STUDY.md`` from committed cells alone.

``python -m icl.study`` (``configs/study.yaml``): reads ``<cells>/*/`` (``icl.lab.study.compact``) and the timing
CSV, fills the template ``report.md`` beside this module, writes the page, its CSVs and figures, and the README's
study block. No job folder is read: a fresh clone regenerates the page.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from icl.files import atomic_write
from icl.lab.study import claims as C
from icl.lab.study.compact import cell_name, load_cells
from icl.lab.study.figures import Figure, figures
from icl.lab.study.grid import active
from icl.lab.study.overview import overview_frame_rows, overview_rows, overview_table
from icl.lab.study.recipes import section as recipe_section
from icl.lab.study.timing import fastest_int8, fastest_int8_text, read_bench, timing_rows
from icl.run.configs import HYDRA_CONFIGS, refusals, run_cli
from icl.tables import markdown_table

log = logging.getLogger(__name__)
TEMPLATE = Path(__file__).with_name("report.md")
README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"
NO_CLAIMS = "No claim row: the committed cells hold no model a claim tests (the Overview section lists every model)."


def expected_cells(grid: Mapping[str, Any]) -> list[str]:
    """Every cell name the grid defines (arm × task × attention × seed)."""
    return [cell_name(arm, task, attn, seed) for arm in grid["arms"] for task, spec in grid["tasks"].items()
            for attn in grid["attns"] for seed in range(int(spec["seeds"]))]


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table (every report table goes through here)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.3f}"
        return str(v).replace("|", "\\|")
    return markdown_table(columns, ([fmt(r.get(c, "")) for c in columns] for r in rows))


def relative(path: Path, base: Path) -> str:
    """``path`` as a link from a page in ``base``."""
    return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()


def _seeds_text(row: C.Row) -> str:
    def ci(s: C.SeedValue) -> str:  # a value from per-k means has no prompt CI; a bootstrap may be non-finite
        if not math.isnan(s.low):
            return f"[{s.low:+.3f}, {s.high:+.3f}]"
        return "(no prompt CI)" if row.from_means else "(CI not finite)"

    def value(s: C.SeedValue) -> str:
        return f"no value ({s.missing})" if s.missing else f"{s.point:+.3f} {ci(s)}"
    return "; ".join(f"s{s.seed}: {value(s)}{'' if s.learned else ' ×'}" for s in row.seeds) or "—"


def improving_cell(s: C.SeedValue) -> bool | str:
    """The claims CSV's improving column: "unknown" where a model's convergence is unknown and none was seen still
    improving, so a reader never takes a model without a readable curve as converged."""
    return s.improving if s.improving or s.known else "unknown"


def claims_frame(rows: Sequence[C.Row]) -> pd.DataFrame:
    """claims.csv: one line per row and seed. ``plateau_only_margin``: (e)'s margin over the float seeds left when the
    baseline-clause-only seeds are dropped (the ``plateau_only`` verdict's; empty where that margin is the row's)."""
    return pd.DataFrame([{"claim": r.claim, "arm": r.arm, "subject": r.subject, "task": r.task, "part": r.part,
                          "statistic": r.statistic, "kind": r.kind, "margin": r.margin, "seed": s.seed,
                          "point": s.point, "low": s.low, "high": s.high, "learned": s.learned,
                          "improving": improving_cell(s), "convergence": " | ".join(s.convergence),
                          "baseline_only": s.baseline_only, "verdict": r.verdict,
                          "with_failed": r.with_failed, "plateau_only": r.plateau_only,
                          "plateau_only_margin": r.strict_margin}
                         for r in rows for s in r.seeds])


def _noise_margin_text(row: C.Row) -> dict[str, str]:
    """(e)'s margin (± value, the float model's mean error beside it) and the largest per-seed |Δ| with its seed."""
    shift = row.largest_shift
    mean = "" if math.isnan(row.noise_mean) else f" (float mean {row.noise_mean:.3g})"
    return {"margin": "—" if math.isnan(row.margin) else f"±{row.margin:.3g}{mean}",
            "largest per-seed \\|Δ\\|": "—" if shift is None else f"{abs(shift.point):.3g} (s{shift.seed})"}


def claim_tables(rows: Sequence[C.Row], ci: float) -> str:
    out = []
    for claim, text in C.CLAIMS.items():
        mine = [r for r in rows if r.claim == claim]
        if not mine:
            continue
        lines = []
        for r in mine:
            iv = r.interval
            seed_ci = "—" if iv is None or iv.n == 0 else f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] (n = {iv.n})"
            absolute = ", ".join(f"{k} {v:.3f}" for k, v in r.absolute.items() if not math.isnan(v)) or "—"
            line = {"arm": r.arm, "subject": r.subject, "part": r.part, "statistic": r.statistic,
                    f"seed-level {ci:.0%} t-interval": seed_ci, "per seed [prompt CI]": _seeds_text(r),
                    "absolute (normalised; zero: raw)": absolute}
            if claim == "e":  # how wide the noise margin is beside the shifts it judges
                line |= _noise_margin_text(r)
            lines.append(line | {"verdict": f"**{r.verdict}**", "why": r.why, "flags": r.flags or "—"})
        out += [f"### ({claim}) {text}", "", table(lines, list(lines[0])), ""]
    return "\n".join(out)


def status_text(cfg: Mapping[str, Any], present: set[str]) -> str:
    expected = expected_cells(cfg["grid"])
    missing = [c for c in expected if c not in present]
    if not missing:
        return f"All {len(expected)} cells of the grid are committed."
    shown = ", ".join(missing[:12]) + (f", … ({len(missing) - 12} more)" if len(missing) > 12 else "")
    return (f"**{len(expected) - len(missing)} of {len(expected)} cells committed; missing: {shown}.** Verdicts "
            "below use only the committed cells; a claim without its cells is absent. `make study` trains the "
            "missing cells (any order, any sitting) and exports each one as it finishes.")


def no_curve_text(study: C.Study) -> str:
    """The models whose committed curve.csv the convergence rules cannot read: unknown, never read as converged."""
    names = [f"{c.dir.name} ({study.convergence(c).flags[0]})" for c in study.cells.values()
             if not study.convergence(c).known]
    return (f"Convergence unknown: {', '.join(sorted(names))}." if names
            else "Every committed model has a training curve the rules can read.")


def cost_text(cells: Sequence[Any], cfg: Mapping[str, Any]) -> str:
    # every job of a cell: the one that trained its model may be a quant job (launched first); the others load it (0 s)
    train = sum((q.get("train_seconds") or 0) for c in cells for q in c.meta["quants"].values())
    evals = sum((q.get("eval_seconds") or 0) for c in cells for q in c.meta["quants"].values())
    return (f"training {train / 60:.1f} min and evaluation {evals / 60:.1f} min summed over the committed cells "
            "(status.json, one core per job)")


def files_dir(cfg: Mapping[str, Any]) -> Path:
    """Where the page's CSVs and figures go: ``<out_dir>/<files>`` (``files`` default: study)."""
    files = cfg.get("files") or "study"
    if Path(files).is_absolute() or ".." in Path(files).parts:
        raise ValueError(f"study: files must be a folder inside out_dir (e.g. study), got {files!r}")
    return Path(cfg["out_dir"]) / files


def render(cfg: Mapping[str, Any]) -> tuple[str, dict[str, pd.DataFrame], list[Figure]]:
    cfg = active(cfg)
    cells_dir, out_dir = Path(cfg["cells"]), Path(cfg["out_dir"])
    cells = load_cells(cells_dir)
    title = cfg.get("title") or "the seed study v2"
    if not cells:  # nothing trained yet: the page says what is missing and states no finding
        return (f"# Results: {title}\n\n[← README](../README.md) · written by `python -m icl.study` from "
                f"`{cells_dir}`.\n\n## Status\n{status_text(cfg, set())}\n"), {}, []
    study = C.Study(cells, cfg)
    bench = read_bench(Path(cfg["bench_csv"])) if cfg.get("bench_csv") else None
    # bench_csv null: the preset tests no claim (f); a set path whose CSV is missing leaves (f) not resolved
    timing = timing_rows(bench, float(cfg["margins"]["time"])) if cfg.get("bench_csv") else []
    rows = C.claim_rows(study) + timing
    verdicts = C.claim_verdicts(rows, study)
    failures = C.failure_table(study)
    figs = figures(study, files_dir(cfg))
    overview = overview_rows(study)
    first = cells[0].meta
    grid = cfg["grid"]
    arms = "; ".join(f"**{arm}**: {spec['describe']}" for arm, spec in grid["arms"].items())
    recipes = sorted({f"{c.meta['arm']}/{c.meta['attn']}: lr {c.meta['recipe']['lr']:g}, qk_norm "
                      f"{c.meta['recipe']['qk_norm']}, clip {c.meta['recipe']['gradient_clip_val']}, warm-up "
                      f"{c.meta['recipe']['warmup_steps']}" for c in cells})
    scale = "; ".join(sorted({f"{c.meta['task']}: d = {c.meta['n_dims']}, {c.meta['k_train'] + 1} training points, "
                              f"n_positions {c.meta['n_positions']}, {c.meta['steps']} steps, {c.meta['model']} model, "
                              f"batch {c.meta['recipe']['batch']}" for c in cells}))
    versions = ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items() if k in ("torch", "torchao"))
    g, conv, m = cfg["guard"], cfg["convergence"], cfg["margins"]
    fields = {
        "title": title, "overview": overview_table(overview, float(cfg["ci"]), table),
        "cells_rel": relative(cells_dir, out_dir) if cells_dir.resolve().is_relative_to(out_dir.resolve()) else str(cells_dir),
        "status": status_text(cfg, {c.dir.name for c in cells}),
        "grid": ", ".join(f"{t} × {len(grid['attns'])} variants × {s['seeds']} seeds" for t, s in grid["tasks"].items())
        + f", quant modes {', '.join(grid['quants'])}, in each arm",
        "arms": arms + ". Recipes trained with: " + "; ".join(recipes),
        "scale": scale, "machine": (cfg.get("machine") or "see each cell's cell.json") + f" ({versions})",
        "cost": cost_text(cells, cfg),
        "ci_pct": f"{float(cfg['ci']):.0%}", "bootstrap": cfg["bootstrap"], "min_seeds": cfg["min_seeds"],
        "guard_rule": study.guard.describe(),
        "zero_fraction": f"{study.guard.zero_fraction:g}",
        "baseline_margin": "—" if study.guard.baseline_margin is None else f"{study.guard.baseline_margin:g}",
        "guard_note": f" *{g['note']}*" if g.get("note") else "",
        "tolerance": f"{float(conv['tolerance']):.0%}", "tail_pct": f"{float(conv['tail']):.0%}",
        "no_curve": no_curve_text(study),
        "noninferiority": m["noninferiority"], "quant_factor": m["quant_noise_factor"], "zero_margin": m["zero"],
        "quant_wide": m["quant_wide"], "sparse_early": cfg["sparse_early"],
        "verdicts": table([{**v, "claim": f"({v['claim']}) {C.CLAIMS[v['claim']]}", "task": v["task"] or "—"}
                           for v in verdicts], ["claim", "arm", "subject", "task", "verdict", "rows", "refuted",
                                                "with_failed", "plateau_only", "margin_wide", "same_models"])
        if verdicts else NO_CLAIMS,
        "recipes": recipe_section(Path(cfg["tuning"]) if cfg.get("tuning") else None, grid["arms"],
                                  {arm: [(c.meta["attn"], c.meta["recipe"]) for c in cells if c.meta["arm"] == arm]
                                   for arm in grid["arms"]},
                                  table, float(cfg["guard"]["zero_fraction"])),
        "fastest_int8": fastest_int8_text(fastest_int8(bench)) if cfg.get("bench_csv") else "no timing CSV "
        "(bench_csv null)",
        "failures": table(failures, ["arm", "task", "attn", "quant", "failed", "seeds", "ci_low", "ci_high",
                                      "baseline_clause_only"]),
        "tables": claim_tables(rows, float(cfg["ci"])) or NO_CLAIMS,
        "proofs": table(C.proofs(study), ["cell", "quant", "quantized_linears", "linear_layers", "rel_diff_mean",
                                          "rel_diff_max", "proof_prompts"]) if C.proofs(study) else "none committed",
        "figures": "\n\n".join(f"![{f.path.stem}]({relative(f.path, out_dir)})\n\n{f.caption}" for f in figs),
    }
    text = Template(TEMPLATE.read_text()).substitute(fields)
    frames = {"claims": claims_frame(rows),
              "verdicts": pd.DataFrame(verdicts), "failures": pd.DataFrame(failures),
              "overview": pd.DataFrame(overview_frame_rows(overview))}
    return text, frames, figs


def report(cfg: Mapping[str, Any]) -> Path:
    start = time.perf_counter()
    cfg = active(cfg)
    out_dir = Path(cfg["out_dir"])
    text, frames, figs = render(cfg)
    path = out_dir / str(cfg["page"])
    for name, frame in frames.items():
        atomic_write(files_dir(cfg) / f"{name}.csv",
                     lambda tmp, f=frame: f.to_csv(tmp, index=False, float_format="%.6g"))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    if cfg.get("readme"):
        present = {p.parent.name for p in Path(cfg["cells"]).glob("*/cell.json")}
        update_readme(Path(cfg["readme"]), path, figs, complete=set(expected_cells(cfg["grid"])) <= present)
    log.info("wrote %s, %d figures, in %.1f s", path, len(figs), time.perf_counter() - start)
    return path


def update_readme(readme: Path, page: Path, figs: Sequence[Figure], complete: bool) -> None:
    """The README's study block: a link to the page and the dense-linear figure of the first arm with its short
    caption; until every cell is committed it says the study is being rebuilt."""
    if not readme.is_file():
        return
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        log.warning("%s has no %s … %s block: not updated", readme, README_BEGIN, README_END)
        return
    base = readme.resolve().parent
    shown = [f for f in figs if f.path.name.startswith("error_vs_k_") and "_linear" in f.path.name][:1]
    state = ("is complete: [its page]({}) gives every claim's verdict, computed from the committed cells"
             if complete else "is being rebuilt cell by cell: [its page]({}) says which cells are committed and "
             "computes every verdict from them")
    block = [README_BEGIN, "The seed study v2 (seeds as the unit of inference, one guard for both sides, two recipe "
             f"arms) {state.format(relative(page, base))}.", ""]
    block += [line for f in shown for line in (f"![{f.path.stem}]({relative(f.path, base)})", "", f.short)]
    block += [README_END]
    head, rest = text.split(README_BEGIN, 1)
    atomic_write(readme, lambda tmp: tmp.write_text(head + "\n".join(block) + rest.split(README_END, 1)[1]))


@hydra.main(version_base="1.3", config_path=HYDRA_CONFIGS, config_name="study")
def main(cfg: DictConfig) -> None:
    """``python -m icl.study``; a bad input is one line."""
    with refusals(ValueError, FileNotFoundError):
        report(OmegaConf.to_container(cfg, resolve=True))


def cli() -> None:
    run_cli(main)

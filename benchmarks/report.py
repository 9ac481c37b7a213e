"""bench.json -> ONE table (text for the terminal, Markdown for docs/benchmark.md), ratios and targets.

Every ratio is computed here from the raw numbers in bench.json, so an old run's table can be printed again
(``--table``) and the arithmetic is tested on its own. "x limit" divides an images/s rate by the machine's limit:
the best images/s of any float engine measured, in the better of its two shapes (section 1); a quantized
engine's job runs divide by that engine's own limit instead (its limit rows show it against the float one).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fruits.engines import CALIBRATED, RUNTIMES

COLUMNS = ("section", "measurement", "N", "s", "img/s", "x limit", "notes")
TARGET_N = 20_000
SMALL_N = 2_500
TARGET_WIDTH = 1_280
POOL_TARGET = 1.10  # job wall / Pool script wall, at most
INT8_TARGET = 1.70  # litert-int8 featurize images/s / litert's, at least (issue 25)
#: The stages every run over the images has, the Pool script's too: find them, load the model, featurize them.
#: The job's other stages are its own (the pass of sums over the feature store, the fit, the report, the outputs).
FEATURIZE_PHASE = ("list", "read", "prepare model", "featurize")


@dataclass(frozen=True)
class Target:
    """One of the team's targets: measured value, threshold, and whether this run can judge it."""

    name: str
    value: float | None
    threshold: float
    op: str  # ">=", "<=" or "<": how value must compare with threshold
    judged: bool  # measured where the target is defined (its N); else only indicative
    where: str

    @property
    def shown(self) -> str:
        """The value with two decimals, or as many more as it takes not to print the threshold itself when it is
        not (0.846 against 0.85, 0.8496 against 0.85)."""
        if self.value is None:
            return ""
        for digits in range(2, 7):
            shown = f"{self.value:.{digits}f}"
            if self.value == self.threshold or shown != f"{self.threshold:.{digits}f}":
                return shown
        return shown

    @property
    def status(self) -> str:
        if self.value is None or not self.judged:
            return "n/a"
        ok = {
            ">=": self.value >= self.threshold,
            "<=": self.value <= self.threshold,
            "<": self.value < self.threshold,
        }[self.op]
        return "PASS" if ok else "MISS"


# ----------------------------------------------------------------------------------------------- arithmetic


def limit_rate(report: dict, engine: str | None = None) -> float | None:
    """Images/s of the limit: one engine's best shape, or (no engine) the best float engine's: the machine's
    limit, which the team's targets since issue 7 refer to (a quantized engine computes something else)."""
    engines = (report.get("limit") or {}).get("engines", {})
    if engine is not None:
        return engines[engine]["best"] if engine in engines else None
    return max((e["best"] for name, e in engines.items() if name not in CALIBRATED), default=None)


def run_limit(report: dict, engine: str) -> float | None:
    """What a job run of ``engine`` is divided by: the machine's limit, or a quantized engine's own."""
    return limit_rate(report, engine) if engine in CALIBRATED else limit_rate(report)


def ratio(rate: float | None, limit: float | None) -> float | None:
    """``rate / limit``, None when either is missing."""
    if rate is None or not limit:
        return None
    return rate / limit


def end_to_end_rate(run: dict) -> float:
    """Images per second of the manifest's stage sum: the job's own definition of end to end."""
    return run["featurized"] / sum(run["timings_seconds"].values())


def overhead_seconds(run: dict) -> float:
    """Process wall time minus the stage sum: start-up (JVM, imports, session) and teardown."""
    return run["wall_seconds"] - sum(run["timings_seconds"].values())


def own_stage_seconds(timings: dict[str, float]) -> float:
    """Seconds of a job's stages after featurize (outside :data:`FEATURIZE_PHASE`): its pass of sums, reconcile,
    fit, report and outputs, where the Pool script has only an in-memory PCA and a CSV."""
    return sum(v for k, v in timings.items() if k not in FEATURIZE_PHASE)


def against_pool(job_wall: float, job_timings: dict[str, float], pool_wall: float) -> dict[str, float]:
    """One job run against one Pool run: the wall ratio; the job's floor (its wall without its own stages:
    start-up, featurize, teardown) over the Pool's wall; its own stages' seconds; and the room the target leaves
    them: ``POOL_TARGET`` x the Pool's wall minus that floor (negative: none)."""
    own = own_stage_seconds(job_timings)
    return {
        "job_over_pool": job_wall / pool_wall,
        "floor_over_pool": (job_wall - own) / pool_wall,
        "own_stage_seconds": own,
        "room_for_own_stages_seconds": POOL_TARGET * pool_wall - (job_wall - own),
    }


def pair_numbers(run: dict) -> dict[str, float]:
    """:func:`against_pool` for a Pool run of a job/Pool pair (``run["pair"]``: the job run just before it)."""
    pair = run["pair"]
    return against_pool(pair["job_wall_seconds"], pair["job_timings_seconds"], run["wall_seconds"])


def featurize_rate(run: dict) -> float | None:
    seconds = run["timings_seconds"].get("featurize")
    return run["counts"]["newly_featurized"] / seconds if seconds else None


def litert_runs(report: dict, engine: str = "litert") -> list[dict]:
    """Job runs of ``engine`` (default: the float LiteRT engine) and the report's model, by N."""
    return sorted(
        (
            r
            for r in report.get("jobs", [])
            if r["engine"] == engine and r["model"] == report["model"] and r["alpha"] == report["alpha"]
        ),
        key=lambda r: r["n"],
    )


def int8_speed_up(report: dict) -> tuple[float | None, int | None]:
    """litert-int8's featurize images/s over litert's, at N = 20,000 if both ran there, else at the largest N
    both ran; (None, None) without such a pair."""
    floats = {r["n"]: r for r in litert_runs(report)}
    quantized = {r["n"]: r for r in litert_runs(report, "litert-int8")}
    both = sorted(set(floats) & set(quantized))
    if not both:
        return None, None
    n = TARGET_N if TARGET_N in both else both[-1]
    fast, slow = featurize_rate(quantized[n]), featurize_rate(floats[n])
    return (fast / slow if fast and slow else None), n


def _at(runs: list[dict], n: int) -> dict | None:
    return next((r for r in runs if r["n"] == n), None)


def _ok(run: dict) -> bool:
    return "wall_seconds" in run and not run.get("error")


def wall_ratios(report: dict) -> list[dict[str, object]]:
    """Per N of the alternatives section: job wall / Pool wall (the median of the job/Pool pairs, with their
    range; each number of :func:`against_pool` is its own median over the pairs, so with an even count or a
    spread they need not come from one pair), job wall / Ray wall, and each against the limit.

    A bench.json from before the pairs has one Pool run, compared with the job-runs section's run."""
    limit = limit_rate(report)
    rows = []
    for section in report.get("alternatives", []):
        job = next((r for r in report.get("jobs", []) if r["name"] == section["job"]), None)
        if job is None:
            continue
        row: dict[str, object] = {
            "n": section["n"],
            "job_wall_seconds": job["wall_seconds"],
            "job_end_to_end_x_limit": ratio(end_to_end_rate(job), limit),
            "job_process_x_limit": ratio(job["featurized"] / job["wall_seconds"], limit),
        }
        pairs = [r for r in section["runs"] if "pair" in r and _ok(r)]
        for run in section["runs"]:
            if _ok(run) and "pair" not in run:
                row[f"job_over_{run['name']}"] = job["wall_seconds"] / run["wall_seconds"]
                row[f"{run['name']}_x_limit"] = ratio(section["n"] / run["wall_seconds"], limit)
                if run["name"] == "pool":
                    row.update(against_pool(job["wall_seconds"], job["timings_seconds"], run["wall_seconds"]))
        if pairs:
            numbers = [pair_numbers(r) for r in pairs]
            for key in numbers[0]:
                row[key] = statistics.median(n[key] for n in numbers)
            ratios = [n["job_over_pool"] for n in numbers]
            row["pairs"], row["job_over_pool_range"] = len(pairs), (min(ratios), max(ratios))
            row["pool_x_limit"] = ratio(
                section["n"] / statistics.median(r["wall_seconds"] for r in pairs), limit
            )
        rows.append(row)
    return rows


def targets(report: dict) -> list[Target]:
    """The team's targets (issue 15) as far as this run measured them."""
    limit = limit_rate(report)
    runs = litert_runs(report)
    found: list[Target] = []
    walls = sorted(wall_ratios(report), key=lambda r: r["n"])  # type: ignore[arg-type, return-value]
    for other, name, threshold, op in (
        ("pool", f"job wall <= {POOL_TARGET:.2f} x Pool script wall", POOL_TARGET, "<="),
        ("ray", "job wall < Ray Data wall", 1.0, "<"),
    ):
        measured = [w for w in walls if f"job_over_{other}" in w]
        pick = next((w for w in measured if w["n"] == TARGET_N), measured[-1] if measured else None)
        where = f"N={pick['n']:,}" if pick else "not run"
        if pick and other == "pool" and pick.get("pairs", 1) > 1:
            low, high = pick["job_over_pool_range"]  # type: ignore[misc]
            where += f", median of {pick['pairs']} job/Pool pairs: {low:.2f}-{high:.2f}"
        found.append(
            Target(
                f"{name} at N={TARGET_N:,}",
                pick[f"job_over_{other}"] if pick else None,  # type: ignore[arg-type]
                threshold,
                op,
                bool(pick) and pick["n"] == TARGET_N,
                where,
            )
        )
    for n, threshold in ((TARGET_N, 0.70), (SMALL_N, 0.40)):
        run = _at(runs, n) or (runs[-1] if runs and n == TARGET_N else None)
        found.append(
            Target(
                f"end to end >= {threshold:.2f} x limit at N={n:,}",
                ratio(end_to_end_rate(run), limit) if run else None,
                threshold,
                ">=",
                bool(run) and run["n"] == n,
                f"N={run['n']:,}" if run else "not run",
            )
        )
    largest = runs[-1] if runs else None
    found.append(
        Target(
            "featurize stage >= 0.85 x limit",
            ratio(featurize_rate(largest), limit) if largest else None,
            0.85,
            ">=",
            bool(largest),
            f"N={largest['n']:,}" if largest else "not run",
        )
    )
    run = _at(runs, TARGET_N)
    pca_case = next(
        (
            c
            for c in (report.get("pca") or {}).get("result", [])
            if (c["n"], c["width"]) == (TARGET_N, TARGET_WIDTH)
        ),
        None,
    )
    if run and run["timings_seconds"].get("PCA") is not None and report.get("feature_dim") == TARGET_WIDTH:
        pca = Target(
            f"PCA stage <= 2 s at N={TARGET_N:,}, width {TARGET_WIDTH:,}",
            run["timings_seconds"]["PCA"],
            2.0,
            "<=",
            True,
            "job's PCA stage",
        )
    elif pca_case:
        pca = Target(
            f"PCA stage <= 2 s at N={TARGET_N:,}, width {TARGET_WIDTH:,}",
            pca_case["seconds"],
            2.0,
            "<=",
            True,
            "PCA section (fit + project)",
        )
    else:
        indicative = largest["timings_seconds"].get("PCA") if largest else None
        where = f"job's PCA stage at N={largest['n']:,}" if largest else "not run"
        pca = Target(
            f"PCA stage <= 2 s at N={TARGET_N:,}, width {TARGET_WIDTH:,}", indicative, 2.0, "<=", False, where
        )
    found.append(pca)
    speed_up, n = int8_speed_up(report)
    found.append(
        Target(
            f"litert-int8 featurize >= {INT8_TARGET:.1f} x litert featurize at N={TARGET_N:,}",
            speed_up,
            INT8_TARGET,
            ">=",
            n == TARGET_N,
            f"N={n:,}, same run" if n else "not run",
        )
    )
    incremental = report.get("incremental")
    second = incremental["runs"][-1] if incremental else None
    found.append(
        Target(
            "second run over the same input prepares its model in < 1 s",
            second["timings_seconds"].get("prepare model", 0.0) if second else None,
            1.0,
            "<",
            bool(second),
            "incremental second run (+10 % new images)" if second else "not run",
        )
    )
    return found


# ----------------------------------------------------------------------------------------------- rows


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


STAGE_ORDER = (
    "list",
    "read",
    "prepare model",
    "featurize",
    "PCA",
    "write results",
    "quality report",
    "identify files",
    "plots",
)
SHORT_STAGE = {
    "prepare model": "model",
    "write results": "results",
    "quality report": "quality",
    "identify files": "identify",
}


def _stages(timings: dict[str, float]) -> str:
    """Stage seconds in the job's order (the manifest's JSON may sort them), short names."""
    names = [n for n in STAGE_ORDER if n in timings] + sorted(set(timings) - set(STAGE_ORDER))
    return ", ".join(f"{SHORT_STAGE.get(n, n)} {timings[n]:.1f}" for n in names)


def _background(seconds: dict[str, float] | None) -> str:
    """ "; beside them: plots 0.5, ...": work the stages did not wait for (in the wall time, not the sum)."""
    if not seconds:
        return ""
    return "; beside them: " + ", ".join(f"{SHORT_STAGE.get(n, n)} {v:.1f}" for n, v in seconds.items())


def others_note(entry: dict) -> str:
    """ "; others N% of the CPUs": what the rest of the machine used during a measurement (procwatch)."""
    share = entry.get("others_share")
    return "" if share is None else f"; others used {share:.0%} of the CPUs"


def model_file_note(run: dict, files: dict) -> str:
    """Whether the job's workers ran the file the limit and the alternatives ran (same sha256 in its name)."""
    expected = files.get(run["engine"], {}).get("sha256")
    seen = [Path(f).name for f in run.get("model_files", [])]
    if RUNTIMES.get(run["engine"]) != "litert" or not expected:
        return ""
    if seen and all(f.endswith(f"-{expected[:16]}.tflite") for f in seen):
        return "; workers ran the limit's model file"
    return f"; MODEL FILE DIFFERS from the limit's: {', '.join(seen) or 'none seen'}"


def _job_rows(
    section: str, run: dict, limit: float | None, label: str = "", files: dict | None = None
) -> list[tuple]:
    n = run["n"]
    memory = run["memory"]
    prefix = f"{run['engine']} {label}".strip()
    featurize = featurize_rate(run)
    e2e = end_to_end_rate(run)
    process = run["featurized"] / run["wall_seconds"]
    return [
        (
            section,
            f"{prefix}: featurize stage",
            n,
            _num(run["timings_seconds"].get("featurize"), 1),
            _num(featurize),
            _num(ratio(featurize, limit), 2),
            f"workers {run.get('worker_images_per_cpu_second', '')} img per CPU-s"
            + (f"; x its own limit ({run['engine']})" if run["engine"] in CALIBRATED else ""),
        ),
        (
            section,
            f"{prefix}: end to end (stage sum)",
            n,
            _num(sum(run["timings_seconds"].values()), 1),
            _num(e2e),
            _num(ratio(e2e, limit), 2),
            f"stages s: {_stages(run['timings_seconds'])}" + _background(run.get("background_seconds")),
        ),
        (
            section,
            f"{prefix}: process wall",
            n,
            _num(run["wall_seconds"], 1),
            _num(process),
            _num(ratio(process, limit), 2),
            f"start-up + teardown {overhead_seconds(run):.1f} s; peak MiB driver JVM {memory['jvm_mib']}, "
            f"driver Python {memory['root_mib']}, worker {memory['spark_worker_mib']}, tree {memory['tree_peak_rss_mib']}; "
            f"k {run['k']}; load {run['load_before']:.1f}"
            + model_file_note(run, files or {})
            + others_note(run),
        ),
    ]


def rows(report: dict) -> list[tuple]:
    """Every measurement of ``report`` as rows of :data:`COLUMNS`."""
    limit = limit_rate(report)
    out: list[tuple] = []
    measured = report.get("limit")
    if measured:
        for engine, found in measured["engines"].items():
            for name, shape in found["shapes"].items():
                mark = "; best of the engine" if name == found["best_shape"] else ""
                out.append(
                    (
                        "limit",
                        f"{engine}: {name}",
                        measured["images"],
                        "",
                        _num(shape["best"]),
                        _num(ratio(shape["best"], limit), 2),
                        f"median {shape['median']:.0f}, {shape['per_cpu_second']:.0f} img per CPU-s{mark}"
                        + others_note(shape),
                    )
                )
        out.append(
            (
                "limit",
                "machine limit (best float engine, best shape)",
                "",
                "",
                _num(limit),
                "1.00",
                f"load {measured['load_before']:.1f} before, {measured['load_after']:.1f} after",
            )
        )
    decode = report.get("decode")
    if decode:
        out.append(
            (
                "decode",
                f"decode to {decode['decode_size']} px, 1 core",
                decode["images"],
                "",
                _num(decode["per_core"]["best"]),
                "",
                "fruits.decoding.decode_image",
            )
        )
        out.append(
            (
                "decode",
                f"decode + resize to {decode['image_size']} px, 1 core",
                decode["images"],
                "",
                _num(decode["resize_per_core"]["best"]),
                "",
                "for reference: the model resizes in its graph",
            )
        )
    for run in report.get("jobs", []):
        label = (
            ""
            if (run["model"], run["alpha"]) == (report["model"], report["alpha"])
            else f"{run['model']} {run['alpha']}"
        )
        out += _job_rows("job", run, run_limit(report, run["engine"]), label, report.get("model_files"))
    ratios = {r["n"]: r for r in wall_ratios(report)}
    for section in report.get("alternatives", []):
        for run in section["runs"]:
            title = {"pool": "multiprocessing.Pool script: wall", "ray": "Ray Data actor pool: wall"}[
                run["name"]
            ]
            if run.get("skipped") or run.get("error"):
                out.append(
                    (
                        "alternative",
                        title,
                        section["n"],
                        "",
                        "",
                        "",
                        f"skipped: {run['skipped']}" if run.get("skipped") else f"FAILED: {run['error']}",
                    )
                )
                continue
            equal = run["equal_outputs"]
            verdict = (
                f"outputs equal to the job's (k {equal['k']}, max deviation {equal['max_relative_deviation']:.1e} of "
                f"column scale, {equal['max_deviation_over_tolerance']:.2f} x tolerance)"
                if equal["equal"]
                else f"OUTPUTS DIFFER: {equal.get('why') or 'components ' + str(equal['failing_components'])}"
            )
            measured = ratios.get(section["n"], {})
            wall = measured.get(f"job_over_{run['name']}")
            room = ""
            if run["name"] == "pool":
                if "pair" in run:
                    numbers: dict = pair_numbers(run)
                    title = f"{title} (pair {run['pair']['index']}: right after a job run)"
                    wall = numbers["job_over_pool"]
                else:
                    numbers = measured
                if "room_for_own_stages_seconds" in numbers:
                    room = (
                        f" (the job without its stages after featurize: {numbers['floor_over_pool']:.2f}; the "
                        f"{POOL_TARGET:.2f} x target leaves {max(numbers['room_for_own_stages_seconds'], 0.0):.1f} s "
                        f"for them, they took {numbers['own_stage_seconds']:.1f} s)"
                    )
            model = (
                "same model file as the job"
                if section["same_model_file"]
                else "MODEL FILE NOT CHECKED/DIFFERENT"
            )
            out.append(
                (
                    "alternative",
                    title,
                    section["n"],
                    _num(run["wall_seconds"], 1),
                    _num(run["images_per_s"]),
                    _num(ratio(run["images_per_s"], limit), 2),
                    f"job wall / this = {_num(wall, 2)}{room}; {verdict}; {model}; peak MiB tree "
                    f"{run['memory']['tree_peak_rss_mib']}; load {run['load_before']:.1f}" + others_note(run),
                )
            )
    incremental = report.get("incremental")
    if incremental:
        for run in incremental["runs"]:
            counts = run["counts"]
            out.append(
                (
                    "incremental",
                    f"{run['run']} run: end to end (stage sum)",
                    counts["found"],
                    _num(run["stage_sum_seconds"], 1),
                    "",
                    "",
                    f"newly featurized {counts['newly_featurized']}, reused {counts['reused']}; "
                    f"featurize {run['timings_seconds'].get('featurize', 0):.1f} s, "
                    f"prepare model {run['timings_seconds'].get('prepare model', 0):.1f} s"
                    + others_note(run),
                )
            )
        out.append(
            (
                "incremental",
                "second run's work / first's",
                "",
                "",
                "",
                "",
                f"{incremental['work_ratio']:.1%} of the images; featurize stage time {incremental['featurize_time_ratio']:.1%}",
            )
        )
    pca = report.get("pca")
    if pca:
        for case in pca["result"]:
            out.append(
                (
                    "pca",
                    f"fruits.reduce fit + project, width {case['width']}",
                    case["n"],
                    _num(case["seconds"], 1),
                    "",
                    "",
                    f"fit {case['fit_seconds']:.1f} s, k {case['k']}",
                )
            )
    naive = report.get("naive")
    if naive:
        result = naive["result"]
        best = max((featurize_rate(r) or 0 for r in litert_runs(report)), default=0)
        out.append(
            (
                "naive",
                "Keras rebuilt per batch, paths one by one",
                result["n"],
                _num(result["seconds"], 1),
                _num(result["images_per_s"], 1),
                _num(ratio(result["images_per_s"], limit), 2),
                f"the job's featurize stage is {best / result['images_per_s']:.1f}x faster" if best else "",
            )
        )
    for run in report.get("realdata", []):
        out += _job_rows(
            "real data",
            run,
            run_limit(report, run["engine"]),
            Path(run["input"]).name,
            report.get("model_files"),
        )
    for target in targets(report):
        value = target.shown
        out.append(
            (
                "target",
                target.name,
                "",
                "",
                "",
                "",
                f"{target.status} {value} ({target.where})".replace("  ", " "),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- rendering


def heading(report: dict) -> str:
    m = report["machine"]
    # older reports have no "simd"
    simd = f" ({' '.join(m['simd']) or 'no int8-relevant SIMD'})" if "simd" in m else ""
    return (
        f"machine: {m['cpu']}{simd}, {m['cores']} cores, {m['memory_gib']} GiB; code {report.get('commit', '?')}; "
        f"model {report['model']} {report['alpha']} image {report['image_size']} decode {report['decode_size']} "
        f"batch {report['batch_size']} weights {report['weights']}; {report.get('started', '')}"
    )


def text_table(report: dict) -> str:
    """The table for a terminal: fixed-width columns, the notes last."""
    body = [tuple(str(c) for c in row) for row in rows(report)]
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS) - 1)]
    right = {2, 3, 4, 5}

    def line(row: Iterable[str]) -> str:
        cells = list(row)
        return (
            "  ".join(
                (c.rjust(widths[i]) if i in right else c.ljust(widths[i])) for i, c in enumerate(cells[:-1])
            )
            + "  "
            + cells[-1]
        )

    return "\n".join([heading(report), "", line(COLUMNS), *(line(r) for r in body)])


def markdown_table(report: dict) -> str:
    """The same rows as a Markdown table, for docs/benchmark.md."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = [
        heading(report),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * len(COLUMNS)) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows(report)]
    return "\n".join(lines)

"""Task sources: the embedded generated suite, user JSONL files, and local Hugging Face datasets.

Split rule (the same for every source): a problem belongs to the calibration split or to the
evaluation split, never both. The embedded suite reserves the first ``calib_reserve(family)``
unique problems of each family's stream for calibration; file sources assign each problem by a hash of
its question (1 in 4 to calibration). ``check_disjoint`` verifies the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

from ..errors import TaskError
from .base import Problem
from .families import CALIB_RESERVE_BY_FAMILY, FAMILIES

CALIB_RESERVE = 256  # per family: stream positions [0, 256) calibrate, [256, ...) evaluate
SPLITS = ("calib", "eval")


def calib_reserve(family: str) -> int:
    return CALIB_RESERVE_BY_FAMILY.get(family, CALIB_RESERVE)


def _family_stream(family: str, seed: int, count: int, partial: bool = False) -> list[Problem]:
    """The first ``count`` unique problems of a family's deterministic stream (``partial``: as many as its
    generator gives, where its pool holds fewer)."""
    gen = FAMILIES[family]
    rng = random.Random(f"cap-edge:{family}:{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            if partial:
                return out
            raise TaskError(f"family {family!r} cannot produce {count} unique problems (its generator gave {len(out)}); ask for fewer")
        difficulty = len(out) % 3 + 1
        q, a, choices = gen(rng, difficulty)
        if q in seen:
            continue
        seen.add(q)
        out.append(Problem(f"{family}-{seed}-{len(out)}", family, q, a, choices, difficulty))
    return out


def embedded(families: list[str] | None, split: str, n_per_family: int, seed: int = 0) -> list[Problem]:
    if split not in SPLITS:
        raise TaskError(f"split must be one of {SPLITS}; got {split!r}")
    families = families or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise TaskError(f"unknown embedded family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    if n_per_family <= 0:
        raise TaskError(f"expected a positive number of problems per family, got {n_per_family}")
    out = []
    for fam in families:
        reserve = calib_reserve(fam)
        if split == "calib":
            if n_per_family > reserve:
                raise TaskError(f"the embedded calibration split of {fam!r} holds {reserve} problems; asked for {n_per_family}")
            out += _family_stream(fam, seed, n_per_family)
        else:
            out += _family_stream(fam, seed, reserve + n_per_family)[reserve:]
    return out


def evaluation_tail(family: str, start: int, count: int) -> list[Problem]:
    """Up to ``count`` evaluation problems of an embedded family from position ``start`` of its evaluation
    stream on (fewer where the family's pool ends first): problems past the pools a benchmark evaluates on."""
    reserve = calib_reserve(family)
    return _family_stream(family, 0, reserve + start + count, partial=True)[reserve + start:]


def _hash_split(problem: Problem) -> str:
    return "calib" if int(hashlib.sha1(problem.key.encode()).hexdigest()[:8], 16) % 4 == 0 else "eval"


def read_jsonl(path: str | os.PathLike) -> list[Problem]:
    """Schema, one JSON object per line::

        {"question": str, "answer": str, "choices": [str, ...] (optional),
         "id": str (optional), "family": str (optional), "difficulty": int (optional)}
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file not found: {path}")
    out = []
    allowed = {"question", "answer", "choices", "id", "family", "difficulty"}
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskError(f"{path}:{i}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from e
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise TaskError(f"{path}:{i}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise TaskError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        extra = set(row) - allowed
        if extra:
            raise TaskError(f"{path}:{i}: unknown key {sorted(extra)[0]!r}; allowed: {sorted(allowed)}")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise TaskError(f"{path}:{i}: expected a string {key!r}, got {type(row.get(key)).__name__}")
        choices = row.get("choices")
        if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise TaskError(f"{path}:{i}: expected 'choices' to be a list of strings")
        if not isinstance(row.get("difficulty", 1), int) or isinstance(row.get("difficulty", 1), bool):
            raise TaskError(f"{path}:{i}: expected an integer 'difficulty', got {row['difficulty']!r}")
        try:
            out.append(Problem(str(row.get("id", f"{path.stem}-{i}")), str(row.get("family", path.stem)),
                               row["question"], row["answer"], tuple(choices) if choices else None,
                               int(row.get("difficulty", 1))))
        except TaskError as e:
            raise TaskError(f"{path}:{i}: {e}") from e
    if not out:
        raise TaskError(f"task file {path} holds no problems")
    return out


# --- Hugging Face datasets in known schemas, from a local path only (offline, never a hang) ---

def _gsm8k(row) -> tuple[str, str, None]:
    m = re.search(r"####\s*(-?[\d,\.]+)", row["answer"])
    if not m:
        raise TaskError(f"GSM8K row without a '#### number' answer: {row['answer'][-60:]!r}")
    return row["question"], m.group(1).replace(",", ""), None


def _arc(row):
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    return row["question"], texts[labels.index(row["answerKey"])], tuple(texts)


def _strategyqa(row):
    ans = row["answer"]
    if isinstance(ans, str):
        ans = ans.strip().lower() in ("true", "yes")
    return row["question"], "Yes" if ans else "No", ("Yes", "No")


HF_SCHEMAS = {"gsm8k": _gsm8k, "arc": _arc, "strategyqa": _strategyqa}


def read_hf(schema: str, path: str, split: str | None = None) -> list[Problem]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = Path(path)
    if not p.exists():
        raise TaskError(f"{schema}: no local dataset at {path} (datasets are read offline from a local path or cache)")
    try:
        import datasets
    except ImportError:
        raise TaskError("Hugging Face datasets support needs the 'datasets' package: pip install 'cap-edge[hf]'") from None
    try:
        ds = datasets.load_from_disk(str(p)) if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() \
            else datasets.load_dataset(str(p))
    except Exception as e:
        raise TaskError(f"{schema}: could not read the dataset at {path}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        split = split or ("test" if "test" in ds else names[0])
        ds = ds[split]
    conv = HF_SCHEMAS[schema]
    out = []
    for i, row in enumerate(ds):
        try:
            q, a, choices = conv(row)
        except KeyError as e:
            raise TaskError(f"{schema}: row {i} lacks field {e}; is {path} really {schema}?") from e
        out.append(Problem(f"{schema}-{i}", schema, q, a, choices))
    if not out:
        raise TaskError(f"{schema}: the dataset at {path} is empty")
    return out


def load_split(spec: str, split: str, limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Problems of one split from a task spec.

    Specs: ``embedded`` | ``embedded:FAMILY[,FAMILY...]`` | ``PATH.jsonl`` | ``jsonl:PATH`` |
    ``gsm8k:PATH`` | ``arc:PATH`` | ``strategyqa:PATH``. For ``embedded``, ``limit`` counts per
    family; for the others it caps the total.
    """
    if split not in SPLITS:
        raise TaskError(f"split must be one of {SPLITS}; got {split!r}")
    if not spec or not spec.strip():
        raise TaskError("empty task spec; expected e.g. 'embedded' or a .jsonl path")
    if limit is not None and limit <= 0:
        raise TaskError(f"expected a positive limit, got {limit}")
    kind, _, arg = spec.partition(":")
    if kind == "embedded":
        fams = [f for f in arg.split(",") if f] if arg else None
        return embedded(fams, split, limit or (64 if split == "calib" else 100), seed)
    if kind == "jsonl" or spec.endswith(".jsonl"):
        problems = read_jsonl(arg if kind == "jsonl" else spec)
    elif kind in HF_SCHEMAS:
        if not arg:
            raise TaskError(f"{kind}: expected {kind}:PATH to a local dataset")
        problems = read_hf(kind, arg)
    else:
        raise TaskError(
            f"unknown task spec {spec!r}; expected embedded[:families], PATH.jsonl, jsonl:PATH, "
            "gsm8k:PATH, arc:PATH or strategyqa:PATH"
        )
    chosen = [p for p in problems if _hash_split(p) == split]
    if not chosen:
        raise TaskError(f"{spec}: the {split} split is empty ({len(problems)} problems in all; 1 in 4 goes to calibration)")
    return chosen[:limit] if limit else chosen


def interleave(problems: list[Problem]) -> list[Problem]:
    """Round-robin over families (alphabetical; stable within each), so any prefix and every calibration subset
    covers all families."""
    by_fam: dict[str, list[Problem]] = {}
    for p in problems:
        by_fam.setdefault(p.family, []).append(p)
    out, i = [], 0
    while len(out) < len(problems):
        for _, fam in sorted(by_fam.items()):
            if i < len(fam):
                out.append(fam[i])
        i += 1
    return out


def calibration_problems(spec: str, n: int, seed: int = 0, draw: int = 0) -> list[Problem]:
    """``n`` calibration problems in all, families interleaved. ``draw`` > 0 takes another subset of
    the same calibration split (each family's calibration problems shuffled by the draw), so
    repeated draws stay disjoint from the evaluation split."""
    if n <= 0:
        raise TaskError(f"the calibration set is empty: expected a positive number of problems, got {n}")
    kind, _, arg = spec.partition(":")
    if kind == "embedded":
        fams = [f for f in arg.split(",") if f] if arg else list(FAMILIES)
        per = -(-n // len(fams))
        if draw == 0:
            return interleave(load_split(spec, "calib", per, seed))[:n]
        pool = []
        for fam in fams:
            whole = embedded([fam], "calib", calib_reserve(fam), seed)
            random.Random(f"cap-edge:draw:{draw}:{fam}").shuffle(whole)
            pool += whole[:per]
        return interleave(pool)[:n]
    problems = load_split(spec, "calib", None, seed)
    if draw:
        random.Random(f"cap-edge:draw:{draw}").shuffle(problems)
    return interleave(problems)[:n]

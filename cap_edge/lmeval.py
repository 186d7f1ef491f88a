"""lm-evaluation-harness on cap-edge outputs: the standard way to run standard benchmarks on a
pruned directory. ``write_task`` writes a local multiple-choice task (JSONL + YAML, absolute
paths) from any cap-edge task spec; lm-eval's Hugging Face model class then evaluates a pruned dir
(structured ones through their ``trust_remote_code`` modeling file, or a model object from
``cap_edge.load_pretrained``)::

    lm_eval --model hf --model_args pretrained=runs/cap50 --include_path TASKDIR --tasks cap_edge_knowledge
    lm_eval --model hf --model_args pretrained=runs/st20,trust_remote_code=True --include_path TASKDIR --tasks ...

The task's prompt is the plain "Question: ...\\nAnswer:" format with a space before the choice, so
for a model without a chat template lm-eval's ``acc_norm`` equals ``cap-edge eval``'s (tested).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import TaskError
from .tasks import load_split

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_task(out_dir: str | Path, spec: str = "embedded:animals,geography,opposites", limit: int | None = 20,
               name: str = "cap_edge_knowledge") -> tuple[Path, str]:
    """(include_path, task name) of a local lm-eval task holding the evaluation split of ``spec``."""
    problems = load_split(spec, "eval", limit)
    if any(p.choices is None for p in problems):
        raise TaskError(f"{spec}: lm-eval multiple-choice tasks need choices on every problem")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "question": p.question, "choices": list(p.choices), "gold": p.gold}) + "\n"
                            for p in problems))
    (out / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=json.dumps(str(data))))
    return out, name


def run(model, tokenizer, include_path: str | Path, task: str, batch_size: int = 8) -> dict:
    """lm-eval's HF model class around ``model`` (a directory path or a loaded PyTorch model) on one
    local task; returns lm-eval's results entry for the task (acc, acc_norm, stderr, samples)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(include_path)),
                          log_samples=True, verbosity="ERROR")
    return {"results": res["results"][task], "samples": res["samples"][task]}

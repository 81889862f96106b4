"""The same SFT -> DPO through ldreg's trainer and through TRL's, probed alike, side by side.

    python -m ldreg.integrations.trl_comparison [--home DIR]

Both start from one tiny model built from config and train on the same 24 Anthropic-HH pairs
(experiments/data/smoke.jsonl) with the same optimiser (AdamW, constant lr, no warmup), batch size,
epochs, clipping and beta, fp32; both probe the same probing set with ldreg's engine. The table is
the mean change of log pi (summed nats) per response type over each stage; docs/trl.md explains
where the two trainers still differ.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "experiments" / "data" / "smoke.jsonl"
TYPES = ["chosen", "rejected", "chosen_permuted", "random_sentence"]
LR, EPOCHS, BATCH, BETA, CLIP, SEED = {"sft": 1e-3, "dpo": 1e-4}, 2, 4, 0.1, 10.0, 0
PROBING = {"every": 8, "response_types": TYPES, "sets": [{"name": "train", "source": "train", "n": 8}],
           "share_prompts": True}
LIMIT, PROMPT_LIMIT = 1024, 768  # tokens: no row of the data is truncated on either side


def ldreg_run(model_path: str) -> int:
    from ldreg.runner import run_experiment
    from ldreg.spec import parse

    stages = [{"loss": loss, "epochs": EPOCHS, "lr": LR[loss], "optimizer": "adamw", "batch_size": BATCH,
               "max_grad_norm": CLIP, **({"params": {"beta": BETA}} if loss == "dpo" else {})}
              for loss in ("sft", "dpo")]
    spec = parse({"name": "compare-ldreg", "seed": SEED, "backend": "cpu",
                  "model": {"base": model_path, "dtype": "float32", "reference_dtype": "float32"},
                  "data": {"source": str(DATA), "test_fraction": 0.0, "max_length": LIMIT,
                           "max_prompt_length": PROMPT_LIMIT},
                  "probing": PROBING, "stages": stages, "checkpoint_every": 0})
    return run_experiment(spec, progress=False).run_id


def trl_run(model_path: str, out: Path, reference: str) -> int:
    """SFTTrainer then DPOTrainer on one model; ``reference``: ``sft`` passes a frozen copy of the SFT model as
    ``ref_model`` (ldreg's ``stage_start``); ``default`` omits it, and TRL loads the model's path: the base."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ldreg.integrations.trl import LdregCallback
    from ldreg.models import load_model, load_tokenizer

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    model, tokenizer = load_model(model_path), load_tokenizer(model_path)
    callback = LdregCallback(rows, probing=PROBING, name=f"compare-trl-{reference}", seed=SEED, stages=["sft", "dpo"],
                             max_length=LIMIT, max_prompt_length=PROMPT_LIMIT)
    common = dict(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS, optim="adamw_torch",
                  lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=CLIP, bf16=False, use_cpu=True,
                  report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=SEED, max_length=LIMIT)
    sft_rows = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    SFTTrainer(model=model, args=SFTConfig(learning_rate=LR["sft"], **common), train_dataset=sft_rows,
               processing_class=tokenizer, callbacks=[callback]).train()
    ref_model = copy.deepcopy(model).eval() if reference == "sft" else None
    DPOTrainer(model=model, ref_model=ref_model, args=DPOConfig(learning_rate=LR["dpo"], beta=BETA, **common),
               train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[callback]).train()
    return callback.run.run_id


def stage_changes(run_id: int) -> dict[tuple[int, str], float]:
    """Per (stage, type): the mean over probe examples of log pi at the stage's last probe minus its first."""
    import numpy as np

    from ldreg.store.collections import OBSERVATIONS
    from ldreg.store.connection import connect

    docs = list(connect()[OBSERVATIONS].find({"run_id": run_id, "kind": "probe"}))
    out = {}
    for stage in sorted({d["stage_index"] for d in docs}):
        for rtype in TYPES:
            mine = sorted((d for d in docs if d["stage_index"] == stage and d["response_type"] == rtype),
                          key=lambda d: d["step"])
            first, last = (np.array(mine[i]["values"]["logp_sum"]) for i in (0, -1))
            out[(stage, rtype)] = float(np.mean(last - first))
    return out


def probe_ids(run_id: int) -> list[int]:
    from ldreg.store.collections import OBSERVATIONS
    from ldreg.store.connection import connect

    return connect()[OBSERVATIONS].find_one({"run_id": run_id, "kind": "probe"})["example_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LDREG_HOME for the runs (default: a new temporary folder)")
    home = parser.parse_args().home or tempfile.mkdtemp(prefix="ldreg-trl-compare-")
    os.environ["LDREG_HOME"] = home
    from ldreg import testing

    model_path = str(testing.tiny_model().path)
    ids = [ldreg_run(model_path)] + [trl_run(model_path, Path(home) / f"trl-{r}", r) for r in ("sft", "default")]
    a, b, c = (stage_changes(i) for i in ids)
    print(f"\nruns in {home}: ldreg #{ids[0]}, TRL #{ids[1]} (ref_model: the SFT model), TRL #{ids[2]} (ref_model "
          f"omitted); probe examples the same in all: {len({tuple(probe_ids(i)) for i in ids}) == 1}")
    print("mean change of log pi(y|x) over the stage's probes (summed nats, 8 probe examples)\n")
    print("| stage | response type | ldreg's trainer | TRL, ref = SFT model | TRL, ref_model omitted |")
    print("|---|---|---|---|---|")
    for (stage, rtype) in a:
        row = " | ".join(f"{x.get((stage, rtype), float('nan')):+.2f}" for x in (a, b, c))
        print(f"| {['SFT', 'DPO'][stage]} | {rtype} | {row} |")


if __name__ == "__main__":
    main()

"""Starting from a checkpoint (checkpoint.load_dir) continues the run: 2 steps + resume 2 more
equals 4 steps straight (losses and eval loss, read from metrics.jsonl)."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env
from tests.distributed.runs import losses, metrics, train, train_args


OCR_STAGE0 = ["model.ocr_head.enabled=true", "train.objective=ocr", "train.ocr_head_eval_chunks=8",
              "parallel.micro_batch_size=4", "parallel.global_batch_size=8"]


@pytest.mark.parametrize("extra", [[], ["model.llm.hidden_dropout=0.1", "model.llm.attention_dropout=0.1"],
                                   ["model.context=text"], OCR_STAGE0,
                                   ["model.ocr_head.enabled=true", "train.ocr_head_eval_chunks=8"]],
                         ids=["no-dropout", "dropout", "text-control", "ocr-stage0", "ocr-head-aux"])
def test_resume_continues_exactly(tiny_data, tmp_path, extra):
    """With dropout the masks after the resume come from the restored random states; the text
    control (no vision parameters) resumes as the model does; stage 0 (the front alone with the
    OCR head, on rendered chunks) and the OCR head's auxiliary loss resume exactly too (the
    head's weights and optimizer state are in the checkpoint; eval/loss is then the head's)."""
    train(tiny_data, tmp_path / "straight", "train.steps=4", *extra)
    train(tiny_data, tmp_path / "split", "train.steps=2", *extra)
    train(tiny_data, tmp_path / "split", "train.steps=4", f"checkpoint.load_dir={tmp_path / 'split' / 'ckpt'}",
          *extra)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert b[3] == a[3] and b[4] == a[4]
    if "model.ocr_head.enabled=true" in extra:
        def front(out):
            return [e["eval/front_char_accuracy"] for e in metrics(out) if e["step"] == 4 and "eval/front_loss" in e] + \
                [e["train/ocr_loss"] for e in metrics(out) if e["step"] == 4 and "train/ocr_loss" in e]
        assert len(front(tmp_path / "straight")) == 2 and front(tmp_path / "straight") == front(tmp_path / "split")
    assert [e["eval/loss"] for e in metrics(tmp_path / "straight") if e["step"] == 4 and "eval/loss" in e] == \
        [e["eval/loss"] for e in metrics(tmp_path / "split") if e["step"] == 4 and "eval/loss" in e]


def test_sigterm_saves_exits_zero_and_resumes(tiny_data, tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    args = [sys.executable, "-m", "megatron_vist2.train", *train_args(tiny_data, out, "train.steps=10000")]
    proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log_file = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log_file.exists() and "train/loss" in log_file.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM received: saving at step" in stdout
    tag = (out / "ckpt" / "latest").read_text().strip()
    stopped_at = int(tag.split("_")[1])
    assert 1 <= stopped_at < 10000
    train(tiny_data, out, f"train.steps={stopped_at + 2}", f"checkpoint.load_dir={out / 'ckpt'}")
    assert max(losses(out)) == stopped_at + 2
    consumed = [e["train/consumed_samples"] for e in metrics(out) if "train/consumed_samples" in e]
    assert consumed[-1] == (stopped_at + 2) * 16         # continued from the saved consumed_samples


def test_pipeline_layout_trains_and_resumes_through_the_entry_point(tiny_data, tmp_path):
    """torchrun + launch.sh with parallel.pipeline_parallel=2 (ZeRO-1, 4 micro-batches per step):
    the losses equal the data-parallel run's on the same global batches, and 2 steps + resume 2
    more continue it exactly (each stage reloads its own part)."""
    import numpy as np

    def launch(out, *extra):
        train(tiny_data, out, "parallel.micro_batch_size=4", *extra, ranks=2)
        return losses(out)

    data_parallel = launch(tmp_path / "dp", "train.steps=4")
    launch(tmp_path / "pp", "train.steps=2", "parallel.pipeline_parallel=2")
    assert sorted((tmp_path / "pp" / "ckpt" / "step_0000002").glob("stage_*")) == \
        [tmp_path / "pp" / "ckpt" / "step_0000002" / f"stage_0{s}" for s in (0, 1)]
    pipeline = launch(tmp_path / "pp", "train.steps=4", "parallel.pipeline_parallel=2",
                      f"checkpoint.load_dir={tmp_path / 'pp' / 'ckpt'}")
    assert sorted(pipeline) == [1, 2, 3, 4]
    np.testing.assert_allclose([pipeline[s] for s in range(1, 5)], [data_parallel[s] for s in range(1, 5)],
                               rtol=0, atol=1e-5)

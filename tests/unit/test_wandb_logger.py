"""The Weights & Biases logger (logging.wandb) in offline mode, without a network: the scalars the
trainer logs land in the offline run's records (read back with a reader of the file format written
here, not with the logger), the same values as metrics.jsonl; a config that asks for it without
the package installed is refused by name."""
import glob
import json
import struct
import sys
import time

import pytest

from megatron_vist2.config import load_config, validate
from megatron_vist2.errors import ConfigError
from megatron_vist2.training.logger import MetricsLogger, wandb_settings
from tests.conftest import tiny_overrides


def offline_records(run_file: str) -> list:
    """The records of a W&B offline run file: a LevelDB-style log (7-byte file header, 32 KiB
    blocks, records of crc32 / length / type) of protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2
    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:                      # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):                               # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            records.append(rec)
    return records


def offline_history(run_file: str) -> list:
    """The history rows of an offline run, once its last record (exit) is written: wandb's
    finish() can return while its writer process still flushes."""
    deadline = time.time() + 60
    while True:
        records = offline_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
            break
        time.sleep(0.5)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_offline_run_holds_the_logged_scalars(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = validate(load_config("tiny-cpu", tiny_overrides(tiny_data, "logging.wandb=true", f"logging.dir={tmp_path}",
                                                          "logging.wandb_name=unit")))
    settings = wandb_settings(cfg)
    assert settings["mode"] == "offline" and settings["dir"] == str(tmp_path / "wandb_dir")
    log = MetricsLogger(str(tmp_path), True, False, settings)
    log.log(1, {"train/loss": 2.5, "train/lr": 1e-3})
    log.log(2, {"train/loss": 2.25, "eval/loss": 3.0})
    log.close()
    runs = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    rows = {r["_step"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in offline_history(runs[0])}
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == {e["step"]: {k: v for k, v in e.items() if k not in ("step", "time")} for e in jsonl}
    assert rows[2] == {"train/loss": 2.25, "eval/loss": 3.0}


def test_chosen_but_not_installed_is_refused_by_name(tiny_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)       # as if not installed
    with pytest.raises(ConfigError, match=r"logging.wandb is true but the wandb package is not installed.*"
                                          r"megatron_vist2\[wandb\]"):
        validate(load_config("tiny-cpu", tiny_overrides(tiny_data, "logging.wandb=true")))
    assert wandb_settings(load_config("tiny-cpu", tiny_overrides(tiny_data))) is None

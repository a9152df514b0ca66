"""The pipeline's own workdir files go through one path layer (`reasoner.io`, etils.epath), so a
gs:// workdir is a bucket, not a local `gs:` folder. A fake object store stands in for GCS here:
epath's `gs://` backend is swapped for one that maps gs://BUCKET/... onto a local folder."""

import json
import os

import pytest
from etils.epath import backend as backend_lib
from etils.epath import gpath

from configs.pipeline import tiny_smoke


class _FakeGCS(backend_lib.Backend):
  """Every gs://bucket/key is ROOT/bucket/key; anything else is refused (never the local disk)."""

  def __init__(self, root: str):
    self.root = root
    self.calls = 0

  def _local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith("gs://"):
      raise AssertionError(f"not a gs:// path: {path}")
    self.calls += 1
    return os.path.join(self.root, path[len("gs://"):])

  def open(self, path, mode):
    return backend_lib.os_backend.open(self._local(path), mode)

  def exists(self, path):
    return backend_lib.os_backend.exists(self._local(path))

  def isdir(self, path):
    return backend_lib.os_backend.isdir(self._local(path))

  def listdir(self, path):
    return backend_lib.os_backend.listdir(self._local(path))

  def glob(self, path):
    prefix = self.root.rstrip("/") + "/"
    return ["gs://" + p[len(prefix):] for p in backend_lib.os_backend.glob(self._local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    prefix = self.root.rstrip("/") + "/"
    for root, dirs, files in backend_lib.os_backend.walk(self._local(top), top_down=top_down,
                                                         on_error=on_error):
      yield "gs://" + root[len(prefix):], dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777):
    return backend_lib.os_backend.makedirs(self._local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777):
    return backend_lib.os_backend.mkdir(self._local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return backend_lib.os_backend.rmtree(self._local(path))

  def remove(self, path):
    return backend_lib.os_backend.remove(self._local(path))

  def rename(self, path, dst):
    return backend_lib.os_backend.rename(self._local(path), self._local(dst))

  def replace(self, path, dst):
    return backend_lib.os_backend.replace(self._local(path), self._local(dst))

  def copy(self, path, dst, *, overwrite=False):
    return backend_lib.os_backend.copy(self._local(path), self._local(dst), overwrite=overwrite)

  def stat(self, path):
    return backend_lib.os_backend.stat(self._local(path))


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  fake = _FakeGCS(str(tmp_path / "bucket-root"))
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fake)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.chdir(tmp_path)  # a stray local `gs:` folder would appear here
  return fake


def test_pipeline_files_on_a_bucket(fake_gcs, tmp_path):
  from reasoner.io import MetricsWriter, read_json
  from reasoner.pipeline import report as report_lib
  from reasoner.pipeline.fingerprint import check_fingerprint
  from reasoner.pipeline.run import build_tokenizer
  from reasoner.stages import StageContext, has_model

  workdir = "gs://runs/tiny"
  config = tiny_smoke()
  tokenizer = build_tokenizer(config, workdir)  # trains and saves; the rerun loads it
  assert build_tokenizer(config, workdir).encode("Compute 1+2.") == tokenizer.encode("Compute 1+2.")

  ctx = StageContext(config, workdir, None, None, tokenizer, None)
  assert ctx.stage_dir("sft") == "gs://runs/tiny/stages/sft"
  assert not has_model(ctx, "sft")
  check_fingerprint(config, "sft", ctx.stage_dir("sft"))
  config.sft.steps += 1
  with pytest.raises(ValueError, match="sft.steps"):
    check_fingerprint(config, "sft", ctx.stage_dir("sft"))

  writer = MetricsWriter(workdir)  # appends by rewriting the object
  for step in (1, 2):
    writer.write("sft", step, {"loss": 1.0 / step})
  assert [r["loss"] for r in MetricsWriter(workdir).read("sft")] == [1.0, 0.5]
  report_lib.write_report(f"{workdir}/report.json", {"sft": {"pass@1": 0.5}}, {"seed": 0})
  assert report_lib.plot_curves(writer.read("sft"), ("loss",), f"{workdir}/sft_curves.png", "sft")

  root = tmp_path / "bucket-root" / "runs" / "tiny"
  assert json.load(open(root / "report.json"))["models"]["sft"]["pass@1"] == 0.5
  assert read_json(f"{workdir}/stages/sft/fingerprint.json")["sft.steps"] == config.sft.steps - 1
  for name in ("metrics.jsonl", "sft_curves.png", "tokenizer/tokenizer.model"):
    assert (root / name).exists(), name
  assert not (tmp_path / "gs:").exists()  # nothing went to a local `gs:` folder
  assert not list((tmp_path / "bucket-root").rglob("*.tmp"))

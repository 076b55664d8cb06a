"""Bad input through the real console scripts: one line naming the file or field, the documented
exit code (1 runtime, 2 usage; docs/errors.md), no traceback, nothing already processed lost.

The files are crafted once per module (bad_inputs.py) from the real writers and then damaged.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags not installed (pip install rosbags)")

import bad_inputs as bi  # noqa: E402

from mtl_perception.tools import harness  # noqa: E402

TINY = str(bi.TINY)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    f: dict = {"dir": d}
    f["mismatch_key"] = bi.mismatch_checkpoint(d / "mismatch.pt")
    f["nan_key"] = bi.nan_checkpoint(d / "nan.pt")
    f.update(bi.yaml_files(d))
    f["broken_params"] = bi.params_broken(d)
    f["other"] = bi.other_topics_bag(d / "other")
    f["yuv"] = bi.yuv_bag(d / "yuv")
    f["trunc"] = bi.truncated_sqlite(d / "trunc")
    f["malformed"] = bi.malformed_sqlite(d / "malformed")
    f["emptymcap"] = bi.empty_mcap(d / "emptymcap")
    f["badmeta"] = bi.bad_metadata(d / "badmeta")
    f["corrupt"], f["corrupt_chunks"] = bi.corrupt_mcap(d / "corrupt")
    f["nocrc"], _ = bi.corrupt_mcap(d / "nocrc", with_crc=False)
    return f


def run(cmd: list[str], domain_id: int = 0, timeout: float = 180) -> tuple[int, str, list[str]]:
    p = subprocess.run(cmd, env=harness.ros_env(domain_id), capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    return p.returncode, out, [line for line in out.splitlines() if line.strip()]


def assert_one_line(rc: int, out: str, lines: list[str], code: int, *needles: str) -> None:
    assert "Traceback" not in out, out[-3000:]
    assert rc == code, (rc, out[-3000:])
    assert len(lines) == 1, out[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])


# -- node start-up -----------------------------------------------------------------------------------
NODE_CASES = {
    # name: (params, params_file, exit code, needles (names of files in `files` are resolved))
    "ckpt_mismatch": ({"checkpoint": "mismatch.pt"}, None, 1,
                      ["mismatch.pt", "do not match its model_config", "'slow.project.0.weight'"]),
    "ckpt_nan": ({"checkpoint": "nan.pt"}, None, 1, ["nan.pt", "NaN or inf", "{nan_key}"]),
    "yaml_syntax": ({"model_config": "syntax.yaml"}, None, 1, ["syntax.yaml:3:14", "YAML syntax error"]),
    "yaml_unknown_top": ({"model_config": "unknown_top.yaml"}, None, 1, ["unknown_top.yaml", "'bogus_key'"]),
    "yaml_empty": ({"model_config": "empty.yaml"}, None, 1, ["empty.yaml", "empty"]),
    "device_bogus": ({"model_config": TINY, "device": "bogus"}, None, 1, ["parameter device", "'bogus'"]),
    "params_missing": ({"model_config": TINY}, "nope.yaml", 2,
                       ["--params-file", "nope.yaml", "no such file"]),
    "params_broken": ({"model_config": TINY}, "broken_params.yaml", 1,
                      ["--params-file", "broken_params.yaml:", "YAML syntax error"]),
}


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_node_refuses_bad_start_up_input(files: dict, domain_id: int, case: str) -> None:
    params, pfile, code, needles = NODE_CASES[case]
    d = files["dir"]
    params = {k: (str(d / v) if v.endswith((".pt", ".yaml")) and "/" not in v else v)
              for k, v in params.items()}
    cmd = harness.node_command(params, params_file=str(d / pfile) if pfile else None)
    rc, out, lines = run(cmd, domain_id, timeout=120)
    assert "ready:" not in out
    assert_one_line(rc, out, lines, code, *[n.format(**files) for n in needles])


def test_first_mismatching_key_is_the_projection(files: dict) -> None:
    # Independent check of the expectation above: widening feature_channels first changes the slow
    # encoder's 1x1 projection (the backbone does not depend on it).
    assert files["mismatch_key"] == "slow.project.0.weight"


# -- tools with a bad checkpoint ---------------------------------------------------------------------
@pytest.mark.parametrize("tool", ["mtl-eval", "mtl-perception-export"])
@pytest.mark.parametrize("ckpt", ["mismatch", "nan"])
def test_tools_refuse_bad_checkpoint(files: dict, tool: str, ckpt: str) -> None:
    d = files["dir"]
    path = str(d / f"{ckpt}.pt")
    args = ["--data", str(d)] if tool == "mtl-eval" else ["--cache-dir", str(d / "cache")]
    rc, out, lines = run([harness.console_script(tool), "--checkpoint", path, *args])
    assert_one_line(rc, out, lines, 1, f"{tool}: checkpoint {path!r}", files[f"{ckpt}_key"])
    assert not (d / "cache").exists() or not any((d / "cache").glob("*.onnx"))


# -- bag tools ---------------------------------------------------------------------------------------
def eval_bag(files: dict, bag: str, topic: str = bi.TOPIC, *extra: str) -> tuple[int, str, list[str], Path]:
    out_dir = files["dir"] / f"out_{bag}"
    cmd = [harness.console_script("mtl-perception-eval-bag"), str(files[bag]), "--topic", topic,
           "--out", str(out_dir), "--model-config", TINY, "--save", "none", "--output-resolution", "network",
           "--threads", "1", *extra]
    rc, out, lines = run(cmd)
    return rc, out, lines, out_dir


def replay(files: dict, bag: str, domain_id: int, topic: str = bi.TOPIC) -> tuple[int, str, list[str]]:
    cmd = [harness.console_script("mtl-perception-replay"), str(files[bag]), "--topic", topic,
           "--wait-subscriber", "0", "--rate", "1000"]
    rc, out, lines = run(cmd, domain_id)
    return rc, out, errors(lines)


def errors(lines: list[str]) -> list[str]:
    """Lines other than the UNTRAINED warning of a random-weight model and ROS INFO logs."""
    return [ln for ln in lines if "UNTRAINED" not in ln and not ln.startswith("[INFO]")]


UNREADABLE = {  # bag: needles of the one error line (the same for both tools)
    "trunc": ["cannot be opened", "trunc.db3", "malformed"],
    "emptymcap": ["cannot be opened", "emptymcap.mcap", "empty"],
    "badmeta": ["cannot be opened", "metadata.yaml"],
}


@pytest.mark.parametrize("bag", list(UNREADABLE))
def test_unreadable_bags_one_line(files: dict, domain_id: int, bag: str) -> None:
    rc, out, lines, _ = eval_bag(files, bag)
    assert_one_line(rc, out, errors(lines), 1, "mtl-perception-eval-bag: bag", *UNREADABLE[bag])
    rc, out, lines = replay(files, bag, domain_id)
    assert_one_line(rc, out, lines, 1, "mtl-perception-replay: bag", *UNREADABLE[bag])


@pytest.mark.parametrize("topic,msgtype", [("/cam/camera_info", "sensor_msgs/msg/CameraInfo"),
                                           ("/chatter", "std_msgs/msg/String")])
def test_eval_bag_refuses_non_image_topic(files: dict, domain_id: int, topic: str, msgtype: str) -> None:
    rc, out, lines, _ = eval_bag(files, "other", topic)
    assert_one_line(rc, out, errors(lines), 1, f"topic {topic!r} is {msgtype}, not sensor_msgs/msg/Image")
    # replay republishes any type (camera_info alongside images is a normal use): all 3 go out
    rc, out, lines = replay(files, "other", domain_id, topic)
    assert "Traceback" not in out and rc == 0, out
    assert lines[-1] == "replayed 3 messages", lines


def test_malformed_sqlite_mid_stream_keeps_what_came_before(files: dict, domain_id: int) -> None:
    rc, out, lines, out_dir = eval_bag(files, "malformed")
    err = errors(lines)
    assert_one_line(rc, out, err, 1, "malformed", "damaged after", "database disk image is malformed")
    n = int(err[0].split("damaged after ")[1].split(" ")[0])
    assert 1 <= n < 24
    assert f"the {n} frame(s) before it are written to" in err[0]
    # nothing lost: every frame read before the damage is in the report and the CSV
    assert json.loads((out_dir / "latency.json").read_text())["frames"] == n
    assert len((out_dir / "frames.csv").read_text().strip().splitlines()) == n + 1
    rc, out, lines = replay(files, "malformed", domain_id)
    assert "Traceback" not in out and rc == 1, out
    assert "damaged after" in lines[0] and lines[-1] == f"replayed {n} messages", lines


def test_corrupt_mcap_chunk_is_skipped_and_named(files: dict, domain_id: int) -> None:
    per_chunk = files["corrupt_chunks"]
    lost = per_chunk[1]
    total = sum(per_chunk)
    assert total == 12 and lost >= 1
    rc, out, lines = replay(files, "corrupt", domain_id)
    assert "Traceback" not in out and rc == 0, out
    assert len(lines) == 2, lines
    assert f"skipped chunk 2 of {len(per_chunk)} ({lost} message(s)" in lines[0], lines
    assert "checksum mismatch" in lines[0]
    assert lines[1] == f"replayed {total - lost} messages"
    rc, out, lines, _ = eval_bag(files, "corrupt", bi.TOPIC, "--max-frames", "1")
    assert rc == 0 and "Traceback" not in out, out
    assert sum("skipped chunk 2 of" in ln for ln in lines) == 1, out


def test_mcap_without_crc_says_it_cannot_verify(files: dict, domain_id: int) -> None:
    rc, out, lines = replay(files, "nocrc", domain_id)
    assert rc == 0 and "Traceback" not in out, out
    n = len(files["corrupt_chunks"])
    assert f"{n} of {n} mcap chunks carry no CRC" in lines[0], lines
    assert lines[-1] == "replayed 12 messages"


def test_unsupported_encoding_prints_the_reason(files: dict) -> None:
    rc, out, lines, _ = eval_bag(files, "yuv")
    assert rc == 1 and "Traceback" not in out, out
    assert any("3 message(s) rejected: unknown_encoding: encoding 'yuv8'" in ln for ln in lines), out
    assert lines[-1].endswith("could be decoded"), lines


# -- decompression bomb on the compressed input ------------------------------------------------------
def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the node's peak RSS from /proc")
def test_node_rejects_decompression_bomb_before_decoding(domain_id: int, tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    from mtl_perception.imaging import encode_compressed

    bomb = bi.png_bomb(12000)
    assert len(bomb) < 200_000  # ~140 KB declaring 144 Mpixel (the case)
    log = tmp_path / "node.log"
    cmd = harness.node_command({"model_config": TINY, "use_compressed": True, "threads": 1,
                                "backend": "torch"}, remaps={"image": "/cam/image_raw"})
    proc = harness.start_process(cmd, domain_id, log)
    client = harness.Client(domain_id, "bomb")
    try:
        pub = client.publisher("/cam/image_raw/compressed", CompressedImage)
        outs = client.collect("/mtl_perception/semantic", Image)
        diag = client.collect("/diagnostics", DiagnosticArray)

        def status() -> dict[str, str]:
            for arr in reversed(diag):
                for st in arr.status:
                    if st.name.startswith("/mtl_perception: "):
                        return harness.kv(st)
            return {}

        def send(data: bytes, fmt: str) -> None:
            msg = CompressedImage(format=fmt, data=data)
            msg.header.stamp.sec = int(time.time())
            pub.publish(msg)

        small = encode_compressed(np.full((48, 64, 3), 120, np.uint8), "jpeg")
        assert client.spin_until(lambda: len(outs) >= 1, 120, lambda: send(small, "jpeg"), 0.3), \
            log.read_text()[-3000:]
        hwm0 = _vm_hwm_mb(proc.pid)
        assert client.spin_until(lambda: int(status().get("rejected.too_many_pixels", 0)) >= 1, 60,
                                 lambda: send(bomb, "png"), 1.0), (status(), log.read_text()[-3000:])
        n_out = len(outs)
        assert client.spin_until(lambda: len(outs) > n_out, 60, lambda: send(small, "jpeg"), 0.3)
        # decoding it would take 144 MB (L) + 432 MB (RGB); the header check allocates nothing
        assert _vm_hwm_mb(proc.pid) - hwm0 < 100, (hwm0, _vm_hwm_mb(proc.pid))
        assert proc.poll() is None
    finally:
        client.close()
        rc = harness.stop_process(proc)
    assert rc == 0, log.read_text()[-3000:]

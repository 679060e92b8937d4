import subprocess
import sys


def pconv(*args):
    return subprocess.run([sys.executable, "-m", "pconv_deploy.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    r = pconv("--help")
    assert r.returncode == 0
    for command in ("init", "info"):
        assert command in r.stdout


def test_init_and_info(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert pconv("init", str(ckpt), "--layers", "7", "--width", "0.25").returncode == 0
    r = pconv("info", str(ckpt), "--size", "256x256")
    assert r.returncode == 0, r.stderr
    assert "layers:       7" in r.stdout
    from safetensors import safe_open

    with safe_open(str(ckpt), "np") as f:  # weights and BN affine, not the running statistics
        n = sum(f.get_tensor(k).size for k in f.keys() if "running" not in k and "num_batches" not in k)
    assert f"parameters:   {n:,}" in r.stdout


def test_errors_are_one_line(tmp_path):
    r = pconv("info", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.safetensors'}: no such checkpoint file"
    r = pconv("init", str(tmp_path / "x.safetensors"), "--layers", "12")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "x.safetensors").exists()

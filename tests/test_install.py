"""systemd/install.sh into a scratch root: files, modes, upgrades and uninstall."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from timing import scaled

INSTALL = REPO / "systemd" / "install.sh"
SECRET = "sk-test-0123456789-not-a-real-key"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=scaled(60), check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[device]\nid = "kitchen"\n')
    return path


def test_install_upgrade_uninstall(tmp_path: Path, template: Path) -> None:
    root = tmp_path / "root"
    key = tmp_path / "key"
    key.write_text(SECRET + "\n")
    token = tmp_path / "token"
    token.write_text("lan-token-5k2\n")
    accepted = tmp_path / "accepted"
    accepted.write_text("lan-token-5k2\nkitchen-7q1\n")
    first = run("--root", str(root), "--skip-venv", "--with-server",
                "--api-key-file", str(key), "--server-token-file", str(token),
                "--server-tokens-file", str(accepted), "--config-template", str(template))
    assert first.returncode == 0, first.stderr
    assert SECRET not in first.stdout + first.stderr

    etc = root / "etc/roomscribe"
    units = root / "etc/systemd/system"
    assert (etc / "config.toml").read_text() == template.read_text()
    assert mode(etc / "config.toml") == 0o644  # the dynamic user must read it
    assert (etc / "together_api_key").read_text() == SECRET + "\n"
    assert mode(etc / "together_api_key") == 0o600
    assert (etc / "server_token").read_text() == "lan-token-5k2\n"
    assert mode(etc / "server_token") == 0o600
    assert (etc / "server_tokens").read_text() == accepted.read_text()
    assert mode(etc / "server_tokens") == 0o600
    for unit in ("roomscribe.service", "roomscribe-server.service"):
        assert (units / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
        assert mode(units / unit) == 0o644

    # The commands on the PATH, as seen from the installed root (an image's too).
    link = root / "usr/local/bin/roomscribe"
    assert link.is_symlink() and str(link.readlink()) == "/opt/roomscribe/venv/bin/roomscribe"

    # The user edits the config; an upgrade must keep the edit.
    (etc / "config.toml").write_text('[device]\nid = "edited"\n')
    second = run("--root", str(root), "--skip-venv", "--config-template", str(template))
    assert second.returncode == 0, second.stderr
    assert (etc / "config.toml").read_text() == '[device]\nid = "edited"\n'
    assert (etc / "together_api_key").read_text() == SECRET + "\n"
    assert "kept the existing" in second.stdout

    gone = run("--root", str(root), "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not (units / "roomscribe.service").exists()
    assert not (units / "roomscribe-server.service").exists()
    assert not (root / "opt/roomscribe").exists()
    assert not link.is_symlink()
    assert (etc / "config.toml").read_text() == '[device]\nid = "edited"\n'
    assert (etc / "together_api_key").exists()


def test_mistakes_are_one_line_errors(tmp_path: Path, template: Path) -> None:
    root = str(tmp_path / "root")
    cases = [
        (["--bogus"], "unknown option '--bogus'"),
        (["--root"], "--root needs a value"),
        (["--root", root, "--skip-venv", "--api-key-file", str(tmp_path / "nope")],
         "cannot read secret file"),
        (["--root", root, "--skip-venv", "--config-template", str(tmp_path / "nope")],
         "no config template"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr


def test_skip_venv_is_refused_for_a_real_install() -> None:
    result = run("--root", "/", "--skip-venv")
    assert result.returncode != 0
    assert "--skip-venv is only for --root DIR" in result.stderr


def test_a_roomscribe_command_not_ours_is_kept(tmp_path: Path, template: Path) -> None:
    # Someone's own /usr/local/bin/roomscribe (a wrapper, a pip install): neither
    # replaced by the install nor removed by the uninstall.
    root = tmp_path / "root"
    theirs = root / "usr/local/bin/roomscribe"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("#!/bin/sh\nexec my-roomscribe \"$@\"\n")
    done = run("--root", str(root), "--skip-venv", "--config-template", str(template))
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stdout and "not ours" in done.stdout
    assert run("--root", str(root), "--uninstall").returncode == 0
    assert theirs.read_text().startswith("#!/bin/sh")

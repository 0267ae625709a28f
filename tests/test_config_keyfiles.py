"""Tests for vpncrypt.config.keyfiles: one base64 key per file, refused when group or
others may access it, with a clear message for every kind of bad file."""

import base64
import os

import pytest

from configfiles import ALL_KEY_TEXTS, K1, K2, K3, RAW1, RAW2, RAW3, SHORT, error_as_unprivileged_user, write_key
from vpncrypt.config import ConfigError, load_key_file


def test_load_key_file_ok_with_whitespace(tmp_path):
    assert load_key_file(write_key(tmp_path / "k", f"\n {K3}\t\n")) == RAW3
    assert load_key_file(str(write_key(tmp_path / "k2", K1))) == RAW1
    assert load_key_file(write_key(tmp_path / "k3", K2, 0o400)) == RAW2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o602, 0o620, 0o660, 0o666, 0o700 | 0o010, 0o601])
def test_load_key_file_refuses_open_permissions(tmp_path, mode):
    path = write_key(tmp_path / "k", K1, mode)
    with pytest.raises(ConfigError) as e:
        load_key_file(path)
    assert str(e.value) == (
        f"{path}: permissions {mode:04o} are too open; the key file must not be accessible "
        "by group or others (chmod 600)"
    )
    assert K1 not in str(e.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "key is empty"),
        ("  \n\n", "key is empty"),
        (K1 + "\n" + K2 + "\n", "key is not valid base64"),
        (K1 + " # laptop\n", "key is not valid base64"),
        (SHORT, "key must decode to 32 bytes, got 16"),
        (base64.b64encode(bytes(33)).decode(), "key must decode to 32 bytes, got 33"),
        ("é" + K1, "key is not valid base64 (the file is not ASCII text)"),
        ("x" * 5000, "is too large to be a key file (over 4096 bytes)"),
    ],
)
def test_load_key_file_bad_contents(tmp_path, content, problem):
    path = write_key(tmp_path / "k", content)
    with pytest.raises(ConfigError) as e:
        load_key_file(path)
    assert str(e.value) == f"{path}: {problem}"
    for secret in ALL_KEY_TEXTS:
        assert secret not in str(e.value)


def test_load_key_file_missing_and_directory_and_fifo(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path / "missing.key")
    assert str(e.value) == f"{tmp_path}/missing.key: no such key file"
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path / "missing-dir" / "x.key")
    assert str(e.value) == f"{tmp_path}/missing-dir/x.key: no such key file"
    with pytest.raises(ConfigError) as e:
        load_key_file(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a directory, not a key file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError) as e:
        load_key_file(fifo)  # must not block waiting for a writer
    assert str(e.value) == f"{fifo}: is not a regular file"


def test_load_key_file_follows_symlink_and_checks_target(tmp_path):
    target = write_key(tmp_path / "real.key", K2)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    assert load_key_file(link) == RAW2
    os.chmod(target, 0o644)
    with pytest.raises(ConfigError) as e:
        load_key_file(link)
    assert "permissions 0644 are too open" in str(e.value)


def test_load_key_file_unreadable(unprivileged_dir):
    path = write_key(unprivileged_dir / "k", K1, 0o000)
    message = error_as_unprivileged_user(load_key_file, str(path))
    assert message == f"{path}: permission denied reading the key file"
